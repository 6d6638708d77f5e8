"""The explorer app (TestClient): pages, paging, live activations and steering against direct computations,
clear errors for bad input, read-only run folders, and self-contained exports.

The run folders are made here, per the run-folder contract, from a tiny random Llama and a hand-made SAE.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

import lmscope as ls
from lmscope.explorer import create_app, export_page
from lmscope.report import page, save_page
from lmscope.runs import write_json, write_run

from .conftest import WORDS, tiny_hf, word_tokenizer

NEURON_SITE, SAE_SITE, D_SAE = "blocks.1.mlp.post", "blocks.1.resid_post", 600  # 600 features: 3 card pages
SENTENCES = [
    "the cat sat on the mat and then the dog ran home",
    "a dog sat on a mat",
    "the cat ran to the dog and then sat",
    "then a cat and a dog ran to the mat",
    "the dog sat and the cat ran home to a mat",
]


def tiny_model() -> ls.Model:
    return ls.Model(tiny_hf("llama"), word_tokenizer(), name="tiny-llama")


def sae_weights(d_in: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(D_SAE, d_in, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    return {
        "W_enc": W_dec.T.contiguous() * 0.8,
        "b_enc": torch.zeros(D_SAE),
        "W_dec": W_dec,
        "b_dec": torch.randn(d_in, generator=g) * 0.05,
    }


def encode(w: dict, x: torch.Tensor) -> torch.Tensor:
    """The reference ReLU SAE encoder, written out: relu((x - b_dec) @ W_enc + b_enc)."""
    return torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])


def _example(tokens: list[str], acts: torch.Tensor, label: str) -> dict:
    return {
        "tokens": tokens,
        "acts": [round(float(a), 5) for a in acts],
        "peak": int(acts.argmax()),
        "label": label,
    }


def _card(kind, uid, site, index, acts_by_sentence, str_tokens, model) -> dict:
    """A unit card per the contract, from activations [n_sentences][pos] of one unit."""
    flat = torch.cat(acts_by_sentence)
    active = flat[flat > 0]
    counts, edges = np.histogram(active.numpy() if active.numel() else np.zeros(1), bins=12)
    order = sorted(range(len(SENTENCES)), key=lambda s: -float(acts_by_sentence[s].max()))
    spaced = [
        [t if i == 0 else " " + t for i, t in enumerate(toks)] for toks in str_tokens
    ]  # as BPE shows them
    examples = [_example(spaced[s], acts_by_sentence[s], "words") for s in order]
    logit_effect = torch.randn(len(WORDS), generator=torch.Generator().manual_seed(index))
    top, bottom = logit_effect.argsort(descending=True)[:5], logit_effect.argsort()[:5]
    return {
        "id": uid,
        "kind": kind,
        "site": site,
        "index": index,
        "title": f"{kind} {uid} reads words",
        "density": float((flat > 0).float().mean()),
        "max_act": float(flat.max()),
        "mean_act": float(flat.mean()),
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "top_examples": examples[:3],
        "quantile_examples": [
            {
                "range": [
                    min(e["acts"][e["peak"]] for e in examples[3:]),
                    max(e["acts"][e["peak"]] for e in examples[3:]),
                ],
                "examples": examples[3:],
            }
        ],
        "promoted": [[WORDS[i], float(logit_effect[i])] for i in top],
        "suppressed": [[WORDS[i], float(logit_effect[i])] for i in bottom],
        "ablation": {"loss_delta": {"words": 0.012, "code": -0.004}},
        "nearest": [],
        "extra": {"mean_active": 0.5, "top_tokens": [["cat", 7], ["dog", 3]]},
    }


def make_runs(root: Path, model: ls.Model) -> dict[str, Path]:
    """Four run folders under ``root``: neurons, sae (3 card pages), probe, patching. Returns kind -> folder."""
    batch = model.tokenize(SENTENCES, prepend_bos=True)  # one padded forward for all sentences
    lengths = batch["attention_mask"].sum(1).tolist()
    _, cache = model.run_with_cache(batch, sites=[NEURON_SITE, SAE_SITE])
    str_tokens = [model.to_str_tokens(batch["input_ids"][s, 1:n]) for s, n in enumerate(lengths)]
    caches = [
        {site: cache[site][s : s + 1, :n] for site in (NEURON_SITE, SAE_SITE)} for s, n in enumerate(lengths)
    ]
    runs = {k: root / k for k in ("neurons", "sae", "probe", "patching")}

    neurons = [3, 7, 11, 20, 41]
    cards = [
        _card(
            "neuron", f"1.{n}", NEURON_SITE, n, [c[NEURON_SITE][0, 1:, n] for c in caches], str_tokens, model
        )
        for n in neurons
    ]
    cards[0]["nearest"] = [["1.7", 0.5], ["1.11", -0.25]]
    write_json(runs["neurons"] / "units.json", {"site_kind": "mlp.post", "units": cards})
    save_page(page("Neurons", []), runs["neurons"] / "report.html")
    write_run(runs["neurons"], "neurons", "Context neurons", model="tiny-llama")

    w = sae_weights(model.cfg.d_model)
    x = torch.cat([c[SAE_SITE][0, 1:] for c in caches])  # [tokens, d_model]
    pre = (x - w["b_dec"]) @ w["W_enc"]  # [tokens, d_sae]
    q = torch.linspace(0.3, 1.0, D_SAE)[torch.randperm(D_SAE, generator=torch.Generator().manual_seed(1))]
    ranks = (q * (pre.shape[0] - 1)).round().long()
    w["b_enc"] = -pre.sort(dim=0).values[ranks, torch.arange(D_SAE)]  # densities from 0 to 0.7
    runs["sae"].mkdir(parents=True)
    save_file(w, str(runs["sae"] / "sae_weights.safetensors"))
    cfg = {
        "d_in": model.cfg.d_model,
        "d_sae": D_SAE,
        "site": SAE_SITE,
        "hook_name": SAE_SITE,
        "architecture": "standard",
        "apply_b_dec_to_input": True,
    }
    write_json(runs["sae"] / "cfg.json", cfg)
    feats = [encode(w, c[SAE_SITE][0, 1:]) for c in caches]  # [pos, d_sae] each
    feature_cards = []
    for f in range(D_SAE):
        card = _card("feature", str(f), SAE_SITE, f, [x[:, f] for x in feats], str_tokens, model)
        card["nearest"] = [[str((f + 1) % D_SAE), 0.3]]
        feature_cards.append(card if card["max_act"] > 0 else None)  # dead features get no card
    stats = {k: [c[k] if c else 0.0 for c in feature_cards] for k in ("density", "max_act", "mean_act")}
    write_json(runs["sae"] / "feature_stats.json", {"n_features": D_SAE, **stats})
    for p, start in enumerate(range(0, D_SAE, 256)):
        write_json(
            runs["sae"] / "features" / f"{p:05d}.json",
            {"start": start, "cards": feature_cards[start : start + 256]},
        )
    save_page(page("SAE", []), runs["sae"] / "report.html")
    write_run(runs["sae"], "sae", "Tiny SAE", model="tiny-llama", site=SAE_SITE)

    records = [
        {
            "feature": f,
            "layer": layer,
            "k": k,
            "basis": basis,
            "f1": 0.5 + 0.1 * layer + 0.01 * k - (basis == "rotated"),
        }
        for f in ("python", "french")
        for layer in range(3)
        for k in (1, 4)
        for basis in ("native", "rotated")
    ]
    write_json(
        runs["probe"] / "probe.json", {"layers": [0, 1, 2], "sweep": records}
    )  # as probe_report writes
    save_page(page("Probe report", []), runs["probe"] / "report.html")
    write_run(runs["probe"], "probe", "Sparse probes", model="tiny-llama")

    save_page(
        page("Patching report", [("", "<p id='marker'>patching heatmap here</p>")]),
        runs["patching"] / "report.html",
    )
    write_run(runs["patching"], "patching", "IOI patching", model="tiny-llama")
    return runs


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def model() -> ls.Model:
    return tiny_model()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model) -> dict[str, Path]:
    return make_runs(tmp_path_factory.mktemp("runs"), model)


@pytest.fixture(scope="module")
def client(runs, model):
    root = runs["sae"].parent
    before = tree_digest(root)
    with TestClient(create_app(root, model=model), raise_server_exceptions=False) as c:
        yield c
    assert tree_digest(root) == before, "the explorer wrote into the run folders"


def run_id(client, kind: str) -> str:
    return next(r["id"] for r in client.get("/api/runs").json() if r["kind"] == kind)


def listed_units(html: str) -> list[int]:
    """The unit indices of the list page's table, in order (each row carries its index)."""
    return [int(i) for i in re.findall(r'<tr data-unit="(\d+)"', html)]


def token_acts(html: str, where: str = "") -> list[float]:
    part = html.split(where, 1)[1] if where else html
    return [float(a) for a in re.findall(r'class="tok[^"]*"[^>]*data-act="([-0-9.e]+)"', part)]


def assert_friendly_error(resp, status: int, needle: str) -> None:
    assert resp.status_code == status, resp.text[:300]
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    assert needle in resp.text, resp.text[:500]


# ---- pages -------------------------------------------------------------------------------------------------


def test_index_lists_every_run(client):
    resp = client.get("/")
    assert resp.status_code == 200
    for title in ("Context neurons", "Tiny SAE", "Sparse probes", "IOI patching"):
        assert title in resp.text
    assert {r["kind"] for r in client.get("/api/runs").json()} == {"neurons", "sae", "probe", "patching"}


def test_feature_list_is_sorted_paged_and_filtered(client, runs):
    stats = json.loads((runs["sae"] / "feature_stats.json").read_text())
    density = np.array(stats["density"])
    sid = run_id(client, "sae")
    resp = client.get(f"/runs/{sid}?sort=density&order=desc")
    assert resp.status_code == 200
    listed = listed_units(resp.text)
    assert len(listed) == 50
    assert np.all(np.diff(density[listed]) <= 0) and density[listed[0]] == density.max()
    page2 = listed_units(client.get(f"/runs/{sid}?page=2").text)
    assert not set(page2) & set(listed)
    cut = float(np.quantile(density, 0.9))
    filtered = client.get(f"/runs/{sid}?min_density={cut}&sort=index&order=asc").text
    expect = np.flatnonzero(density >= cut)
    assert f"{len(expect):,} match" in filtered
    assert listed_units(filtered) == expect[:50].tolist()
    assert_friendly_error(client.get(f"/runs/{sid}?sort=evil"), 422, "sort must be one of")


def test_feature_page_shows_highlighted_tokens_histogram_and_logits(client, runs):
    sid = run_id(client, "sae")
    units = client.app.state.explorer.units.get(client.app.state.explorer.catalog.get(sid))
    feature = 300 + next(i for i in range(200) if units.card(300 + i) is not None)
    card = json.loads((runs["sae"] / "features" / "00001.json").read_text())["cards"][feature - 256]
    html = client.get(f"/runs/{sid}/units/{feature}").text
    top = token_acts(html, 'id="top-examples"')
    first = card["top_examples"][0]
    shown = first["acts"][max(0, first["peak"] - 32) : first["peak"] + 9]  # the window around the peak
    assert top[: len(shown)] == pytest.approx(shown, abs=1e-4)
    peak_alpha = 0.85 * first["acts"][first["peak"]] / card["max_act"]
    assert f"rgba(249, 115, 22, {peak_alpha:.3f})" in html
    assert re.search(r'<figure id="histogram"><svg[^>]*>.*<rect', html, re.S)
    assert card["promoted"][0][0] in html and "Ablation effect" in html
    assert re.search(r'id="extra".*top tokens.*>cat<.*>7<', html, re.S)
    assert f'href="/runs/{sid}/units/{(feature + 1) % D_SAE}"' in html  # nearest feature link
    # Only the card pages asked for are read (the features on pages 0 and 2 are never loaded).
    assert set(units._pages._items) <= {0, 1}


def test_dead_feature_page_has_stats_but_no_card(client, runs):
    stats = json.loads((runs["sae"] / "feature_stats.json").read_text())
    dead = [i for i, m in enumerate(stats["max_act"]) if m == 0]
    if not dead:
        pytest.skip("this random SAE has no dead feature")
    resp = client.get(f"/runs/{run_id(client, 'sae')}/units/{dead[0]}")
    assert resp.status_code == 200 and "No card was saved" in resp.text


def test_neuron_page_and_probe_and_report_pages(client, runs):
    nid = run_id(client, "neurons")
    html = client.get(f"/runs/{nid}/units/0").text
    assert "Neuron 1.3" in html and 'href="/runs/' + nid + '/units/1"' in html  # nearest "1.7" is unit 1
    probe = client.get(f"/runs/{run_id(client, 'probe')}").text
    assert 'id="probe-curves"' in probe and "k = 4" in probe and "for each k: french" in probe
    from lmscope.explorer.pages import probe_curves

    curves = probe_curves(json.loads((runs["probe"] / "probe.json").read_text()))
    assert curves["python"][4] == pytest.approx({0: 0.54, 1: 0.64, 2: 0.74})  # the rotated control left out
    pid = run_id(client, "patching")
    framed = client.get(f"/runs/{pid}").text
    assert f'sandbox="" referrerpolicy="no-referrer" src="/runs/{pid}/report.html"' in framed
    report = client.get(f"/runs/{pid}/report.html")
    assert "patching heatmap here" in report.text
    assert report.headers["content-security-policy"].startswith("sandbox")


# ---- the live box --------------------------------------------------------------------------------------------


def test_live_neuron_activations_equal_run_with_cache(client, model):
    text = "the dog ran to the mat"
    resp = client.post(f"/api/runs/{run_id(client, 'neurons')}/units/2/activations", json={"text": text})
    assert resp.status_code == 200, resp.text
    ids = model.to_tokens(text, prepend_bos=True)
    _, cache = model.run_with_cache(ids)
    expect = cache[NEURON_SITE][0, 1:, 11]  # unit 2 of the neuron run is neuron 11
    assert resp.json()["tokens"] == text.split()
    assert resp.json()["acts"] == pytest.approx(expect.tolist(), abs=1e-5)


def test_live_feature_activations_equal_hand_encoder(client, model, runs):
    from safetensors.torch import load_file

    text = "a cat sat on the dog"
    w = load_file(str(runs["sae"] / "sae_weights.safetensors"))
    _, cache = model.run_with_cache(model.to_tokens(text, prepend_bos=True))
    expect = encode(w, cache[SAE_SITE][0, 1:])[:, 123]
    resp = client.post(f"/api/runs/{run_id(client, 'sae')}/units/123/activations", json={"text": text})
    assert resp.json()["acts"] == pytest.approx(expect.tolist(), abs=1e-5)
    page_html = client.get(f"/runs/{run_id(client, 'sae')}/units/123", params={"text": text}).text
    assert token_acts(page_html, 'id="live-result"')[: len(expect)] == pytest.approx(
        expect.tolist(), abs=1e-4
    )


def hf_generate(model, text: str, n: int, interventions=()) -> list[int]:
    """An independent path: Hugging Face's own greedy generate (with its KV cache), under the interventions."""
    ids = model.to_tokens(text, prepend_bos=True)
    with model.intervene(*interventions):
        out = model.hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0
        )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("kind", ["neurons", "sae"])
def test_steering_matches_add_direction_generate(client, model, runs, kind):
    text, n, scale = "the cat sat on", 6, 40.0
    rid = run_id(client, kind)
    resp = client.post(f"/api/runs/{rid}/units/2/steer", json={"text": text, "scale": scale, "n_tokens": n})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    if kind == "neurons":
        site, direction = "blocks.1.mlp.out", model.weights.W_out(1)[11].detach()
    else:
        from safetensors.torch import load_file

        site, direction = SAE_SITE, load_file(str(runs["sae"] / "sae_weights.safetensors"))["W_dec"][2]
    assert out["unsteered_ids"] == hf_generate(model, text, n)
    assert out["steered_ids"] == hf_generate(
        model, text, n, [ls.AddDirection(site, direction=direction, scale=scale)]
    )
    assert out["steered_ids"] != out["unsteered_ids"]
    assert out["steered"] == model.to_string(out["steered_ids"])


def test_model_loads_lazily_once_and_one_per_server(runs, model, tmp_path, monkeypatch):
    import shutil

    import lmscope.explorer.live as live

    for name, model_name in (("a", "tiny-llama"), ("b", "another-model")):
        shutil.copytree(runs["neurons"], tmp_path / name)
        write_run(tmp_path / name, "neurons", f"run {name}", model=model_name)
    loads = []
    monkeypatch.setattr(live, "_load_model", lambda name: loads.append(name) or model)
    with TestClient(create_app(tmp_path)) as c:
        assert c.get("/").status_code == 200 and c.get("/runs/a/units/1").status_code == 200
        assert loads == []  # pages never load the model
        for _ in range(2):
            assert c.post("/api/runs/a/units/1/activations", json={"text": "the cat"}).status_code == 200
        assert loads == ["tiny-llama"]
        other = c.post("/api/runs/b/units/1/activations", json={"text": "the cat"})
        assert other.status_code == 409 and "another-model" in other.json()["error"]["message"]


def test_malformed_run_folders_are_listed_as_unreadable_with_the_reason(tmp_path):
    from html.parser import HTMLParser

    write_run(tmp_path / "good", "probe", "A fine probe run")
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "run.json").write_text('{"kind": "sae", "title": ')  # cut off mid-write
    write_json(tmp_path / "odd" / "run.json", {"kind": "not-a-kind", "title": "odd"})

    class UnreadableRows(HTMLParser):  # the (folder, reason) cells of the index's unreadable table
        def __init__(self):
            super().__init__()
            self.inside, self.cells = False, []

        def handle_starttag(self, tag, attrs):
            self.inside |= tag == "div" and ("id", "unreadable") in attrs
            if self.inside and tag == "td":
                self.cells.append("")

        def handle_data(self, data):
            if self.inside and self.cells:
                self.cells[-1] += data

    with TestClient(create_app(tmp_path)) as c:
        index = c.get("/")
        assert index.status_code == 200 and "A fine probe run" in index.text
        assert [r["title"] for r in c.get("/api/runs").json()] == ["A fine probe run"]
    parser = UnreadableRows()
    parser.feed(index.text)
    reasons = dict(zip(parser.cells[::2], parser.cells[1::2]))
    assert sorted(reasons) == ["odd", "torn"]
    assert "not valid JSON" in reasons["torn"] and "'not-a-kind'" in reasons["odd"]


def test_sae_run_without_cards_shows_its_report(runs, model, tmp_path):
    import shutil

    shutil.copytree(
        runs["sae"], tmp_path / "bare", ignore=shutil.ignore_patterns("feature_stats.json", "features")
    )
    with TestClient(create_app(tmp_path, model=model)) as c:
        page_html = c.get("/runs/bare").text
        assert "has no feature_stats.json" in page_html and 'src="/runs/bare/report.html"' in page_html
        assert_friendly_error(c.get("/runs/bare/units/0"), 404, "has no feature_stats.json")


def test_unit_that_does_not_fit_the_model_is_a_clear_error(runs, model, tmp_path):
    import shutil

    shutil.copytree(runs["neurons"], tmp_path / "n")
    units = json.loads((tmp_path / "n" / "units.json").read_text())
    units["units"][0]["site"] = "blocks.9.mlp.post"  # the tiny model has 3 layers
    units["units"][1]["index"] = 4000  # d_mlp is 48
    write_json(tmp_path / "n" / "units.json", units)
    with TestClient(create_app(tmp_path, model=model)) as c:
        for unit in (0, 1):
            resp = c.post(f"/api/runs/n/units/{unit}/activations", json={"text": "the cat"})
            assert (
                resp.status_code == 409 and "does not fit the loaded model" in resp.json()["error"]["message"]
            )


# ---- bad input -----------------------------------------------------------------------------------------------


def test_bad_ids_and_long_prompts_get_clear_errors(client):
    sid = run_id(client, "sae")
    assert_friendly_error(client.get("/runs/no-such-run"), 404, "no run with id")
    assert_friendly_error(client.get(f"/runs/{sid}/units/{D_SAE}"), 404, f"units 0..{D_SAE - 1}")
    assert_friendly_error(client.get(f"/runs/{sid}/units/-1"), 404, "no unit -1")
    assert_friendly_error(client.get(f"/runs/{sid}/units/abc"), 422, "invalid input")
    assert_friendly_error(client.get(f"/runs/{run_id(client, 'probe')}/units/0"), 404, "has no units")
    long = "the cat " * 300
    assert_friendly_error(
        client.get(f"/runs/{sid}/units/1", params={"text": long}), 413, "the limit is 2,000"
    )
    api = client.post(f"/api/runs/{sid}/units/1/activations", json={"text": long})
    assert api.status_code == 413 and "the limit is 2,000" in api.json()["error"]["message"]
    too_many_tokens = client.post(f"/api/runs/{sid}/units/1/activations", json={"text": "cat " * 400})
    assert too_many_tokens.status_code == 413 and "tokens" in too_many_tokens.json()["error"]["message"]
    assert client.post(f"/api/runs/{sid}/units/1/activations", json={"text": "  "}).status_code == 422
    assert (
        client.post(f"/api/runs/{sid}/units/1/activations", json={"txt": "a"}).json()["error"]["status"]
        == 422
    )
    bad_scale = client.post(f"/api/runs/{sid}/units/1/steer", json={"text": "a cat", "scale": 1e9})
    assert bad_scale.status_code == 422 and "scale" in bad_scale.json()["error"]["message"]
    assert_friendly_error(client.get("/nowhere"), 404, "there is no page")


@pytest.mark.parametrize(
    "path",
    [
        "/runs/..%2F..%2Fetc/units/1",
        "/runs/%2e%2e/report.html",
        "/runs/../../etc/passwd",
        "/runs/sae%2F..%2Fprobe",
        "/runs/sae/report.html/../../../../etc/passwd",
        "/runs/.%2F/report.html",
    ],
)
def test_path_traversal_is_rejected(client, path):
    resp = client.get(path)
    assert resp.status_code == 404 and "root:" not in resp.text and "Traceback" not in resp.text


def test_server_errors_are_a_page_not_a_traceback(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.app.state.explorer, "index_html", broken)
    resp = client.get("/")
    assert_friendly_error(resp, 500, "RuntimeError")
    assert "secret internals" not in resp.text


def test_foreign_host_header_is_refused(client):
    assert client.get("/", headers={"host": "evil.example"}).status_code == 400


# ---- export --------------------------------------------------------------------------------------------------


def assert_self_contained(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""\b(src|href|action)\s*=\s*["']?/""", html), "a link back to the server"
    assert "<script" not in html and "fetch(" not in html


def test_export_writes_self_contained_pages(runs, model, tmp_path, client):
    root = runs["sae"].parent
    sid, pid = run_id(client, "sae"), run_id(client, "patching")
    for address in ["/", f"/runs/{sid}", f"/runs/{sid}/units/5?text=the+cat+sat", f"/runs/{pid}"]:
        out = export_page(root, address, tmp_path / "page.html", model=model)
        html = out.read_text()
        assert_self_contained(html)
        assert "lmscope explorer" in html
    assert "patching heatmap here" in html and "srcdoc=" in html  # the report travels inside the export
    unit = export_page(
        root, f"/runs/{sid}/units/5?text=the+cat+sat", tmp_path / "u.html", model=model
    ).read_text()
    assert 'class="tok' in unit and "live box needs the explorer server" in unit


def test_cli_export(runs, tmp_path, client):
    from lmscope.cli import main

    out = tmp_path / "index.html"
    assert main(["export", str(runs["sae"].parent), "/", "--out", str(out)]) == 0
    assert "Tiny SAE" in out.read_text()
    assert main(["export", str(runs["sae"].parent), "/runs/missing", "--out", str(out)]) == 2

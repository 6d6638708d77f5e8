"""Steering sweeps: intended effect, KL, loss and interference against independent computations."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import lmscope as ls
from lmscope.features.sae import SAE, StandardConfig
from lmscope.runs import read_run
from lmscope.steering import Direction, Target, fit_probe, save_run, sweep
from lmscope.steering.side_effects import reference_contexts
from lmscope.steering.sweep import conditions

from .conftest import tiny_hf, word_tokenizer

SITE = "blocks.1.resid_post"
REF = {
    "a": "the cat sat on the mat and then the dog ran home " * 4,
    "b": "a dog ran to a cat and the mat sat on a home " * 4,
}
PROMPTS = ["the cat sat on", "a dog ran to"]  # equal token lengths: no padding in the hand computation
SMALL = dict(ctx_len=12, n_contexts=3, max_new_tokens=3, n_generate=1)


def _vector(seed: int = 0, d: int = 32) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _hand_logits(model: ls.Model, ids: torch.Tensor, layer: int, added: torch.Tensor | None) -> torch.Tensor:
    """Plain HF forward; `added` is added to decoder layer `layer`'s output by a torch hook of our own."""

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + added, *output[1:])
        return output + added

    handle = None if added is None else model.hf.model.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model.hf(input_ids=ids).logits.float()
    finally:
        if handle is not None:
            handle.remove()


def _planted_sae(d_in: int = 32, d_sae: int = 12, site: str = SITE) -> SAE:
    """Encoder = decoder transpose (unit rows) and a large bias: every feature fires on every token and
    stays linear in the activation, so interference is exactly what the decoder cosines say."""
    sae = SAE(StandardConfig(d_in=d_in, d_sae=d_sae, site=site), architecture="standard")
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(3))
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.fill_(1000.0)
    return sae


def test_intended_effect_matches_hand_hook(tiny_llama):
    v = _vector()
    res = sweep(tiny_llama, Direction(v, SITE), None, [0, 3.0], PROMPTS, REF,
                target=Target.next_tokens(["mat", "cat"]), ablation=False, **SMALL)  # fmt: skip
    ids = tiny_llama.to_tokens(PROMPTS)
    targets = torch.tensor([tiny_llama.tokenizer.convert_tokens_to_ids(w) for w in ["mat", "cat"]])

    def log_p(added):
        logp = _hand_logits(tiny_llama, ids, 1, added)[:, -1].log_softmax(-1)
        return logp[:, targets].logsumexp(-1)

    clean, steered = log_p(None), log_p(3.0 * v)
    assert res.conditions[0]["effect"] == 0.0
    assert res.conditions[1]["effect"] == pytest.approx(float((steered - clean).mean()), abs=1e-5)
    assert res.conditions[1]["measure"] == pytest.approx(float(steered.mean()), abs=1e-5)
    assert res.clean["measure"] == pytest.approx(float(clean.mean()), abs=1e-5)


def test_logit_difference_target(tiny_llama):
    v = _vector(1)
    res = sweep(tiny_llama, Direction(v, SITE), None, [2.0], PROMPTS, REF,
                target=Target.logit_difference(["mat", "home"], ["dog", "cat"]), ablation=False, **SMALL)  # fmt: skip
    ids = tiny_llama.to_tokens(PROMPTS)
    tid = tiny_llama.tokenizer.convert_tokens_to_ids
    good, bad = torch.tensor([tid("mat"), tid("home")]), torch.tensor([tid("dog"), tid("cat")])
    rows = torch.arange(2)

    def ld(added):
        last = _hand_logits(tiny_llama, ids, 1, added)[:, -1]
        return last[rows, good] - last[rows, bad]

    assert res.conditions[0]["effect"] == pytest.approx(float((ld(2.0 * v) - ld(None)).mean()), abs=1e-5)


def test_kl_is_zero_at_scale_zero_and_matches_hand_kl(tiny_llama):
    v = _vector(2)
    res = sweep(tiny_llama, Direction(v, SITE), None, [0, 1.5], PROMPTS, REF, ablation=False, **SMALL)
    zero, one = res.conditions
    assert all(k == 0.0 for k in zero["kl"].values()) and all(x == 0.0 for x in zero["loss_delta"].values())
    ref = reference_contexts(tiny_llama, REF, SMALL["ctx_len"], SMALL["n_contexts"])
    for label, ids in ref.items():
        p = _hand_logits(tiny_llama, ids, 1, None)[:, :-1].log_softmax(-1)
        q = _hand_logits(tiny_llama, ids, 1, 1.5 * v)[:, :-1].log_softmax(-1)
        kl = (p.exp() * (p - q)).sum(-1).mean()
        nxt = ids[:, 1:, None]
        loss_delta = (p.gather(-1, nxt) - q.gather(-1, nxt)).mean()
        assert one["kl"][label] == pytest.approx(float(kl), rel=1e-4, abs=1e-7)
        assert one["loss_delta"][label] == pytest.approx(float(loss_delta), abs=1e-5)
    assert one["cost_kl"] == pytest.approx(sum(one["kl"].values()) / 2)


def test_label_target_is_minus_the_label_loss_change(tiny_llama):
    v = _vector(4)
    res = sweep(
        tiny_llama, Direction(v, SITE), None, [2.0], PROMPTS, REF, target=Target.corpus_label("a"), **SMALL
    )
    row = res.conditions[0]
    assert row["effect"] == pytest.approx(-row["loss_delta"]["a"])
    assert res.off_target_labels == ["b"] and row["cost_kl"] == row["kl"]["b"]


@pytest.mark.parametrize("where", ["same site", "mlp.out upstream"])
def test_interference_prediction_exact_in_a_linear_setting(tiny_llama, where):
    sae = _planted_sae()
    if where == "same site":
        direction = Direction(_vector(5), SITE)
    else:  # a neuron writes into mlp.out; resid_post = resid_mid + mlp.out carries it to the SAE unchanged
        direction = Direction.from_neuron(tiny_llama, "blocks.1.mlp.post[7]")
    scales = [0, 2.0, -3.0]
    res = sweep(tiny_llama, direction, None, scales, PROMPTS, REF, saes=[sae], ablation=False, **SMALL)
    measured, predicted = res.feature_arrays["sae0.measured"], res.feature_arrays["sae0.predicted"]
    # s * |v| cos(v, d_i) / |d_i|, with |d_i| = 1
    hand = torch.tensor(scales)[:, None] * (sae.W_dec.detach() @ direction.vector)
    assert torch.allclose(predicted, hand, atol=1e-5)
    assert torch.allclose(measured, hand, atol=1e-3)
    for row in res.conditions[1:]:
        assert row["interference"][0]["r_decoder"] == pytest.approx(1.0, abs=1e-4)
        assert row["interference"][0]["r_encoder"] == pytest.approx(1.0, abs=1e-4)


def test_relative_scales_add_that_share_of_the_mean_activation_norm(tiny_llama):
    v = _vector(10)
    kw = dict(target=Target.next_tokens(["mat"]), ablation=False, **SMALL)
    rel = sweep(tiny_llama, Direction(v, SITE), None, [0.5], PROMPTS, REF, relative=True, **kw)
    _, cache = tiny_llama.run_with_cache(PROMPTS, sites=[SITE])
    mean_norm = cache[SITE][:, 1:].norm(dim=-1).mean()  # no padding; position 0 left out
    row = rel.conditions[0]
    assert row["name"] == "size 0.5" and row["relative_size"] == pytest.approx(0.5, rel=1e-5)
    assert row["scale"] == pytest.approx(float(0.5 * mean_norm / v.norm()), rel=1e-5)
    nat = sweep(tiny_llama, Direction(v, SITE), None, [row["scale"]], PROMPTS, REF, **kw)
    assert nat.conditions[0]["effect"] == pytest.approx(row["effect"], abs=1e-6)


def test_sae_direction_reports_its_own_feature(tiny_llama):
    sae = _planted_sae()
    res = sweep(tiny_llama, Direction.from_sae(sae, 4), None, [2.0], PROMPTS, REF, saes=[sae], **SMALL)
    assert res.interference[0]["target_feature"] == 4
    steer = res.conditions[0]["interference"][0]
    assert steer["target_delta"] == pytest.approx(2.0, abs=1e-3)  # unit decoder row, encoder = its transpose
    assert all(t["feature"] != 4 for t in steer["top"])


def test_neuron_direction_equals_raising_the_neuron(tiny_llama):
    """Adding s * W_out[N] at mlp.out is adding s to neuron N at mlp.post."""
    d = Direction.from_neuron(tiny_llama, "blocks.1.mlp.post[7]")
    assert d.site == "blocks.1.mlp.out"
    assert torch.equal(d.vector, tiny_llama.weights.W_out(1)[7].float())
    one_hot = Direction(torch.eye(tiny_llama.cfg.d_mlp)[7], "blocks.1.mlp.post")
    kw = dict(target=Target.next_tokens(["mat"]), ablation=False, **SMALL)
    a = sweep(tiny_llama, d, None, [2.5], PROMPTS, REF, **kw)
    b = sweep(tiny_llama, one_hot, None, [2.5], PROMPTS, REF, **kw)
    assert a.conditions[0]["effect"] == pytest.approx(b.conditions[0]["effect"], abs=1e-5)
    assert a.conditions[0]["kl"]["a"] == pytest.approx(b.conditions[0]["kl"]["a"], rel=1e-4, abs=1e-8)


def test_ablation_zeroes_the_projection_with_the_same_accounting(tiny_llama):
    v = _vector(6)
    direction = Direction(v, SITE)
    [cond] = conditions(direction, SITE, [], True, (32,))
    _, cache = tiny_llama.run_with_cache(PROMPTS, sites=[SITE], interventions=[cond.intervention])
    _, clean = tiny_llama.run_with_cache(PROMPTS, sites=[SITE])
    unit = v / v.norm()
    assert (clean[SITE] @ unit).abs().max() > 0.01  # tiny models' residuals are ~0.05 per coordinate
    assert (cache[SITE] @ unit).abs().max() < 1e-7
    res = sweep(tiny_llama, direction, None, [1.0], PROMPTS, REF, saes=[_planted_sae()], **SMALL)
    steer, abl = res.conditions
    assert abl["ablation"] and abl["scale"] is None and set(abl) == set(steer)
    assert abl["cost_kl"] > 0 and abl["interference"][0]["r_decoder"] is not None
    assert res.generations["steered"]["ablation"] and res.generations["clean"]


def test_das_subspace_ablation_removes_the_whole_subspace(tiny_llama, tmp_path):
    basis = torch.linalg.qr(torch.randn(32, 2, generator=torch.Generator().manual_seed(7))).Q
    save_file({"basis": basis.contiguous()}, str(tmp_path / "subspace.safetensors"), metadata={"site": SITE})
    d = Direction.from_das(tmp_path)
    assert d.site == SITE and torch.allclose(d.vector, basis[:, 0]) and d.ablation_basis.shape == (32, 2)
    [cond] = conditions(d, SITE, [], True, (32,))
    _, cache = tiny_llama.run_with_cache(PROMPTS, sites=[SITE], interventions=[cond.intervention])
    assert (cache[SITE] @ basis).abs().max() < 1e-7


def test_mean_difference_is_the_hand_mean(tiny_llama):
    a, b = ["the cat sat on the mat", "a cat ran home"], ["the dog ran to a dog and then home"]
    d = Direction.mean_difference(tiny_llama, a, b, SITE)

    def mean(texts):
        rows = []
        for t in texts:
            _, cache = tiny_llama.run_with_cache(tiny_llama.to_tokens(t, prepend_bos=True), sites=[SITE])
            rows.append(cache[SITE][0, 1:].mean(0))  # BOS left out
        return torch.stack(rows).mean(0)

    assert torch.allclose(d.vector, mean(a) - mean(b), atol=1e-5)


def test_label_neuron_and_feature_are_the_hand_argmax(tiny_llama):
    from lmscope.steering import label_feature, label_neuron

    a = ["the cat sat on the mat", "a cat sat", "the mat and the cat sat"]
    b = ["the dog ran home", "a dog ran to a home and then", "then the dog ran to the dog"]
    sae = _planted_sae()
    sae.b_enc.data.fill_(0.0)  # a real ReLU: per-text means of features differ from features of means

    def per_text(texts, site, fn):
        rows = []
        for t in texts:
            _, cache = tiny_llama.run_with_cache(tiny_llama.to_tokens(t, prepend_bos=True), sites=[site])
            rows.append(fn(cache[site][0, 1:]).mean(0))
        return torch.stack(rows)

    def best(pos, neg):
        return int(((pos.mean(0) - neg.mean(0)) / torch.cat([pos, neg]).std(0)).argmax())

    site = "blocks.1.mlp.post"
    hand = best(per_text(a, site, lambda x: x), per_text(b, site, lambda x: x))
    assert label_neuron(tiny_llama, a, b, layer=1) == f"{site}[{hand}]"
    with torch.no_grad():
        hand = best(per_text(a, SITE, sae.encode), per_text(b, SITE, sae.encode))
    assert label_feature(tiny_llama, sae, a, b) == hand


def test_probe_direction_moves_the_probe_logit_by_the_scale(tiny_llama):
    texts_a = ["the cat sat on the mat", "the cat sat", "a cat sat on a mat", "the mat and the cat"]
    texts_b = ["a dog ran to home", "the dog ran home", "dog ran to a home and then", "then the dog ran"]
    probe = fit_probe(tiny_llama, texts_a, texts_b, "blocks.1.mlp.post", k=4)
    d = Direction.from_probe(probe, "blocks.1.mlp.post")
    X = torch.randn(5, tiny_llama.cfg.d_mlp, dtype=torch.float64)
    moved = probe.decision_function(X + 2.5 * d.vector.double()) - probe.decision_function(X)
    assert torch.allclose(moved, torch.full((5,), 2.5, dtype=torch.float64), atol=1e-4)
    res = sweep(tiny_llama, d, None, [0, 3.0], PROMPTS, REF, target=Target.probe_score(probe, "blocks.1.mlp.post"),
                ablation=False, **SMALL)  # fmt: skip
    assert res.conditions[0]["effect"] == 0.0  # scale 0 writes the unsteered continuation
    assert res.conditions[1]["effect"] is not None


def test_attn_z_site_takes_a_flat_direction(tiny_llama):
    site = "blocks.1.attn.z"
    width = tiny_llama.cfg.n_heads * tiny_llama.cfg.d_head
    res = sweep(tiny_llama, Direction(_vector(8, width), site), None, [1.0], PROMPTS, REF, **SMALL)
    assert res.conditions[0]["cost_kl"] > 0 and res.conditions[1]["ablation"]


def test_run_folder_and_report(tiny_llama, tmp_path):
    sae = _planted_sae()
    kw = dict(target=Target.next_tokens(["mat"]), saes=[sae], **SMALL)
    results = [
        sweep(tiny_llama, Direction(_vector(9), SITE, name="random"), None, [0, 1, 2], PROMPTS, REF, **kw),
        sweep(tiny_llama, Direction.from_sae(sae, 2), None, [0, 1, 2], PROMPTS, REF, **kw),
    ]
    out = save_run(results, tmp_path / "run", "tiny")
    assert read_run(out)["kind"] == "steering"
    saved = json.loads((out / "steering.json").read_text())
    assert saved["results"][1]["direction"]["feature"] == 2
    html = (out / "report.html").read_text()
    assert "Dose-response" in html and "random" in html and "SAE feature 2" in html
    assert "http" not in html.split("<body>")[1]
    from fastapi.testclient import TestClient

    from lmscope.explorer.app import create_app

    with TestClient(create_app(tmp_path)) as c:  # the explorer lists the run and shows its page
        assert [r["kind"] for r in c.get("/api/runs").json()] == ["steering"]
        page, report = c.get("/runs/run"), c.get("/runs/run/report.html")
        assert page.status_code == 200 and "/runs/run/report.html" in page.text
        assert "Dose-response" in report.text


# ---- bad input ----------------------------------------------------------------------------------------------
def test_wrong_width_is_a_clear_error(tiny_llama):
    with pytest.raises(ValueError, match="width 7.*blocks.1.resid_post holds 32"):
        sweep(tiny_llama, Direction(torch.ones(7), SITE), None, [1.0], PROMPTS, REF, **SMALL)


def test_scales_that_are_or_make_nan_are_clear_errors(tiny_llama):
    with pytest.raises(ValueError, match="finite"):
        sweep(tiny_llama, Direction(_vector(), SITE), None, [0, float("nan")], PROMPTS, REF, **SMALL)
    with pytest.raises(ValueError, match="scale 3e\\+38.*NaN or infinite.*smaller scales"):
        sweep(tiny_llama, Direction(_vector(), SITE), None, [0, 3e38], PROMPTS, REF, **SMALL)


def test_reference_shorter_than_the_context_is_a_clear_error(tiny_llama):
    with pytest.raises(ValueError, match="'b' is 3 tokens.*ctx_len=12"):
        sweep(
            tiny_llama,
            Direction(_vector(), SITE),
            None,
            [1.0],
            PROMPTS,
            {"a": REF["a"], "b": "the cat"},
            **SMALL,
        )


def test_other_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="zero or not finite"):
        Direction(torch.zeros(32), SITE)
    with pytest.raises(ValueError, match="not a neuron"):
        Direction.from_neuron(tiny_llama, "blocks.1.attn.z[2]")
    with pytest.raises(ValueError, match="no reference text"):
        sweep(tiny_llama, Direction(_vector(), SITE), None, [1.0], PROMPTS, REF, target=Target.corpus_label("c"),
              **SMALL)  # fmt: skip
    with pytest.raises(ValueError, match="is 2 tokens"):
        Target.next_tokens(["the cat"]).token_ids(tiny_llama, 2)


def test_cli_steer(tmp_path, capsys):
    from lmscope.cli import main
    from lmscope.features.sae import save_sae

    folder = tmp_path / "tiny-llama"
    tiny_hf("llama").save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = [
        {"text": REF[label] + f" {i}", "label": label, "source": "t", "id": f"{label}/{i}", "split": split}
        for label in REF
        for i, split in enumerate(["train", "train", "test"])
    ]
    (corpus / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    save_sae(_planted_sae(), tmp_path / "sae")
    args = ["steer", "--model", str(folder), "--corpus", str(corpus), "--direction", f"mean_diff:a@{SITE}",
            "--direction", "neuron:blocks.1.mlp.post[3]", "--direction", "probe:a@blocks.1.mlp.post",
            "--direction", "neuron:a@1", "--direction", f"sae:{tmp_path / 'sae'}:a", "--sae", str(tmp_path / "sae"),
            "--scales", "0,0.5", "--target-label", "a", "--ctx-len", "12", "--n-contexts", "2",
            "--max-new-tokens", "2", "--n-generate", "1", "--prompt", "the cat", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    saved = json.loads((tmp_path / "r" / "steering.json").read_text())
    kinds = [r["direction"]["kind"] for r in saved["results"]]
    assert kinds == ["mean_difference", "neuron", "probe", "neuron", "sae"]
    assert (
        saved["results"][4]["interference"][0]["target_feature"]
        == saved["results"][4]["direction"]["feature"]
    )
    bad = args[:-1] + [str(tmp_path / "s")]
    bad[bad.index("neuron:blocks.1.mlp.post[3]")] = "neuron:blocks.1.mlp.post[999]"
    assert main(bad) == 2 and "999" in capsys.readouterr().err

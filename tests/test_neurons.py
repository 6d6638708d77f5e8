"""Neuron analysis on tiny models, each number checked against a hand computation on the HF modules."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.data.corpus import Document
from lmscope.data.tokens import tokenize_corpus
from lmscope.features.neurons import (
    ablation_effects,
    project_to_vocab,
    superposition_fingerprint,
    unit_activations,
    unit_cards,
    vocab_projection,
)
from tests.conftest import tiny_hf, word_tokenizer

TEXTS = [
    ("the cat sat on the mat and then the dog ran home", "a"),
    ("a dog ran to the cat then the cat sat", "b"),
    ("the cat sat on a mat the dog sat on the cat and then a dog sat", "a"),
    ("then the dog ran and the cat ran home to a mat", "b"),
]


@pytest.fixture
def dataset(tiny_llama):
    docs = [Document(t, label, "", str(i)) for i, (t, label) in enumerate(TEXTS)]
    return tokenize_corpus(tiny_llama, docs, ctx_len=10)


def _vocab_effect_by_hand(hf, arch: str, layer: int, neuron: int) -> torch.Tensor:
    if arch == "llama":
        w_out = hf.model.layers[layer].mlp.down_proj.weight[:, neuron]  # Linear [d_model, d_mlp]
        return (w_out * hf.model.norm.weight) @ hf.lm_head.weight.T
    w_out = hf.transformer.h[layer].mlp.c_proj.weight[neuron]  # GPT-2 Conv1D [d_mlp, d_model]
    w_out = w_out - w_out.mean()  # LayerNorm centres its input
    return (w_out * hf.transformer.ln_f.weight) @ hf.lm_head.weight.T


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_vocab_projection_by_hand(arch):
    hf = tiny_hf(arch, seed=2)
    with torch.no_grad():  # random final-norm weights, so a missing factor would show
        (hf.model.norm if arch == "llama" else hf.transformer.ln_f).weight.uniform_(0.5, 2.0)
    model = ls.Model(hf, word_tokenizer())
    got = vocab_projection(model, 1, [5, 9], k=4)
    for neuron, result in zip([5, 9], got):
        effect = _vocab_effect_by_hand(hf, arch, 1, neuron).detach()
        top, bottom = effect.topk(4), (-effect).topk(4)
        assert [v for _, v in result["promoted"]] == pytest.approx(top.values.tolist(), rel=1e-5)
        assert [v for _, v in result["suppressed"]] == pytest.approx((-bottom.values).tolist(), rel=1e-5)
        names = [model.tokenizer.decode([i]) for i in top.indices.tolist()]
        assert [t for t, _ in result["promoted"]] == names
    one = project_to_vocab(model, model.weights.W_out(1)[5], k=4)  # a single direction gives one dict
    assert [v for _, v in one["promoted"]] == pytest.approx([v for _, v in got[0]["promoted"]], rel=1e-5)
    with pytest.raises(ValueError, match="d_model"):
        project_to_vocab(model, torch.zeros(7))
    with pytest.raises(IndexError, match="d_mlp"):
        vocab_projection(model, 0, [10_000])


def _losses_by_hand(hf, ds, zero: dict[int, list[int]] | None):
    """Per-label mean next-token loss, zeroing neurons with plain torch hooks on the down projections."""
    handles = []
    for layer, neurons in (zero or {}).items():

        def pre_hook(module, args, neurons=neurons):
            x = args[0].clone()
            x[..., neurons] = 0.0
            return (x,)

        handles.append(hf.model.layers[layer].mlp.down_proj.register_forward_pre_hook(pre_hook))
    try:
        with torch.no_grad():
            logits = hf(input_ids=ds.tokens, attention_mask=ds.attention_mask).logits
    finally:
        for h in handles:
            h.remove()
    totals: dict[str, list[float]] = {}
    for r in range(len(ds)):
        for p in range(ds.ctx_len - 1):
            doc = int(ds.doc_ids[r, p])
            if doc < 0 or int(ds.doc_ids[r, p + 1]) != doc:
                continue
            loss = -torch.log_softmax(logits[r, p], -1)[ds.tokens[r, p + 1]].item()
            totals.setdefault(ds.label_names[int(ds.labels[r, p + 1])], []).append(loss)
    return {label: sum(v) / len(v) for label, v in totals.items()}, {k: len(v) for k, v in totals.items()}


def test_ablation_matches_hand_zeroing(tiny_llama, dataset):
    units = [(0, 3), (0, 11), (2, 40)]
    # Sets starting at layers 0, 1 and 2: each ablated run starts at its earliest layer from the clean run.
    sets = {"set": units, "one": [(1, 7)], "last": [(2, 5), (2, 40)]}
    got = ablation_effects(tiny_llama, dataset, sets, batch_size=2)
    clean, counts = _losses_by_hand(tiny_llama.hf, dataset, None)
    ablated, _ = _losses_by_hand(tiny_llama.hf, dataset, {0: [3, 11], 2: [40]})
    ablated_one, _ = _losses_by_hand(tiny_llama.hf, dataset, {1: [7]})
    ablated_last, _ = _losses_by_hand(tiny_llama.hf, dataset, {2: [5, 40]})
    for label in ("a", "b"):
        assert got["set"]["clean"][label] == pytest.approx(clean[label], rel=1e-5)
        assert got["set"]["loss_delta"][label] == pytest.approx(ablated[label] - clean[label], abs=1e-5)
        assert got["one"]["loss_delta"][label] == pytest.approx(ablated_one[label] - clean[label], abs=1e-5)
        assert got["last"]["loss_delta"][label] == pytest.approx(ablated_last[label] - clean[label], abs=1e-5)
        assert got["set"]["n_tokens"][label] == counts[label]
    assert abs(got["set"]["loss_delta"]["a"]) > 1e-6  # the zeroing did change something


def test_unit_activations_and_cards(tiny_llama, dataset):
    units = [(2, 5), (0, 30)]
    acts = unit_activations(tiny_llama, dataset, units, batch_size=3)
    captured = {}
    hook = tiny_llama.hf.model.layers[2].mlp.down_proj.register_forward_pre_hook(
        lambda m, args: captured.setdefault("x", args[0].detach())
    )
    try:
        with torch.no_grad():
            tiny_llama.hf(input_ids=dataset.tokens, attention_mask=dataset.attention_mask)
    finally:
        hook.remove()
    torch.testing.assert_close(acts[..., 0], captured["x"][..., 5])

    cards = unit_cards(tiny_llama, dataset, units, acts, n_top=3, context=(3, 1), vocab_k=2)
    card = cards[0]
    assert (card["id"], card["site"], card["index"], card["kind"]) == (
        "2.5",
        "blocks.2.mlp.post",
        5,
        "neuron",
    )
    real = dataset.doc_ids >= 0
    assert card["max_act"] == pytest.approx(float(acts[..., 0][real].max()))
    best = card["top_examples"][0]
    assert best["acts"][best["peak"]] == pytest.approx(card["max_act"], abs=1e-4)
    assert len(best["tokens"]) == len(best["acts"]) <= 5 and best["label"] in ("a", "b")
    lowest = card["extra"]["bottom_examples"][0]
    assert lowest["acts"][lowest["peak"]] == pytest.approx(float(acts[..., 0][real].min()), rel=1e-4)
    peaks = [ex["acts"][ex["peak"]] for ex in card["top_examples"]]
    assert peaks == sorted(peaks, reverse=True) and len(peaks) == 3
    assert sum(card["histogram"]["counts"]) == int(real.sum())
    for bucket in card["quantile_examples"]:
        lo, hi = bucket["range"]
        tol = 1e-4 * card["max_act"]  # stored activations keep 5 significant digits
        assert all(lo - tol < ex["acts"][ex["peak"]] <= hi + tol for ex in bucket["examples"])
    assert card["promoted"] == vocab_projection(tiny_llama, 2, [5], k=2)[0]["promoted"]


def test_fingerprint_by_hand(tiny_llama, dataset):
    rows = superposition_fingerprint(tiny_llama, dataset)
    mlp = tiny_llama.hf.model.layers[1].mlp
    assert rows[1]["w_in_norm_median"] == pytest.approx(
        float(mlp.up_proj.weight.detach().norm(dim=1).median())
    )
    assert rows[1]["w_gate_norm_median"] == pytest.approx(
        float(mlp.gate_proj.weight.detach().norm(dim=1).median())
    )
    assert 0.0 < rows[1]["pre_positive_share"] < 1.0
    gpt2 = tiny_hf("gpt2", seed=1)
    with torch.no_grad():
        gpt2.transformer.h[2].mlp.c_fc.bias.normal_()
    rows = superposition_fingerprint(ls.Model(gpt2, word_tokenizer()))
    c_fc = gpt2.transformer.h[2].mlp.c_fc  # Conv1D [d_model, d_mlp]
    expected = (c_fc.weight.norm(dim=0) * c_fc.bias).median().detach()
    assert rows[2]["norm_times_bias_median"] == pytest.approx(float(expected))


def _write_corpus(folder, n_docs: int = 8):
    """A corpus folder in the format of lmscope.data.corpus (docs.jsonl), of tiny-vocabulary texts."""
    import json
    import random

    rng = random.Random(0)
    words = {"a": ["cat", "sat", "mat", "on", "the"], "b": ["dog", "ran", "home", "to", "the"]}
    folder.mkdir()
    with open(folder / "docs.jsonl", "w") as f:
        for label, vocab in words.items():
            for i in range(n_docs):
                text = " ".join(rng.choice(vocab + ["and", "then", "a"]) for _ in range(20))
                split = "test" if i % 2 else "train"
                doc = {"text": text, "label": label, "source": "test", "id": f"{label}/{i}", "split": split}
                f.write(json.dumps(doc) + "\n")
    return folder


def test_probe_and_neurons_run_folders(tiny_llama, tmp_path):
    from lmscope.features.neuron_report import run_neurons
    from lmscope.features.probe_report import run_probe
    from lmscope.runs import read_json, read_run

    corpus = _write_corpus(tmp_path / "corpus")
    kw = dict(corpus=corpus, ctx_len=24, progress=False)
    probe = run_probe(tiny_llama, tmp_path / "probe", ks=(1, 2), bigram=None, n_rotations=2, **kw)
    assert read_run(tmp_path / "probe")["kind"] == "probe"
    saved = read_json(tmp_path / "probe" / "probe.json")
    assert saved["features"] == {"a": ["a"], "b": ["b"]} and saved["n_docs"] == {"train": 8, "test": 8}
    assert len(saved["sweep"]) == 2 * 3 * 2 * 2  # features x layers x bases x ks
    assert len(saved["basis"]) == 3 and probe["summary"].keys() == {"a", "b"}
    assert "Sparse probing" in (tmp_path / "probe" / "report.html").read_text()

    # The neurons run reuses the probe run's cached activations (same corpus, settings and model).
    before = (tmp_path / "probe" / "doc_means_train.safetensors").read_bytes()
    result = run_neurons(
        tiny_llama, tmp_path / "neurons", per_feature=2, ablation_docs=2, from_probe=tmp_path / "probe", **kw
    )
    assert (tmp_path / "neurons" / "doc_means_train.safetensors").read_bytes() == before
    assert read_run(tmp_path / "neurons")["kind"] == "neurons"
    units = read_json(tmp_path / "neurons" / "units.json")
    assert units["site_kind"] == "mlp.post" and 2 <= len(units["units"]) <= 4
    keys = {"id", "kind", "site", "index", "title", "density", "max_act", "mean_act", "histogram"}
    keys |= {"top_examples", "quantile_examples", "promoted", "suppressed"}
    for card in units["units"]:
        assert keys <= card.keys()
        assert card["top_examples"][0].keys() == {"tokens", "acts", "peak", "label"}
    assert result["n_docs"]["ablation"] == 4 and len(result["ablations"]) == len(units["units"])
    for card in units["units"]:  # every carded neuron is zeroed on its own
        effect = result["ablations"][card["title"].split(":")[0]]
        assert card["ablation"]["loss_delta"] == effect["loss_delta"] and effect["n_tokens"]["a"] > 0
        assert effect["feature"] in ("a", "b") and effect["in_context"] is not None
    assert "Unit cards" in (tmp_path / "neurons" / "report.html").read_text()


def test_best_neurons_match_one_sparse_probes_fitted_one_by_one():
    """Each row is what SparseProbe(1) gives for that neuron; the candidates per layer are the top neurons by
    standardised mean difference (computed here by hand, one layer at a time); rows are ranked by train F1."""
    from lmscope.features.probing import SparseProbe, binary_metrics
    from lmscope.features.sweeps import best_neurons

    gen = torch.Generator().manual_seed(3)
    X = torch.randn(160, 3, 24, generator=gen)  # [docs, layers, neurons]
    y = torch.rand(160, generator=gen) < 0.3
    X[y, 1, 4] -= 1.2  # a feature neuron, lower on positives
    X[y, 2, 9] += 0.6  # a weaker one
    X[:, 0, 2] = 0.5  # a dead (constant) neuron
    train, test, y_train, y_test = X[:120], X[120:], y[:120], y[120:]
    rows = best_neurons(train, y_train, test, y_test, layers=[3, 5, 8], n_candidates=5, top=15)
    assert len(rows) == 15 and (rows[0]["layer"], rows[0]["neuron"], rows[0]["sign"]) == (5, 4, -1)
    slot = {3: 0, 5: 1, 8: 2}
    for r in rows:
        col = [r["neuron"]]
        probe = SparseProbe(1).fit(train[:, slot[r["layer"]], col], y_train)
        assert r["train_f1"] == probe.f1_score(train[:, slot[r["layer"]], col], y_train)
        expected = binary_metrics(probe.predict(test[:, slot[r["layer"]], col]), y_test)
        assert {k: r[k] for k in expected} == expected
        Z = train[:, slot[r["layer"]]].double()
        Z = (Z - Z.mean(0)) / Z.std(0).clamp_min(1e-12)
        gap = float(Z[y_train, r["neuron"]].mean() - Z[~y_train, r["neuron"]].mean())
        assert r["mean_diff"] == pytest.approx(abs(gap), rel=1e-9) and r["sign"] == (1 if gap >= 0 else -1)
    keys = [(r["train_f1"], r["mean_diff"]) for r in rows]
    assert keys == sorted(keys, reverse=True)


def test_rank_by_ablation_orders_candidates_by_selectivity_by_hand(tiny_llama, dataset):
    """The first n candidates come out ordered by (loss increase on the feature's label b) - (on a),
    each recomputed with a plain hook zeroing the neuron; a neuron nothing reads (its output weights
    zeroed: the decoy a probe can still rank first) has selectivity 0 and drops below a neuron the model
    uses for the label; the rows after the first n keep their place."""
    from lmscope.features.neurons import rank_by_ablation

    with torch.no_grad():
        tiny_llama.hf.model.layers[0].mlp.down_proj.weight[:, 3] = 0.0  # L0 N3 writes nothing
    units = [(0, 3), (1, 7), (2, 40), (0, 11), (2, 5)]
    rows = [{"layer": layer, "neuron": neuron, "train_f1": 1.0} for layer, neuron in units]
    clean, counts = _losses_by_hand(tiny_llama.hf, dataset, None)
    hand = {}
    for layer, neuron in units[:4]:
        ablated, _ = _losses_by_hand(tiny_llama.hf, dataset, {layer: [neuron]})
        hand[(layer, neuron)] = (ablated["b"] - clean["b"]) - (ablated["a"] - clean["a"])
    assert hand[(0, 3)] == 0.0 and max(hand.values()) > 1e-4  # some used neuron beats the decoy
    got = rank_by_ablation(tiny_llama, dataset, rows, ["b"], n_candidates=4, batch_size=2)
    assert [(r["layer"], r["neuron"]) for r in got[:4]] == sorted(hand, key=hand.get, reverse=True)
    assert got[0]["selectivity"] > 0 and (got[0]["layer"], got[0]["neuron"]) != (0, 3)
    for r in got[:4]:
        assert r["selectivity"] == pytest.approx(hand[(r["layer"], r["neuron"])], abs=1e-5)
        assert r["train_f1"] == 1.0 and r["in_context"] - r["out_of_context"] == r["selectivity"]
    assert got[4] == rows[4] and "selectivity" not in got[4] and "selectivity" not in rows[0]
    with pytest.raises(ValueError, match="not in the dataset"):
        rank_by_ablation(tiny_llama, dataset, rows, ["french"])

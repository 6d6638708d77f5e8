"""Sparse probes on synthetic activations with planted features; sweeps; token-level datasets."""

from __future__ import annotations

import pytest
import torch

from lmscope.data.corpus import Document
from lmscope.data.tokens import tokenize_corpus
from lmscope.features.collect import bigram_examples, document_means, token_activations
from lmscope.features.probing import METHODS, SparseProbe, binary_metrics
from lmscope.features.sweeps import best_neurons, probe_sweep


def planted(n: int, d: int = 40, neuron: int = 17, seed: int = 0):
    """Gaussian activations; neuron `neuron` alone separates the classes (y + small noise)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen)
    y = torch.rand(n, generator=gen) < 0.3
    X[:, neuron] = 2.0 * y + 0.2 * torch.randn(n, generator=gen)
    return X, y


@pytest.mark.parametrize("method", METHODS)
def test_planted_neuron_found_at_k1(method):
    X, y = planted(240)
    probe = SparseProbe(1, method=method).fit(X[:160], y[:160])
    assert probe.neurons_.tolist() == [17]
    assert probe.f1_score(X[160:], y[160:]) == 1.0
    assert probe.coef_.nonzero().flatten().tolist() == [17]


@pytest.mark.parametrize("method", ["l1", "adaptive", "mip"])
def test_planted_support_of_three(method):
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(300, 30, generator=gen)
    y = X[:, 2] - X[:, 7] + 0.8 * X[:, 11] > 0.3
    probe = SparseProbe(3, method=method).fit(X, y)
    assert sorted(probe.neurons_.tolist()) == [2, 7, 11]
    assert probe.f1_score(X, y) > 0.95


def test_mip_at_least_as_good_as_mean_diff():
    # Two neurons separate the classes together; four distractors each have a larger mean difference.
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(200, 30, generator=gen)
    y = X[:, 3] + X[:, 5] > 0.4
    X[:, 10:14] = 2.0 * y[:, None] + torch.randn(200, 4, generator=gen)
    md = SparseProbe(2, method="mean_diff").fit(X, y)
    mip = SparseProbe(2, method="mip").fit(X, y)
    assert set(md.neurons_.tolist()) <= set(range(10, 14))  # mean difference picks distractors
    assert sorted(mip.neurons_.tolist()) == [3, 5]
    assert mip.status_ == "optimal"
    assert mip.f1_score(X, y) > md.f1_score(X, y) + 0.05
    for seed in range(3):  # and never worse on train F1, on random planted data at several k
        Xs, ys = planted(150, seed=seed)
        Xs = Xs + 0.9 * ys[:, None] * (torch.rand(Xs.shape[1]) < 0.3)  # many informative neurons
        for k in (1, 2, 4):
            a = SparseProbe(k, method="mean_diff").fit(Xs, ys).f1_score(Xs, ys)
            b = SparseProbe(k, method="mip", time_limit=1).fit(Xs, ys).f1_score(Xs, ys)
            assert b >= a - 1e-9, (seed, k, a, b)


def test_invariant_to_affine_rescaling_and_proba():
    X, y = planted(120, seed=4)
    X[:, 17] += 0.8 * torch.randn(120, generator=torch.Generator().manual_seed(9))  # not separable now
    probe = SparseProbe(4).fit(X, y)
    scaled = SparseProbe(4).fit(X * 7.0 - 3.0, y)  # coef_ is in the input's units
    assert torch.equal(probe.predict(X), scaled.predict(X * 7.0 - 3.0))
    logits = X.double() @ probe.coef_ + probe.intercept_
    torch.testing.assert_close(probe.decision_function(X), logits)
    proba = probe.predict_proba(X)
    torch.testing.assert_close(proba[:, 1], torch.sigmoid(logits))
    torch.testing.assert_close(proba.sum(1), torch.ones(120, dtype=torch.float64))


def test_binary_metrics_by_hand():
    pred = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    y = torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool)
    m = binary_metrics(pred, y)  # tp 2, fp 1, fn 2
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert binary_metrics(torch.zeros(3, dtype=torch.bool), torch.ones(3))["f1"] == 0.0


def test_score_is_accuracy_and_f1_score_is_f1():
    """scikit-learn's convention: score = accuracy. On an imbalanced, noisy feature the two differ."""
    gen = torch.Generator().manual_seed(5)
    y = torch.rand(200, generator=gen) < 0.15
    X = torch.randn(200, 10, generator=gen)
    X[:, 4] += 1.2 * y
    probe = SparseProbe(1).fit(X, y)
    pred = (X.double() @ probe.coef_ + probe.intercept_) > 0  # by hand from the fitted weights
    accuracy = float((pred == y).double().mean())
    tp, fp, fn = float((pred & y).sum()), float((pred & ~y).sum()), float((~pred & y).sum())
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert abs(accuracy - f1) > 0.05  # the two metrics really differ here
    assert probe.score(X, y) == pytest.approx(accuracy)
    assert probe.f1_score(X, y) == pytest.approx(f1)
    assert probe.metrics(X, y)["f1"] == pytest.approx(f1)


def test_bad_inputs_say_what_is_wrong():
    X, y = planted(50)
    with pytest.raises(ValueError, match="binary"):
        SparseProbe(1).fit(X, torch.arange(50) % 3)
    with pytest.raises(ValueError, match="one class"):
        SparseProbe(1).fit(X, torch.zeros(50))
    with pytest.raises(ValueError, match="method"):
        SparseProbe(1, method="lasso")
    with pytest.raises(ValueError, match="more than the 40"):
        SparseProbe(41).fit(X, y)
    with pytest.raises(RuntimeError, match="not fitted"):
        SparseProbe(1).predict(X)


def test_sweep_native_beats_rotated_and_best_neurons():
    X, y = planted(300, d=32, neuron=5)
    stack = torch.stack([torch.randn(300, 32, generator=torch.Generator().manual_seed(1)), X], 1)  # 2 layers
    rows = probe_sweep(stack[:200], {"f": y[:200]}, stack[200:], {"f": y[200:]}, layers=[4, 9], ks=(1, 2))
    assert len(rows) == 2 * 2 * 2  # layers x bases x ks
    native = {(r["layer"], r["k"]): r for r in rows if r["basis"] == "native"}
    rotated = {(r["layer"], r["k"]): r for r in rows if r["basis"] == "rotated"}
    assert native[(9, 1)]["f1"] == 1.0 and native[(9, 1)]["neurons"] == [5]
    assert rotated[(9, 1)]["f1"] < 0.8  # a random basis smears the planted neuron over all directions
    assert native[(4, 1)]["f1"] < 0.7  # a layer without the feature
    best = best_neurons(stack[:200], y[:200], stack[200:], y[200:], layers=[4, 9], top=3)
    assert (best[0]["layer"], best[0]["neuron"], best[0]["f1"], best[0]["sign"]) == (9, 5, 1.0, 1)


def _docs():
    texts = [
        ("the cat sat on the mat and then the dog ran home", "a"),
        ("a dog ran to the cat then the cat sat", "b"),
        ("the cat sat on a mat the dog sat on the cat", "a"),
    ]
    return [Document(t, label, "", str(i)) for i, (t, label) in enumerate(texts)]


def test_bigram_examples_by_hand(tiny_llama):
    ds = tokenize_corpus(tiny_llama, _docs(), ctx_len=8)
    rows, pos, y = bigram_examples(ds, tiny_llama.tokenizer, "the", "cat")
    cat, the = 3, 2  # ids in the test tokenizer
    expected = set()
    for r in range(len(ds)):
        for p in range(1, ds.ctx_len):
            if ds.tokens[r, p] == cat and ds.doc_ids[r, p] >= 0:
                after_the = ds.tokens[r, p - 1] == the and ds.doc_ids[r, p - 1] == ds.doc_ids[r, p]
                expected.add((r, p, bool(after_the)))
    assert set(zip(rows.tolist(), pos.tolist(), y.tolist())) == expected
    assert y.any() and (~y).any()


def test_document_means_and_token_activations_by_hand(tiny_llama):
    ds = tokenize_corpus(tiny_llama, _docs(), ctx_len=8)
    doc = document_means(tiny_llama, ds, "blocks.*.mlp.post", batch_size=4, sample_tokens=5)
    _, cache = tiny_llama.run_with_cache(
        ds.tokens, sites="blocks.*.mlp.post", attention_mask=ds.attention_mask
    )
    acts = cache.stack("mlp.post")  # [layer, n_ctx, ctx_len, d_mlp]
    assert doc.means.shape == (3, 3, 48) and doc.labels.tolist() == [0, 1, 0]
    for i in range(3):
        mask = ds.doc_ids == i
        torch.testing.assert_close(doc.means[i], acts[:, mask].mean(1), rtol=1e-5, atol=1e-6)
    assert doc.sample["blocks.2.mlp.post"].shape == (5, 48)
    rows, pos = torch.tensor([0, 2, 2]), torch.tensor([3, 1, 6])
    got = token_activations(tiny_llama, ds, rows, pos, "blocks.*.mlp.post", batch_size=1)
    torch.testing.assert_close(got, acts[:, rows, pos].transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_cli_int_lists():
    from lmscope.cli import _int_list

    assert _int_list("0-3,8") == [0, 1, 2, 3, 8] and _int_list(None) is None
    with pytest.raises(ValueError, match="ranges"):
        _int_list("a-b")

"""Feature evaluations with known answers: planted features get their labels, a planted absorption case is
found (and a plain miss is not counted as one), a planted language latent wins sparse probing at k = 1."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.data.tokens import TokenDataset
from lmscope.features.basis import random_rotation
from lmscope.features.sae import SAE, JumpReLUConfig
from lmscope.features.sae.evals import (
    absorption,
    auto_labels,
    document_bases,
    first_letter_vocab,
    sparse_probing,
    word_activations,
)
from lmscope.features.sae.features import FeatureActivations


def jumprelu_sae(W_enc: torch.Tensor, W_dec: torch.Tensor, threshold, site: str = "") -> SAE:
    """A JumpReLU SAE with the given weights (zero biases): f = pre * (pre > threshold), pre = x @ W_enc."""
    d_in, d_sae = W_enc.shape
    sae = SAE(JumpReLUConfig(d_in=d_in, d_sae=d_sae, site=site))
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.copy_(torch.as_tensor(threshold, dtype=torch.float32).expand(d_sae))
    return sae


# ---- automatic labels ------------------------------------------------------------------------------------
V = 12  # token ids 0..11; contexts start with BOS (id 0, skipped)


def planted_sample(n_ctx: int, seed: int) -> tuple[FeatureActivations, SAE]:
    """Contexts of random tokens; even contexts are "alpha", odd "beta". Activations: one-hot token, plus a
    dimension for the bigram (3, 4), one for "beta" documents and one that is on at random. The SAE reads
    each dimension as one feature (threshold 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    ctx_len = 16
    tokens = torch.randint(1, V, (n_ctx, ctx_len), generator=gen)
    tokens[:, 0] = 0
    tokens[:, 5], tokens[:, 6] = 3, 4  # the bigram occurs in every context (and elsewhere by chance)
    labels = (torch.arange(n_ctx) % 2)[:, None].expand(n_ctx, ctx_len).flatten()
    segment = torch.arange(n_ctx)[:, None].expand(n_ctx, ctx_len).flatten()
    tokens = tokens.flatten()
    skip = tokens == 0
    prev = torch.cat([torch.tensor([-1]), tokens[:-1]])
    x = torch.zeros(len(tokens), V + 3)
    x[torch.arange(len(tokens)), tokens] = 1
    x[:, V] = ((prev == 3) & (tokens == 4)).float()
    x[:, V + 1] = (labels == 1).float()
    x[:, V + 2] = (torch.rand(len(tokens), generator=gen) < 0.2).float()
    sae = jumprelu_sae(torch.eye(V + 3), torch.eye(V + 3), 0.5)
    acts = FeatureActivations.build(
        sae, lambda a, b: x[a:b], tokens, labels, segment, skip, ["alpha", "beta"], progress=False
    )
    return acts, sae


def test_auto_labels_recover_planted_rules():
    train, _ = planted_sample(60, seed=0)
    test, _ = planted_sample(60, seed=1)
    record = auto_labels(train, test, token_text=lambda t: f"w{t}", min_count=5)
    by_feature = {r["feature"]: r for r in record["features"]}
    assert by_feature[5]["label"] == "'w5'" and by_feature[5]["kind"] == "tokens"
    assert by_feature[V]["label"] == "'w3' 'w4'" and by_feature[V]["kind"] == "bigram"
    assert by_feature[V + 1]["label"] == "[beta]"
    for feature in (5, V, V + 1):
        assert by_feature[feature]["f1"] == pytest.approx(1.0), by_feature[feature]
    # the random feature's best rule does not generalise: it is the worst, F1 near its base rate
    assert record["worst"][0]["feature"] == V + 2 and by_feature[V + 2]["f1"] < 0.45
    assert 0 not in by_feature  # BOS only: never fires on an encoded row
    # the counts behind one score, by hand
    fires = test.tokens == 5
    assert by_feature[5]["n_test"] == int((fires & ~test.skip).sum())


def test_auto_labels_set_of_tokens_and_previous_token():
    """A feature that fires on tokens 7 or 8 gets the two-token label; one that fires after token 9 gets
    'after'."""
    acts, _ = planted_sample(60, seed=2)
    x = torch.zeros(len(acts.tokens), 2)
    prev = torch.cat([torch.tensor([-1]), acts.tokens[:-1]])
    x[:, 0] = ((acts.tokens == 7) | (acts.tokens == 8)).float()
    x[:, 1] = ((prev == 9) & (acts.segment == torch.cat([torch.tensor([-1]), acts.segment[:-1]]))).float()
    sae = jumprelu_sae(torch.eye(2), torch.eye(2), 0.5)
    both = FeatureActivations.build(
        sae,
        lambda a, b: x[a:b],
        acts.tokens,
        acts.labels,
        acts.segment,
        acts.skip,
        acts.label_names,
        progress=False,
    )
    record = auto_labels(both, both, token_text=lambda t: f"w{t}")
    first, second = record["features"]
    assert first["label"] in ("'w7' | 'w8'", "'w8' | 'w7'") and first["f1"] == pytest.approx(1.0)
    assert second["label"] == "after 'w9'" and second["f1"] == pytest.approx(1.0)


# ---- absorption ------------------------------------------------------------------------------------------
def test_absorption_detects_a_planted_case():
    """Letters s, t, c, d, eight words each, plus ' short' and ' sat'. A word's activation is its letter's
    direction plus half its own. The main 's' latent is blind to ' short' and ' sat'; a specific latent
    for ' short' carries the 's' direction in its decoder (absorption), one for ' sat' does not (a plain
    miss)."""
    letters_used = "stcd"
    words = [f"{c}{i}" for c in letters_used for i in range(8)] + ["short", "sat"]
    letters = [w[0] for w in words]
    n, d = len(words), len(letters_used) + len(words)
    acts = torch.zeros(n, d)
    for i, w in enumerate(words):
        acts[i, letters_used.index(w[0])] = 1
        acts[i, len(letters_used) + i] = 0.5
    short, sat = len(letters_used) + n - 2, len(letters_used) + n - 1  # their own dimensions
    W_enc = torch.zeros(d, 6)
    W_dec = torch.zeros(6, d)
    for j in range(4):
        W_enc[j, j] = 1
        W_dec[j, j] = 1
    W_enc[short, 0] = W_enc[sat, 0] = -2  # the 's' latent does not fire on ' short' and ' sat'
    W_enc[short, 4] = 4
    W_dec[4, 0], W_dec[4, short] = 1, 0.5  # the ' short' latent writes the 's' direction
    W_enc[sat, 5] = 4
    W_dec[5, sat] = 1
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    sae = jumprelu_sae(W_enc, W_dec, 0.5)
    test = torch.tensor([("short" in w or "sat" in w or int(w[1:]) % 2 == 0) for w in words])
    record = absorption(sae, acts, letters, words, test=test)
    by_letter = {r["letter"]: r for r in record["letters"]}
    s = by_letter["s"]
    assert s["main_latents"] == [0] and s["n_test"] == 6
    assert s["false_negative_rate"] == pytest.approx(2 / 6)  # ' short' and ' sat' are missed
    assert s["absorption_rate"] == pytest.approx(1 / 6)  # only ' short' is absorbed
    assert s["examples"] == [{"word": "short", "latent": 4, "cos": s["examples"][0]["cos"]}]
    assert s["examples"][0]["cos"] > 0.1  # the probe also leans on the training words' own directions
    for c in "tcd":
        assert by_letter[c]["absorption_rate"] == 0 and by_letter[c]["main_latents"] == ["tcd".index(c) + 1]
    assert record["absorption_rate"] == pytest.approx(1 / (6 + 4 + 4 + 4))


def test_first_letter_vocab_and_word_activations(tiny_llama):
    words = first_letter_vocab(tiny_llama.tokenizer)
    tok = tiny_llama.tokenizer
    assert words.words == [tok.decode([t]) for t in words.token_ids]
    assert "the" in words.words and "a" not in words.words and "<pad>" not in words.words
    assert all(w[0] == c for w, c in zip(words.words, words.letters))
    site = "blocks.1.resid_post"
    acts = word_activations(tiny_llama, site, words.token_ids[:5], prefix="the cat", batch_size=2)
    ids = torch.tensor([[1, *tok("the cat", add_special_tokens=False)["input_ids"], words.token_ids[3]]])
    _, cache = tiny_llama.run_with_cache(ids, sites=[site])
    torch.testing.assert_close(acts[3], cache[site][0, -1])


# ---- sparse probing --------------------------------------------------------------------------------------
def language_dataset(n_ctx: int, seed: int) -> TokenDataset:
    """One document per context; "alpha" documents draw from tokens 2..7 and always hold token 2, "beta"
    ones from 8..13."""
    gen = torch.Generator().manual_seed(seed)
    ctx_len = 10
    alpha = (torch.arange(n_ctx) % 2 == 0)[:, None]
    tokens = torch.where(
        alpha,
        torch.randint(2, 8, (n_ctx, ctx_len), generator=gen),
        torch.randint(8, 14, (n_ctx, ctx_len), generator=gen),
    )
    tokens[alpha.squeeze(1), 4] = 2
    tokens[:, 0] = 1
    labels = (~alpha).long().expand(n_ctx, ctx_len).clone()
    doc_ids = torch.arange(n_ctx)[:, None].expand(n_ctx, ctx_len).clone()
    positions = torch.arange(ctx_len).expand(n_ctx, ctx_len).clone()
    labels[:, 0], doc_ids[:, 0], positions[:, 0] = -1, -1, -1
    return TokenDataset(tokens, labels, doc_ids, positions, torch.ones_like(tokens), ["alpha", "beta"])


def test_sparse_probing_finds_a_planted_language_latent(tiny_llama):
    site = "blocks.0.resid_pre"  # = the token embedding: latent 0 fires exactly on token 2
    W_E = tiny_llama.hf.get_input_embeddings().weight.detach()
    d = W_E.shape[1]
    e2 = W_E[2] / W_E[2].norm().square()
    others = (W_E[3:14] @ e2).max()
    assert others < 0.95
    W_enc = torch.randn(d, 16, generator=torch.Generator().manual_seed(0)) * 0.1
    W_enc[:, 0] = e2
    W_dec = torch.randn(16, d, generator=torch.Generator().manual_seed(1))
    threshold = torch.full((16,), 0.5)
    threshold[0] = float(1 + others) / 2
    sae = jumprelu_sae(W_enc, W_dec / W_dec.norm(dim=1, keepdim=True), threshold, site=site)
    train, test = language_dataset(16, seed=0), language_dataset(16, seed=1)
    record = sparse_probing(sae, tiny_llama, train, test, ks=(1, 2))
    assert record["labels"] == ["alpha", "beta"] and record["neuron_site"] == "blocks.0.mlp.post"
    sae_k1 = [r for r in record["rows"] if r["basis"] == "sae" and r["k"] == 1]
    assert [r["features"] for r in sae_k1] == [[0], [0]]
    assert all(r["f1"] == 1.0 and r["accuracy"] == 1.0 for r in sae_k1)
    assert {(s["basis"], s["k"]) for s in record["summary"]} == {
        (b, k) for b in ("sae", "neurons", "input", "rotated") for k in (1, 2)
    }
    # the document means, by hand
    bases, labels, _ = document_bases(sae, tiny_llama, test)
    _, cache = tiny_llama.run_with_cache(test.tokens, sites=[site, "blocks.0.mlp.post"])
    torch.testing.assert_close(bases["input"], cache[site][:, 1:].mean(1))
    torch.testing.assert_close(bases["neurons"], cache["blocks.0.mlp.post"][:, 1:].mean(1))
    torch.testing.assert_close(bases["sae"], sae.encode(cache[site][:, 1:]).detach().mean(1))
    torch.testing.assert_close(bases["rotated"], bases["input"] @ random_rotation(d, 0))
    assert labels.tolist() == [0, 1] * 8


def test_eval_run_writes_each_evaluation_and_its_report_section(tiny_llama, tmp_path):
    from lmscope.features.sae import save_sae
    from lmscope.features.sae.run import EVAL_FILES, eval_run

    site = "blocks.1.resid_post"
    gen = torch.Generator().manual_seed(0)
    W_dec = torch.randn(24, 32, generator=gen)
    sae = jumprelu_sae(torch.randn(32, 24, generator=gen), W_dec / W_dec.norm(dim=1, keepdim=True), 0.5, site)
    save_sae(sae, tmp_path)
    train, test = language_dataset(16, seed=0), language_dataset(16, seed=1)
    eval_run(
        tmp_path,
        tiny_llama,
        test,
        progress=False,
        probing=True,
        labels=True,
        absorption=True,
        train_dataset=train,
        n_label_tokens=80,
        n_words=20,
    )
    records = {name: json.loads((tmp_path / path).read_text()) for name, path in EVAL_FILES.items()}
    assert records["probing"]["n_train_docs"] == 16 and records["probing"]["labels"] == ["alpha", "beta"]
    assert records["labels"]["n_test_tokens"] == 8 * 9  # 80 tokens = 8 contexts of 10, BOS left out
    assert records["absorption"]["n_words"] == len(first_letter_vocab(tiny_llama.tokenizer).words)
    html = (tmp_path / "report.html").read_text()
    for title in ("Sparse probing (SAEBench)", "Automatic labels", "Feature absorption (first letter)"):
        assert title in html
    assert json.loads((tmp_path / "metrics.json").read_text())["n_tokens"] > 0

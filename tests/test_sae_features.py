"""SAE features on a tiny model: activations and stats, cards, logit effects, steering and ablation,
cross-layer comparison, and the run folder written by train / eval / features."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.data.tokens import TokenDataset
from lmscope.features.sae import SAE, StandardConfig, TopKConfig, load_sae
from lmscope.features.sae.compare import CorrelationSums, attribute, compare_saes
from lmscope.features.sae.features import (
    FeatureActivations,
    ablate_feature,
    feature_cards,
    logit_effects,
    steer,
)
from lmscope.features.sae.run import eval_run, parse_count, train_run

SITE = "blocks.1.resid_post"


def dataset(n_ctx: int = 12, ctx_len: int = 8, seed: int = 0) -> TokenDataset:
    """Packed contexts of a tiny vocabulary: BOS (1) first, then words, two labels."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, 14, (n_ctx, ctx_len), generator=gen)
    tokens[:, 0] = 1
    labels = (torch.arange(n_ctx) % 2)[:, None].expand(n_ctx, ctx_len).clone()
    doc_ids = torch.arange(n_ctx)[:, None].expand(n_ctx, ctx_len).clone()
    positions = torch.arange(ctx_len).expand(n_ctx, ctx_len).clone()
    labels[:, 0], doc_ids[:, 0], positions[:, 0] = -1, -1, -1
    mask = torch.ones_like(tokens)
    mask[-1, -3:] = 0  # one padded context
    return TokenDataset(tokens, labels, doc_ids, positions, mask, ["alpha", "beta"])


def random_sae(d: int, site: str = SITE, arch: str = "standard", seed: int = 0) -> SAE:
    cfg = (
        StandardConfig(d_in=d, d_sae=24, site=site)
        if arch == "standard"
        else TopKConfig(d_in=d, d_sae=24, k=4, site=site)
    )
    sae = SAE(cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.normal_(0, 1.0)
        sae.b_enc.normal_(0, 0.5)
    return sae


def site_acts(model, ds: TokenDataset, site: str = SITE) -> torch.Tensor:
    """Activations of the real tokens, in dataset order [n_real, d] (plain run_with_cache)."""
    _, cache = model.run_with_cache(ds.tokens, sites=[site], attention_mask=ds.attention_mask)
    return cache[site][ds.attention_mask.bool()]


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_feature_activations_and_stats_match_dense_encoding(tiny_llama, arch):
    ds, sae = dataset(), random_sae(32, arch=arch)
    acts = FeatureActivations.from_model(sae, tiny_llama, ds, progress=False)
    x = site_acts(tiny_llama, ds)
    not_bos = ds.doc_ids[ds.attention_mask.bool()] >= 0
    f = sae.encode(x).detach() * not_bos[:, None]
    stats = acts.stats()
    assert acts.n_tokens == int(not_bos.sum()) == stats["n_tokens"]
    torch.testing.assert_close(
        torch.tensor(stats["density"]), (f > 0).float().sum(0) / not_bos.sum(), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(torch.tensor(stats["max_act"]), f.max(0).values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        torch.tensor(stats["mean_act"]), f.sum(0) / not_bos.sum(), rtol=1e-4, atol=1e-6
    )
    rows, values = acts.of(5)
    torch.testing.assert_close(values, f[rows, 5])


def test_cards_follow_the_unit_card_format(tiny_llama):
    ds, sae = dataset(), random_sae(32)
    acts = FeatureActivations.from_model(sae, tiny_llama, ds, progress=False)
    cards = feature_cards(sae, tiny_llama, acts, ablate=[3], progress=False)
    assert len(cards) == 24
    card = cards[3]
    assert {
        "id",
        "kind",
        "site",
        "index",
        "title",
        "density",
        "max_act",
        "mean_act",
        "histogram",
        "top_examples",
        "quantile_examples",
        "promoted",
        "suppressed",
        "nearest",
    } <= set(card)
    assert card["id"] == "1.3" and card["kind"] == "feature" and card["site"] == SITE
    assert sum(card["histogram"]["counts"]) == round(card["density"] * acts.n_tokens)
    x = site_acts(tiny_llama, ds)
    f = sae.encode(x).detach()[:, 3]
    for example in card["top_examples"] + [e for q in card["quantile_examples"] for e in q["examples"]]:
        assert set(example) == {"tokens", "acts", "peak", "label"} and example["label"] in ("alpha", "beta")
        assert len(example["tokens"]) == len(example["acts"]) and example["acts"][example["peak"]] > 0
    # the best example peaks at the feature's maximum, and its acts are the feature's acts on those tokens
    best = card["top_examples"][0]
    assert best["acts"][best["peak"]] == pytest.approx(card["max_act"], rel=1e-3)
    assert best["acts"][best["peak"]] == pytest.approx(float(f.max()), rel=1e-3)
    assert "all" in card["ablation"]["loss_delta"]
    assert len(card["promoted"]) == 10 and card["promoted"][0][1] >= card["promoted"][-1][1]


def test_logit_effects_through_the_unembedding(tiny_llama):
    sae = random_sae(32)
    promoted, suppressed = logit_effects(sae, tiny_llama, top=3)
    w = tiny_llama.weights
    effect = ((sae.W_dec[7] * w.ln_final_w) @ w.W_U).detach()  # hand formula for a residual-stream feature
    assert [v for _, v in promoted[7]] == pytest.approx(effect.topk(3).values.tolist(), rel=1e-3)
    assert [v for _, v in suppressed[7]] == pytest.approx((-effect).topk(3).values.neg().tolist(), rel=1e-3)
    mlp = random_sae(tiny_llama.cfg.d_mlp, site="blocks.1.mlp.post")
    mlp_effect = (((mlp.W_dec[2] @ w.W_out(1)) * w.ln_final_w) @ w.W_U).detach()
    assert logit_effects(mlp, tiny_llama, top=1)[0][2][0][1] == pytest.approx(
        float(mlp_effect.max()), rel=1e-3
    )


def test_steer_and_ablate_change_the_site_as_defined(tiny_llama, tokens):
    sae = random_sae(32)
    clean = tiny_llama.run_with_cache(tokens, sites=[SITE])[1][SITE]
    steered = tiny_llama.run_with_cache(tokens, sites=[SITE], interventions=[steer(sae, 4, scale=3.0)])[1][
        SITE
    ]
    torch.testing.assert_close(
        steered - clean, (3.0 * sae.W_dec[4].detach()).expand_as(clean), rtol=1e-4, atol=1e-5
    )
    ablated = tiny_llama.run_with_cache(tokens, sites=[SITE], interventions=[ablate_feature(sae, 4)])[1][SITE]
    f4 = sae.encode(clean)[..., 4:5].detach()
    torch.testing.assert_close(ablated, clean - f4 * sae.W_dec[4].detach(), rtol=1e-4, atol=1e-5)
    with pytest.raises(IndexError, match="out of range"):
        steer(sae, 99)


def test_correlation_sums_match_numpy():
    a, b = torch.rand(50, 4), torch.rand(50, 3)
    a[:, 2] = 0  # never varies: correlation 0, not NaN
    sums = CorrelationSums(4, 3)
    sums.update(a[:20], b[:20])
    sums.update(a[20:], b[20:])
    import numpy as np

    with np.errstate(invalid="ignore"):  # the constant column
        full = np.corrcoef(np.concatenate([a.numpy(), b.numpy()], 1).T)[:4, 4:]
    full[2] = 0
    torch.testing.assert_close(
        sums.correlation(), torch.tensor(full, dtype=torch.float32), rtol=1e-4, atol=1e-5
    )


def test_compare_an_sae_with_itself_and_attribution_by_hand(tiny_llama):
    ds, sae = dataset(), random_sae(32)
    result = compare_saes(sae, sae, tiny_llama, ds, attribute_features=2, progress=False)
    alive = result.density_b > 0
    assert torch.allclose(result.act_corr[alive], torch.ones(int(alive.sum())), atol=1e-4)
    assert torch.equal(result.decoder_match, torch.arange(24)) and result.summary()["persist_fraction"] == 1.0
    # same site: d pre_j / d x = W_enc[:, j], so attribution_i = sum_t f_i(t) fires_j(t) W_dec[i] . W_enc[:, j]
    j = next(iter(result.attribution))
    x = site_acts(tiny_llama, ds[:8])
    mask = ds[:8].attention_mask.bool().clone()
    mask[:, 0] = False
    f = sae.encode(
        tiny_llama.run_with_cache(ds.tokens[:8], sites=[SITE], attention_mask=ds.attention_mask[:8])[1][SITE]
    ).detach()
    fires = (f[..., j] > 0) & mask
    hand = (f * fires[..., None]).sum((0, 1)) * (sae.W_dec @ sae.W_enc[:, j]).detach()
    got = dict(attribute(tiny_llama, sae, sae, ds.tokens[:8], ds.attention_mask[:8], [j], top=24)[j])
    for i, score in got.items():
        assert score == pytest.approx(float(hand[i]), rel=1e-3, abs=1e-4)
    assert len(x) > 0 and "Summary" in result.to_html()


def test_run_folder_train_eval_features(tiny_llama, tmp_path):
    ds = dataset(n_ctx=40)
    with pytest.warns(UserWarning, match="more than one epoch"):  # 2k tokens from a tiny dataset
        out = train_run(
            tmp_path / "run",
            tiny_llama,
            SITE,
            "topk",
            expansion=2,
            tokens="2k",
            dataset=ds,
            k=4,
            batch_size=64,
            lr=1e-3,
            progress=False,
        )
    for name in (
        "cfg.json",
        "sae_weights.safetensors",
        "training_log.json",
        "feature_stats.json",
        "report.html",
        "run.json",
    ):
        assert (out / name).is_file(), name
    page = json.loads((out / "features" / "00000.json").read_text())
    assert page["start"] == 0 and len(page["cards"]) == 64
    assert json.loads((out / "run.json").read_text())["kind"] == "sae"
    result = eval_run(out, tiny_llama, dataset(n_ctx=6, seed=1), progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["l0"] <= 4 and metrics["explained_variance"] == pytest.approx(
        result.metrics["explained_variance"]
    )
    assert "loss recovered" in (out / "report.html").read_text()
    assert load_sae(out).cfg.site == SITE


def test_parse_count():
    assert [parse_count(s) for s in ("2M", "500k", "4096", "1.5m")] == [2_000_000, 500_000, 4096, 1_500_000]
    with pytest.raises(ValueError, match="count"):
        parse_count("lots")


def test_cli_needs_a_run_folder(capsys):
    from lmscope.cli import main

    assert main(["sae", "eval"]) == 2
    assert "needs a run folder" in capsys.readouterr().err

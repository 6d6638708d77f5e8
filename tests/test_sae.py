"""Sparse autoencoders: planted-direction recovery, exact gradients of the sparse backward, explained
variance, resume, save/load, splicing."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import lmscope as ls
from lmscope.features.sae import (
    SAE,
    BatchTopKConfig,
    IteratorSource,
    JumpReLUConfig,
    MatryoshkaConfig,
    RowSource,
    StandardConfig,
    TopKConfig,
    Trainer,
    geometric_median,
    load_sae,
    sae_config,
    save_sae,
    train_sae,
)
from lmscope.features.sae.evaluate import ReconstructionStats, evaluate_sae, explained_variance, splice
from lmscope.features.sae.model import rectangle
from lmscope.features.sae.train import Objective


def planted(n: int, d: int = 16, n_true: int = 40, p: float = 0.05, seed: int = 0):
    """x = sum of a few of n_true unit directions (more directions than dimensions) + an offset.
    -> (x [n, d], directions [n_true, d])"""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_true, d, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    active = torch.rand(n, n_true, generator=gen) < p
    magnitudes = torch.rand(n, n_true, generator=gen) + 0.5
    return (active * magnitudes) @ directions + 0.5 * torch.randn(d, generator=gen), directions


def best_match(sae: SAE, directions: torch.Tensor) -> torch.Tensor:
    """For each planted direction, the highest cosine with any decoder row -> [n_true]."""
    rows = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    return (directions @ rows.T).max(1).values


ARCHS = {
    "standard": dict(l1_coefficient=1.0),
    "topk": dict(k=3),
    "batchtopk": dict(k=3),
    "jumprelu": dict(l0_coefficient=0.1),
    # the smallest prefix must hold most of the 40 planted directions, or its latents mix them (by design)
    "matryoshka_batchtopk": dict(k=3, matryoshka_widths=(32, 64), d_sae=128),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_recovers_planted_directions(arch):
    x, directions = planted(120_000)
    fields = {"d_sae": 64, **ARCHS[arch]}
    cfg = sae_config(
        arch,
        d_in=16,
        batch_size=512,
        total_tokens=120_000,
        lr=3e-3,
        dead_tokens=20_000,
        **fields,
    )
    sae = train_sae(cfg, RowSource(x, 512), progress=False)
    cos = best_match(sae, directions)
    assert (cos > 0.9).float().mean() >= 0.9, cos.sort().values[:8]
    with torch.no_grad():
        assert explained_variance(x[:5000], sae(x[:5000])) > 0.7  # L1 shrinks: lower for standard


def dense_loss(sae: SAE, cfg, x: torch.Tensor, l1: float, dead: torch.Tensor) -> torch.Tensor:
    """The training loss written the plain way: dense codes, plain autograd."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if isinstance(cfg, BatchTopKConfig):
        flat = F.relu(pre).flatten()
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(cfg.k * len(x)).indices] = True
        f = F.relu(pre) * keep.view_as(pre)
    elif isinstance(cfg, TopKConfig):
        top = F.relu(pre).topk(cfg.k, dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, top.values)
    else:
        f = F.relu(pre)
    x_hat = f @ sae.W_dec + sae.b_dec
    loss = (x_hat - x).pow(2).sum(-1).mean()
    if isinstance(cfg, MatryoshkaConfig):
        for m in cfg.matryoshka_widths[:-1]:
            loss = loss + (f[:, :m] @ sae.W_dec[:m] + sae.b_dec - x).pow(2).sum(-1).mean()
    if isinstance(cfg, StandardConfig):
        return loss + l1 * f.sum(-1).mean()
    if dead.any():
        k_aux = min(cfg.aux_k, int(dead.sum()))
        masked = pre.masked_fill(~dead, float("-inf"))
        top = masked.topk(k_aux, dim=1)
        aux = torch.zeros_like(pre).scatter(1, top.indices, F.relu(top.values))
        residual = (x - x_hat).detach()
        scale = min(int(dead.sum()) / cfg.aux_k, 1.0)
        loss = loss + cfg.aux_coefficient * scale * (aux @ sae.W_dec - residual).pow(2).sum(-1).mean()
    return loss


@pytest.mark.parametrize("arch", ["standard", "topk", "batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_backward_matches_dense_autograd(arch, with_dead):
    torch.manual_seed(0)
    extra = {"standard": {}, "matryoshka_batchtopk": {"k": 3, "matryoshka_widths": (10, 25)}}
    cfg = sae_config(
        arch, d_in=12, d_sae=40, batch_size=64, total_tokens=64, **extra.get(arch, {"k": 3, "aux_k": 6})
    )
    sae = SAE(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    x = torch.randn(64, 12)
    dead = torch.zeros(40, dtype=torch.bool)
    if with_dead:
        dead[::3] = True
    loss, _ = Objective(sae, cfg)(x, dead, l1=0.7)
    grads = torch.autograd.grad(loss, list(sae.parameters()))
    expected_loss = dense_loss(sae, cfg, x, 0.7, dead)
    expected = torch.autograd.grad(expected_loss, list(sae.parameters()))
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    for name, got, want in zip(["W_enc", "b_enc", "W_dec", "b_dec"], grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


def test_explained_variance_of_the_mean_is_zero():
    x = torch.randn(500, 7) * torch.arange(1, 8) + 3
    assert explained_variance(x, x.mean(0).expand_as(x)) == 0.0
    assert explained_variance(x, x) == 1.0
    # the streaming version agrees with the hand formula, batch by batch
    stats = ReconstructionStats(d_sae=3)
    x_hat = x + 0.5 * torch.randn_like(x)
    for i in range(0, 500, 64):
        stats.update(x[i : i + 64], x_hat[i : i + 64], torch.zeros(len(x[i : i + 64]), 3))
    hand = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert stats.metrics()["explained_variance"] == pytest.approx(float(hand), abs=1e-6)
    mean_stats = ReconstructionStats(d_sae=3)
    mean_stats.update(x, x.mean(0).expand_as(x), torch.zeros(500, 3))
    assert mean_stats.metrics()["explained_variance"] == pytest.approx(0.0, abs=1e-9)


def test_geometric_median_resists_outliers():
    points = torch.cat(
        [torch.randn(200, 3) * 0.1 + torch.tensor([1.0, 2.0, 3.0]), torch.full((20, 3), 100.0)]
    )
    assert torch.allclose(geometric_median(points), torch.tensor([1.0, 2.0, 3.0]), atol=0.1)
    assert points.mean(0)[0] > 9  # the mean is dragged away


@pytest.mark.parametrize("arch", ["standard", "batchtopk"])
def test_resumed_run_matches_uninterrupted(arch, tmp_path):
    x, _ = planted(40 * 256)
    fields = dict(
        d_in=16, d_sae=48, batch_size=256, total_tokens=40 * 256, dead_tokens=2048, checkpoint_every=7
    )
    extra = {"resample_at": (0.3, 0.6), "resample_window": 0.1} if arch == "standard" else {"k": 3}
    cfg = sae_config(arch, **fields, **extra)
    whole = train_sae(cfg, RowSource(x, 256), tmp_path / "whole", progress=False)
    train_sae(cfg, RowSource(x, 256), tmp_path / "split", progress=False, stop_after=17)
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["state"]["step"] == 17
    resumed = train_sae(cfg, RowSource(x, 256), tmp_path / "split", progress=False)
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    with pytest.raises(ValueError, match="different config"):
        Trainer(sae_config(arch, **{**fields, "lr": 1e-2}, **extra), RowSource(x, 256), tmp_path / "split")


def test_iterator_source_resumes_by_replaying(tmp_path):
    x, _ = planted(12 * 128)
    cfg = TopKConfig(d_in=16, d_sae=32, k=3, batch_size=128, total_tokens=12 * 128, calibration_tokens=256)
    batches = x.view(12, 128, 16)
    whole = train_sae(cfg, IteratorSource(iter(batches)), progress=False)
    train_sae(cfg, IteratorSource(iter(batches)), tmp_path, progress=False, stop_after=5)
    resumed = train_sae(cfg, IteratorSource(iter(batches)), tmp_path, progress=False)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())
    with pytest.raises(ValueError, match="ran out"):
        train_sae(cfg, IteratorSource(iter(batches[:5])), progress=False)


def test_same_seed_same_run_and_norm_scale_folded():
    x, _ = planted(20 * 256)
    x = 7.0 * x  # far from E||x||^2 = d_in: the norm scale matters
    cfg = TopKConfig(d_in=16, d_sae=32, k=3, batch_size=256, total_tokens=20 * 256)
    one = Trainer(cfg, RowSource(x, 256))
    one.run(progress=False)
    two = train_sae(cfg, RowSource(x, 256), progress=False)
    scale = one.cfg.norm_scale
    assert scale == pytest.approx((16 / x.pow(2).sum(1).mean()).sqrt().item(), rel=0.05)
    with torch.no_grad():  # the saved SAE on raw x = the trained one on scaled x, scaled back
        torch.testing.assert_close(two(x[:100]), one.sae(x[:100] * scale) / scale, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(two.encode(x[:100]), one.sae.encode(x[:100] * scale), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_with_saelens_names(arch, tmp_path):
    cfg = sae_config(
        arch,
        d_in=10,
        d_sae=24,
        site="blocks.1.mlp.post",
        model="tiny",
        batch_size=8,
        total_tokens=8,
        **({"k": 4} if "topk" in arch else {}),
    )
    sae = SAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
        sae.threshold.uniform_(0, 1)
    save_sae(sae, tmp_path)
    record = json.loads((tmp_path / "cfg.json").read_text())
    assert record["hook_name"] == "blocks.1.mlp.hook_post" and record["site"] == "blocks.1.mlp.post"
    jumprelu = arch in ("batchtopk", "matryoshka_batchtopk", "jumprelu")
    assert record["architecture"] == ("jumprelu" if jumprelu else arch)
    assert (record["d_in"], record["d_sae"], record["normalize_activations"]) == (10, 24, "none")
    from safetensors.torch import load_file

    shapes = {k: tuple(v.shape) for k, v in load_file(tmp_path / "sae_weights.safetensors").items()}
    expected = {"W_enc": (10, 24), "b_enc": (24,), "W_dec": (24, 10), "b_dec": (10,)}
    assert shapes == {**expected, **({"threshold": (24,)} if jumprelu else {})}
    loaded = load_sae(tmp_path)
    assert type(loaded.cfg) is type(cfg) and loaded.cfg == cfg
    x = torch.randn(5, 10)
    assert loaded.architecture == sae.architecture and loaded.cfg.site == "blocks.1.mlp.post"
    assert torch.equal(loaded.encode(x), sae.encode(x)) and torch.equal(loaded(x), sae(x))


def test_load_saelens_folder_without_b_dec_on_input(tmp_path):
    from safetensors.torch import save_file

    W_enc, b_enc, W_dec, b_dec = torch.randn(6, 9), torch.randn(9), torch.randn(9, 6), torch.randn(6)
    save_file(
        {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, tmp_path / "sae_weights.safetensors"
    )
    cfg = {
        "architecture": "standard",
        "d_in": 6,
        "d_sae": 9,
        "hook_name": "blocks.2.hook_resid_post",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    x = torch.randn(4, 6)
    assert sae.cfg.site == "blocks.2.resid_post"
    torch.testing.assert_close(sae.encode(x), F.relu(x @ W_enc + b_enc))
    (tmp_path / "cfg.json").write_text(
        json.dumps({**cfg, "normalize_activations": "expected_average_only_in"})
    )
    with pytest.raises(ValueError, match="fold"):
        load_sae(tmp_path)


def test_bad_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        sae_config("gated", d_in=4, d_sae=8)
    with pytest.raises(ValueError, match="no field"):
        sae_config("topk", d_in=4, d_sae=8, l1_coefficient=1.0)
    with pytest.raises(ValueError, match="k must lie"):
        TopKConfig(d_in=4, d_sae=8, k=9)
    with pytest.raises(ValueError, match="reads"):
        SAE(TopKConfig(d_in=4, d_sae=8, k=2)).encode(torch.randn(3, 5))
    with pytest.raises(FileNotFoundError, match="not an SAE folder"):
        load_sae(tmp_path)


def identity_sae(d: int, site: str) -> SAE:
    """ReLU(x) - ReLU(-x) = x: a standard SAE with features +e_i and -e_i reconstructs exactly."""
    sae = SAE(StandardConfig(d_in=d, d_sae=2 * d, site=site))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_identity_splice_leaves_the_loss_unchanged(tiny_llama, tokens):
    sae = identity_sae(tiny_llama.cfg.d_mlp, "blocks.1.mlp.post")
    result = evaluate_sae(sae, tiny_llama, tokens, progress=False)
    m = result.metrics
    assert m["ce_sae"] == pytest.approx(m["ce_clean"], abs=1e-5) and m["kl"] == pytest.approx(0, abs=1e-6)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-6) and m["ce_zero"] != pytest.approx(
        m["ce_clean"]
    )
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-3) and "loss recovered" in result.to_html()
    # hand check of the clean CE over the same predictions (position 0's BOS is a real token here)
    logits = tiny_llama(tokens)
    hand = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    assert m["ce_clean"] == pytest.approx(hand.item(), rel=1e-5)
    # splicing a bad SAE changes the logits; the first position is left alone
    noisy = SAE(StandardConfig(d_in=tiny_llama.cfg.d_mlp, d_sae=8, site="blocks.1.mlp.post"))
    spliced = tiny_llama.run(tokens, interventions=[splice(noisy)])
    assert torch.allclose(spliced[:, 0], logits[:, 0], atol=1e-5) and not torch.allclose(
        spliced[:, 1:], logits[:, 1:]
    )
    assert isinstance(splice(noisy), ls.Hook)


def test_massive_activations_are_left_out_of_training():
    x, _ = planted(8 * 256)
    x[::50] *= 100  # 2% of tokens with massive norms (like attention sinks)
    trainer = Trainer(
        TopKConfig(d_in=16, d_sae=32, k=3, batch_size=256, total_tokens=8 * 256), RowSource(x, 256)
    )
    assert trainer.cfg.max_norm == pytest.approx(10 * float(x.norm(dim=1).median()), rel=1e-5)
    batch = x[:256]
    record = trainer.train_step(batch)
    used = int((batch.norm(dim=1) <= trainer.cfg.max_norm).sum())
    assert used == 256 - 6 and record["l0"] == 3.0  # k per token, counted over the tokens used
    assert trainer.cfg.norm_scale == pytest.approx(
        (16 / x[x.norm(dim=1) <= trainer.cfg.max_norm].pow(2).sum(1).mean()).sqrt().item(), rel=1e-4
    )


def test_splice_passes_first_position_and_outliers_through(tiny_llama, tokens):
    site = "blocks.1.resid_post"
    sae = SAE(StandardConfig(d_in=32, d_sae=8, site=site))
    clean = tiny_llama.run_with_cache(tokens, sites=[site])[1][site]
    norms = clean.norm(dim=-1)
    sae.cfg.max_norm = float(norms[:, 1:].median())
    spliced = tiny_llama.run_with_cache(tokens, sites=[site], interventions=[splice(sae)])[1][site]
    passed = norms > sae.cfg.max_norm
    passed[:, 0] = True
    assert 0 < int(passed[:, 1:].sum()) < passed[:, 1:].numel()
    torch.testing.assert_close(spliced[passed], clean[passed])
    torch.testing.assert_close(spliced[~passed], sae(clean[~passed]).detach())


@pytest.mark.parametrize("mode", ["step", "quadratic"])
@pytest.mark.parametrize("to_input", [False, True])
def test_jumprelu_forward_and_straight_through_gradients_by_hand(mode, to_input):
    """The forward is pre * H(pre - threshold); the gradients, by the paper's formulas written out here, are
    what both training paths (sparse pairs and dense) give."""
    torch.manual_seed(0)
    n, eps, coef, target = 48, 0.4, 0.3, 5.0
    cfg = JumpReLUConfig(
        d_in=6,
        d_sae=20,
        batch_size=n,
        total_tokens=n,
        l0_coefficient=coef,
        jumprelu_bandwidth=eps,
        jumprelu_sparsity_loss_mode=mode,
        target_l0=target,
        jumprelu_ste_to_input=to_input,
    )
    sae = SAE(cfg)
    sae.make_threshold_trainable(0.0)
    with torch.no_grad():
        sae.threshold.uniform_(0.0, 0.8)
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    x = torch.randn(n, 6)
    W_enc, b_enc, W_dec, b_dec, theta = (
        t.detach() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold)
    )
    pre = (x - b_dec) @ W_enc + b_enc
    H = (pre > theta).float()
    f = pre * H
    assert torch.equal(sae.encode(x).detach(), f)
    x_hat = f @ W_dec + b_dec
    K = rectangle((pre - theta) / eps)
    assert 0 < int(K.sum()) < K.numel() and bool(((K > 0) & (H == 0)).any())  # the window matters
    l0 = H.sum(1)
    if mode == "step":
        loss = (x_hat - x).pow(2).sum(1).mean() + coef * l0.mean()
        dpen_dl0 = torch.full((n,), coef / n)
    else:
        loss = (x_hat - x).pow(2).sum(1).mean() + coef * (2 / target * (l0 - target).pow(2)).mean()
        dpen_dl0 = coef * 4 / target * (l0 - target) / n
    r = 2 * (x_hat - x) / n  # d loss / d x_hat [n, d_in]
    dL_df = r @ W_dec.T  # [n, d_sae]
    grad_theta = (-(theta / eps) * K * dL_df - dpen_dl0[:, None] * K / eps).sum(0)
    grad_pre = H * dL_df + (dpen_dl0[:, None] * K / eps if to_input else 0)
    hand = {
        "threshold": grad_theta,
        "W_enc": (x - b_dec).T @ grad_pre,
        "b_enc": grad_pre.sum(0),
        "W_dec": f.T @ r,
        "b_dec": r.sum(0) - grad_pre.sum(0) @ W_enc.T,
    }
    for dense in (False, True):
        got_loss, stats = Objective(sae, cfg)(x, torch.zeros(20, dtype=torch.bool), l1=coef, dense=dense)
        assert got_loss.item() == pytest.approx(loss.item(), rel=1e-5)
        assert torch.equal(stats["fired"], H.sum(0))
        names = list(hand)
        grads = torch.autograd.grad(got_loss, [getattr(sae, k) for k in names])
        for name, got in zip(names, grads):
            torch.testing.assert_close(got, hand[name], rtol=1e-4, atol=1e-6, msg=f"{name} dense={dense}")


def test_jumprelu_quadratic_mode_moves_l0_toward_its_target():
    x, _ = planted(60_000)
    l0 = {}
    for target in (2.0, 12.0):
        cfg = sae_config(
            "jumprelu",
            d_in=16,
            d_sae=64,
            batch_size=512,
            total_tokens=60_000,
            lr=3e-3,
            jumprelu_sparsity_loss_mode="quadratic",
            target_l0=target,
        )
        sae = train_sae(cfg, RowSource(x, 512), progress=False)
        with torch.no_grad():
            l0[target] = float((sae.encode(x[:4000]) > 0).sum(1).float().mean())
    assert l0[2.0] < 8 < l0[12.0], l0


def test_matryoshka_prefix_reconstructs_better_than_batchtopk_prefix():
    """The nested loss makes the first features a dictionary of their own: the first 16 features of a
    Matryoshka SAE reconstruct far better than the first 16 of a BatchTopK SAE trained the same way."""
    x, _ = planted(60_000)
    common = dict(d_in=16, d_sae=64, k=3, batch_size=512, total_tokens=60_000, lr=3e-3, dead_tokens=20_000)
    ev = {}
    for arch, extra in (("batchtopk", {}), ("matryoshka", {"matryoshka_widths": (16,)})):
        sae = train_sae(sae_config(arch, **common, **extra), RowSource(x, 512), progress=False)
        with torch.no_grad():
            f = sae.encode(x[:4000])
            ev[arch] = explained_variance(x[:4000], f[:, :16] @ sae.W_dec[:16] + sae.b_dec)
    assert sae.cfg.matryoshka_widths == (16, 64) and sae.architecture == "jumprelu"
    assert ev["matryoshka"] > ev["batchtopk"] + 0.1, ev

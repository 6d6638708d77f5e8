"""Evaluation: reconstruction (MSE, explained variance, L0), feature density, and the model's loss with the
SAE's reconstruction spliced in.

    result = evaluate_sae(sae, model, dataset)           # SAEEval: .metrics, .density, .to_html()
    stats = reconstruction_metrics(sae, batches)         # activations only: mse, explained_variance, l0, ...

Explained variance is 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all tokens (the variance about the
mean: predicting the mean scores exactly 0). Loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), with
the site zero-ablated as the baseline; KL is KL(clean || spliced) per token. The first position of every
context (BOS in lmscope's token datasets) is left alone by the splice and the ablation alike: SAEs are
trained without BOS, whose activation is an outlier; so are tokens whose activation norm exceeds the SAE's
max_norm (massive activations, left out of training). The metrics report how many there were, and the loss
recovered when they too are spliced and ablated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...model import Hook
from ...model.sites import split_site
from .model import SAE

ULTRALOW = 1e-5  # density below this (but above 0) counts as ultralow


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2 over the rows of x [n, d]."""
    mean = x.mean(0)  # in x's own dtype, so that x_hat = x.mean(0) gives exactly 0
    x, x_hat, mean = x.double(), x_hat.double(), mean.double()
    residual = (x - x_hat).pow(2).sum()
    total = (x - mean).pow(2).sum()
    return float(1 - residual / total)


class ReconstructionStats:
    """Streaming sums for MSE, explained variance, L0 and per-feature firing counts (float64)."""

    def __init__(self, d_sae: int):
        self.n = 0
        self.sum_x: Tensor | None = None
        self.sum_sq = 0.0
        self.sse = 0.0
        self.l0_sum = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        self.sum_act = torch.zeros(d_sae, dtype=torch.float64)
        self.max_act = torch.zeros(d_sae, dtype=torch.float64)

    def update(self, x: Tensor, x_hat: Tensor, f: Tensor) -> None:
        """x, x_hat [n, d_in]; f [n, d_sae] the feature activations."""
        x, x_hat, f = x.double(), x_hat.double(), f.double()
        self.n += len(x)
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.sum_sq += float(x.pow(2).sum())
        self.sse += float((x - x_hat).pow(2).sum())
        active = f > 0
        self.l0_sum += float(active.sum())
        self.fired += active.sum(0)
        self.sum_act += f.sum(0)
        self.max_act = torch.maximum(self.max_act, f.max(0).values)

    def metrics(self, ultralow: float = ULTRALOW) -> dict:
        if self.n == 0:
            raise ValueError("no tokens were evaluated")
        total = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.n  # sum ||x - mean||^2
        density = self.density
        return {
            "n_tokens": self.n,
            "mse": self.sse / self.n / len(self.sum_x),  # per element
            "explained_variance": 1 - self.sse / total,
            "l0": self.l0_sum / self.n,
            "dead_fraction": float((density == 0).double().mean()),
            "ultralow_fraction": float(((density > 0) & (density < ultralow)).double().mean()),
            "ultralow_threshold": ultralow,
            "dense_fraction": float((density > 0.01).double().mean()),  # > 1% of tokens: lambda too low
        }

    @property
    def density(self) -> Tensor:
        return (self.fired / max(self.n, 1)).float()


@torch.no_grad()
def reconstruction_metrics(
    sae: SAE, batches: Iterable[Tensor], max_tokens: int | None = None
) -> ReconstructionStats:
    """Stream activations [batch, d_in] through the SAE; returns the filled ReconstructionStats."""
    stats = ReconstructionStats(sae.d_sae)
    for x in batches:
        x = x.reshape(-1, sae.d_in).float()
        f = sae.encode(x)
        stats.update(x, sae.decode(f), f)
        if max_tokens is not None and stats.n >= max_tokens:
            break
    return stats


def _flat(act: Tensor, d_in: int) -> Tensor:
    """[batch, pos, ...] -> [batch, pos, d_in] (heads and d_head flattened for attn.z)."""
    flat = act.reshape(*act.shape[:2], -1)
    if flat.shape[-1] != d_in:
        raise ValueError(f"the site gives {tuple(act.shape)} activations; this SAE reads {d_in}-wide rows")
    return flat


def left_alone(act: Tensor, skip_first: bool = True, max_norm: float | None = None) -> Tensor:
    """Positions [batch, pos] that splicing and ablation leave as they are: the first (BOS) when
    skip_first, and those whose activation norm exceeds max_norm (massive activations). act: [batch, pos, ...]"""
    keep = torch.zeros(act.shape[:2], dtype=torch.bool, device=act.device)
    if skip_first:
        keep[:, 0] = True
    if max_norm is not None:
        keep |= act.reshape(*act.shape[:2], -1).float().norm(dim=-1) > max_norm
    return keep


def splice(sae: SAE, site: str | None = None, skip_first: bool = True, pass_outliers: bool = True) -> Hook:
    """An intervention replacing the site's activation by the SAE's reconstruction, except at the first
    position (BOS) when skip_first and, when pass_outliers, at tokens above the SAE's max_norm (both are
    left out of training). Use with model.intervene(...) or model.run(...)."""
    max_norm = sae.cfg.max_norm if pass_outliers else None

    def fn(act: Tensor, _site: str) -> Tensor:
        rec = sae(_flat(act, sae.d_in)).reshape(act.shape).to(act.dtype)
        keep = left_alone(act, skip_first, max_norm).view(*act.shape[:2], *[1] * (act.dim() - 2))
        return torch.where(keep, act, rec)

    return Hook(site or sae.cfg.site, fn=fn)


def zero_ablate(site: str, skip_first: bool = True, max_norm: float | None = None) -> Hook:
    """Zero the site's activation, except where `left_alone` says: the loss-recovered baseline."""

    def fn(act: Tensor, _site: str) -> Tensor:
        keep = left_alone(act, skip_first, max_norm).view(*act.shape[:2], *[1] * (act.dim() - 2))
        return torch.where(keep, act, torch.zeros_like(act))

    return Hook(site, fn=fn)


def _next_token_losses(logits: Tensor, tokens: Tensor, valid: Tensor) -> Tensor:
    """Cross-entropy of each valid next-token prediction -> [n_valid]."""
    logp = logits[:, :-1].float().log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)[valid]


@dataclass
class SAEEval:
    """Numbers first: metrics (a flat dict) and density [d_sae]; then pictures (to_html)."""

    metrics: dict
    density: Tensor
    site: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"site": self.site, **self.metrics, "density": self.density.tolist()}

    def density_histogram(self):
        from ...report import histogram

        alive = self.density[self.density > 0]
        values = alive.log10() if len(alive) else torch.zeros(1)
        return histogram(
            values,
            bins=40,
            title="Feature density (log10 fraction of tokens; dead ones left out)",
            xlabel="log10 density",
            ylabel="features",
        )

    def to_html(self) -> str:
        from ...report import page, table

        sections = [("Metrics", table(self.table_rows(), ["metric", "value"], float_format="{:.4g}"))]
        if bool((self.density > 0).any()):
            sections.append(("Feature density", self.density_histogram()))
        return page(f"SAE evaluation: {self.site}", sections)

    def table_rows(self) -> list[list]:
        labels = {
            "explained_variance": "explained variance",
            "mse": "MSE (per element)",
            "l0": "L0 (features per token)",
            "dead_fraction": f"dead fraction (never fired on these {self.metrics.get('n_tokens', '?')} tokens)",
            "ultralow_fraction": f"ultralow fraction (density < {self.metrics.get('ultralow_threshold', ULTRALOW):g})",
            "dense_fraction": "dense fraction (density > 1%)",
            "ce_clean": "CE clean",
            "ce_sae": "CE with SAE spliced in",
            "ce_zero": "CE with the site zero-ablated",
            "loss_recovered": "loss recovered",
            "kl": "KL(clean || SAE) per token",
            "n_tokens": "tokens (reconstruction)",
            "outlier_fraction": "tokens above max_norm (passed through, not reconstructed)",
            "loss_recovered_with_outliers": "loss recovered when those are spliced / ablated too",
            "n_predictions": "next-token predictions (CE)",
        }
        return [[label, self.metrics[key]] for key, label in labels.items() if key in self.metrics]


@torch.no_grad()
def evaluate_sae(
    sae: SAE,
    model,
    dataset,
    n_contexts: int | None = 64,
    batch_size: int = 8,
    ultralow: float = ULTRALOW,
    progress: bool = True,
) -> SAEEval:
    """Run `model` on contexts of `dataset` (a TokenDataset, or token ids [n_ctx, ctx_len]) three ways:
    clean, with the SAE spliced in at sae.cfg.site, and with the site zero-ablated. Returns reconstruction
    metrics over the real tokens (BOS left out) and CE / loss recovered / KL over next-token predictions."""
    site = sae.cfg.site
    if not site:
        raise ValueError("this SAE has no site in its config; set sae.cfg.site to where it reads")
    [site] = model.resolve_sites([site])
    tokens = dataset if isinstance(dataset, Tensor) else dataset.tokens
    mask = torch.ones_like(tokens) if isinstance(dataset, Tensor) else dataset.attention_mask
    if n_contexts is not None:
        tokens, mask = tokens[:n_contexts], mask[:n_contexts]
    layer, _ = split_site(site)
    resume_from = f"blocks.{layer}.resid_pre" if layer is not None else None
    stats = ReconstructionStats(sae.d_sae)
    ce: dict[str, list[Tensor]] = {"clean": [], "sae": [], "zero": [], "sae_all": [], "zero_all": []}
    kl, outliers = [], 0
    for i in tqdm(range(0, len(tokens), batch_size), desc="SAE eval", disable=not progress):
        ids, m = tokens[i : i + batch_size], mask[i : i + batch_size]
        m_arg = None if bool(m.all()) else m
        sites = [site] + ([resume_from] if resume_from else [])
        clean_logits, cache = model.run_with_cache(ids, sites=sites, attention_mask=m_arg)
        act = _flat(cache[site], sae.d_in)
        passed = left_alone(act, True, sae.cfg.max_norm) & m.bool()
        used = ~left_alone(act, True, sae.cfg.max_norm) & m.bool()
        outliers += int(passed[:, 1:].sum())
        x = act[used].float()
        f = sae.encode(x)
        stats.update(x, sae.decode(f), f)
        # the runs with an intervention skip the blocks before the site's layer: same result, less work
        start = (layer, cache[resume_from]) if resume_from else None
        runs = {"sae": splice(sae, site), "zero": zero_ablate(site, max_norm=sae.cfg.max_norm)}
        if bool(passed[:, 1:].any()):  # also splice / ablate the outliers, for the record
            runs.update(sae_all=splice(sae, site, pass_outliers=False), zero_all=zero_ablate(site))
        logits = {"clean": clean_logits}
        for name, hook in runs.items():
            logits[name] = model.run_with_cache(
                ids, sites=[], attention_mask=m_arg, start_from=start, interventions=[hook]
            )[0]
        logits.setdefault("sae_all", logits["sae"])
        logits.setdefault("zero_all", logits["zero"])
        valid = (m[:, :-1] * m[:, 1:]).bool()
        for name, values in logits.items():
            ce[name].append(_next_token_losses(values, ids, valid))
        logp_clean = clean_logits[:, :-1].float().log_softmax(-1)[valid]
        logp_sae = logits["sae"][:, :-1].float().log_softmax(-1)[valid]
        kl.append((logp_clean.exp() * (logp_clean - logp_sae)).sum(-1))
    metrics = stats.metrics(ultralow)
    mean = {name: float(torch.cat(values).mean()) for name, values in ce.items()}
    metrics.update(
        ce_clean=mean["clean"],
        ce_sae=mean["sae"],
        ce_zero=mean["zero"],
        loss_recovered=(mean["zero"] - mean["sae"]) / (mean["zero"] - mean["clean"]),
        kl=float(torch.cat(kl).mean()),
        n_predictions=sum(len(v) for v in ce["clean"]),
        outlier_fraction=outliers / max(outliers + stats.n, 1),
        loss_recovered_with_outliers=(mean["zero_all"] - mean["sae_all"])
        / (mean["zero_all"] - mean["clean"]),
    )
    return SAEEval(metrics, stats.density, site=site)

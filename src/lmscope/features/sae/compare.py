"""Across layers: which features of an earlier-layer SAE (A) persist, split or disappear in a later one (B).

    result = compare_saes(sae_a, sae_b, model, dataset)    # LayerComparison: numbers, then .to_html()

For every B feature: its best match in A by decoder cosine (when both read the same space, e.g. two
residual-stream sites) and by activation correlation over the same tokens; and for a few B features, the
attribution of their pre-activation to A's features: f_i^A(x) * (W_dec^A[i] . d pre_j^B / d x_A), summed
over the tokens where B's feature fires (gradient times input along A's decomposition).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...model import Hook
from .evaluate import _flat
from .model import SAE

PERSIST = 0.7  # best activation correlation above this: the feature persists
NEW = 0.3  # below this: nothing in A resembles it


def decoder_best_match(sae_a: SAE, sae_b: SAE) -> tuple[Tensor, Tensor]:
    """(cosine [d_sae_b], index into A [d_sae_b]) of each B decoder row's nearest A decoder row."""
    if sae_a.d_in != sae_b.d_in:
        raise ValueError(
            f"decoder cosines need SAEs of one space; these read {sae_a.d_in} and {sae_b.d_in} dims"
        )
    a = sae_a.W_dec.detach() / sae_a.W_dec.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = sae_b.W_dec.detach() / sae_b.W_dec.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = [(b[i : i + 1024] @ a.T).max(1) for i in range(0, len(b), 1024)]
    return torch.cat([m.values for m in best]), torch.cat([m.indices for m in best])


class CorrelationSums:
    """Streaming Pearson correlation between every pair of columns of f_a [n, m_a] and f_b [n, m_b]."""

    def __init__(self, m_a: int, m_b: int):
        self.n = 0
        self.sum_a, self.sq_a = torch.zeros(m_a, dtype=torch.float64), torch.zeros(m_a, dtype=torch.float64)
        self.sum_b, self.sq_b = torch.zeros(m_b, dtype=torch.float64), torch.zeros(m_b, dtype=torch.float64)
        self.cross = torch.zeros(m_a, m_b, dtype=torch.float64)

    def update(self, f_a: Tensor, f_b: Tensor) -> None:
        f_a, f_b = f_a.double(), f_b.double()
        self.n += len(f_a)
        self.sum_a += f_a.sum(0)
        self.sq_a += f_a.pow(2).sum(0)
        self.sum_b += f_b.sum(0)
        self.sq_b += f_b.pow(2).sum(0)
        self.cross += f_a.T @ f_b

    def correlation(self) -> Tensor:
        """[m_a, m_b]; 0 where a feature never varies (e.g. never fires)."""
        n = self.n
        cov = n * self.cross - self.sum_a[:, None] * self.sum_b[None, :]
        var_a, var_b = n * self.sq_a - self.sum_a**2, n * self.sq_b - self.sum_b**2
        denom = (var_a.clamp_min(0)[:, None] * var_b.clamp_min(0)[None, :]).sqrt()
        return torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.zeros_like(cov)).float()


@dataclass
class LayerComparison:
    site_a: str
    site_b: str
    act_corr: Tensor  # [d_sae_b] best correlation with any A feature
    act_match: Tensor  # [d_sae_b] index of that A feature
    density_b: Tensor  # [d_sae_b] firing rate over the compared tokens
    decoder_cos: Tensor | None = None  # [d_sae_b]
    decoder_match: Tensor | None = None
    attribution: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # B feature -> top A

    def summary(self) -> dict:
        alive = self.density_b > 0
        corr = self.act_corr[alive]
        out = {
            "n_alive_b": int(alive.sum()),
            "persist_fraction": float((corr > PERSIST).float().mean()) if len(corr) else 0.0,
            "new_fraction": float((corr < NEW).float().mean()) if len(corr) else 0.0,
            "median_act_corr": float(corr.median()) if len(corr) else 0.0,
        }
        if self.decoder_cos is not None:
            out["median_decoder_cos"] = float(self.decoder_cos[alive].median()) if len(corr) else 0.0
            # splitting: several B features whose best A match is the same A feature
            matches = self.act_match[alive][corr > NEW]
            out["a_features_matched_by_several"] = (
                int((torch.bincount(matches) > 1).sum()) if len(matches) else 0
            )
        return out

    def to_dict(self) -> dict:
        return {
            "site_a": self.site_a,
            "site_b": self.site_b,
            **self.summary(),
            "act_corr": self.act_corr.tolist(),
            "act_match": self.act_match.tolist(),
            "decoder_cos": None if self.decoder_cos is None else self.decoder_cos.tolist(),
            "decoder_match": None if self.decoder_match is None else self.decoder_match.tolist(),
            "attribution": {str(k): v for k, v in self.attribution.items()},
        }

    def to_html(self) -> str:
        from ...report import Text, histogram, page, scatter, table

        alive = self.density_b > 0
        sections = [
            (
                "Summary",
                table([[k, v] for k, v in self.summary().items()], ["", "value"], float_format="{:.3f}"),
            )
        ]
        sections.append(("", Text(f"persist: best activation correlation > {PERSIST}; new: < {NEW}.")))
        if int(alive.sum()):
            sections.append(
                (
                    "Best activation correlation of B's features",
                    histogram(self.act_corr[alive], bins=30, xlabel="correlation"),
                )
            )
        if self.decoder_cos is not None and int(alive.sum()):
            sections.append(
                (
                    "Decoder cosine vs activation correlation",
                    scatter(
                        self.decoder_cos[alive],
                        self.act_corr[alive],
                        xlabel="best decoder cosine",
                        ylabel="best activation correlation",
                    ),
                )
            )
        if self.attribution:
            rows = [[j, ", ".join(f"{i} ({s:+.3g})" for i, s in top)] for j, top in self.attribution.items()]
            sections.append(
                (
                    "Attribution of B features to A features (top by |score|)",
                    table(rows, ["B feature", "A features"]),
                )
            )
        return page(f"SAE features from {self.site_a} to {self.site_b}", sections)


@torch.no_grad()
def _encode_pair(model, sae_a, sae_b, ids, mask):
    m = None if bool(mask.all()) else mask
    stop = (
        sae_b.cfg.site
        if model.sites.index(sae_b.cfg.site) > model.sites.index(sae_a.cfg.site)
        else sae_a.cfg.site
    )
    _, cache = model.run_with_cache(
        ids, sites=[sae_a.cfg.site, sae_b.cfg.site], attention_mask=m, stop_at=stop
    )
    keep = mask[:, 1:].bool()  # BOS (position 0) left out, as in training
    f_a = sae_a.encode(_flat(cache[sae_a.cfg.site], sae_a.d_in)[:, 1:][keep].float())
    f_b = sae_b.encode(_flat(cache[sae_b.cfg.site], sae_b.d_in)[:, 1:][keep].float())
    return f_a, f_b


def attribute(
    model, sae_a: SAE, sae_b: SAE, ids: Tensor, mask: Tensor, features_b: Sequence[int], top: int = 5
):
    """For each B feature, the `top` A features by |attribution| over the tokens where it fires."""
    leaf: dict[str, Tensor] = {}

    def capture(act: Tensor, _site: str) -> Tensor:
        leaf["x"] = act.detach().requires_grad_(True)
        return leaf["x"]

    m = None if bool(mask.all()) else mask
    with torch.enable_grad():
        _, cache = model.run_with_cache(
            ids,
            sites=[sae_b.cfg.site],
            attention_mask=m,
            keep_graph=True,
            stop_at=sae_b.cfg.site,
            interventions=[Hook(sae_a.cfg.site, fn=capture)],
        )
        pre_b = sae_b.pre_acts(_flat(cache[sae_b.cfg.site], sae_b.d_in))  # [batch, pos, d_sae_b]
        with torch.no_grad():
            fires = sae_b.activation(pre_b) > 0
            fires[:, 0] = False
            fires &= mask.bool()[..., None]
            f_a = sae_a.encode(_flat(leaf["x"].detach(), sae_a.d_in))  # [batch, pos, d_sae_a]
        out = {}
        for j in features_b:
            if not bool(fires[..., j].any()):
                out[int(j)] = []
                continue
            (grad,) = torch.autograd.grad((pre_b[..., j] * fires[..., j]).sum(), leaf["x"], retain_graph=True)
            along = _flat(grad, sae_a.d_in) @ sae_a.W_dec.detach().T  # [batch, pos, d_sae_a]
            scores = (f_a * along).sum((0, 1))  # [d_sae_a]
            best = scores.abs().topk(min(top, len(scores))).indices
            out[int(j)] = [(int(i), round(float(scores[i]), 5)) for i in best]
    return out


def compare_saes(
    sae_a: SAE,
    sae_b: SAE,
    model,
    dataset,
    n_contexts: int = 64,
    batch_size: int = 8,
    attribute_features: Sequence[int] | int = 8,
    progress: bool = True,
) -> LayerComparison:
    """Compare the SAE of an earlier site (A) with one of a later site (B) on contexts of `dataset` (a
    TokenDataset or token ids). attribute_features: B features to attribute (or how many of the densest)."""
    tokens = dataset if isinstance(dataset, Tensor) else dataset.tokens
    mask = torch.ones_like(tokens) if isinstance(dataset, Tensor) else dataset.attention_mask
    tokens, mask = tokens[:n_contexts], mask[:n_contexts]
    sums = CorrelationSums(sae_a.d_sae, sae_b.d_sae)
    fired_b = torch.zeros(sae_b.d_sae)
    for i in tqdm(range(0, len(tokens), batch_size), desc="comparing", disable=not progress):
        f_a, f_b = _encode_pair(model, sae_a, sae_b, tokens[i : i + batch_size], mask[i : i + batch_size])
        sums.update(f_a, f_b)
        fired_b += (f_b > 0).sum(0)
    corr = sums.correlation()  # [m_a, m_b]
    best = corr.max(0)
    density = fired_b / max(sums.n, 1)
    result = LayerComparison(sae_a.cfg.site, sae_b.cfg.site, best.values, best.indices, density)
    if sae_a.d_in == sae_b.d_in:
        result.decoder_cos, result.decoder_match = decoder_best_match(sae_a, sae_b)
    if isinstance(attribute_features, int):
        attribute_features = density.argsort(descending=True)[
            : min(attribute_features, int((density > 0).sum()))
        ].tolist()
    if attribute_features:
        result.attribution = attribute(
            model, sae_a, sae_b, tokens[:batch_size], mask[:batch_size], attribute_features
        )
    return result

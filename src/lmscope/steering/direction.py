"""Direction: one vector to steer along, at one site, from wherever it was found.

    d = Direction.from_sae("runs/sae", feature=123)                 # the feature's decoder row
    d = Direction.from_das("runs/das")                              # a DAS subspace (first basis vector)
    d = Direction.from_probe(probe, "blocks.12.mlp.post")           # a fitted SparseProbe
    d = Direction.from_neuron(model, "blocks.5.mlp.post[33]")       # the neuron's W_out row, at mlp.out
    d = Direction.mean_difference(model, french, english, "blocks.12.resid_post")

Scale units. Steering adds scale * vector, and each constructor picks the vector so that scale 1 means
something: an SAE feature's decoder row (scale = feature activation added), a neuron's W_out row (scale =
neuron activation added), the difference of two means (scale 1 = the whole difference), a DAS basis vector
(unit length) and a probe's coef / |coef|^2 (scale s raises the probe's logit by s). Ablation removes the
activation's component in ``subspace`` (the vector itself, or a DAS run's whole subspace).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

KINDS = ("sae", "das", "probe", "neuron", "mean_difference", "custom")


@dataclass
class Direction:
    """vector: [d] float32 at `site` (d = the site's width; attn.z sites flatten heads x d_head).
    subspace: [d, k] what ablation projects out (None: the vector). kind: one of KINDS. meta: provenance."""

    vector: Tensor
    site: str
    kind: str = "custom"
    name: str = ""
    subspace: Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.vector = torch.as_tensor(self.vector).detach().float().cpu().flatten()
        if self.kind not in KINDS:
            raise ValueError(f"Direction kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if not torch.isfinite(self.vector).all() or float(self.vector.norm()) == 0:
            raise ValueError(f"direction {self.name or self.kind!r} is zero or not finite; it cannot steer")
        if self.subspace is not None:
            self.subspace = torch.as_tensor(self.subspace).detach().float().cpu()
            if self.subspace.dim() != 2 or self.subspace.shape[0] != self.width:
                raise ValueError(
                    f"subspace must be [{self.width}, k] (the vector's width), got {tuple(self.subspace.shape)}"
                )
        self.name = self.name or f"{self.kind} at {self.site}"

    @property
    def width(self) -> int:
        return self.vector.numel()

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def ablation_basis(self) -> Tensor:
        """[d, k]: what ablation removes (ProjectOut orthonormalises it)."""
        return self.vector[:, None] if self.subspace is None else self.subspace

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "site": self.site,
            "width": self.width,
            "norm": round(self.norm, 6),
            "ablation_rank": self.ablation_basis.shape[1],
            **self.meta,
        }

    # ---- constructors -------------------------------------------------------------------------------------
    @classmethod
    def from_sae(cls, sae, feature: int, site: str | None = None, name: str = "") -> Direction:
        """Feature `feature`'s decoder row W_dec[feature] [d_in] of an SAE (or an SAE folder to load)."""
        from ..features.sae import load_sae

        source = str(sae) if isinstance(sae, (str, Path)) else ""
        sae = load_sae(sae) if isinstance(sae, (str, Path)) else sae
        if not isinstance(feature, int) or not 0 <= feature < sae.d_sae:
            raise IndexError(f"feature {feature!r} out of range: this SAE has features 0..{sae.d_sae - 1}")
        site = site or sae.cfg.site
        if not site:
            raise ValueError("this SAE does not record its site; pass site= (e.g. blocks.12.resid_post)")
        meta = {"feature": feature, "sae": source or sae.cfg.site}
        return cls(sae.W_dec[feature], site, "sae", name or f"SAE feature {feature}", meta=meta)

    @classmethod
    def from_das(cls, das, site: str | None = None, name: str = "") -> Direction:
        """A DAS subspace: a DASResult, a DAS run folder or its subspace.safetensors. Steers along the first
        basis vector; ablation removes the whole subspace."""
        from ..causal.das import DASResult, load_subspace

        if isinstance(das, DASResult):
            basis, saved_site, source = das.basis, das.site, ""
        else:
            basis, saved_site, source = load_subspace(das), _saved_das_site(Path(das)), str(das)
        site = site or saved_site
        if not site:
            raise ValueError(f"{das} does not record its site; pass site=")
        basis = basis.detach().float()
        meta = {"k": basis.shape[1], "das": source}
        return cls(basis[:, 0], site, "das", name or f"DAS direction (k={basis.shape[1]})", basis, meta)

    @classmethod
    def from_probe(cls, probe, site: str, name: str = "") -> Direction:
        """A fitted SparseProbe (features/probing.py) that reads `site`: coef / |coef|^2, so adding scale
        times it raises the probe's logit by `scale` (on any activation, or mean of activations)."""
        coef = getattr(probe, "coef_", None)
        if coef is None:
            raise ValueError("the probe is not fitted (no coef_); call probe.fit(X, y) first")
        coef = torch.as_tensor(coef).double()
        neurons = getattr(probe, "neurons_", None)
        meta = {"probe_k": int(len(neurons)) if neurons is not None else int((coef != 0).sum())}
        return cls((coef / coef.dot(coef)).float(), site, "probe", name or "probe direction", meta=meta)

    @classmethod
    def from_neuron(cls, model, neuron: str, name: str = "") -> Direction:
        """Neuron `blocks.L.mlp.post[N]`'s output weights W_out[N] [d_model], added at blocks.L.mlp.out:
        scale s is what raising the neuron's activation by s writes."""
        from ..model.sites import parse_component

        comp = parse_component(neuron, model.cfg, kinds=("mlp.post",), indexed=True, what="neuron")
        vector = model.weights.W_out(comp.layer)[comp.index]
        return cls(
            vector, f"blocks.{comp.layer}.mlp.out", "neuron", name or str(comp), meta={"neuron": str(comp)}
        )

    @classmethod
    def mean_difference(
        cls,
        model,
        texts_a: Sequence[str],
        texts_b: Sequence[str],
        site: str,
        ctx_len: int = 64,
        name: str = "",
    ) -> Direction:
        """mean activation over the tokens of texts_a minus that over texts_b, at `site` (each text cut to
        its first ctx_len tokens; the BOS position is left out)."""
        a = text_means(model, texts_a, site, ctx_len).mean(0)
        b = text_means(model, texts_b, site, ctx_len).mean(0)
        meta = {"n_a": len(texts_a), "n_b": len(texts_b)}
        return cls(a - b, site, "mean_difference", name or "mean difference", meta=meta)


def _saved_das_site(path: Path) -> str:
    from safetensors import safe_open

    file = path / "subspace.safetensors" if path.is_dir() else path
    with safe_open(str(file), "pt") as f:
        return (f.metadata() or {}).get("site", "")


@torch.no_grad()
def text_means(model, texts: Sequence[str], site: str, ctx_len: int = 64, batch_size: int = 8) -> Tensor:
    """Each text's mean activation at `site` over its tokens (BOS left out): [n_texts, d] float32.
    Texts are cut to their first ctx_len tokens."""
    texts = list(texts)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError(f"texts to average at {site} must be a non-empty list of non-empty strings")
    [site] = model.resolve_sites([site])
    out = []
    for i in range(0, len(texts), batch_size):
        enc = model.tokenize(texts[i : i + batch_size], prepend_bos=True)
        ids, mask = enc["input_ids"][:, :ctx_len], enc["attention_mask"][:, :ctx_len]
        _, cache = model.run_with_cache(ids, sites=[site], attention_mask=mask, stop_at=site)
        act = cache[site].flatten(2).float().cpu()  # [b, p, d]
        keep = mask.clone().float()
        keep[:, 0] = 0  # BOS: an attention sink whose activation says nothing about the text
        keep[keep.sum(1) == 0, 0] = 1  # a text of one token keeps it
        out.append((act * keep[..., None]).sum(1) / keep.sum(1, keepdim=True))
    return torch.cat(out)


@torch.no_grad()
def fit_probe(model, positive: Sequence[str], negative: Sequence[str], site: str, k: int = 8, seed: int = 0):
    """A SparseProbe (k neurons, mean_diff support) on the texts' mean activations at `site`:
    positive texts are class 1. Returns the fitted probe."""
    from ..features.probing import SparseProbe

    X = torch.cat([text_means(model, positive, site), text_means(model, negative, site)])
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
    return SparseProbe(k=min(k, X.shape[1]), seed=seed).fit(X, y)

"""Interventions: functions of (activation, site) applied while the model runs.

Each one computes a replacement for the whole activation, then keeps it only where the selection
(heads, positions, neurons) says so. Nothing is modified in place, so gradients flow through every
intervention (DAS trains through SubspacePatch).

Selections:
    heads:     head indices (sites with a head axis: attn.q/k/v/z/pattern)
    positions: an int or list of positions shared by all examples (negative counts from the end), or a
               LongTensor [batch] / [batch, n] of per-example positions; for attn.pattern, query positions
    neurons:   indices along the last axis (d_mlp for mlp sites, d_model for the residual, d_head for z)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .sites import SiteError, layout

Index = Sequence[int] | Tensor | int | None


def _as_index(idx, size: int, what: str, site: str) -> Tensor:
    t = torch.as_tensor([idx] if isinstance(idx, int) else idx, dtype=torch.long)
    if t.numel() and (t.max() >= size or t.min() < -size):
        raise IndexError(f"{what} {t.tolist()} out of range for {site}, which has {size} along that axis")
    return t


def selection_mask(shape: torch.Size, site: str, heads: Index, positions: Index, neurons: Index, device):
    """A boolean mask broadcastable to `shape`, True where the selection applies; None = everywhere."""
    axes = layout(site).split()
    mask = None

    def combine(m: Tensor) -> None:
        nonlocal mask
        mask = m if mask is None else mask & m

    def along(axis: int, idx: Index, what: str) -> Tensor:
        m = torch.zeros(shape[axis], dtype=torch.bool, device=device)
        m[_as_index(idx, shape[axis], what, site).to(device)] = True
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return m.view(view)

    if heads is not None:
        if "h" not in axes:
            raise ValueError(
                f"heads= needs a site with a head axis (attn.q/k/v/z/pattern); {site} is [{layout(site)}]"
            )
        combine(along(axes.index("h"), heads, "heads"))
    if neurons is not None:
        if axes[-1] != "d":
            raise ValueError(
                f"neurons= selects along the feature axis, which {site} [{layout(site)}] has not"
            )
        combine(along(len(axes) - 1, neurons, "neurons"))
    if positions is not None:
        axis = axes.index("q" if "q" in axes else "p")
        if isinstance(positions, Tensor):  # per example: [batch] or [batch, n]
            if positions.shape[0] != shape[0]:
                raise ValueError(
                    f"positions as a tensor are per example ([batch] or [batch, n]) but its first axis is "
                    f"{positions.shape[0]} and the batch {shape[0]}; pass a list to select the same positions in all"
                )
            per_example = positions.to(device).view(shape[0], -1) % shape[axis]  # [batch, n]
            m = torch.zeros(shape[0], shape[axis], dtype=torch.bool, device=device).scatter_(
                1, per_example, True
            )
            view = [1] * len(shape)
            view[0], view[axis] = shape[0], shape[axis]
            combine(m.view(view))
        else:
            combine(along(axis, positions, "positions"))
    return mask


def _site_tensor(source, site: str) -> Tensor:
    if isinstance(source, Tensor):
        return source
    if isinstance(source, Mapping):
        if site not in source:
            raise SiteError(
                f"the patch source has no {site!r}; record it with run_with_cache(..., sites=[{site!r}])"
            )
        return source[site]
    raise TypeError(
        f"source must be an ActivationCache, a dict site -> tensor, or a tensor; got {type(source)}"
    )


def _match(src: Tensor, act: Tensor, site: str) -> Tensor:
    src = src.to(device=act.device, dtype=act.dtype)
    if src.shape == act.shape:
        return src
    if src.dim() == act.dim() and src.shape[0] == 1 and src.shape[1:] == act.shape[1:]:
        return src.expand_as(act)
    raise ValueError(
        f"source for {site} has shape {tuple(src.shape)} but the activation is {tuple(act.shape)}: "
        "patch between inputs of the same length (or pass a single example to broadcast)"
    )


@dataclass
class Intervention:
    site: str
    # keyword-only, so each intervention's own arguments follow the site: Ablate(site, "mean"), Patch(site, cache)
    heads: Index = field(default=None, kw_only=True)
    positions: Index = field(default=None, kw_only=True)
    neurons: Index = field(default=None, kw_only=True)

    def replacement(self, act: Tensor, site: str) -> Tensor:
        raise NotImplementedError

    def __call__(self, act: Tensor, site: str) -> Tensor:
        new = self.replacement(act, site)
        mask = selection_mask(act.shape, site, self.heads, self.positions, self.neurons, act.device)
        return new if mask is None else torch.where(mask, new, act)


@dataclass
class Patch(Intervention):
    """Replace the activation with the one in `source` (an ActivationCache, a dict, or a tensor)."""

    source: Mapping | Tensor | None = None

    def replacement(self, act, site):
        if self.source is None:
            raise ValueError("Patch needs source=: an ActivationCache from another run, or a tensor")
        return _match(_site_tensor(self.source, site), act, site)


@dataclass
class Ablate(Intervention):
    """how='zero' | 'mean' | 'resample'. Mean and resample draw on `source` (or, without one, on the
    current batch): the mean over its examples, or its examples shuffled with `seed`."""

    how: str = "zero"
    source: Mapping | Tensor | None = None
    seed: int = 0

    def __post_init__(self):
        if self.how not in ("zero", "mean", "resample"):
            raise ValueError(f"Ablate(how={self.how!r}): choose 'zero', 'mean' or 'resample'")

    def replacement(self, act, site):
        if self.how == "zero":
            return torch.zeros_like(act)
        ref = act if self.source is None else _site_tensor(self.source, site).to(act.device, act.dtype)
        if ref.shape[1:] != act.shape[1:]:
            raise ValueError(
                f"Ablate source for {site} is {tuple(ref.shape)}, the activation {tuple(act.shape)}"
            )
        if self.how == "mean":
            return ref.mean(0, keepdim=True).expand_as(act)
        gen = torch.Generator().manual_seed(self.seed)
        n = ref.shape[0]
        order = (
            torch.randperm(n, generator=gen)
            if n == act.shape[0]
            else torch.randint(n, (act.shape[0],), generator=gen)
        )
        return ref[order.to(act.device)]


def _basis(basis: Tensor | Callable[[], Tensor], act: Tensor) -> Tensor:
    b = basis() if callable(basis) else basis
    b = b.to(device=act.device, dtype=act.dtype)
    return b.unsqueeze(-1) if b.dim() == 1 else b


def _check_orthonormal(basis: Tensor) -> None:
    b = basis.detach().float()
    b = b.unsqueeze(-1) if b.dim() == 1 else b
    err = (b.T @ b - torch.eye(b.shape[1])).abs().max().item()
    if err > 1e-3:
        raise ValueError(
            f"basis [d, k] must have orthonormal columns (max |BᵀB - I| = {err:.3g}); "
            "orthonormalise it first, e.g. torch.linalg.qr(basis).Q"
        )


@dataclass
class SubspacePatch(Intervention):
    """Replace the component of the activation in span(basis) with source's, keeping the orthogonal rest:
    w' = w + B Bᵀ (u - w). basis: [d] (normalised here) or [d, k] with orthonormal columns, or a callable
    returning one (e.g. a parametrised rotation being trained)."""

    basis: Tensor | Callable[[], Tensor] | None = None
    source: Mapping | Tensor | None = None

    def __post_init__(self):
        if self.basis is None or self.source is None:
            raise ValueError("SubspacePatch needs basis= (a [d] or [d, k] tensor) and source=")
        if isinstance(self.basis, Tensor):
            if self.basis.dim() == 1:
                self.basis = self.basis / self.basis.norm()
            _check_orthonormal(self.basis)

    def replacement(self, act, site):
        basis = _basis(self.basis, act)
        src = _match(_site_tensor(self.source, site), act, site)
        return act + ((src - act) @ basis) @ basis.T


@dataclass
class AddDirection(Intervention):
    """Steering: act + scale * direction (direction broadcasts over the activation, e.g. [d])."""

    direction: Tensor | None = None
    scale: float = 1.0

    def replacement(self, act, site):
        if self.direction is None:
            raise ValueError("AddDirection needs direction=")
        return act + self.scale * self.direction.to(device=act.device, dtype=act.dtype)


@dataclass
class ProjectOut(Intervention):
    """Directional ablation: remove the activation's component in span(directions) ([d] or [d, k])."""

    directions: Tensor | None = None
    _q: Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.directions is None:
            raise ValueError("ProjectOut needs directions= (a [d] or [d, k] tensor)")
        d = self.directions.detach().float()
        self._q = torch.linalg.qr(d.unsqueeze(-1) if d.dim() == 1 else d).Q  # orthonormal basis [d, k]

    def replacement(self, act, site):
        q = self._q.to(device=act.device, dtype=act.dtype)
        return act - (act @ q) @ q.T


@dataclass
class Hook(Intervention):
    """Any function fn(activation, site) -> new activation of the same shape."""

    fn: Callable[[Tensor, str], Tensor] | None = None

    def replacement(self, act, site):
        return self.fn(act, site)

"""Measures of superposition on an embedding W [..., m, n] (any leading axes, e.g. instances).

Column W_i = W[..., :, i] is feature i's direction in the m hidden dimensions; Ŵ_i = W_i / ‖W_i‖.
A feature whose norm is (near) zero has no direction: its interference and dimensionality are 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EPS = 1e-12  # below this squared norm a feature has no direction


def _check(W: Tensor) -> Tensor:
    W = torch.as_tensor(W, dtype=torch.float32)
    if W.ndim < 2:
        raise ValueError(f"W must be [..., m, n] (hidden dims, features); got shape {tuple(W.shape)}")
    return W


def feature_norms(W: Tensor) -> Tensor:
    """‖W_i‖ for each feature: [..., m, n] -> [..., n]."""
    return _check(W).norm(dim=-2)


def gram(W: Tensor) -> Tensor:
    """WᵀW: [..., m, n] -> [..., n, n]; entry (i, j) = W_i·W_j, the diagonal holds ‖W_i‖²."""
    W = _check(W)
    return W.transpose(-1, -2) @ W


def _projections(W: Tensor) -> Tensor:
    """(Ŵ_i·W_j)² as [..., n (i), n (j)]; rows of features without a direction are 0."""
    G = gram(W)
    sq_norms = torch.diagonal(G, dim1=-2, dim2=-1)  # [..., n]
    has_dir = sq_norms > EPS
    return torch.where(has_dir[..., :, None], G**2 / sq_norms.clamp_min(EPS)[..., :, None], 0.0)


def interference(W: Tensor) -> Tensor:
    """Σ_{j≠i} (Ŵ_i·W_j)²: how much the other features project onto feature i's direction. [..., n]."""
    proj = _projections(W)
    return proj.sum(-1) - torch.diagonal(proj, dim1=-2, dim2=-1)


def feature_dimensionality(W: Tensor) -> Tensor:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)² (the sum includes j = i): the share of a dimension feature i gets.

    1 for a feature orthogonal to all others, ½ for an antipodal pair, ⅖ in a pentagon; 0 if not stored.
    [..., m, n] -> [..., n].
    """
    W = _check(W)
    sq_norms = W.pow(2).sum(-2)
    total = _projections(W).sum(-1)  # includes (Ŵ_i·W_i)² = ‖W_i‖²
    return torch.where(total > EPS, sq_norms / total.clamp_min(EPS), 0.0)


def dimensions_per_feature(W: Tensor) -> Tensor:
    """D* = m / ‖W‖_F²: hidden dimensions per (norm-weighted) feature. [..., m, n] -> [...]."""
    W = _check(W)
    return W.shape[-2] / W.pow(2).sum(dim=(-2, -1))


def n_represented(W: Tensor, threshold: float = 0.5) -> Tensor:
    """How many features have ‖W_i‖ > ``threshold`` (the paper's "represented"): [..., m, n] -> [...] int."""
    return (feature_norms(W) > threshold).sum(-1)


def feature_angles(W: Tensor) -> Tensor:
    """Each feature's direction as an angle in degrees in [0, 360), for m = 2: [..., 2, n] -> [..., n]."""
    W = _check(W)
    if W.shape[-2] != 2:
        raise ValueError(f"feature angles need m = 2 hidden dimensions; got m = {W.shape[-2]}")
    return torch.rad2deg(torch.atan2(W[..., 1, :], W[..., 0, :])) % 360


def angle_gaps(W: Tensor, threshold: float = 0.5) -> list[list[float]]:
    """For m = 2: per instance, the angles in degrees between neighbouring represented features going round
    the circle (they sum to 360; a regular pentagon gives five gaps of 72). W: [inst, 2, n]."""
    angles, norms = feature_angles(W), feature_norms(W)
    gaps = []
    for a, keep in zip(angles.reshape(-1, angles.shape[-1]), norms.reshape(-1, norms.shape[-1]) > threshold):
        ordered = a[keep].sort().values.tolist()
        if len(ordered) == 1:
            gaps.append([360.0])  # (a - a) % 360 would say 0
            continue
        gaps.append([(nxt - cur) % 360 for cur, nxt in zip(ordered, ordered[1:] + ordered[:1])])
    return gaps


def summarize(W: Tensor, b: Tensor, threshold: float = 0.5) -> list[dict]:
    """Every measure of each instance as plain numbers. W: [inst, m, n]; b: [inst, n]."""
    W = _check(W).detach().cpu()
    b = torch.as_tensor(b).detach().cpu()
    norms, inter, dims = feature_norms(W), interference(W), feature_dimensionality(W)
    d_star, rep, G = dimensions_per_feature(W), n_represented(W, threshold), gram(W)
    gaps = angle_gaps(W, threshold) if W.shape[-2] == 2 else None
    rows = []
    for k in range(W.shape[0]):
        row = {
            "n_represented": int(rep[k]),
            "dimensions_per_feature": float(d_star[k]) if math.isfinite(d_star[k]) else None,
            "norms": norms[k].tolist(),
            "interference": inter[k].tolist(),
            "dimensionality": dims[k].tolist(),
            "bias": b[k].tolist(),
            "WtW": G[k].tolist(),
            "W": W[k].tolist(),
        }
        if gaps is not None:
            row["angle_gaps"] = gaps[k]
        rows.append(row)
    return rows

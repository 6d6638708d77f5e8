"""Is a site's basis privileged? Kurtosis in the native basis against random rotations.

A basis is privileged when the model treats its directions differently from any other orthonormal basis
(e.g. an elementwise nonlinearity acts on them, or the optimiser favours them). Rotation-invariant
statistics cannot tell; heavy tails along the basis directions can: kurtosis measured in the native basis
is compared with the same statistic after random (Haar) rotations, which mix the directions so that the
tails average out (a Gaussian has kurtosis 3). Two readings, both on centred activations X [n, d]:

    per token      mean over tokens of E_d[x^4] / E_d[x^2]^2   (outlier dimensions within each vector)
    per dimension  mean over dimensions of E_n[x^4] / E_n[x^2]^2 (heavy-tailed, sparse neurons)

    result = basis_kurtosis(X, n_rotations=10)     # X [n_tokens, d]
    result.z_dim > 3                               # the native basis is far out in the rotated distribution
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor


def random_rotation(d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """A Haar-random orthogonal matrix [d, d] (QR of a Gaussian matrix, signs fixed so it is uniform)."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


def kurtosis_per_token(X: Tensor) -> float:
    """Mean over rows of E_d[x^4] / E_d[x^2]^2. X [n, d], centred; rows of zeros are skipped."""
    m2, m4 = X.square().mean(1), X.pow(4).mean(1)
    keep = m2 > 0
    return float((m4[keep] / m2[keep].square()).mean())


def kurtosis_per_dim(X: Tensor) -> float:
    """Mean over columns of E_n[x^4] / E_n[x^2]^2. X [n, d], centred; constant columns are skipped."""
    m2, m4 = X.square().mean(0), X.pow(4).mean(0)
    keep = m2 > 0
    return float((m4[keep] / m2[keep].square()).mean())


@dataclass
class BasisKurtosis:
    """Native-basis kurtosis of one site against `n_rotations` random rotations (mean, std, z-score)."""

    site: str
    n_tokens: int
    kurtosis_tok: float
    rotated_tok_mean: float
    rotated_tok_std: float
    kurtosis_dim: float
    rotated_dim_mean: float
    rotated_dim_std: float
    n_rotations: int

    @property
    def z_tok(self) -> float:
        return _z(self.kurtosis_tok, self.rotated_tok_mean, self.rotated_tok_std)

    @property
    def z_dim(self) -> float:
        return _z(self.kurtosis_dim, self.rotated_dim_mean, self.rotated_dim_std)

    def to_dict(self) -> dict:
        return {**asdict(self), "z_tok": self.z_tok, "z_dim": self.z_dim}


def _z(native: float, mean: float, std: float) -> float:
    # Rotated kurtoses of a large sample barely vary; floor the spread so z stays finite and meaningful.
    return (native - mean) / max(std, 1e-3 * abs(mean), 1e-12)


def basis_kurtosis(X, n_rotations: int = 10, seed: int = 0, site: str = "", rotations=None) -> BasisKurtosis:
    """Kurtosis of X [n, d] (rows = tokens) in its own basis and after `n_rotations` Haar rotations.

    Columns are centred first. `rotations`: optional list of [d, d] orthogonal matrices to reuse (e.g. the
    same ones for every layer); otherwise they are drawn with seeds seed, seed+1, ...
    """
    X = torch.as_tensor(X).detach().to(torch.float32)
    if X.dim() != 2 or X.shape[0] < 2:
        raise ValueError(f"X must be [n_tokens >= 2, d], got shape {tuple(X.shape)}")
    if n_rotations < 2:
        raise ValueError(
            f"n_rotations must be at least 2 for a spread (10 or more is usual), got {n_rotations}"
        )
    X = X - X.mean(0)
    d = X.shape[1]
    if rotations is None:
        rotations = [random_rotation(d, seed + i) for i in range(n_rotations)]
    tok, dim = [], []
    for q in rotations[:n_rotations]:
        Xr = X @ q.to(X.dtype)
        tok.append(kurtosis_per_token(Xr))
        dim.append(kurtosis_per_dim(Xr))
    tok_t, dim_t = torch.tensor(tok, dtype=torch.float64), torch.tensor(dim, dtype=torch.float64)
    return BasisKurtosis(
        site=site,
        n_tokens=X.shape[0],
        kurtosis_tok=kurtosis_per_token(X),
        rotated_tok_mean=float(tok_t.mean()),
        rotated_tok_std=float(tok_t.std()),
        kurtosis_dim=kurtosis_per_dim(X),
        rotated_dim_mean=float(dim_t.mean()),
        rotated_dim_std=float(dim_t.std()),
        n_rotations=len(tok),
    )


def basis_kurtosis_by_site(
    acts: dict[str, Tensor], n_rotations: int = 10, seed: int = 0
) -> list[BasisKurtosis]:
    """basis_kurtosis for every site in `acts` (site -> [n_tokens, d]), sharing rotations between sites of
    the same width so layers are compared against the same random bases."""
    shared: dict[int, list[Tensor]] = {}
    results = []
    for site, X in acts.items():
        d = X.shape[-1]
        if d not in shared:
            shared[d] = [random_rotation(d, seed + i) for i in range(n_rotations)]
        results.append(basis_kurtosis(X, n_rotations, seed, site=site, rotations=shared[d]))
    return results


def privileged_basis(
    model,
    dataset,
    sites: str | list[str] = "blocks.*.resid_post",
    n_tokens: int = 2048,
    n_rotations: int = 10,
    seed: int = 0,
    batch_size: int = 8,
) -> list[BasisKurtosis]:
    """basis_kurtosis of each site (one width, e.g. a glob over layers) on `n_tokens` random document
    tokens of a TokenDataset (BOS and padding, whose norms are atypical, are left out)."""
    from .collect import document_means

    doc = document_means(model, dataset, sites, batch_size, sample_tokens=n_tokens, seed=seed)
    return basis_kurtosis_by_site(doc.sample, n_rotations, seed)

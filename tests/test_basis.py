"""Privileged-basis kurtosis: heavy tails along the basis stand out against random rotations."""

from __future__ import annotations

import pytest
import torch

from lmscope.features.basis import (
    basis_kurtosis,
    basis_kurtosis_by_site,
    kurtosis_per_dim,
    kurtosis_per_token,
    random_rotation,
)


def test_random_rotation_is_orthogonal_and_seeded():
    q = random_rotation(24, seed=3, dtype=torch.float64)
    torch.testing.assert_close(q.T @ q, torch.eye(24, dtype=torch.float64))
    assert torch.equal(q, random_rotation(24, seed=3, dtype=torch.float64))
    assert not torch.equal(q, random_rotation(24, seed=4, dtype=torch.float64))


def test_kurtosis_formulas_by_hand():
    X = torch.tensor([[1.0, -1.0, 2.0, 0.0], [3.0, 0.0, 0.0, -1.0]])
    # Row 0: E x^2 = 6/4, E x^4 = 18/4 -> 2.0; row 1: E x^2 = 10/4, E x^4 = 82/4 -> 3.28.
    assert kurtosis_per_token(X) == pytest.approx((2.0 + 3.28) / 2)
    # Columns: two values each, +-a -> E x^4 / (E x^2)^2 = 1 for every non-constant column (all are).
    assert kurtosis_per_dim(X - X.mean(0)) == pytest.approx(1.0)


def test_laplace_basis_is_privileged_gaussian_is_not():
    gen = torch.Generator().manual_seed(0)
    laplace = torch.distributions.Laplace(0.0, 1.0)
    torch.manual_seed(0)
    X_lap = laplace.sample((2000, 64))
    X_gauss = torch.randn(2000, 64, generator=gen)
    lap = basis_kurtosis(X_lap, n_rotations=10, seed=1)
    gauss = basis_kurtosis(X_gauss, n_rotations=10, seed=1)
    assert lap.kurtosis_dim == pytest.approx(6.0, abs=0.6)  # a Laplace's kurtosis
    assert lap.rotated_dim_mean == pytest.approx(3.0, abs=0.3)  # rotations mix 64 coordinates
    assert lap.z_dim > 10 and lap.z_tok > 10
    assert gauss.kurtosis_dim == pytest.approx(3.0, abs=0.2)
    assert abs(gauss.z_dim) < 4 and abs(gauss.kurtosis_dim - gauss.rotated_dim_mean) < 0.15
    assert lap.to_dict()["z_dim"] == lap.z_dim and lap.n_rotations == 10


def test_by_site_shares_rotations_and_checks_input():
    X = torch.randn(200, 16)
    a, b = basis_kurtosis_by_site({"s1": X, "s2": X.clone()}, n_rotations=3)
    assert (a.site, b.site) == ("s1", "s2") and a.rotated_tok_mean == pytest.approx(b.rotated_tok_mean)
    with pytest.raises(ValueError, match="n_tokens"):
        basis_kurtosis(torch.randn(16))
    with pytest.raises(ValueError, match="n_rotations"):
        basis_kurtosis(X, n_rotations=1)


def test_privileged_basis_on_a_model(tiny_llama):
    from lmscope.data.tokens import tokenize_corpus
    from lmscope.features.basis import privileged_basis

    ds = tokenize_corpus(tiny_llama, ["the cat sat on the mat and then the dog ran home"] * 3, ctx_len=12)
    results = privileged_basis(tiny_llama, ds, "blocks.*.mlp.post", n_tokens=20, n_rotations=3)
    assert [r.site for r in results] == [f"blocks.{i}.mlp.post" for i in range(3)]
    assert all(r.n_tokens == 20 and r.n_rotations == 3 for r in results)

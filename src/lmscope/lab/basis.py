"""Why a privileged basis? Basis alignment of lab models across a grid (activation x optimiser x seed).

For each trained run and each site family (MLP neurons, residual stream), on held-out document tokens:
the existing `features.basis` kurtosis (native basis vs random Haar rotations, the same rotations for every
layer) and the activation's sparsity per direction, native vs the same rotations:

    sparsity of direction d = (E|x_d|)^2 / E[x_d^2]   (uncentred; 1 = constant magnitude, 2/pi ~ 0.64 for a
                                                       Gaussian, -> 0 for a direction that is mostly 0)

A privileged basis shows as native kurtosis far above the rotated one (z > 3) and native sparsity below it.

    grid = basis_grid(["runs/relu-adam-s0", "runs/relu-sgd-s0", ...], corpus="corpus/")
    grid.table()        # mean over seeds per (activation, optimiser, site family)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..features.basis import basis_kurtosis_by_site, random_rotation
from ..runs import read_run

SITE_FAMILIES = {"mlp": "blocks.*.mlp.post", "resid": "blocks.*.resid_post"}


def direction_sparsity(X: Tensor) -> float:
    """Mean over columns of (E_n|x|)^2 / E_n[x^2]. X [n, d]; all-zero columns are skipped."""
    l1, l2 = X.abs().mean(0), X.square().mean(0)
    keep = l2 > 0
    return float((l1[keep].square() / l2[keep]).mean())


def basis_sparsity(X: Tensor, rotations: Sequence[Tensor]) -> dict:
    """Native direction_sparsity of X [n, d] and its mean / std / z over `rotations` ([d, d] each)."""
    X = X.detach().float()
    rotated = torch.tensor([direction_sparsity(X @ q) for q in rotations], dtype=torch.float64)
    native, mean, std = direction_sparsity(X), float(rotated.mean()), float(rotated.std())
    return {
        "sparsity": native,
        "rotated_sparsity_mean": mean,
        "rotated_sparsity_std": std,
        "z_sparsity": (native - mean) / max(std, 1e-3 * abs(mean), 1e-12),
    }


def model_basis(model, dataset, n_tokens: int = 2048, n_rotations: int = 10, seed: int = 0) -> list[dict]:
    """One row per site (MLP neurons and residual stream of every layer): kurtosis and sparsity, native vs
    `n_rotations` random rotations. An attention-only model has no MLP rows."""
    from ..features.collect import document_means

    attn_only = bool(getattr(model.hf.config, "attn_only", False))
    rows = []
    for family, glob in SITE_FAMILIES.items():
        if family == "mlp" and attn_only:
            continue
        sample = document_means(model, dataset, glob, sample_tokens=n_tokens, seed=seed).sample
        d = next(iter(sample.values())).shape[-1]
        rotations = [random_rotation(d, seed + i) for i in range(n_rotations)]
        for kurt in basis_kurtosis_by_site(sample, n_rotations, seed):
            rows.append({"family": family, **kurt.to_dict(), **basis_sparsity(sample[kurt.site], rotations)})
    return rows


@dataclass
class BasisGrid:
    """Rows: one per (run, site) with the run's activation, optimizer, seed and n_layers."""

    rows: list[dict] = field(default_factory=list)

    def table(self) -> list[dict]:
        """Mean (and spread over seeds) of z_dim, z_tok and z_sparsity per (activation, optimizer, family)."""
        groups: dict[tuple, list[dict]] = {}
        for row in self.rows:
            groups.setdefault((row["activation"], row["optimizer"], row["family"]), []).append(row)
        out = []
        for (act, opt, family), rows in sorted(groups.items()):
            entry = {
                "activation": act,
                "optimizer": opt,
                "family": family,
                "n": len(rows),
                "runs": len({r["run"] for r in rows}),
            }
            for key in (
                "kurtosis_dim",
                "rotated_dim_mean",
                "z_dim",
                "z_tok",
                "sparsity",
                "rotated_sparsity_mean",
                "z_sparsity",
            ):
                values = torch.tensor([float(r[key]) for r in rows], dtype=torch.float64)
                entry[key] = float(values.mean())
                entry[key + "_std"] = float(values.std()) if len(values) > 1 else 0.0
            out.append(entry)
        return out

    def to_dict(self) -> dict:
        return {"rows": self.rows, "table": self.table()}


def basis_grid(
    run_dirs: Sequence[str | os.PathLike],
    corpus: str | os.PathLike | None = None,
    n_tokens: int = 2048,
    n_rotations: int = 10,
    seed: int = 0,
    checkpoint: str = "last",
) -> BasisGrid:
    """model_basis for the `checkpoint` ("last" or a step_NNNNNN folder name) of each lab run, on the
    held-out split of `corpus` (None: the corpus the run was trained on) tokenised with that run's tokenizer."""
    import lmscope as ls

    from .config import LabConfig
    from .data import heldout_dataset

    grid = BasisGrid()
    for run_dir in map(Path, run_dirs):
        record = read_run(run_dir)
        if record["kind"] != "lab":
            raise ValueError(f"{run_dir} is a {record['kind']!r} run, not a lab run")
        folder = Path(record["model"]) if checkpoint == "last" else run_dir / "checkpoints" / checkpoint
        if not folder.is_dir():
            folder = run_dir / "checkpoints" / Path(record["model"]).name
        model = ls.load(folder)
        data = corpus if corpus is not None else record.get("corpus")
        test = heldout_dataset(LabConfig(**record["config"]), data, model.tokenizer)
        meta = {k: record["config"][k] for k in ("activation", "optimizer", "seed", "n_layers", "attn_only")}
        for row in model_basis(model, test, n_tokens, n_rotations, seed):
            grid.rows.append({"run": str(run_dir), **meta, **row})
    return grid

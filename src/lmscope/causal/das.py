"""Distributed Alignment Search (Geiger et al. 2023): learn a k-dim subspace whose interchange gives the
counterfactual answer.

The subspace is the row space of an orthogonally parametrised k x d matrix (torch's `orthogonal`
parametrisation, as in pyvene's low-rank rotation). Each step patches it from source into base
(w' = w + B Bᵀ (u - w)) and pushes the patched prediction towards the target (the source's answer).
Training runs only what the patch can change: the model from the site's layer on, at the last position,
with earlier positions' keys/values cached once (`site_problem`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .subspace import PatchOutcome, SiteProblem, evaluate, interchange, orthonormal, run_batched, site_problem

LOSSES = ("ce", "logit_diff")


@dataclass
class DASResult:
    """A learned subspace and how it patches. basis: [d, k] orthonormal columns."""

    site: str
    basis: Tensor
    train: PatchOutcome
    test: PatchOutcome | None
    random: list[PatchOutcome]
    history: list[float]
    config: dict = field(default_factory=dict)

    @property
    def direction(self) -> Tensor:
        """The first basis vector [d] (the subspace itself for k = 1)."""
        return self.basis[:, 0]

    @property
    def held_out(self) -> PatchOutcome:
        return self.test if self.test is not None else self.train

    def random_baseline(self) -> dict:
        """Mean over random subspaces of the same dimension, on the held-out data."""
        if not self.random:
            return {}
        rows = [r.row() for r in self.random]
        return {
            key: sum(r[key] for r in rows) / len(rows) for key in ("logit_diff", "fldd", "flipped", "iia")
        }

    def to_dict(self) -> dict:
        return {
            "site": self.site,
            "k": self.basis.shape[1],
            "train": self.train.row(),
            "test": None if self.test is None else self.test.row(),
            "random_subspace": self.random_baseline(),
            "history": self.history,
            "config": self.config,
        }

    def plot(self):
        from ..report import line_chart

        return line_chart({"loss": self.history}, title="DAS training loss", xlabel="epoch", ylabel="loss")

    def to_html(self) -> str:
        from ..report import page

        return page(
            f"DAS at {self.site}",
            self.sections(),
            subtitle=f"{self.config.get('epochs')} epochs, loss {self.config.get('loss')}",
        )

    def sections(self) -> list[tuple[str, object]]:
        from ..report import Text, table

        rows = [dict(self.train.row(), patch="DAS subspace (train)")]
        if self.test is not None:
            rows.append(dict(self.test.row(), patch="DAS subspace (held out)"))
        if self.random:
            rows.append(dict(self.random_baseline(), patch=f"random {self.basis.shape[1]}-dim (mean)"))
        note = Text(
            f"Site {self.site}, k = {self.basis.shape[1]}. fldd: fraction of logit difference lost "
            "(1 - LD_patched / LD_clean); flipped: share of examples with LD < 0; iia: interchange-"
            "intervention accuracy (top token = the counterfactual answer)."
        )
        return [("DAS", note), ("DAS patching", table(rows)), ("DAS training", self.plot())]

    def save(self, run_dir: str | Path, model_name: str = "") -> Path:
        """A run folder (kind "das"): subspace.safetensors, das.json, report.html, run.json."""
        from safetensors.torch import save

        from ..report import save_page
        from ..runs import write_atomic, write_json, write_run

        run_dir = Path(run_dir)
        basis = save({"basis": self.basis.contiguous()}, metadata={"site": self.site})
        write_atomic(run_dir / "subspace.safetensors", basis)
        write_json(run_dir / "das.json", self.to_dict())
        save_page(self.to_html(), run_dir / "report.html")
        write_run(run_dir, "das", f"DAS at {self.site}", model=model_name, site=self.site)
        return run_dir


def load_subspace(path: str | Path) -> Tensor:
    """The basis [d, k] saved by DASResult.save (a run folder or the .safetensors file)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "subspace.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no subspace at {path}: give a DAS run folder or its subspace.safetensors")
    return load_file(str(path))["basis"]


def _loss(problem: SiteProblem, logits: Tensor, idx: Tensor, loss: str) -> Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, problem.target[idx])
    # push the target above the base answer (for a flip task, target = wrong: minimise the LD)
    tgt = logits.gather(1, problem.target[idx, None])
    ans = logits.gather(1, problem.answer[idx, None])
    return (ans - tgt).mean()


def train_subspace(
    problem: SiteProblem,
    k: int = 1,
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 20,
    loss: str = "ce",
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[float], None] | None = None,
) -> tuple[Tensor, list[float]]:
    """Learn an orthonormal basis [d, k] on `problem`; -> (basis, mean loss per epoch).

    on_step(loss) is called after every optimiser step with that step's batch loss (e.g. to plot it)."""
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: choose one of {', '.join(LOSSES)}")
    if not 1 <= k <= problem.d:
        raise ValueError(f"k must be between 1 and the site's dimension {problem.d}, not {k}")
    if problem.n < 1:
        raise ValueError("no examples to train on")
    torch.manual_seed(seed)
    rotation = torch.nn.Linear(problem.d, k, bias=False)  # weight [k, d]: orthonormal rows
    torch.nn.init.orthogonal_(rotation.weight)
    torch.nn.utils.parametrizations.orthogonal(rotation)
    params = list(rotation.parameters())
    steps = epochs * math.ceil(problem.n / batch_size)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(total=steps, desc=f"DAS {problem.site}", disable=not progress, leave=False)
    for _ in range(epochs):
        order, total = torch.randperm(problem.n, generator=gen), 0.0
        for i in range(0, problem.n, batch_size):
            idx = order[i : i + batch_size]
            basis = rotation.weight.T  # [d, k]
            h = interchange(problem.base[idx], problem.source[idx], basis)
            value = _loss(problem, problem.run(h, idx), idx, loss)
            # grads for the rotation only: the model's own parameters never get .grad
            grads = torch.autograd.grad(value, params)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step_loss = float(value.detach())
            total += step_loss * len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if on_step is not None:
                on_step(step_loss)
        history.append(total / problem.n)
    bar.close()
    with torch.no_grad():
        return orthonormal(rotation.weight.T.detach()), history


def random_subspaces(d: int, k: int, n: int, seed: int = 0) -> list[Tensor]:
    """n random k-dim subspaces of R^d (orthonormalised Gaussian matrices [d, k])."""
    gen = torch.Generator().manual_seed(seed)
    return [orthonormal(torch.randn(d, k, generator=gen)) for _ in range(n)]


def das(
    model,
    task=None,
    site: str | None = None,
    k: int = 1,
    test_task=None,
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 20,
    loss: str = "ce",
    n_random: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> DASResult:
    """Distributed Alignment Search at `site` on the task's prediction position.

    model: an lmscope Model (then task and site are required; test_task is the held-out split), or a
    SiteProblem (then test_task may be another SiteProblem). The result reports IIA, the fraction of
    logit difference moved and the share flipped on train and held-out data, and the same for n_random
    random subspaces of dimension k (the baseline a learned subspace must beat).
    """
    if isinstance(model, SiteProblem):
        train, test = model, test_task
    else:
        if task is None or site is None:
            raise ValueError(
                "das(model, task, site): give the task and the site (e.g. 'blocks.8.resid_post')"
            )
        train = site_problem(model, task, site)
        test = None if test_task is None else site_problem(model, test_task, site)
    basis, history = train_subspace(train, k, epochs, lr, batch_size, loss, seed, progress)
    held = test if test is not None else train
    held_clean = run_batched(held, held.base)
    result = DASResult(
        site=train.site,
        basis=basis,
        train=evaluate(train, basis, "DAS (train)"),
        test=None if test is None else evaluate(test, basis, "DAS (held out)", clean=held_clean),
        random=[
            evaluate(held, b, f"random {i}", clean=held_clean)
            for i, b in enumerate(random_subspaces(train.d, k, n_random, seed + 1))
        ],
        history=history,
        config={"k": k, "epochs": epochs, "lr": lr, "batch_size": batch_size, "loss": loss, "seed": seed},
    )
    return result

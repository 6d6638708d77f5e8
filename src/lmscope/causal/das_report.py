"""`lmscope das` / `lmscope audit`: DAS on IOI's position signal and the illusion audit, as run folders.

The task follows Makelov et al. (2023): base prompts ABB or BAB, sources with the same names in the other
order, so only the position of the first subject mention differs; patching that signal flips the answer
to the subject. Train on the train split (names and templates), report on the held-out split.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from .audit import AuditResult, audit
from .das import DASResult, das, load_subspace
from .subspace import gradient_direction, mean_difference, probe_direction, site_problem

DIRECTIONS = {"mean_difference": mean_difference, "probe": probe_direction, "gradient": gradient_direction}
_DAS = {name: p.default for name, p in inspect.signature(das).parameters.items()}  # das()'s defaults
TRAINING = ("k", "epochs", "lr")  # what only DAS training reads: nothing, when a subspace is given


@dataclass
class DASOptions:
    """What `lmscope das` sets (run_das_audit's defaults are these; k, epochs and lr are das()'s)."""

    site: str = field(metadata={"help": "e.g. blocks.21.resid_post or blocks.21.mlp.post"})
    n: int = field(default=200, metadata={"help": "training prompt pairs"})
    n_test: int = field(default=100, metadata={"help": "held-out prompt pairs"})
    k: int = field(default=_DAS["k"], metadata={"help": "subspace dimension"})
    epochs: int = field(default=_DAS["epochs"], metadata={"help": "DAS training epochs"})
    lr: float = field(default=_DAS["lr"], metadata={"help": "DAS learning rate"})
    readers: list[str] | None = field(
        default=None,
        metadata={
            "sep": ",",
            "help": "reader heads of a residual site, e.g. blocks.23.attn.q[0],blocks.23.attn.q[1]",
        },
    )
    controls: bool = field(default=True, metadata={"help": "skip the random-weight search"})
    subspace: str | None = field(
        default=None,
        metadata={
            "help": "a DAS run folder, its subspace.safetensors, or mean_difference / probe / gradient"
        },
    )
    seed: int = 0
    out: str = field(default="das_run", metadata={"help": "run folder to write"})


@dataclass
class AuditOptions(DASOptions):
    """What `lmscope audit` sets: DASOptions with a subspace to audit (nothing is trained)."""

    out: str = field(default="audit_run", metadata={"help": "run folder to write"})


@dataclass
class DASAudit:
    das: DASResult | None
    audit: AuditResult
    run_dir: Path


def ioi_position_tasks(model, n: int, n_test: int, seed: int = 0):
    """(train, held-out) IOI tasks whose corrupt prompts swap the name order (ABB <-> BAB)."""
    from ..data.tasks import ioi

    train = ioi(model, n=n, split="train", corruption="pattern", seed=seed)
    test = ioi(model, n=n_test, split="test", corruption="pattern", seed=seed + 1)
    return train, test


def _html(das_result: DASResult | None, audit_result: AuditResult) -> str:
    """One page: the DAS training summary (if any) above the audit."""
    from ..report import page

    if das_result is None:
        return audit_result.to_html()
    return page(
        f"DAS and illusion audit at {audit_result.site}",
        das_result.sections() + audit_result.sections(),
        subtitle=f"verdict: {audit_result.verdict}",
    )


def _describe(subspace) -> str:
    return f"{subspace!r}" if isinstance(subspace, str | Path) else f"(a {tuple(subspace.shape)} tensor)"


def run_das_audit(
    model,
    site: str,
    out: str | Path,
    n: int = DASOptions.n,
    n_test: int = DASOptions.n_test,
    k: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    readers: list[str] | None = None,
    controls: bool = True,
    subspace: Tensor | str | None = None,
    seed: int = DASOptions.seed,
    model_name: str = "",
    progress: bool = True,
) -> DASAudit:
    """Train DAS at `site` (unless `subspace` is given: a tensor, a saved DAS run, or a name in DIRECTIONS),
    audit the subspace on held-out data, and write one run folder with report.html.

    k, epochs, lr: DAS training (None: das()'s defaults); an error with `subspace`, which is not trained."""
    training = {name: value for name, value in zip(TRAINING, (k, epochs, lr)) if value is not None}
    if subspace is not None and training:
        given = ", ".join(f"{name}={value}" for name, value in training.items())
        raise ValueError(
            f"{given} configure DAS training, but the subspace {_describe(subspace)} is given and audited as it "
            f"is (nothing is trained): drop --{'/--'.join(training)}, or train one with `lmscope das`"
        )
    from ..report import save_page
    from ..runs import write_json, write_run

    train, test = ioi_position_tasks(model, n, n_test, seed)
    das_result = None
    if subspace is None:
        das_result = das(model, train, site, test_task=test, seed=seed, progress=progress, **training)
        subspace = das_result.basis
    elif isinstance(subspace, str) and subspace in DIRECTIONS:
        subspace = DIRECTIONS[subspace](site_problem(model, train, site))
    elif isinstance(subspace, str | Path):
        subspace = load_subspace(subspace)
    result = audit(
        model, train, site, subspace=subspace, readers=readers, test_task=test, controls=controls, seed=seed
    )
    run_dir = Path(out)
    if das_result is not None:
        das_result.save(run_dir, model_name)  # subspace.safetensors, das.json
    write_json(run_dir / "audit.json", result.to_dict())
    save_page(_html(das_result, result), run_dir / "report.html")
    kind = "das" if das_result is not None else "audit"
    write_run(
        run_dir,
        kind,
        f"{kind.upper()} at {result.site}: {result.verdict}",
        model=model_name,
        site=result.site,
        verdict=result.verdict,
    )
    return DASAudit(das_result, result, run_dir)

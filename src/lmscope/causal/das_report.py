"""`lmscope das` / `lmscope audit`: DAS on IOI's position signal and the illusion audit, as run folders.

The task follows Makelov et al. (2023): base prompts ABB or BAB, sources with the same names in the other
order, so only the position of the first subject mention differs; patching that signal flips the answer
to the subject. Train on the train split (names and templates), report on the held-out split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from .audit import AuditResult, audit
from .das import DASResult, das, load_subspace
from .subspace import gradient_direction, mean_difference, probe_direction, site_problem

DIRECTIONS = {"mean_difference": mean_difference, "probe": probe_direction, "gradient": gradient_direction}


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


def run_das_audit(
    model,
    site: str,
    out: str | Path,
    n: int = 200,
    n_test: int = 100,
    k: int = 1,
    epochs: int = 10,
    lr: float = 0.01,
    readers: list[str] | None = None,
    controls: bool = True,
    subspace: Tensor | str | None = None,
    seed: int = 0,
    model_name: str = "",
    progress: bool = True,
) -> DASAudit:
    """Train DAS at `site` (unless `subspace` is given: a tensor, a saved DAS run, or a name in DIRECTIONS),
    audit the subspace on held-out data, and write one run folder with report.html."""
    from ..report import save_page
    from ..runs import write_json, write_run

    train, test = ioi_position_tasks(model, n, n_test, seed)
    das_result = None
    if subspace is None:
        das_result = das(
            model, train, site, k=k, test_task=test, epochs=epochs, lr=lr, seed=seed, progress=progress
        )
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

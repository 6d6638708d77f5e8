"""The illusion audit: is a subspace that "works" under patching what the model uses?

Makelov, Lange & Nanda (2023) show that patching a direction v = v_kernel + v_row can fake a feature:
v_kernel varies with the concept but nothing downstream reads it, v_row is read but never varies on the data
(dormant), and patching along v bridges the two. `audit` runs the checks that expose this, each with its
numbers and a documented threshold, and gives a verdict that cites the checks behind it:

- effect:      patching the subspace must move the logit difference by at least MIN_EFFECT (10%) of the
               clean one (|fldd| >= MIN_EFFECT, on the held-out task when given). Below it the verdict is
               "no effect": there is no effect to explain, so the checks that explain one (component,
               row_space, dormancy, neurons, controls) say "n/a" (their numbers are kept, not judged).
- component:   the whole component patched vs the subspace. Suspicious when the subspace moves the logit
               difference more than COMPONENT_MARGIN beyond the whole component (fractions of the clean LD).
- row_space:   v split against the downstream read-out weights. Suspicious when the read part alone keeps
               less than ROW_SHARE of v's effect.
- dormancy:    class separation (Cohen's d) of clean projections on v_row vs v_kernel, and where patched
               activations land: suspicious when v_row separates the classes less than DORMANT_RATIO times
               v_kernel does, or more than OUTSIDE_SHARE of patched projections fall outside the clean range.
- neurons:     (sites with a privileged basis) the direction's correlation with the concept and its causal
               effect attributed to single neurons. Illusory when the two come from disjoint neurons
               (overlap < OVERLAP_ILLUSORY), suspicious below OVERLAP_SUSPICIOUS.
- controls:    random subspaces of the same dimension (suspicious when more than RANDOM_P of them move the
               logit difference as much) and, for MLP neurons, the same search in an MLP with random weights
               of matched norms (suspicious when it reaches controls.RANDOM_WEIGHT_SHARE of the subspace's effect).
- agreement:   cosines to the class-mean difference, a logistic probe and the metric's gradient
               (suspicious when all are below AGREEMENT_MIN).
Verdict: "no effect" below MIN_EFFECT; illusory if a check says so, or if the component and row_space
checks both fail (the paper's two warning signs together); suspicious if any check fails; "untested" if the
effect cannot be measured (a zero clean logit difference) or no check could run; consistent otherwise.
A check that could not run, or whose numbers could not be computed, says "n/a", never "pass".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .controls import random_weight_check
from .result import Check
from .subspace import (
    PatchOutcome,
    SiteProblem,
    evaluate,
    gradient_direction,
    interchange,
    mean_difference,
    orthonormal,
    probe_direction,
    run_batched,
    site_problem,
)

COMPONENT_MARGIN = 0.25
ROW_SHARE = 0.5
DORMANT_RATIO = 0.5
OUTSIDE_SHARE = 0.5
OVERLAP_ILLUSORY = 0.25
OVERLAP_SUSPICIOUS = 0.5
QUIET = 0.1  # a neuron is silent / unread below this fraction of the median neuron's std / read-out norm
RANDOM_P = 0.05
AGREEMENT_MIN = 0.1
MIN_EFFECT = 0.1  # below this fraction of the clean LD a subspace has no effect worth auditing
MIN_RANDOM_DIM = 16  # random directions say nothing in a space this small
VERDICTS = ("consistent", "suspicious", "illusory", "no effect", "untested")


@dataclass
class AuditResult:
    site: str
    verdict: str
    reasons: list[str]
    checks: list[Check]
    outcomes: list[PatchOutcome]  # full component, v, v_row, v_kernel, mean difference, probe, gradient
    projections: dict[str, Tensor]  # 1-d projections for the histograms
    attribution: dict = field(default_factory=dict)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def table(self) -> list[dict]:
        """Rows in the form of Makelov et al.'s Table 1."""
        return [o.row() for o in self.outcomes]

    def to_dict(self) -> dict:
        return {
            "site": self.site,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "table": self.table(),
            "checks": [
                {"name": c.name, "status": c.status, "detail": c.detail, **c.values} for c in self.checks
            ],
            "attribution": self.attribution,
        }

    def to_html(self) -> str:
        from ..report import page

        return page(f"Illusion audit at {self.site}", self.sections(), subtitle=f"verdict: {self.verdict}")

    def _passed_text(self) -> str:
        skipped = [c.name for c in self.checks if c.status == "n/a"]
        return "every check that could run passed" + (f" (n/a: {', '.join(skipped)})" if skipped else "")

    def sections(self) -> list[tuple[str, object]]:
        """The report's sections (heading, content), for pages that combine several results."""
        from ..report import Text, histogram, table

        sections = [
            (
                "Verdict",
                Text(f"{self.verdict.upper()}: " + ("; ".join(self.reasons) or self._passed_text())),
            ),
            (
                "Patching (held out)",
                table(self.table(), columns=["patch", "logit_diff", "fldd", "flipped", "iia"]),
            ),
            (
                "Checks",
                table([{"check": c.name, "status": c.status, "detail": c.detail} for c in self.checks]),
            ),
        ]
        for name in ("v", "v_row"):
            clean, patched = self.projections.get(f"{name}_clean"), self.projections.get(f"{name}_patched")
            if clean is None or patched is None:
                continue
            lo, hi = float(min(clean.min(), patched.min())), float(max(clean.max(), patched.max()))
            edges = torch.linspace(lo, hi + 1e-6, 31).tolist()
            sections.append(
                (f"Projection on {name}: clean", histogram(clean, bins=edges, xlabel=f"h · {name}"))
            )
            sections.append(
                (f"Projection on {name}: patched", histogram(patched, bins=edges, xlabel=f"h · {name}"))
            )
        if self.attribution:
            rows = [
                {"part": part, "neuron": i, "share": share}
                for part in ("correlation", "effect")
                for i, share in self.attribution.get(f"{part}_top", [])
            ]
            sections.append(("Neuron attribution", table(rows)))
        note = Text(
            "fldd: fraction of logit difference lost (1 - LD_patched / LD_clean); flipped: share with LD < 0; "
            "iia: share whose top token is the counterfactual answer. See lmscope.causal.audit for thresholds."
        )
        sections.append(("Notes", note))
        return sections

    def save(self, run_dir: str | Path, model_name: str = "") -> Path:
        """A run folder (kind "audit"): audit.json, report.html, run.json."""
        from ..report import save_page
        from ..runs import write_json, write_run

        run_dir = Path(run_dir)
        write_json(run_dir / "audit.json", self.to_dict())
        save_page(self.to_html(), run_dir / "report.html")
        write_run(run_dir, "audit", f"Audit at {self.site}: {self.verdict}", model=model_name, site=self.site)
        return run_dir


# ------------------------------------------------------------------------------------------------ checks


def _split(basis: Tensor, read_out: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """basis [d, k] -> its parts in read_out's column span and orthogonal to it ([d, k] each, unnormalised)."""
    if read_out is None:
        return None, None
    q, r = torch.linalg.qr(read_out.float())
    q = q[:, r.diagonal().abs() > 1e-6 * r.diagonal().abs().max()]
    row = q @ (q.T @ basis)
    return row, basis - row


def _unit_or_none(part: Tensor | None) -> Tensor | None:
    if part is None or part.norm() < 1e-6:
        return None
    return orthonormal(part)


def _separation(proj: Tensor, labels: Tensor) -> float:
    """Cohen's d of 1-d projections between the two classes."""
    a, b = proj[labels == 1], proj[labels == 0]
    pooled = ((a.var(unbiased=False) + b.var(unbiased=False)) / 2).sqrt()
    scale = proj.abs().max().clamp(min=1e-12)
    return float((a.mean() - b.mean()).abs() / pooled.clamp(min=1e-6 * scale))


def _wasserstein(a: Tensor, b: Tensor, grid: int = 101) -> float:
    """1-d earth mover's distance between two samples (by quantiles)."""
    qs = torch.linspace(0, 1, grid)
    return float((torch.quantile(a.float(), qs) - torch.quantile(b.float(), qs)).abs().mean())


def _effect_check(v: PatchOutcome) -> Check:
    """Does patching the subspace move the logit difference at all (|fldd| >= MIN_EFFECT)?"""
    values = {"fldd": v.fldd, "flipped": v.flipped, "iia": v.iia, "min_effect": MIN_EFFECT}
    moved = f"patching the subspace loses {v.fldd:.1%} of the logit difference (flipped {v.flipped:.0%})"
    if not math.isfinite(v.fldd):
        return Check("effect", "n/a", "the clean logit difference is zero: no fraction of it to lose", values)
    if abs(v.fldd) < MIN_EFFECT:
        return Check("effect", "no effect", f"{moved}, less than the minimum {MIN_EFFECT:.0%}", values)
    return Check("effect", "pass", f"{moved}, iia {v.iia:.0%}", values)


def _not_judged(check: Check, why: str) -> Check:
    """The check's numbers without its judgement: they explain an effect the subspace does not have."""
    if check.status == "n/a":
        return check
    return Check(check.name, "n/a", f"not judged ({why}); {check.detail}", check.values)


def _component_check(full: PatchOutcome, v: PatchOutcome) -> Check:
    values = {"fldd_subspace": v.fldd, "fldd_component": full.fldd}
    if not (math.isfinite(v.fldd) and math.isfinite(full.fldd)):
        return Check("component", "n/a", "the clean logit difference is zero", values)
    gap = v.fldd - full.fldd
    status = "suspicious" if gap > COMPONENT_MARGIN else "pass"
    detail = f"subspace loses {v.fldd:.0%} of the logit difference, the whole component {full.fldd:.0%}" + (
        " (the subspace is far stronger than its component)" if status != "pass" else ""
    )
    return Check("component", status, detail, values)


def _row_check(problem: SiteProblem, row, kernel, v: PatchOutcome, v_row: PatchOutcome | None) -> Check:
    if row is None:
        return Check("row_space", "n/a", "no read-out weights known for this site")
    norms = {"norm_row": float(row.norm()), "norm_kernel": float(kernel.norm())}
    if float(kernel.norm()) < 1e-4:
        return Check(
            "row_space", "n/a", f"the read-out ({problem.read_out_note}) spans the whole space", norms
        )
    row_fldd = 0.0 if v_row is None else v_row.fldd  # no read part at all: it keeps nothing
    share = row_fldd / v.fldd if abs(v.fldd) >= MIN_EFFECT else float("nan")
    if not math.isfinite(share):
        detail = "the subspace has no effect for its read part to keep"
        return Check("row_space", "n/a", detail, {**norms, "row_share_of_effect": share})
    status = "suspicious" if share < ROW_SHARE else "pass"
    detail = (
        f"|v_row| = {norms['norm_row']:.2f}, |v_kernel| = {norms['norm_kernel']:.2f} against "
        f"{problem.read_out_note}; the read part alone keeps {share:.0%} of the effect"
    )
    return Check("row_space", status, detail, {**norms, "row_share_of_effect": share})


def _dormancy_check(problem, basis, row_unit, kernel_unit, projections) -> Check:
    acts, labels = problem.acts_by_class()
    patched = interchange(problem.base, problem.source, basis)
    values = {}
    for name, unit in (("v", basis[:, :1]), ("v_row", row_unit), ("v_kernel", kernel_unit)):
        if unit is None:
            continue
        clean_proj, patched_proj = (acts @ unit[:, 0]), (patched @ unit[:, 0])
        projections[f"{name}_clean"], projections[f"{name}_patched"] = clean_proj, patched_proj
        lo, hi = clean_proj.min(), clean_proj.max()
        span = (hi - lo).clamp(min=1e-6 * max(float(clean_proj.abs().max()), 1e-12))
        outside = ((patched_proj < lo - 1e-3 * span) | (patched_proj > hi + 1e-3 * span)).float().mean()
        values[f"separation_{name}"] = _separation(clean_proj, labels)
        values[f"outside_{name}"] = float(outside)
        values[f"emd_{name}"] = _wasserstein(patched_proj, clean_proj) / float(
            clean_proj.std().clamp(min=1e-6)
        )
    if row_unit is None:
        return Check("dormancy", "n/a", "no read part to test", values)
    if not all(math.isfinite(x) for x in values.values()):
        return Check("dormancy", "n/a", "the projections' statistics could not be computed", values)
    reasons = []
    if kernel_unit is not None and values["separation_v_row"] < DORMANT_RATIO * values["separation_v_kernel"]:
        reasons.append(
            f"v_row separates the classes (d = {values['separation_v_row']:.2f}) far less than v_kernel "
            f"(d = {values['separation_v_kernel']:.2f}): the read part is dormant"
        )
    if values["outside_v_row"] > OUTSIDE_SHARE:
        reasons.append(f"{values['outside_v_row']:.0%} of patched v_row projections leave the clean range")
    detail = "; ".join(reasons) or (
        f"v_row separates the classes (d = {values['separation_v_row']:.2f}); "
        f"{values['outside_v_row']:.0%} of patched projections leave the clean range"
    )
    return Check("dormancy", "suspicious" if reasons else "pass", detail, values)


def _neuron_check(problem: SiteProblem, basis: Tensor, batch_size: int = 32) -> tuple[Check, dict]:
    """Correlation c_i = Δμ_i (P Δμ)_i and effect e_i = |mean_n Δh_ni g_ni| per neuron, P = B Bᵀ."""
    if not problem.privileged:
        return Check("neurons", "n/a", "the site has no privileged basis (not MLP neurons)"), {}
    acts, labels = problem.acts_by_class()
    delta_mu = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
    corr = (delta_mu * (basis @ (basis.T @ delta_mu))).abs()
    effect = torch.zeros(problem.d)
    for i in range(0, problem.n, batch_size):
        idx = torch.arange(i, min(i + batch_size, problem.n))
        h = problem.base[idx].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(problem.logit_diff(problem.run(h, idx), idx).sum(), h)
        dh = interchange(problem.base[idx], problem.source[idx], basis) - problem.base[idx]
        effect += (dh * grad).sum(0)
    effect = (effect / problem.n).abs()
    if corr.sum() < 1e-12 or effect.sum() < 1e-12:
        return Check("neurons", "n/a", "the subspace neither varies with the concept nor acts"), {}
    c_share, e_share = corr / corr.sum(), effect / effect.sum()
    overlap = float(torch.minimum(c_share, e_share).sum())
    std = acts.std(0, unbiased=False)
    silent = std < QUIET * std.median().clamp(min=1e-12)
    patched = interchange(problem.base, problem.source, basis)
    pushed_out = ((patched < acts.min(0).values - 1e-6) | (patched > acts.max(0).values + 1e-6)).any(0)
    values = {
        "overlap": overlap,
        "effect_from_silent": float(e_share[silent].sum()),
        "effect_pushed_out_of_range": float(e_share[pushed_out].sum()),
    }
    if problem.read_out is not None:
        read = problem.read_out.float().norm(dim=1)
        values["correlation_from_unread"] = float(
            c_share[read < QUIET * read.median().clamp(min=1e-12)].sum()
        )
    top = lambda share: [(int(i), float(share[i])) for i in share.argsort(descending=True)[:5]]  # noqa: E731
    attribution = {"correlation_top": top(c_share), "effect_top": top(e_share), **values}
    status = (
        "illusory" if overlap < OVERLAP_ILLUSORY else "suspicious" if overlap < OVERLAP_SUSPICIOUS else "pass"
    )
    detail = (
        f"correlation and effect share {overlap:.0%} of their neuron weight; correlation mostly from neurons "
        f"{[i for i, _ in attribution['correlation_top'][:3]]}, effect from {[i for i, _ in attribution['effect_top'][:3]]}"
        f"; {values['effect_from_silent']:.0%} of the effect comes from neurons silent on the data"
    )
    if "correlation_from_unread" in values:
        detail += f", {values['correlation_from_unread']:.0%} of the correlation from neurons nothing reads"
    return Check("neurons", status, detail, values), attribution


def _random_check(problem, v: PatchOutcome, k: int, n_random: int, seed: int, clean: Tensor) -> Check:
    if problem.d < MIN_RANDOM_DIM or n_random < 1:
        return Check("random_directions", "n/a", f"not meaningful in {problem.d} dimensions")
    gen = torch.Generator().manual_seed(seed)
    fldds = torch.tensor(
        [
            evaluate(problem, torch.randn(problem.d, k, generator=gen), clean=clean).fldd
            for _ in range(n_random)
        ]
    )
    p = float((fldds.abs() >= abs(v.fldd)).float().mean())
    values = {"random_fldd_mean": float(fldds.mean()), "random_fldd_max": float(fldds.max()), "p": p}
    if not (torch.isfinite(fldds).all() and math.isfinite(v.fldd)):
        return Check("random_directions", "n/a", "the clean logit difference is zero", values)
    status = "suspicious" if p > RANDOM_P else "pass"
    detail = f"{n_random} random {k}-dim subspaces lose {float(fldds.mean()):.1%} on average (max {float(fldds.max()):.1%}); share as strong as v: {p:.0%}"
    return Check("random_directions", status, detail, values)


def _agreement_check(basis: Tensor, others: dict[str, Tensor]) -> Check:
    values = {f"cos_{name}": float((basis.T @ d).norm()) for name, d in others.items()}
    finite = [x for x in values.values() if math.isfinite(x)]
    if not finite:
        return Check("agreement", "n/a", "no comparison direction could be computed", values)
    status = "suspicious" if max(finite) < AGREEMENT_MIN else "pass"
    detail = ", ".join(f"|cos| to {name[4:].replace('_', ' ')} {value:.2f}" for name, value in values.items())
    return Check("agreement", status, detail, values)


def _verdict(checks: list[Check]) -> tuple[str, list[str]]:
    """One of VERDICTS and the checks behind it (see the module docstring)."""
    effect = next(c for c in checks if c.name == "effect")
    if effect.status != "pass":
        return ("no effect" if effect.status == "no effect" else "untested"), [f"effect: {effect.detail}"]
    failed = [c for c in checks if c.status in ("suspicious", "illusory")]
    reasons = [f"{c.name}: {c.detail}" for c in failed]
    names = {c.name for c in failed}
    if any(c.status == "illusory" for c in failed) or {"component", "row_space"} <= names:
        return "illusory", reasons
    if failed:
        return "suspicious", reasons
    if not any(c.status == "pass" for c in checks if c.name != "effect"):
        return "untested", ["no check could run: " + "; ".join(f"{c.name}: {c.detail}" for c in checks[1:])]
    return "consistent", []


# ------------------------------------------------------------------------------------------------- audit


def audit(
    model,
    task=None,
    site: str | None = None,
    subspace: Tensor | None = None,
    readers: list[str] | None = None,
    test_task=None,
    controls: bool = True,
    n_random: int = 20,
    control_epochs: int = 5,
    seed: int = 0,
) -> AuditResult:
    """Audit `subspace` ([d] or [d, k]) at `site` for the MLP-in-the-middle illusion.

    model: an lmscope Model with task and site (patching is measured on test_task when given, the
    comparison directions are fitted on task), or a SiteProblem (then task may be a SiteProblem to fit the
    comparison directions on). readers: what reads a residual-stream site, named
    as model.sites.parse_component does (e.g. "blocks.23.attn.q[0]").
    controls=False skips the random-weight search (a second DAS run).
    """
    if subspace is None:
        raise ValueError(
            "audit needs subspace= (a direction [d] or basis [d, k], e.g. a DAS result's .basis)"
        )
    if isinstance(model, SiteProblem):
        problem = model
        fit = task if isinstance(task, SiteProblem) else problem
    else:
        if task is None or site is None:
            raise ValueError("audit(model, task, site, subspace=...): give the task and the site")
        fit = site_problem(model, task, site, readers=readers)
        problem = fit if test_task is None else site_problem(model, test_task, site, readers=readers)
    if subspace.shape[0] != problem.d:
        raise ValueError(f"the subspace has dimension {subspace.shape[0]}, the site {problem.d}")
    basis = orthonormal(subspace)
    k = basis.shape[1]
    row, kernel = _split(basis, problem.read_out)
    row_unit, kernel_unit = _unit_or_none(row), _unit_or_none(kernel)
    directions = {
        "mean_difference": mean_difference(fit),
        "probe": probe_direction(fit),
        "gradient": gradient_direction(fit),
    }
    clean = run_batched(problem, problem.base)
    ev = lambda b, name: evaluate(problem, b, name, clean=clean)  # noqa: E731
    full, v = ev(None, "full component"), ev(basis, "v")
    outcomes = [full, v]
    if row_unit is not None:
        outcomes.append(ev(row_unit, "v_row"))
    if kernel_unit is not None:
        outcomes.append(ev(kernel_unit, "v_kernel"))
    outcomes += [ev(d, name.replace("_", " ")) for name, d in directions.items()]
    by_name = {o.name: o for o in outcomes}

    projections: dict[str, Tensor] = {}
    effect = _effect_check(v)
    checks = [_component_check(full, v)]
    checks.append(_row_check(problem, row, kernel, v, by_name.get("v_row")))
    checks.append(_dormancy_check(problem, basis, row_unit, kernel_unit, projections))
    neuron_check, attribution = _neuron_check(problem, basis)
    checks.append(neuron_check)
    if effect.status == "pass":
        checks.append(_random_check(problem, v, k, n_random, seed, clean))
        if controls and not isinstance(model, SiteProblem):
            checks.append(random_weight_check(model, task, site, test_task, v, k, control_epochs, seed))
    else:  # the controls compare effects: nothing to compare, and the random-weight search is a DAS run
        why = "no effect to compare" if effect.status == "no effect" else "the effect cannot be measured"
        checks.append(Check("random_directions", "n/a", f"not run: {why}"))
        if controls and not isinstance(model, SiteProblem):
            checks.append(Check("random_weights", "n/a", f"not run: {why}"))
        checks = [_not_judged(c, why) for c in checks]
    checks = [effect, *checks, _agreement_check(basis, directions)]
    verdict, reasons = _verdict(checks)
    return AuditResult(problem.site, verdict, reasons, checks, outcomes, projections, attribution)

"""`lmscope ioi`: the IOI circuit analysis of Wang et al. (2022) on any model, as one HTML report.

Stages: clean performance on held-out names and templates; exact patching heatmaps (layer x head,
layer x position); attribution patching against the exact sweeps; the heads that play the IOI roles
(name movers, negative name movers, S-inhibition, induction and duplicate-token heads), each with the
numbers that give it the role.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..data.tasks.ioi import TEMPLATES, TRAIN_TEMPLATES, ioi
from ..model.sites import format_component
from ..report import Text, bar_chart, heatmap, page, save_page, scatter, table
from . import metrics as M
from .attribution import attribution_patch, compare
from .heads import attention_to, direct_logit_attribution
from .path import path_patch
from .sweep import patch_sweep


@dataclass
class IOIReport:
    performance: dict
    head_sweep: object
    position_sweep: object
    atp_agreement: dict
    roles: list[dict]
    sections: list = field(default_factory=list, repr=False)
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "performance": self.performance,
            "atp_agreement": self.atp_agreement,
            "roles": self.roles,
            "head_sweep": self.head_sweep.to_dict(),
            "position_sweep": self.position_sweep.to_dict(),
            "timings": self.timings,
        }

    def to_html(self, model_name: str = "") -> str:
        return page(
            f"IOI circuit analysis {model_name}".strip(),
            self.sections,
            subtitle="Indirect object identification (Wang et al. 2022), measured with lmscope",
        )


def _top_heads(values: torch.Tensor, k: int, mask: torch.Tensor | None = None, largest: bool = True):
    v = values.clone()
    if mask is not None:
        v[~mask] = float("-inf") if largest else float("inf")
    flat = v.flatten()
    order = flat.argsort(descending=largest)[:k]
    heads = [divmod(int(i), values.shape[1]) for i in order if torch.isfinite(flat[i])]
    return heads


def _performance(model, task) -> dict:
    with torch.no_grad():
        clean = model(task.inputs("clean"))[:, -1]
        corrupt = model(task.inputs("corrupt"))[:, -1]
    ld, ld_corrupt = M.logit_diff(clean, task), M.logit_diff(corrupt, task)
    low, high = M.bootstrap_ci(lambda t: t.mean(-1), ld)
    return {
        "n": len(task),
        "logit_diff": float(ld.mean()),
        "logit_diff_ci": [float(low), float(high)],
        "accuracy": float((ld > 0).float().mean()),
        "corrupt_logit_diff": float(ld_corrupt.mean()),
        "answer_prob": float(M.answer_prob(clean, task).mean()),
    }


def _roles(model, task, head_sweep, dla) -> list[dict]:
    """dla: mean direct logit attribution per head [layer, head]."""
    attn = attention_to(model, task, "END", ("IO", "S1", "S2"))
    dup = dict(task.positions)
    dup["S1+1"] = task.positions["S1"] + 1
    task_dup = replace(task, positions=dup)
    from_s2 = attention_to(model, task_dup, "S2", ("S1", "S1+1"))
    effect = head_sweep.values
    roles = []

    def add(role, heads, evidence):
        for layer, head in heads:
            roles.append(
                {"role": role, "head": format_component(layer, "attn.z", head), **evidence(layer, head)}
            )

    def base(layer, head):
        return {
            "DLA": float(dla[layer, head]),
            "attn END->IO": float(attn["IO"].values[layer, head]),
            "attn END->S2": float(attn["S2"].values[layer, head]),
            "patch effect": float(effect[layer, head]),
        }

    movers = _top_heads(dla, 3, attn["IO"].values > 0.2)
    add("name mover", movers, base)
    add("negative name mover", _top_heads(dla, 2, (attn["IO"].values > 0.1) & (dla < 0), largest=False), base)
    if movers:
        first = min(layer for layer, _ in movers)
        allowed = torch.zeros_like(dla, dtype=torch.bool)
        allowed[:first] = True
        candidates = _top_heads(attn["S2"].values, 6, allowed)
        receivers = [f"blocks.{layer}.attn.q[{head}]" for layer, head in movers]
        for layer, head in candidates:
            res = path_patch(
                model, task, senders=[f"blocks.{layer}.attn.z[{head}]"], receivers=receivers, progress=False
            )
            row = base(layer, head)
            row["path effect on name movers' queries"] = 1.0 - float(res.values[0])
            if row["path effect on name movers' queries"] > 0.02:
                roles.append({"role": "S-inhibition", "head": format_component(layer, "attn.z", head), **row})

    def copy_evidence(layer, head):
        return {
            "attn S2->S1": float(from_s2["S1"].values[layer, head]),
            "attn S2->S1+1": float(from_s2["S1+1"].values[layer, head]),
            "patch effect": float(effect[layer, head]),
        }

    add("induction", _top_heads(from_s2["S1+1"].values, 3, from_s2["S1+1"].values > 0.2), copy_evidence)
    add("duplicate token", _top_heads(from_s2["S1"].values, 3, from_s2["S1"].values > 0.2), copy_evidence)
    return roles


@dataclass
class IOIOptions:
    """What `lmscope ioi` sets (run_ioi's and write_ioi_report's defaults are these)."""

    n: int = field(default=20, metadata={"help": "prompt pairs for the patching sweeps"})
    n_eval: int = field(default=100, metadata={"help": "prompt pairs for accuracy"})
    seed: int = 0
    out: str = field(default="ioi_report.html", metadata={"help": "the HTML report to write"})

    def __post_init__(self):
        if self.n < 2:
            raise ValueError(f"--n must be at least 2 prompt pairs, got {self.n}")


def run_ioi(
    model,
    n: int = IOIOptions.n,
    n_eval: int = IOIOptions.n_eval,
    seed: int = IOIOptions.seed,
    progress: bool = True,
    log=print,
) -> IOIReport:
    """Run every stage on `model` and return the report (numbers first; .to_html() for the page)."""
    timings = {}
    start = time.perf_counter()
    performance = _performance(model, ioi(model, n=n_eval, split="test", seed=seed))
    log(
        f"clean test split: logit diff {performance['logit_diff']:.2f}, accuracy {performance['accuracy']:.1%}"
    )
    timings["performance"] = time.perf_counter() - start

    task = ioi(model, n=n, split="test", seed=seed)
    start = time.perf_counter()
    head_sweep = patch_sweep(model, task, "blocks.*.attn.z", per="head", progress=progress)
    timings["head sweep"] = time.perf_counter() - start
    one_template = ioi(model, n=n, split="test", seed=seed, templates=[TRAIN_TEMPLATES])
    start = time.perf_counter()
    position_sweep = patch_sweep(model, one_template, "blocks.*.resid_pre", per="position", progress=progress)
    timings["position sweep"] = time.perf_counter() - start

    start = time.perf_counter()
    atp_heads = attribution_patch(model, task, ["blocks.*.attn.z"])["attn.z"]
    atp_resid = attribution_patch(model, one_template, ["blocks.*.resid_pre"])["resid_pre"]
    agreement = {
        "attn.z per head": compare(atp_heads, head_sweep),
        "resid_pre per position": compare(atp_resid, position_sweep),
    }
    timings["attribution"] = time.perf_counter() - start

    start = time.perf_counter()
    dla = direct_logit_attribution(model, task)["heads"].mean(0)  # [layer, head]
    roles = _roles(model, task, head_sweep, dla)
    timings["roles"] = time.perf_counter() - start

    perf_text = (
        f"{performance['n']} held-out prompts (test names, templates {TRAIN_TEMPLATES}..{len(TEMPLATES) - 1}): "
        f"mean logit difference {performance['logit_diff']:.2f} (95% CI {performance['logit_diff_ci'][0]:.2f}.."
        f"{performance['logit_diff_ci'][1]:.2f}), accuracy {performance['accuracy']:.1%}, mean P(IO) "
        f"{performance['answer_prob']:.2f}; on the flipped prompts the logit difference is "
        f"{performance['corrupt_logit_diff']:.2f}."
    )
    agree_rows = [
        {
            "comparison": k,
            **{m: v[m] for m in ("spearman", "pearson", "max_abs_error")},
            "worst index": str(v["worst"]),
        }
        for k, v in agreement.items()
    ]
    sections = [
        ("Performance", Text(perf_text)),
        (
            "Patching attention heads (denoising, all positions)",
            [
                head_sweep.plot(),
                Text(
                    "Each cell: the normalised logit difference when that head's output (attn.z) is copied from the clean "
                    "run into the flipped run; 1 restores the clean behaviour."
                ),
            ],
        ),
        (
            "Patching the residual stream by position",
            [
                position_sweep.plot(),
                Text(
                    f"One template ({TEMPLATES[TRAIN_TEMPLATES]!r}) so positions line up; {len(one_template)} prompts."
                ),
            ],
        ),
        (
            "Attribution patching vs exact patching",
            [
                scatter(
                    head_sweep.values.flatten().tolist(),
                    atp_heads.values.flatten().tolist(),
                    labels=[
                        f"{i // model.cfg.n_heads}.{i % model.cfg.n_heads}"
                        for i in range(head_sweep.values.numel())
                    ],
                    title="heads: exact (x) vs attribution estimate (y)",
                    xlabel="exact",
                    ylabel="AtP",
                    diagonal=True,
                ),
                table(agree_rows),
            ],
        ),
        (
            "Heads and their IOI roles",
            [
                table(roles) if roles else Text("no head met the role thresholds"),
                Text(
                    "Name movers: largest direct logit attribution among heads attending END->IO (> 0.2). Negative name "
                    "movers: most negative DLA while attending to IO. S-inhibition: earlier heads attending END->S2 whose "
                    "path-patching effect on the name movers' queries exceeds 0.02. Induction / duplicate-token: attention "
                    "from S2 to the token after S1 / to S1."
                ),
            ],
        ),
        (
            "Direct logit attribution per head",
            heatmap(
                dla.tolist(),
                title="DLA (logits) at END",
                xlabel="head",
                ylabel="layer",
            ),
        ),
        ("Timings (s)", bar_chart(list(timings.values()), list(timings.keys()), title="seconds per stage")),
    ]
    return IOIReport(performance, head_sweep, position_sweep, agreement, roles, sections, timings)


def write_ioi_report(model, path: str | Path = IOIOptions.out, **kwargs) -> tuple[IOIReport, Path]:
    report = run_ioi(model, **kwargs)
    return report, save_page(report.to_html(model.cfg.name), path)

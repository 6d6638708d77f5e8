"""Result types of the causal methods.

GridResult: numbers over named axes (layer x head, layer x position, ...), then pictures of them.
Check: one test of a claim (the illusion audit's checks and its controls), with its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import metrics as M


@dataclass
class Check:
    """One check of a claim. status: "pass" (it ran and found nothing wrong), "suspicious", "illusory",
    "no effect" (the effect check only) or "n/a" (it could not run, or has nothing to judge; never "pass").
    detail: one sentence with the numbers; values: the numbers by name."""

    name: str
    status: str
    detail: str
    values: dict = field(default_factory=dict)


@dataclass
class GridResult:
    """values: [*shape] normalised effect (0 = corrupt, 1 = clean) of each index, from example means.
    per_example: [*shape, n] the raw metric of each example with that index patched.
    ci_low / ci_high: [*shape] 95% bootstrap interval of `values` over examples.
    """

    values: Tensor
    axes: list[str]
    labels: dict[str, list[str]]
    per_example: Tensor | None = None
    clean: float = float("nan")
    corrupt: float = float("nan")
    ci_low: Tensor | None = None
    ci_high: Tensor | None = None
    title: str = ""
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_per_example(
        cls, grid: Tensor, clean_m: Tensor, corrupt_m: Tensor, axes, labels, title="", meta=None
    ):
        """grid [*shape, n] of raw metrics; clean_m / corrupt_m [n] the unpatched runs' metrics."""

        def stat(per: Tensor, clean: Tensor, corrupt: Tensor) -> Tensor:
            return M.normalised(per.mean(-1), clean.mean(-1), corrupt.mean(-1))

        low, high = M.bootstrap_ci(stat, grid, clean_m, corrupt_m)
        return cls(
            stat(grid, clean_m, corrupt_m),
            list(axes),
            dict(labels),
            grid,
            float(clean_m.mean()),
            float(corrupt_m.mean()),
            low,
            high,
            title,
            meta or {},
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def top(self, k: int = 10, by_abs: bool = True) -> list[tuple[dict[str, str], float]]:
        """The k indices with the largest effect: [({axis: label}, value), ...]."""
        flat = self.values.flatten().nan_to_num(0.0)
        order = (flat.abs() if by_abs else flat).argsort(descending=True)[:k]
        out = []
        for i in order.tolist():
            idx = torch.unravel_index(torch.tensor(i), self.values.shape)
            out.append(({a: self.labels[a][int(j)] for a, j in zip(self.axes, idx)}, float(flat[i])))
        return out

    def to_dict(self) -> dict:
        return {
            "title": self.title,
            "axes": self.axes,
            "labels": self.labels,
            "values": self.values.tolist(),
            "ci_low": None if self.ci_low is None else self.ci_low.tolist(),
            "ci_high": None if self.ci_high is None else self.ci_high.tolist(),
            "clean": self.clean,
            "corrupt": self.corrupt,
            "meta": self.meta,
        }

    def plot(self):
        """A heatmap (2-D, or 3-D with the first two axes merged into rows) or a bar chart (1-D)."""
        from ..report import bar_chart, heatmap

        if self.values.dim() == 1:
            axis = self.axes[0]
            return bar_chart(
                self.values.tolist(), [f"{axis} {lab}" for lab in self.labels[axis]], title=self.title
            )
        values = self.values.flatten(0, -2) if self.values.dim() > 2 else self.values
        rows = self.labels[self.axes[0]]
        if self.values.dim() > 2:
            rows = [f"{a}.{b}" for a in self.labels[self.axes[0]] for b in self.labels[self.axes[1]]]
        return heatmap(
            values.tolist(),
            rows,
            self.labels[self.axes[-1]],
            title=self.title,
            xlabel=self.axes[-1],
            ylabel=".".join(self.axes[:-1]),
            center=0.0,
        )

    def to_html(self) -> str:
        from ..report import Text, page, table

        top = [{**idx, "effect": value} for idx, value in self.top(10)]
        return page(
            self.title or "patching",
            [
                ("Effect (0 = corrupt, 1 = clean)", self.plot()),
                ("Largest effects", table(top)),
                ("Baselines", Text(f"clean metric {self.clean:.3f}, corrupt metric {self.corrupt:.3f}")),
            ],
        )

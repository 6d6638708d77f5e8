"""SteeringResult: the numbers of one sweep, then its page; save_run writes one or several as a run folder.

A run folder (kind "steering") holds steering.json (every result's to_dict()), feature_changes.safetensors
(per result and SAE: measured and predicted mean feature changes [n_conditions, d_sae]), report.html and
run.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor


@dataclass
class SteeringResult:
    """One direction swept over scales (plus its ablation).

    conditions: one dict per scale, then "ablation": name, scale (None for ablation), relative_size (the
    added vector's norm over the site's mean activation norm), effect and measure (see Target.units; None
    without a target), kl / loss_delta {label: nats}, cost_kl / cost_loss (their mean over the off-target
    labels), interference (per SAE: r_decoder, r_encoder, off_target_l1, target_delta, top features).
    clean: the unsteered loss per label, mean activation norm at the site and measure.
    generations: {"prompts", "clean": [text], "steered": {condition: [text]}}.
    feature_arrays: "sae{j}.measured" / ".predicted" / ".predicted_encoder" [n_conditions, d_sae], ".clean_mean",
    ".fire_rate" [d_sae] (saved beside the JSON, not in it).
    """

    direction: dict
    site: str
    target: dict | None
    labels: list[str]
    off_target_labels: list[str]
    conditions: list[dict]
    clean: dict
    generations: dict
    interference: list[dict] = field(default_factory=list)
    feature_arrays: dict[str, Tensor] = field(default_factory=dict, repr=False)
    config: dict = field(default_factory=dict)

    @property
    def steering(self) -> list[dict]:
        """The scale conditions (no ablation), in the order given."""
        return [c for c in self.conditions if not c["ablation"]]

    @property
    def ablation(self) -> dict | None:
        return next((c for c in self.conditions if c["ablation"]), None)

    def to_dict(self) -> dict:
        return {
            "direction": self.direction,
            "site": self.site,
            "target": self.target,
            "labels": self.labels,
            "off_target_labels": self.off_target_labels,
            "conditions": self.conditions,
            "clean": self.clean,
            "generations": self.generations,
            "interference": self.interference,
            "config": self.config,
        }

    def to_html(self) -> str:
        from .report import steering_page

        return steering_page([self])

    def save(self, run_dir: str | Path, model_name: str = "") -> Path:
        return save_run([self], run_dir, model_name)


def save_run(
    results: list[SteeringResult], run_dir: str | Path, model_name: str = "", title: str = ""
) -> Path:
    """Write the run folder of one or several sweeps (compared on one page)."""
    from safetensors.torch import save

    from ..report import save_page
    from ..runs import write_atomic, write_json, write_run
    from .report import steering_page

    if not results:
        raise ValueError("no steering results to save")
    run_dir = Path(run_dir)
    arrays = {f"{i}.{k}": v.contiguous() for i, r in enumerate(results) for k, v in r.feature_arrays.items()}
    if arrays:
        write_atomic(run_dir / "feature_changes.safetensors", save(arrays))
    write_json(run_dir / "steering.json", {"results": [r.to_dict() for r in results]})
    title = title or "Steering: " + ", ".join(r.direction["name"] for r in results)
    save_page(steering_page(results, title), run_dir / "report.html")
    write_run(
        run_dir,
        "steering",
        title,
        model=model_name,
        directions=[r.direction["name"] for r in results],
        target=(results[0].target or {}).get("name", ""),
    )
    return run_dir

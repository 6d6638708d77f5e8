"""The dose-response page: intended effect against side-effect cost as the scale grows, per direction.

One page compares any number of sweeps (ideally with one Target, so their effects share units): which
direction buys the effect most cheaply, then per direction its numbers, what it does to each label's text,
how its interference with the SAE features matches the decoder-cosine prediction, and its continuations.
"""

from __future__ import annotations

import math

from ..report import Text, line_chart, page, scatter, table


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _finite(values) -> bool:
    return any(math.isfinite(_num(v)) for v in values)


def summary_rows(results) -> list[dict]:
    """Per direction: its strongest steering effect, its cost there, the best effect per nat of KL, and
    what ablation does."""
    rows = []
    for r in results:
        steer = [c for c in r.steering if c["effect"] is not None]
        best = max(steer, key=lambda c: c["effect"], default=None)
        ratios = [c["effect"] / c["cost_kl"] for c in steer if c["cost_kl"] > 0]
        abl = r.ablation
        rows.append(
            {
                "direction": r.direction["name"],
                "kind": r.direction["kind"],
                "site": r.site,
                "max effect": None if best is None else best["effect"],
                "at": None if best is None else best["name"],
                "KL there": None if best is None else best["cost_kl"],
                "best effect / KL": max(ratios, default=None),
                "ablation effect": None if abl is None else abl["effect"],
                "ablation KL": None if abl is None else abl["cost_kl"],
            }
        )
    return rows


def dose_response(results):
    """Effect against cost (mean KL on the off-target labels), one line per direction over its scales."""
    series, xs = {}, {}
    for r in results:
        steer = sorted(r.steering, key=lambda c: c["scale"])
        if _finite(c["effect"] for c in steer):
            name = f"{r.direction['name']} ({r.direction['kind']})"
            series[name] = [_num(c["effect"]) for c in steer]
            xs[name] = [c["cost_kl"] for c in steer]
    if not series:
        return Text("No target was given, so there is no intended effect to plot against the cost.")
    return line_chart(
        series, x=xs, title="Dose-response: effect vs side-effect cost", xlabel="mean KL, off-target (nats)",
        ylabel="intended effect",
    )  # fmt: skip


def _by_scale(results, key: str, title: str, ylabel: str):
    series, xs = {}, {}
    for r in results:
        steer = sorted(r.steering, key=lambda c: c["scale"])
        values = [_num(c[key]) for c in steer]
        if _finite(values):
            series[r.direction["name"]] = values
            xs[r.direction["name"]] = [c["relative_size"] or 0.0 for c in steer]
    if not series:
        return None
    return line_chart(series, x=xs, title=title, xlabel="|added vector| / mean |activation|", ylabel=ylabel)


def condition_rows(r) -> list[dict]:
    rows = []
    for c in r.conditions:
        row = {
            "condition": c["name"],
            "scale": c["scale"],
            "relative size": c["relative_size"],
            "effect": c["effect"],
            "KL (off-target)": c["cost_kl"],
            "Δloss (off-target)": c["cost_loss"],
        }
        for j, rec in enumerate(c["interference"]):
            tag = f"SAE{j}" if len(c["interference"]) > 1 else "SAE"
            row[f"{tag} r(pred, meas)"] = rec["r_decoder"]
            row[f"{tag} off-target Σ|Δf|"] = rec["off_target_l1"]
            if rec["target_delta"] is not None:
                row[f"{tag} target Δf"] = rec["target_delta"]
        rows.append(row)
    return rows


def label_rows(r) -> list[dict]:
    """Per condition, KL and loss change on each label's reference text."""
    rows = []
    for c in r.conditions:
        row = {"condition": c["name"]}
        row.update({f"KL {lab}": c["kl"][lab] for lab in r.labels})
        row.update({f"Δloss {lab}": c["loss_delta"][lab] for lab in r.labels})
        rows.append(row)
    return rows


def _interference(r, j: int, rec: dict) -> list:
    """Predicted vs measured feature changes at the largest |scale|, and the features that moved most."""
    steer = r.steering
    if not steer:
        return []
    ci = max(range(len(steer)), key=lambda i: abs(steer[i]["scale"]))
    cond = steer[ci]
    ci = r.conditions.index(cond)
    out = []
    measured = r.feature_arrays.get(f"sae{j}.measured")
    predicted = r.feature_arrays.get(f"sae{j}.predicted")
    if measured is not None and predicted is not None:
        keep = [i for i in range(measured.shape[1]) if i != rec["target_feature"]]
        out.append(
            scatter(
                predicted[ci, keep].tolist(),
                measured[ci, keep].tolist(),
                labels=[f"feature {i}" for i in keep],
                title=f"SAE at {rec['site']}, {cond['name']}: every other feature",
                xlabel="predicted Δf (decoder cosine × firing rate)",
                ylabel="measured mean Δf",
                diagonal=True,
            )
        )
    elif not rec["prediction"]:
        out.append(Text(f"The SAE at {rec['site']} reads another width than the direction: no prediction."))
    top = cond["interference"][j]["top"]
    if top:
        out.append(table(top, float_format="{:.4g}"))
    return out


def _generations(r) -> list:
    gens = r.generations
    if not gens["prompts"]:
        return []
    prompts = [f"prompt {i + 1}: {p!r}" for i, p in enumerate(gens["prompts"])]
    rows = [["unsteered", *gens["clean"]]] + [[name, *texts] for name, texts in gens["steered"].items()]
    return [
        Text("\n".join(prompts)),
        table(rows, ["condition", *[f"prompt {i + 1}" for i in range(len(prompts))]]),
    ]


def direction_sections(r) -> list[tuple[str, object]]:
    d = r.direction
    head = f"{d['name']} ({d['kind']}) at {r.site}"
    note = Text(
        f"Direction norm {d['norm']:.4g}; the site's activations have mean norm {r.clean['act_norm']:.4g}. "
        f"Unsteered loss per label: "
        + ", ".join(f"{lab} {v:.3f}" for lab, v in r.clean["loss"].items())
        + "."
    )
    per_label = Text("KL (nats) and next-token loss change (nats/token) on each label's reference text:")
    tables = [
        table(condition_rows(r), float_format="{:.4g}"),
        per_label,
        table(label_rows(r), float_format="{:.4g}"),
    ]
    sections = [(head, [note, *tables])]
    losses = {lab: [c["loss_delta"][lab] for c in r.steering] for lab in r.labels}
    if r.steering:
        sections.append(
            (
                "",
                line_chart(
                    losses,
                    x=[c["relative_size"] or 0.0 for c in r.steering],
                    title="Next-token loss change per label",
                    xlabel="|added vector| / mean |activation|",
                    ylabel="Δloss (nats/token)",
                ),
            )
        )
    for j, rec in enumerate(r.interference):
        items = _interference(r, j, rec)
        if items:
            sections.append((f"Interference with the SAE at {rec['site']}", items))
    gens = _generations(r)
    if gens:
        sections.append(("Continuations (greedy)", gens))
    return sections


def steering_page(results, title: str = "") -> str:
    """One self-contained HTML page for one or several SteeringResults."""
    results = list(results)
    target = results[0].target
    intro = (
        f"Intended effect: {target['name']}, {target['units']}. "
        if target
        else "No target was given: only the side effects are measured. "
    )
    intro += (
        "Cost: mean KL divergence of next-token distributions (unsteered || steered) over the reference text "
        f"of the off-target labels ({', '.join(results[0].off_target_labels)}). Relative size: the norm of the "
        "added vector over the mean activation norm at the site. Interference: the mean change of every other "
        "SAE feature against the decoder-cosine prediction (Pearson r over features; see the scatter)."
    )
    if len({(r.target or {}).get("name") for r in results}) > 1:
        intro += " Warning: these sweeps measure different targets; their effects are not comparable."
    sections = [
        ("", Text(intro)),
        ("Which direction gets the effect most cheaply", table(summary_rows(results), float_format="{:.4g}")),
        ("", dose_response(results)),
    ]
    for key, name, ylabel in (
        ("effect", "Effect vs size", "effect"),
        ("cost_kl", "Cost vs size", "KL (nats)"),
    ):
        fig = _by_scale(results, key, name, ylabel)
        if fig is not None:
            sections.append(("", fig))
    for r in results:
        sections += direction_sections(r)
    title = title or "Steering: " + ", ".join(r.direction["name"] for r in results)
    return page(title, sections, subtitle=f"model {results[0].config.get('model', '')}")

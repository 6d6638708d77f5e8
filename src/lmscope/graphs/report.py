"""The graph's report: the pruned graph drawn by layer and position, its top nodes, and the verification
(predicted vs measured changes of the target logit and of downstream features, with correlations)."""

from __future__ import annotations

from ..report import Text, esc, page, scatter, table
from .prune import PrunedGraph
from .verify import Verification

COLORS = {"feature": "#4477aa", "error": "#999999", "token": "#228833", "logit": "#cc3311"}


def graph_svg(pruned: PrunedGraph, width: int = 900) -> str:
    """Nodes at (position, layer): tokens at the bottom, the logit on top; edge width ~ |weight|, blue
    positive, red negative; a node's tooltip names it and its influence."""
    g = pruned.to_dict()
    nodes = g["nodes"]
    n_pos = max(len(g["tokens"]), 1)
    n_rows = max(n["layer"] for n in nodes) + 2  # tokens (-1) .. logit (n_layers)
    height = 60 + 48 * n_rows
    col = (width - 80) / n_pos
    place, stack = {}, {}
    for n in nodes:
        key = (n["layer"], n["pos"])
        k = stack.get(key, 0)
        stack[key] = k + 1
        x = 50 + col * n["pos"] + (k % 4) * 9
        y = height - 40 - 48 * (n["layer"] + 1) - (k // 4) * 9
        place[n["id"]] = (x, y)
    edges = g["edges"]
    top = max((abs(e["weight"]) for e in edges), default=1.0) or 1.0
    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for e in edges[:400]:
        (x1, y1), (x2, y2) = place[e["source"]], place[e["target"]]
        color = "#4477aa" if e["weight"] > 0 else "#cc3311"
        w = 0.4 + 3.5 * abs(e["weight"]) / top
        parts.append(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
            f'stroke-opacity="0.5" stroke-width="{w:.2f}"><title>{esc(e["weight"])}</title></line>'
        )
    for n in nodes:
        x, y = place[n["id"]]
        tip = esc(f"{n['label']}  act {n['activation']:.3g}  influence {n['influence']:.3g}")
        parts.append(
            f'<circle class="node {n["kind"]}" cx="{x:.1f}" cy="{y:.1f}" r="4.5" '
            f'fill="{COLORS[n["kind"]]}"><title>{tip}</title></circle>'
        )
    for p, tok in enumerate(g["tokens"]):
        parts.append(
            f'<text x="{50 + col * p:.1f}" y="{height - 12}" font-size="10" text-anchor="start">{esc(tok)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def graph_html(pruned: PrunedGraph, ver: Verification, prompt: str, target: str) -> str:
    g = pruned.to_dict()
    top = sorted((n for n in g["nodes"] if n["kind"] != "token"), key=lambda n: -n["influence"])[:30]
    c = ver.correlations
    sections = [
        (
            "Graph",
            [
                graph_svg(pruned),
                Text(
                    "Nodes by layer (bottom: token embeddings; top: the target logit) and position. Blue "
                    "edges raise their target's pre-activation, red ones lower it; width ~ |direct effect|. "
                    "Edges are direct effects with attention patterns and norm denominators frozen at this "
                    "prompt; grey nodes are the transcoders' errors."
                ),
            ],
        ),
        (
            "Top nodes by influence on the logit",
            table(top, ["label", "kind", "activation", "influence"], "{:.4g}"),
        ),
        (
            "Verification: ablating top features in the real model",
            [
                Text(
                    "Each checked feature is set to 0 in the real model with every MLP replaced by its "
                    "transcoder plus the prompt's error (exact when nothing is ablated). Direct: other "
                    "features held at their clean values, predicted by -A[logit, s]. Total: other features "
                    "recomputed, predicted by propagating the change through the graph linearly. "
                    f"Pearson r: logit direct {_r(c.get('logit_direct'))}, logit total "
                    f"{_r(c.get('logit_total'))}, downstream features {_r(c.get('downstream_features'))} "
                    f"({c.get('n_downstream', 0)} pairs)."
                ),
                table(
                    ver.rows,
                    [
                        "label",
                        "activation",
                        "predicted_direct",
                        "measured_direct",
                        "predicted_total",
                        "measured_total",
                    ],
                    "{:.4g}",
                ),
            ],
        ),
    ]
    if len(ver.rows) >= 2:
        sections.append(
            (
                "",
                [
                    scatter(
                        [r["predicted_direct"] for r in ver.rows], [r["measured_direct"] for r in ver.rows],
                        labels=[r["label"] for r in ver.rows], title="Target logit change, direct",
                        xlabel="graph prediction", ylabel="measured", diagonal=True,
                    ),
                    scatter(
                        [r["predicted_total"] for r in ver.rows], [r["measured_total"] for r in ver.rows],
                        labels=[r["label"] for r in ver.rows], title="Target logit change, total",
                        xlabel="graph prediction", ylabel="measured", diagonal=True,
                    ),
                ],
            )
        )  # fmt: skip
    if len(ver.downstream) >= 2:
        sections.append(
            (
                "",
                scatter(
                    [d["predicted"] for d in ver.downstream], [d["measured"] for d in ver.downstream],
                    title="Downstream feature pre-activation changes", xlabel="graph prediction",
                    ylabel="measured", diagonal=True,
                ),
            )
        )  # fmt: skip
    return page(
        f"Attribution graph: {prompt!r} -> {target!r}",
        sections,
        subtitle=f"logit {g['nodes'][-1]['activation']:.4g}" if g["nodes"] else "",
    )


def _r(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


__all__ = ["graph_html", "graph_svg"]

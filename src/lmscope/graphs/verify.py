"""Graphs are checked, not believed: ablate top features in the real model and compare with the graph.

The real model runs with every MLP replaced by its transcoder plus the prompt's error (transcoders.splice):
unchanged, this reproduces the model exactly; attention and norms are live. For each checked feature s
(ablated: a_s -> 0) two measurements and two predictions of the target logit:

    direct    measured with every other feature held at its clean value; predicted -A[logit, s]
              (differs only by attention and norms being live rather than frozen)
    total     measured with every other feature recomputed by its transcoder; predicted by propagating
              the change through the graph's computed rows linearly (features stay on or off as they were)

and, for every feature with a computed row in a later layer, its pre-activation change (total) measured vs
predicted. The agreement is a Pearson correlation over the checked features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attribution import FEATURE, Attribution
from .replacement import Replacement


def _pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    a, b = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else None


@dataclass
class Verification:
    """rows: one per checked feature (node, label, predicted/measured logit changes); downstream: (source,
    target, predicted, measured) pre-activation changes; correlations: Pearson r of each comparison."""

    rows: list[dict]
    downstream: list[dict]
    correlations: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "downstream": self.downstream, "correlations": self.correlations}


def propagate(graph: Attribution, source: int, delta: float) -> torch.Tensor:
    """Linear prediction of every node's pre-activation change [n_nodes] when node `source`'s activation
    changes by `delta`, through the computed rows (per unit of activation: A[t, s] / a_s)."""
    nodes = graph.nodes
    act = nodes.activation.clone()
    is_feat = torch.tensor([k == FEATURE for k in nodes.kind])
    per_unit = torch.where(is_feat, 1 / act.clamp_min(1e-30), torch.zeros_like(act))  # errors/tokens fixed
    change = torch.zeros(len(nodes), dtype=torch.float64)  # activation changes
    change[source] = delta
    pre_change = torch.zeros(len(nodes), dtype=torch.float64)
    order = sorted(range(len(graph.targets)), key=lambda r: int(nodes.layer[graph.targets[r]]))
    for r in order:
        t = int(graph.targets[r])
        if nodes.layer[t] <= nodes.layer[source]:
            continue
        pre_change[t] = float((graph.rows[r] * per_unit * change).sum())
        if nodes.kind[t] == FEATURE and t != source:
            change[t] = pre_change[t]  # an active feature passes its pre-activation change on
    return pre_change


@torch.no_grad()
def verify(rep: Replacement, graph: Attribution, sources: list[int]) -> Verification:
    """Ablate each feature node in `sources` in the real model (transcoders spliced in) and compare."""
    model, tcs, nodes = rep.model, rep.tcs, graph.nodes
    tokens = rep.tokens[None]
    errors = {layer: rep.errors[layer][None] for layer in tcs.layers}
    token = graph.target_token
    clean_f = {layer: rep.f[layer][None].to(model.dtype) for layer in tcs.layers}
    base = float(model(tokens, interventions=tcs.splice(errors=errors))[0, -1, token])
    row_of = {int(t): r for r, t in enumerate(graph.targets)}
    logit_row = graph.rows[0]
    rows, downstream = [], []
    for s in sources:
        if nodes.kind[s] != FEATURE:
            raise ValueError(f"node {s} is a {nodes.kind[s]} node; only features can be ablated")
        layer, pos, feat = int(nodes.layer[s]), int(nodes.pos[s]), int(nodes.feature[s])

        def ablate(ly, f, layer=layer, pos=pos, feat=feat):
            if ly == layer:
                f = f.clone()
                f[0, pos, feat] = 0
            return f

        def ablate_frozen(ly, f, layer=layer, pos=pos, feat=feat):
            f = clean_f[ly].to(f.dtype).clone()
            if ly == layer:
                f[0, pos, feat] = 0
            return f

        record: dict = {}
        live = float(
            model(tokens, interventions=tcs.splice(errors=errors, edit=ablate, record=record))[0, -1, token]
        )
        frozen = float(
            model(tokens, interventions=tcs.splice(errors=errors, edit=ablate_frozen))[0, -1, token]
        )
        delta = -float(nodes.activation[s])
        predicted = propagate(graph, s, delta)
        rows.append(
            {
                "node": s,
                "label": nodes.label(s, graph.str_tokens),
                "activation": float(nodes.activation[s]),
                "predicted_direct": -float(logit_row[s]),
                "measured_direct": frozen - base,
                "predicted_total": float(predicted[graph.logit_node]),
                "measured_total": live - base,
            }
        )
        for t in row_of:
            if nodes.kind[t] != FEATURE or nodes.layer[t] <= layer:
                continue
            l_t, p_t, f_t = int(nodes.layer[t]), int(nodes.pos[t]), int(nodes.feature[t])
            measured = float(tcs[l_t].pre_acts(record[l_t][0, p_t].float())[f_t]) - float(nodes.pre[t])
            if float(predicted[t]) == 0 and abs(measured) < 1e-6:
                continue  # not reachable from s: nothing to compare
            downstream.append(
                {"source": s, "target": t, "predicted": float(predicted[t]), "measured": measured}
            )
    correlations = {
        "logit_direct": _pearson([r["predicted_direct"] for r in rows], [r["measured_direct"] for r in rows]),
        "logit_total": _pearson([r["predicted_total"] for r in rows], [r["measured_total"] for r in rows]),
        "downstream_features": _pearson(
            [d["predicted"] for d in downstream], [d["measured"] for d in downstream]
        ),
        "n_checked": len(rows),
        "n_downstream": len(downstream),
    }
    return Verification(rows, downstream, correlations)


def top_features(graph: Attribution, kept: list[int], influence: list[float], n: int) -> list[int]:
    """The n kept feature nodes of highest influence on the logit."""
    feats = [i for i in kept if graph.nodes.kind[i] == FEATURE]
    return sorted(feats, key=lambda i: -influence[i])[:n]


__all__ = ["Verification", "propagate", "top_features", "verify"]

"""Pruning an attribution graph by influence on the target logit, to a chosen number of nodes.

Node influence is circuit-tracer's (Attribution.influence). Kept: the logit, every token node, and the
`max_nodes` feature and error nodes of highest influence. Edges among kept nodes are scored
|Â[t, s]| * (influence_t + [t is the logit]) and kept until edge_threshold of the total score; then feature
nodes left without an outgoing edge are dropped (repeatedly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attribution import ERROR, FEATURE, LOGIT, TOKEN, Attribution


@dataclass
class PrunedGraph:
    """kept: node indices of the Attribution; edges: (source, target, weight) in those indices."""

    attribution: Attribution
    kept: list[int]
    edges: list[tuple[int, int, float]]
    influence: list[float]  # per node of the Attribution

    def to_dict(self) -> dict:
        a, n = self.attribution, self.attribution.nodes
        nodes = []
        for i in self.kept:
            nodes.append(
                {
                    "id": i,
                    "kind": n.kind[i],
                    "label": n.label(i, a.str_tokens),
                    "layer": int(n.layer[i]),
                    "pos": int(n.pos[i]),
                    "feature": int(n.feature[i]),
                    "activation": float(n.activation[i]),
                    "influence": self.influence[i],
                }
            )
        return {
            "tokens": a.str_tokens,
            "target_token": a.target_token,
            "nodes": nodes,
            "edges": [{"source": s, "target": t, "weight": w} for s, t, w in self.edges],
        }


def prune(graph: Attribution, max_nodes: int = 50, edge_threshold: float = 0.98) -> PrunedGraph:
    nodes = graph.nodes
    influence = graph.influence()
    logit = graph.logit_node
    candidates = torch.tensor(
        [i for i, k in enumerate(nodes.kind) if k in (FEATURE, ERROR)], dtype=torch.long
    )
    order = candidates[influence[candidates].argsort(descending=True)][:max_nodes]
    keep = set(order.tolist()) | {i for i, k in enumerate(nodes.kind) if k == TOKEN} | {logit}
    A = graph.adjacency()
    norm = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-30)
    kept_idx = torch.tensor(sorted(keep))
    sub = norm[kept_idx][:, kept_idx]  # [target, source]
    weight_t = influence[kept_idx] + (kept_idx == logit).double()
    score = sub * weight_t[:, None]
    flat = score.flatten()
    ranked = flat.argsort(descending=True)
    total = float(flat.sum())
    cum = flat[ranked].cumsum(0)
    n_keep = int((cum < edge_threshold * total).sum()) + 1 if total > 0 else 0
    chosen = ranked[:n_keep]
    chosen = chosen[flat[chosen] > 0]
    k = len(kept_idx)
    edges = {(int(kept_idx[c % k]), int(kept_idx[c // k])) for c in chosen.tolist()}  # (source, target)
    while True:  # drop features that no longer lead anywhere
        has_out = {s for s, _ in edges}
        dead = {i for i in keep if nodes.kind[i] == FEATURE and i not in has_out}
        if not dead:
            break
        keep -= dead
        edges = {(s, t) for s, t in edges if s in keep and t in keep}
    edge_list = sorted(((s, t, float(A[t, s])) for s, t in edges), key=lambda e: -abs(e[2]))
    assert all(nodes.kind[t] != TOKEN for _, t, _ in edge_list) and nodes.kind[logit] == LOGIT
    return PrunedGraph(graph, sorted(keep), edge_list, influence.tolist())


__all__ = ["PrunedGraph", "prune"]

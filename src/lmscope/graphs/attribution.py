"""Attribution graphs: direct effects between features, error nodes, token embeddings and the target logit.

Nodes: every active transcoder feature (layer, position, feature; its activation a_s), one error node per
(layer, position) (the transcoder's residual), one token node per position (resid_pre of layer 0: the
embedding, with the position embedding where the model has one), and the target logit (last position).
Edge s -> t: the direct effect of s on t's pre-activation (the logit for the target) in the frozen
replacement model (replacement.py): A[t, s] = g_t . v_s, where v_s is what s writes (a_s d_s, the error
vector, the embedding) and g_t the gradient of t's pre-activation with respect to that write, all other
writes held fixed. The model is affine in the writes, so for every target

    pre_t = sum over its sources s of A[t, s] + bias_t

exactly, where bias_t is t's pre-activation with every node at 0 (it gathers b_enc, the transcoders' b_dec,
attention and norm biases). g_t comes from one backward pass through the frozen model per target, batched
(one copy of the prompt per target), as in circuit-tracer.

Rows are computed for the logit, then for features in order of their influence on the logit (re-ranked after
each batch), up to max_feature_nodes; features without a row keep their outgoing edges but have no incoming.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .replacement import Replacement

FEATURE, ERROR, TOKEN, LOGIT = "feature", "error", "token", "logit"


@dataclass
class Nodes:
    """The graph's nodes, features first, then errors (layer-major), tokens, the logit.

    kind [n] (str), layer [n] (-1 for tokens, n_layers for the logit), pos [n], feature [n] (-1 if none),
    activation [n] (features: a_s; errors: the error vector's norm; tokens: the embedding's norm; logit: its
    value), pre [n] (features: pre-activation; logit: the logit)."""

    kind: list[str]
    layer: Tensor
    pos: Tensor
    feature: Tensor
    activation: Tensor
    pre: Tensor

    def __len__(self) -> int:
        return len(self.kind)

    def index(self, kind: str) -> Tensor:
        return torch.tensor([i for i, k in enumerate(self.kind) if k == kind], dtype=torch.long)

    def label(self, i: int, str_tokens: list[str] | None = None) -> str:
        k, layer, pos = self.kind[i], int(self.layer[i]), int(self.pos[i])
        if k == FEATURE:
            return f"L{layer}/F{int(self.feature[i])}@{pos}"
        if k == ERROR:
            return f"err L{layer}@{pos}"
        if k == TOKEN:
            return f"tok {str_tokens[pos]!r}@{pos}" if str_tokens else f"tok@{pos}"
        return "logit"


@dataclass
class Attribution:
    """Nodes, the computed rows of the adjacency (rows[i] = incoming edges of node targets[i] from every
    node; the first target is the logit) and each target's bias. target_token: the logit's token id."""

    nodes: Nodes
    targets: Tensor  # [n_rows] node indices
    rows: Tensor  # [n_rows, n_nodes]
    bias: Tensor  # [n_rows]
    target_token: int
    str_tokens: list[str] = field(default_factory=list)

    @property
    def logit_node(self) -> int:
        return len(self.nodes) - 1

    def adjacency(self) -> Tensor:
        """The square adjacency [n_nodes, n_nodes] (rows of targets without a computed row are 0)."""
        A = torch.zeros(len(self.nodes), len(self.nodes), dtype=self.rows.dtype)
        A[self.targets] = self.rows
        return A

    def influence(self) -> Tensor:
        """Each node's influence on the logit [n_nodes]: e_logit (Â + Â² + ...), Â = |A| with every row
        normalised to sum 1 (circuit-tracer's indirect influence)."""
        norm = self.rows.abs()
        norm = norm / norm.sum(1, keepdim=True).clamp_min(1e-30)
        row_of = torch.full((len(self.nodes),), -1, dtype=torch.long)
        row_of[self.targets] = torch.arange(len(self.targets))
        v = torch.zeros(len(self.targets), dtype=norm.dtype)
        v[0] = 1.0  # the logit
        total = torch.zeros(len(self.nodes), dtype=norm.dtype)
        for _ in range(int(self.nodes.layer.max()) + 3):  # the graph is layered: depth <= n_layers + 2
            contrib = v @ norm  # [n_nodes]
            total += contrib
            has_row = row_of >= 0
            v = torch.zeros_like(v)
            v[row_of[has_row]] = contrib[has_row]
            if float(v.abs().sum()) == 0:
                break
        return total


def make_nodes(rep: Replacement, target_token: int) -> Nodes:
    kind, layer, pos, feature, act, pre = [], [], [], [], [], []
    for ly, f in enumerate(rep.f):
        p_idx, f_idx = f.nonzero(as_tuple=True)
        pre_vals = rep.pre_activation(ly, rep.x[ly][p_idx], f_idx) if len(p_idx) else torch.zeros(0)
        kind += [FEATURE] * len(p_idx)
        layer.append(torch.full((len(p_idx),), ly))
        pos.append(p_idx)
        feature.append(f_idx)
        act.append(f[p_idx, f_idx])
        pre.append(pre_vals.double())
    P, L = rep.n_pos, rep.n_layers
    for ly in range(L):
        kind += [ERROR] * P
        layer.append(torch.full((P,), ly))
        pos.append(torch.arange(P))
        feature.append(torch.full((P,), -1))
        act.append(rep.errors[ly].norm(dim=-1))
        pre.append(torch.zeros(P, dtype=torch.float64))
    kind += [TOKEN] * P
    layer.append(torch.full((P,), -1))
    pos.append(torch.arange(P))
    feature.append(torch.full((P,), -1))
    act.append(rep.embed.norm(dim=-1))
    pre.append(torch.zeros(P, dtype=torch.float64))
    logit = rep.logits[-1, target_token]
    kind.append(LOGIT)
    layer.append(torch.tensor([L]))
    pos.append(torch.tensor([P - 1]))
    feature.append(torch.tensor([-1]))
    act.append(logit[None])
    pre.append(logit[None])
    cat = lambda xs, dtype: torch.cat([x.to(dtype) for x in xs])  # noqa: E731
    return Nodes(
        kind,
        cat(layer, torch.long),
        cat(pos, torch.long),
        cat(feature, torch.long),
        cat(act, torch.float64),
        cat(pre, torch.float64),
    )


def compute_rows(rep: Replacement, nodes: Nodes, targets: Tensor, target_token: int) -> tuple[Tensor, Tensor]:
    """Incoming edges [len(targets), n_nodes] and biases [len(targets)] of target nodes (features or the
    logit), by one batched backward pass through the frozen replacement model."""
    B, P, L = len(targets), rep.n_pos, rep.n_layers
    embed = rep.embed[None].expand(B, -1, -1).clone().requires_grad_(True)
    writes = rep.clean_writes()[:, None].expand(-1, B, -1, -1).clone().requires_grad_(True)
    xs, final = rep.forward(embed, writes)
    values = _target_values(rep, nodes, targets, xs, final, target_token)
    g_embed, g_writes = torch.autograd.grad(values.sum(), [embed, writes], allow_unused=True)
    g_writes = torch.zeros_like(writes) if g_writes is None else g_writes  # layer-0 targets read no write
    with torch.no_grad():
        rows = torch.zeros(B, len(nodes), dtype=torch.float64)
        feat_idx = nodes.index(FEATURE)
        for ly in range(L):  # features: g . (a_s d_s), layer by layer to bound memory
            mine = feat_idx[nodes.layer[feat_idx] == ly]
            if len(mine):
                dec = rep.tcs[ly].W_dec.detach().double()[nodes.feature[mine]] * nodes.activation[mine, None]
                rows[:, mine] = torch.einsum("bnd,nd->bn", g_writes[ly][:, nodes.pos[mine]], dec)
        err = torch.einsum("lbpd,lpd->blp", g_writes, torch.stack(rep.errors))
        rows[:, nodes.index(ERROR)] = err.reshape(B, L * P)
        rows[:, nodes.index(TOKEN)] = torch.einsum("bpd,pd->bp", g_embed, rep.embed)
        # bias: the targets' values with every node's write at zero
        zero_xs, zero_final = rep.forward(torch.zeros_like(embed[:1]), torch.zeros_like(writes[:, :1]))
        bias = _target_values(rep, nodes, targets, [x.expand(B, -1, -1) for x in zero_xs],
                              zero_final.expand(B, -1, -1), target_token)  # fmt: skip
    return rows, bias.detach()


def _target_values(rep, nodes: Nodes, targets: Tensor, xs, final, target_token: int) -> Tensor:
    """Each target's pre-activation (the logit for the logit node) in copy b of the batch -> [B]."""
    values = torch.zeros(len(targets), dtype=torch.float64)
    batch = torch.arange(len(targets))
    is_logit = torch.tensor([nodes.kind[int(t)] == LOGIT for t in targets])
    if bool(is_logit.any()):
        b = batch[is_logit]
        values = values.index_put((b,), rep.logit(final[b, nodes.pos[targets[b]]], target_token))
    for ly in range(rep.n_layers):
        sel = (~is_logit) & (nodes.layer[targets] == ly)
        if bool(sel.any()):
            b, t = batch[sel], targets[sel]
            values = values.index_put((b,), rep.pre_activation(ly, xs[ly][b, nodes.pos[t]], nodes.feature[t]))
    return values


def attribute(
    rep: Replacement,
    target_token: int,
    max_feature_nodes: int | None = None,
    batch_size: int = 64,
    str_tokens: list[str] | None = None,
) -> Attribution:
    """The attribution graph (unpruned) of the prompt in `rep` for the logit of `target_token` at the last
    position. max_feature_nodes: how many features get their incoming edges computed (None = all)."""
    nodes = make_nodes(rep, target_token)
    logit = len(nodes) - 1
    rows, bias = compute_rows(rep, nodes, torch.tensor([logit]), target_token)
    targets = torch.tensor([logit])
    features = nodes.index(FEATURE)
    budget = len(features) if max_feature_nodes is None else min(max_feature_nodes, len(features))
    done = torch.zeros(len(nodes), dtype=torch.bool)
    done[logit] = True
    while int(done[features].sum()) < budget:
        graph = Attribution(nodes, targets, rows, bias, target_token)
        influence = graph.influence()[features]
        influence[done[features]] = -1.0
        n = min(batch_size, budget - int(done[features].sum()))
        pick = features[influence.topk(n).indices]
        new_rows, new_bias = compute_rows(rep, nodes, pick, target_token)
        targets, rows, bias = (
            torch.cat([targets, pick]),
            torch.cat([rows, new_rows]),
            torch.cat([bias, new_bias]),
        )
        done[pick] = True
    return Attribution(nodes, targets, rows, bias, target_token, list(str_tokens or []))


__all__ = ["Attribution", "Nodes", "attribute", "compute_rows", "make_nodes"]

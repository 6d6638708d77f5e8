"""Composition scores between attention heads and virtual weights between any writer and reader.

Composition (Elhage et al. 2021), TransformerLens orientation (x @ W), for a writer head h1 in an earlier
layer and a reader head h2:
    Q-composition  |W_OV1 W_QK2|   / (|W_OV1| |W_QK2|)     h1's output feeds h2's queries
    K-composition  |W_OV1 W_QK2^T| / (|W_OV1| |W_QK2|)     ... h2's keys (induction heads after previous-token heads)
    V-composition  |W_OV1 W_OV2|   / (|W_OV1| |W_OV2|)     ... h2's values (virtual attention heads)
with Frobenius norms, W_OV = N W_V W_O and W_QK = (N W_Q)(N W_K)^T, N the reader layer's norm weight (after
centring for LayerNorm). The norms' data-dependent scale is one positive number per token: it multiplies
numerator and denominator alike and cancels, so these scores hold whatever the scale. With RoPE, W_QK is
taken at relative offset 0 (no rotation).

For random matrices of these shapes the score is about 1/sqrt(d_model) (for rotation-invariant X, E|XY|^2
= |X|^2 |Y|^2 / d_model); random_baseline() samples it.

Every product is computed through the heads' low-rank factors: |A (B C) D|^2 = tr(M^T (A^T A) M (D D^T))
with M = B C [d_head, d_head], so no d_model x d_model matrix is formed per pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.config import ModelConfig
from ..model.sites import Component, format_component, parse_component
from .qkov import final_norm_matrix, norm_matrix

KINDS = ("q", "k", "v")


def composition_score(x: Tensor, y: Tensor) -> float:
    """|X Y|_F / (|X|_F |Y|_F) for two matrices X [a, d], Y [d, b]."""
    return float((x @ y).norm() / (x.norm() * y.norm()))


@dataclass
class HeadFactors:
    """Every head's matrices with its layer's norm weight folded into the reading side, all layers stacked:
    q, k, v [n_layers * n_heads, d_model, d_head] (GQA keys/values expanded), o [.., d_head, d_model]."""

    q: Tensor
    k: Tensor
    v: Tensor
    o: Tensor


@torch.no_grad()
def head_factors(model) -> HeadFactors:
    w, c = model.weights, model.cfg
    q, k, v, o = [], [], [], []
    for layer in range(c.n_layers):
        n = norm_matrix(model, w.ln1_w(layer))  # [d, d]
        q.append(n @ w.W_Q(layer).detach())
        k.append(n @ w.W_K(layer, expand_kv=True).detach())
        v.append(n @ w.W_V(layer, expand_kv=True).detach())
        o.append(w.W_O(layer).detach())
    return HeadFactors(*(torch.cat(x).float() for x in (q, k, v, o)))


def _gram(a: Tensor) -> Tensor:
    return a.mT @ a


def _reader_factors(f: HeadFactors, kind: str) -> tuple[Tensor, Tensor]:
    """(C, D) with the reader's matrix = C @ D: [H, d, r] and [H, r, d]."""
    if kind == "q":
        return f.q, f.k.mT
    if kind == "k":
        return f.k, f.q.mT
    if kind == "v":
        return f.v, f.o
    raise ValueError(f"composition kind must be one of {KINDS}, got {kind!r}")


def _scores(writer_a, writer_b, reader_c, reader_d) -> Tensor:
    """|A_w B_w C_n D_n| / (|A_w B_w| |C_n D_n|) for every writer w and reader n: [n_w, n_r]."""
    g_a, g_d = _gram(writer_a), reader_d @ reader_d.mT  # [w, r, r], [n, r, r]
    m = torch.einsum("wrd,nds->wnrs", writer_b, reader_c)  # [w, n, r, r]
    left = torch.einsum("wrt,wnts->wnrs", g_a, m)
    right = torch.einsum("wnrt,nts->wnrs", m, g_d)
    num = (left * right).sum((-1, -2)).clamp(min=0).sqrt()
    w_norm = (g_a * (writer_b @ writer_b.mT)).sum((-1, -2)).sqrt()  # |A B|
    r_norm = (_gram(reader_c) * g_d).sum((-1, -2)).sqrt()  # |C D|
    return num / (w_norm[:, None] * r_norm[None, :])


@dataclass
class CompositionScores:
    """q, k, v [n_layers, n_heads, n_layers, n_heads]: score of writer (layer, head) -> reader (layer, head);
    NaN where the writer is not in an earlier layer. baseline: mean score of random matrices of these shapes
    (baseline_std its spread)."""

    q: Tensor
    k: Tensor
    v: Tensor
    baseline: float
    baseline_std: float
    cfg: ModelConfig | None = None  # to check head names given to score()

    def get(self, kind: str) -> Tensor:
        if kind not in KINDS:
            raise ValueError(f"composition kind must be one of {KINDS}, got {kind!r}")
        return getattr(self, kind)

    def score(self, writer, reader, kind: str) -> float:
        """The `kind` composition score of one pair of heads, named as model.sites.parse_component does
        ('blocks.0.attn.z[1]', 'L0H1'); NaN when the writer is not in an earlier layer."""
        if self.cfg is None:
            raise ValueError(
                "these scores carry no model config; index .q / .k / .v [l1, h1, l2, h2] instead"
            )
        w, r = (
            parse_component(x, self.cfg, kinds=("attn.z",), indexed=True, what="head")
            for x in (writer, reader)
        )
        return float(self.get(kind)[w.layer, w.index, r.layer, r.index])

    def top(self, kind: str, k: int = 10) -> list[tuple[str, str, float]]:
        """The k strongest (writer head, reader head, score) pairs of one kind, heads named canonically
        ('blocks.0.attn.z[1]'); the reader composes through its `kind` input."""
        scores = self.get(kind)
        flat = scores.flatten().nan_to_num(float("-inf"))
        n_l, n_h = scores.shape[:2]
        out = []
        for i in flat.topk(min(k, int(scores.isfinite().sum()))).indices.tolist():
            l1, h1, l2, h2 = (i // (n_h * n_l * n_h), i // (n_l * n_h) % n_h, i // n_h % n_l, i % n_h)
            writer, reader = format_component(l1, "attn.z", h1), format_component(l2, "attn.z", h2)
            out.append((writer, reader, float(flat[i])))
        return out

    def to_dict(self) -> dict:
        """Plain JSON: NaN (no such pair) becomes None."""
        out = {kind: _nan_to_none(self.get(kind).tolist()) for kind in KINDS}
        return {**out, "baseline": self.baseline, "baseline_std": self.baseline_std}


def _nan_to_none(values):
    if isinstance(values, list):
        return [_nan_to_none(v) for v in values]
    return None if math.isnan(values) else values


@torch.no_grad()
def composition_scores(model, n_baseline: int = 200, seed: int = 0) -> CompositionScores:
    """Q-, K- and V-composition scores of all head pairs across layers (see the module doc)."""
    c = model.cfg
    f = head_factors(model)
    a, b = f.v, f.o  # writers' OV = (N W_V) W_O
    out = {}
    for kind in KINDS:
        reader_c, reader_d = _reader_factors(f, kind)
        grid = torch.full((c.n_layers, c.n_heads, c.n_layers, c.n_heads), float("nan"))
        for layer in range(1, c.n_layers):
            earlier, here = slice(0, layer * c.n_heads), slice(layer * c.n_heads, (layer + 1) * c.n_heads)
            s = _scores(a[earlier], b[earlier], reader_c[here], reader_d[here])  # [layer * n_heads, n_heads]
            grid[:layer, :, layer, :] = s.view(layer, c.n_heads, c.n_heads)
        out[kind] = grid
    mean, std = random_baseline(c.d_model, c.d_head, n_baseline, seed)
    return CompositionScores(**out, baseline=mean, baseline_std=std, cfg=c)


@torch.no_grad()
def random_baseline(d_model: int, d_head: int, n: int = 200, seed: int = 0) -> tuple[float, float]:
    """Mean and std of the composition score of Gaussian random factors of a head's shapes
    (A [d_model, d_head] B [d_head, d_model] writer, C D likewise reader): about 1/sqrt(d_model)."""
    gen = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(n, *shape, generator=gen)  # noqa: E731
    a, b, c_, d = draw(d_model, d_head), draw(d_head, d_model), draw(d_model, d_head), draw(d_head, d_model)
    g_a, g_d = _gram(a), d @ d.mT
    m = b @ c_  # [n, r, r]: pair i with i only
    num = ((g_a @ m) * (m @ g_d)).sum((-1, -2)).sqrt()
    scores = num / ((g_a * (b @ b.mT)).sum((-1, -2)).sqrt() * (_gram(c_) * g_d).sum((-1, -2)).sqrt())
    return float(scores.mean()), float(scores.std())


# ------------------------------------------------------------------------------------------ virtual weights


WRITER_KINDS = ("embed", "attn.z", "mlp", "mlp.post")
READER_KINDS = ("attn.q", "attn.k", "attn.v", "mlp", "mlp.pre", "mlp.pre_linear", "logits")


def _component(model, spec, kinds: tuple[str, ...], what: str) -> Component:
    """Parse a writer or reader name (model.sites grammar); heads need their index."""
    comp = parse_component(spec, model.cfg, kinds=kinds, what=what)
    if comp.kind.startswith("attn.") and comp.index is None:
        raise ValueError(f"{spec!r}: name one head, e.g. {comp}[0]")
    return comp


def _rows(weight: Tensor, comp: Component) -> Tensor:
    """A neuron's row of a [d_mlp, ...] weight (kept 2-D), or the whole weight."""
    return weight if comp.index is None else weight[comp.index : comp.index + 1]


@torch.no_grad()
def writer_matrix(model, spec) -> Tensor:
    """What a writer adds to the residual per unit of its output: [n_out, d_model].
    embed: W_E [d_vocab]; blocks.L.attn.z[H]: W_O of head H [d_head]; blocks.L.mlp (or .mlp.post): W_out
    [d_mlp]; blocks.L.mlp.post[N]: neuron N's row of W_out [1]."""
    comp = _component(model, spec, WRITER_KINDS, "writer (embed, a head's output or MLP neurons)")
    w = model.weights
    if comp.kind == "embed":
        return w.W_E.detach()
    if comp.kind == "attn.z":
        return w.W_O(comp.layer)[comp.index].detach()
    return _rows(w.W_out(comp.layer).detach(), comp)


@torch.no_grad()
def reader_matrix(model, spec) -> Tensor:
    """How a reader reads the residual, its norm's weight folded in: [d_model, n_in].
    blocks.L.attn.q[H] / .k[H] / .v[H]: N W_Q/K/V of that (query or key/value) head [d_head];
    blocks.L.mlp: N W_in [d_mlp] (the up-projection); blocks.L.mlp.pre: what the pre-activation reads (the
    gate, N W_gate, for GLU MLPs); blocks.L.mlp.pre_linear: N W_in (GLU only); with [N] one neuron's column;
    logits: N_f W_U [d_vocab]."""
    comp = _component(model, spec, READER_KINDS, "reader (a head's q/k/v input, an MLP input or logits)")
    w, layer = model.weights, comp.layer
    if comp.kind == "logits":
        return final_norm_matrix(model) @ w.W_U.detach()
    if comp.kind in ("attn.q", "attn.k", "attn.v"):
        weight = {"attn.q": w.W_Q, "attn.k": w.W_K, "attn.v": w.W_V}[comp.kind](layer)  # [heads, d, d_head]
        return norm_matrix(model, w.ln1_w(layer)) @ weight[comp.index].detach()
    gate = comp.kind == "mlp.pre" and model.cfg.gated_mlp
    weight = (w.W_gate(layer) if gate else w.W_in(layer)).detach()  # [d_model, d_mlp]
    return norm_matrix(model, w.ln2_w(layer)) @ _rows(weight.T, comp).T


def stream_position(model, comp: Component) -> tuple[tuple[int, int], tuple[int, int]]:
    """(where it reads, where it writes) along the residual stream, as (layer, step) with step 0 = that
    layer's resid_pre, 1 = resid_mid, 2 = resid_post. A residual site is read and written where it is."""
    parallel = model.cfg.parallel_residual  # attention and MLP both read resid_pre, both write resid_post
    where = {"resid_pre": -1, "resid_mid": 1, "resid_post": 2}.get(comp.kind)
    if where is not None:  # resid_pre of layer L is resid_post of layer L - 1
        at = (comp.layer - 1, 2) if where < 0 else (comp.layer, where)
        return at, at
    if comp.kind == "final.norm":
        return (model.cfg.n_layers, 0), (model.cfg.n_layers, 0)
    if comp.kind in ("embed", "pos_embed"):
        return (-1, 0), (-1, 2)
    if comp.kind == "logits":
        return (model.cfg.n_layers, 0), (model.cfg.n_layers, 2)
    if comp.kind.startswith("attn"):
        return (comp.layer, 0), (comp.layer, 2 if parallel else 1)
    return (comp.layer, 0 if parallel else 1), (comp.layer, 2)


@torch.no_grad()
def virtual_weights(model, writer, reader) -> Tensor:
    """Virtual weights [n_out, n_in] = writer_matrix @ reader_matrix: how much each output dimension of the
    writer (a token, a head's d_head dims, a neuron) moves each input dimension of the reader through the
    residual stream, the reader's norm weight folded in and its data-dependent scale left out.
    Names follow model.sites.parse_component, e.g. virtual_weights(model, "blocks.3.mlp", "blocks.7.attn.v[1]")."""
    w_comp = _component(model, writer, WRITER_KINDS, "writer (embed, a head's output or MLP neurons)")
    r_comp = _component(model, reader, READER_KINDS, "reader (a head's q/k/v input, an MLP input or logits)")
    if stream_position(model, w_comp)[1] > stream_position(model, r_comp)[0]:
        raise ValueError(f"{r_comp} reads the residual stream before {w_comp} writes to it")
    return writer_matrix(model, w_comp) @ reader_matrix(model, r_comp)

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

    def get(self, kind: str) -> Tensor:
        if kind not in KINDS:
            raise ValueError(f"composition kind must be one of {KINDS}, got {kind!r}")
        return getattr(self, kind)

    def top(self, kind: str, k: int = 10) -> list[tuple[str, str, float]]:
        """The k strongest (writer 'L.H', reader 'L.H', score) pairs of one kind."""
        scores = self.get(kind)
        flat = scores.flatten().nan_to_num(float("-inf"))
        n_l, n_h = scores.shape[:2]
        out = []
        for i in flat.topk(min(k, int(scores.isfinite().sum()))).indices.tolist():
            l1, h1, l2, h2 = (i // (n_h * n_l * n_h), i // (n_l * n_h) % n_h, i // n_h % n_l, i % n_h)
            out.append((f"{l1}.{h1}", f"{l2}.{h2}", float(flat[i])))
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
    return CompositionScores(**out, baseline=mean, baseline_std=std)


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


_USAGE = (
    "use embed, unembed, LAYER.HEAD (a head's output), LAYER.HEAD.q/k/v (its inputs), mlp.LAYER (its "
    "neurons: their output weights as a writer, W_in as a reader) or mlp.LAYER.gate"
)


def _component(model, spec: str) -> tuple[str, int, int, str]:
    """'embed' | 'unembed' | 'L.H' | 'L.H.q|k|v' | 'mlp.L' | 'mlp.L.gate' -> (kind, layer, head, part)."""
    c = model.cfg
    parts = spec.strip().split(".")
    if parts in (["embed"], ["unembed"]):
        return parts[0], -1 if parts[0] == "embed" else c.n_layers, -1, ""
    mlp = parts[0] == "mlp"
    numbers, rest = (parts[1:2], parts[2:]) if mlp else (parts[:2], parts[2:])
    allowed = ([], ["gate"]) if mlp else ([], ["q"], ["k"], ["v"])
    if len(numbers) != (1 if mlp else 2) or not all(n.isdigit() for n in numbers) or rest not in allowed:
        raise ValueError(f"unknown component {spec!r}; {_USAGE}")
    layer = int(numbers[0])
    if layer >= c.n_layers:
        raise ValueError(f"{spec!r}: this model has layers 0..{c.n_layers - 1}")
    if mlp:
        if rest and not c.gated_mlp:
            raise ValueError(f"{spec!r}: this model's MLPs have no gate")
        return "mlp", layer, -1, "gate" if rest else "in"
    head = int(numbers[1])
    if head >= c.n_heads:
        raise ValueError(f"{spec!r}: this model has heads 0..{c.n_heads - 1}")
    return "head", layer, head, rest[0] if rest else ""


@torch.no_grad()
def writer_matrix(model, spec: str) -> Tensor:
    """What a writer adds to the residual per unit of its output: [n_out, d_model].
    embed: W_E [d_vocab]; 'L.H': W_O of head H [d_head]; 'mlp.L': W_out [d_mlp]."""
    kind, layer, head, part = _component(model, spec)
    w = model.weights
    if kind == "embed":
        return w.W_E.detach()
    if kind == "head" and not part:
        return w.W_O(layer)[head].detach()
    if kind == "mlp" and part == "in":
        return w.W_out(layer).detach()
    raise ValueError(f"{spec!r} does not write to the residual stream; writers: embed, L.H, mlp.L")


@torch.no_grad()
def reader_matrix(model, spec: str) -> Tensor:
    """How a reader reads the residual, its norm's weight folded in: [d_model, n_in].
    'L.H.q|k|v': N W_Q/K/V [d_head]; 'mlp.L': N W_in [d_mlp] ('mlp.L.gate': N W_gate); unembed: N_f W_U."""
    kind, layer, head, part = _component(model, spec)
    w = model.weights
    if kind == "unembed":
        return final_norm_matrix(model) @ w.W_U.detach()
    if kind == "head" and part:
        weight = {"q": w.W_Q(layer), "k": w.W_K(layer, expand_kv=True), "v": w.W_V(layer, expand_kv=True)}[
            part
        ]
        return norm_matrix(model, w.ln1_w(layer)) @ weight[head].detach()
    if kind == "mlp":
        weight = w.W_gate(layer) if part == "gate" else w.W_in(layer)
        return norm_matrix(model, w.ln2_w(layer)) @ weight.detach()
    raise ValueError(
        f"{spec!r} does not read the residual stream; readers: L.H.q/k/v, mlp.L, mlp.L.gate, unembed"
    )


def _order(model, spec: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(where it reads, where it writes) along the residual stream, as (layer, step)."""
    kind, layer, _, _ = _component(model, spec)
    parallel = model.cfg.parallel_residual  # attention and MLP both read resid_pre, both write resid_post
    if kind == "embed":
        return (-1, 0), (-1, 2)
    if kind == "unembed":
        return (layer, 0), (layer, 2)
    if kind == "head":
        return (layer, 0), (layer, 2 if parallel else 1)
    return (layer, 0 if parallel else 1), (layer, 2)


@torch.no_grad()
def virtual_weights(model, writer: str, reader: str) -> Tensor:
    """Virtual weights [n_out, n_in] = writer_matrix @ reader_matrix: how much each output dimension of the
    writer (a token, a head's d_head dims, a neuron) moves each input dimension of the reader through the
    residual stream, the reader's norm weight folded in and its data-dependent scale left out."""
    if _order(model, writer)[1] > _order(model, reader)[0]:
        raise ValueError(f"{reader!r} reads the residual stream before {writer!r} writes to it")
    return writer_matrix(model, writer) @ reader_matrix(model, reader)

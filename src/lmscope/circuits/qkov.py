"""QK and OV circuits of attention heads, restricted to chosen tokens, and copying scores.

Orientation follows TransformerLens (row vectors, x @ W): a head's OV circuit is
    OV[i, j] = ln1(e_i) W_V^h W_O^h N_f W_U[:, j]   (source token i -> logit of token j, per unit attention)
and its QK circuit is
    QK[i, j] = (ln1(e_i) W_Q^h + b_Q) R(offset) . (ln1(e_j) W_K^h + b_K)   (query token i, key token j)
with e_i = W_E[i] and N_f = the final norm's weight (after centring for LayerNorm). Scores are before the
1/sqrt(d_head) scale. Grouped-query heads use their (shared) key/value head.

What is exact and what is not:
- ln1(e_i) is the layer's own norm applied to the embedding alone. In layer 0 of a model without learned
  positions this is exactly what the head reads (the test checks QK against the attention pattern). In later
  layers the residual holds more than the embedding, so these are *direct-path* circuits: the norm's scale
  (1 / RMS or 1 / std of the whole residual) is data dependent and taken from the embedding alone.
- Late layers may read a token very differently from its bare embedding. token_residuals() gives each
  token's mean residual at every layer's resid_pre over some text, and every function here takes such
  residuals instead of embeddings (src_resid=, query_resid=, key_resid=, resid=): the circuit "in context",
  exact for those residuals. On SmolLM2 the two disagree in sign for the IOI name movers (see the report).
- The final norm's scale is data dependent too: it is left out (a positive number per position, so it
  scales a row of OV logits without changing which tokens win). Its bias, b_V, b_O and b_U are constant
  over source tokens and left out of OV.
- Rotary models (RoPE): q.k depends on the relative position. offset = query position - key position;
  offset 0 is no rotation. Learned absolute positions (GPT-2) are left out: the circuits are token-only.

Copying score (Elhage et al. 2021): sum(eig) / sum(|eig|) of the OV circuit on a token set S, in [-1, 1]:
+1 when all eigenvalues are positive (attending to a token raises that token's logit: copying), -1 when all
are negative (suppressing what is attended to). OV_S = P Q with P = ln1(E_S) W_V [|S|, d_head] and
Q = W_O N_f W_U[:, S] [d_head, |S|]; PQ and QP [d_head, d_head] share their nonzero eigenvalues, so the
score is computed on QP, for S as large as the whole vocabulary.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from ..data.tasks.contrast import single_token_id

Tokens = Sequence[int] | Sequence[str] | Tensor | None


def token_ids(model, tokens: Tokens) -> Tensor:
    """Token ids [n] from ids or strings (each string must be a single token); None = the whole vocabulary."""
    if tokens is None:
        return torch.arange(model.cfg.d_vocab)
    if isinstance(tokens, Tensor):
        ids = tokens.flatten().long()
    else:
        tokens = list(tokens)
        if not tokens:
            raise ValueError("give at least one token")
        ids = torch.tensor([single_token_id(model, t) if isinstance(t, str) else int(t) for t in tokens])
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= model.cfg.d_vocab):
        raise ValueError(f"token ids must lie in 0..{model.cfg.d_vocab - 1}")
    return ids


# ------------------------------------------------------------------------------------------------- norms


def fold_norm(model, x: Tensor, weight: Tensor) -> Tensor:
    """A norm's linear part without its data-dependent scale: centre (LayerNorm only), times `weight`.
    x [..., d_model] -> [..., d_model]."""
    if model.cfg.normalization == "layer":
        x = x - x.mean(-1, keepdim=True)
    return x * weight


def norm_matrix(model, weight: Tensor) -> Tensor:
    """The norm's linear part as a matrix N [d_model, d_model] (x @ N = fold_norm(x)): C diag(w) or diag(w)."""
    return fold_norm(model, torch.eye(model.cfg.d_model, dtype=weight.dtype), weight.detach())


def final_norm_matrix(model) -> Tensor:
    """N_f [d_model, d_model]: residual -> what the unembedding reads, scale left out (see the module doc)."""
    return norm_matrix(model, model.weights.ln_final_w)


def unit_norm(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of a norm module with weight 1 and bias 0: the model's own normalisation, no affine part."""
    unit = copy.deepcopy(module)
    with torch.no_grad():
        unit.weight.fill_(1.0)
        if getattr(unit, "bias", None) is not None:
            unit.bias.zero_()
    return unit


@torch.no_grad()
def normed_embeddings(model, layer: int, tokens: Tokens = None, chunk: int = 8192) -> Tensor:
    """ln1 of `layer` applied to the embeddings of `tokens`: [n, d_model] (what layer 0 reads exactly)."""
    ids = token_ids(model, tokens)
    ln1 = model.parts.layers[layer].ln1
    w_e = model.weights.W_E.detach()
    return torch.cat([ln1(w_e[part]) for part in ids.split(chunk)])


# ---------------------------------------------------------------------------------------------- rotary


def _rotary_module(model):
    found = [m for m in model.hf.modules() if hasattr(m, "inv_freq")]
    if not found:
        raise ValueError(f"{model.cfg.name or 'this model'} has no rotary embedding module to rotate with")
    return found[0]


def rotate(model, x: Tensor, position: int) -> Tensor:
    """Apply the model's rotary embedding at `position` to per-head vectors x [..., d_head], as HF does
    (rotate-half convention; partial rotary dims rotate, the rest pass through)."""
    if model.cfg.positional != "rotary":
        raise ValueError("offsets apply to rotary models; this model's positions are learned embeddings")
    rotary = _rotary_module(model)
    pos = torch.tensor([[position]], device=x.device)
    cos, sin = rotary(x.reshape(1, 1, -1), pos)  # [1, 1, rot_dim]
    cos, sin = cos[0, 0].to(x.dtype), sin[0, 0].to(x.dtype)
    rot = cos.shape[-1]
    head, tail = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated_half = torch.cat([-head[..., half:], head[..., :half]], dim=-1)
    return torch.cat([head * cos + rotated_half * sin, tail], dim=-1)


# ------------------------------------------------------------------------------------------------ circuits


def _sources(model, layer: int, tokens: Tokens, resid: Tensor | None) -> Tensor:
    """What the head reads per source: ln1 of each token's embedding, or ln1 of given residuals [n, d_model]
    (at blocks.{layer}.resid_pre, each with its own norm scale)."""
    if resid is None:
        return normed_embeddings(model, layer, tokens)
    if resid.dim() != 2 or resid.shape[-1] != model.cfg.d_model:
        raise ValueError(f"residuals must be [n, d_model={model.cfg.d_model}], got {tuple(resid.shape)}")
    return model.parts.layers[layer].ln1(resid.to(model.dtype))


@torch.no_grad()
def token_residuals(model, inputs, tokens: Tokens, attention_mask: Tensor | None = None) -> Tensor:
    """The tokens as each layer reads them in context: mean blocks.{l}.resid_pre over the positions where
    each token occurs in `inputs` (token ids [batch, pos]). -> [n_layers, n_tokens, d_model].

    Later layers see far more than the embedding at a token's position; circuits on these residuals
    (src_resid=, resid=) describe what a late head does with the token, not with its bare embedding."""
    ids = token_ids(model, tokens)
    inputs = torch.as_tensor(inputs)
    mask = torch.ones_like(inputs, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    where = [(inputs == t) & mask for t in ids.tolist()]
    missing = [model.tokenizer.decode([int(t)]) for t, w in zip(ids, where) if not w.any()]
    if missing:
        raise ValueError(f"tokens {missing} do not occur in the inputs; give text that contains them")
    sites = [f"blocks.{layer}.resid_pre" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(inputs, sites=sites, attention_mask=attention_mask)
    return torch.stack([torch.stack([cache[site][w].mean(0) for w in where]) for site in sites])


@torch.no_grad()
def qk_circuit(
    model,
    layer: int,
    head: int,
    query_tokens: Tokens = None,
    key_tokens: Tokens = None,
    offset: int = 0,
    query_resid: Tensor | None = None,
    key_resid: Tensor | None = None,
) -> Tensor:
    """QK[i, j] [n_query, n_key]: the attention score (before 1/sqrt(d_head)) of query i on key j, `offset`
    positions apart (rotary models), each residual holding only its token's embedding (or the given
    query_resid / key_resid [n, d_model] at this layer's resid_pre)."""
    w = model.weights
    queries = _sources(model, layer, query_tokens, query_resid)
    keys = _sources(model, layer, key_tokens, key_resid)
    if len(queries) * len(keys) > 50_000_000:
        raise ValueError(f"a {len(queries)} x {len(keys)} QK circuit is too large; restrict the token lists")
    q = queries @ w.W_Q(layer)[head].detach()  # [n_q, d_head]
    k = keys @ w.W_K(layer, expand_kv=True)[head].detach()
    b_q, b_k = w.b_Q(layer), w.b_K(layer, expand_kv=True)
    if b_q is not None:
        q = q + b_q[head].detach()
    if b_k is not None:
        k = k + b_k[head].detach()
    if offset and model.cfg.positional == "rotary":
        q, k = rotate(model, q, offset), rotate(model, k, 0)
    elif offset:
        raise ValueError(
            "offset applies to rotary models only; learned positions are not part of the circuit"
        )
    return q @ k.T


@torch.no_grad()
def ov_circuit(
    model,
    layer: int,
    head: int,
    src_tokens: Tokens = None,
    dst_tokens: Tokens = None,
    src_resid: Tensor | None = None,
) -> Tensor:
    """OV[i, j] [n_src, n_dst]: logit of token j added per unit of attention to source i (final-norm scale
    left out). Sources: the embeddings of src_tokens (direct path), or src_resid [n_src, d_model] at this
    layer's resid_pre. dst_tokens None = the whole vocabulary."""
    w = model.weights
    dst = token_ids(model, dst_tokens)
    sources = _sources(model, layer, src_tokens, src_resid)
    if len(sources) * len(dst) > 50_000_000:
        raise ValueError(f"a {len(sources)} x {len(dst)} OV circuit is too large; restrict the token lists")
    value = sources @ w.W_V(layer, expand_kv=True)[head].detach()
    out = fold_norm(model, value @ w.W_O(layer)[head].detach(), w.ln_final_w.detach())
    return out @ w.W_U.detach()[:, dst]


@torch.no_grad()
def ov_factored(model, layer: int, tokens: Tokens = None, resid: Tensor | None = None) -> Tensor:
    """QP for every head of `layer`: [n_heads, d_head, d_head], whose eigenvalues are the nonzero
    eigenvalues of the OV circuit on `tokens` (None = whole vocabulary); resid [n_tokens, d_model] = the
    tokens' residuals at this layer instead of their embeddings."""
    ids = token_ids(model, tokens)
    if resid is None:
        return _ov_factored(model, layer, _direct_readout(model, ids, layer, _readout(model, ids)))
    return _ov_factored(model, layer, model.weights.W_U.detach()[:, ids] @ _sources(model, layer, ids, resid))


def _readout(model, ids: Tensor, chunk: int = 8192) -> dict:
    """What all layers share: G0 = W_U[:, S] @ unit_norm(E_S) [d, d] and s = W_U[:, S].sum(1) [d], so that
    W_U[:, S] @ ln1(E_S) = G0 diag(w) + s b^T for every layer's ln1 (weight w, bias b) with the same eps."""
    w_u, w_e = model.weights.W_U.detach(), model.weights.W_E.detach()
    unit = unit_norm(model.parts.layers[0].ln1)
    g0 = torch.zeros(model.cfg.d_model, model.cfg.d_model, dtype=w_u.dtype)
    for part in ids.split(chunk):
        g0 += w_u[:, part] @ unit(w_e[part])
    return {"g0": g0, "s": w_u[:, ids].sum(1), "eps": _eps(model.parts.layers[0].ln1)}


def _eps(module) -> float:
    return float(getattr(module, "variance_epsilon", getattr(module, "eps", 0.0)))


def _direct_readout(model, ids: Tensor, layer: int, shared: dict) -> Tensor:
    """W_U[:, S] @ ln1_layer(E_S) [d, d] from the shared G0 (exact when eps matches layer 0's)."""
    ln1 = model.parts.layers[layer].ln1
    if _eps(ln1) != shared["eps"]:  # layers normally share eps; otherwise compute this layer directly
        return model.weights.W_U.detach()[:, ids] @ normed_embeddings(model, layer, ids)
    g = shared["g0"] * ln1.weight.detach()
    if getattr(ln1, "bias", None) is not None:
        g = g + shared["s"][:, None] * ln1.bias.detach()
    return g


def _ov_factored(model, layer: int, readout: Tensor) -> Tensor:
    """readout = W_U[:, S] @ sources_S [d, d] -> W_O N_f readout W_V per head [n_heads, d_head, d_head]."""
    w = model.weights
    h = final_norm_matrix(model) @ readout
    return w.W_O(layer).detach() @ h @ w.W_V(layer, expand_kv=True).detach()


def copying_score_of(matrix: Tensor) -> float:
    """sum(eig) / sum(|eig|) of a square matrix: in [-1, 1], +1 iff every eigenvalue is real and >= 0."""
    eig = torch.linalg.eigvals(matrix.double())
    total = eig.abs().sum()
    return float(eig.sum().real / total) if total > 0 else 0.0


@torch.no_grad()
def copying_scores(
    model, tokens: Tokens = None, layers: Sequence[int] | None = None, resid: Tensor | None = None
) -> Tensor:
    """Copying score of every head: [len(layers) (default n_layers), n_heads], on `tokens` (None = whole
    vocabulary) read as embeddings (direct path), or as resid [n_layers, n_tokens, d_model] from
    token_residuals (in context)."""
    ids = token_ids(model, tokens)
    layers = list(range(model.cfg.n_layers) if layers is None else layers)
    shared = _readout(model, ids) if resid is None else None
    w_u = model.weights.W_U.detach()[:, ids]
    rows = []
    for layer in layers:
        if resid is None:
            readout = _direct_readout(model, ids, layer, shared)
        else:
            readout = w_u @ _sources(model, layer, ids, resid[layer])
        rows.append([copying_score_of(m) for m in _ov_factored(model, layer, readout)])
    return torch.tensor(rows)

"""Every site equals an independent computation: HF's own hidden states, or a hand-written formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

ATOL = 1e-5


def norm(model, x, which: str, layer: int | None = None):
    """The model's pre-norm, written out by hand (RMSNorm or LayerNorm) from the canonical weights."""
    w = model.weights
    weight = {"ln1": w.ln1_w, "ln2": w.ln2_w}[which](layer) if which != "final" else w.ln_final_w
    bias = {"ln1": w.ln1_b, "ln2": w.ln2_b}[which](layer) if which != "final" else w.ln_final_b
    module = model.parts.final_norm if which == "final" else getattr(model.parts.layers[layer], which)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-5))
    if model.cfg.normalization == "rms":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def act(model, x):
    name = model.cfg.act_fn
    if name == "silu":
        return F.silu(x)
    if name == "gelu_new":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return F.gelu(x)


def _bias(b):
    return 0 if b is None else b


@torch.no_grad()
def test_resid_equals_hf_hidden_states(tiny, tokens):
    out = tiny.hf(tokens, output_hidden_states=True)
    logits, cache = tiny.run_with_cache(tokens, sites=["blocks.*.resid_pre", "blocks.*.resid_post", "logits"])
    hs = out.hidden_states
    n = tiny.cfg.n_layers
    for layer in range(n):
        torch.testing.assert_close(cache[f"blocks.{layer}.resid_pre"], hs[layer], atol=0, rtol=0)
    for layer in range(n - 1):
        torch.testing.assert_close(cache[f"blocks.{layer}.resid_post"], hs[layer + 1], atol=0, rtol=0)
    torch.testing.assert_close(logits, out.logits, atol=0, rtol=0)
    torch.testing.assert_close(cache["logits"], out.logits, atol=0, rtol=0)


@torch.no_grad()
def test_logits_identical_with_and_without_lmscope(tiny, tokens):
    ref = tiny.hf(tokens).logits
    assert torch.equal(tiny(tokens), ref)
    every_site_but_pattern = [s for s in tiny.sites if not s.endswith("attn.pattern")]
    logits, _ = tiny.run_with_cache(tokens, sites=every_site_but_pattern)
    assert torch.equal(logits, ref)
    logits, _ = tiny.run_with_cache(
        tokens
    )  # the pattern forces explicit attention: tiny float differences only
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_layer_sites_recomputed_from_weights(tiny, tokens):
    _, cache = tiny.run_with_cache(tokens)
    w, c = tiny.weights, tiny.cfg
    torch.testing.assert_close(cache["embed"], w.W_E[tokens])
    if c.positional == "learned":
        torch.testing.assert_close(cache["blocks.0.resid_pre"], w.W_E[tokens] + w.W_pos[: tokens.shape[1]])
    n_rep = c.n_heads // c.n_kv_heads
    for layer in range(c.n_layers):
        site = lambda s, layer=layer: cache[f"blocks.{layer}.{s}"]  # noqa: E731
        x1 = norm(tiny, site("resid_pre"), "ln1", layer)
        # q/k/v (pre-rotary) from W_Q/W_K/W_V: checks the weight views' orientation too
        q = torch.einsum("bpd,hde->bphe", x1, w.W_Q(layer)) + _bias(w.b_Q(layer))
        k = torch.einsum("bpd,hde->bphe", x1, w.W_K(layer)) + _bias(w.b_K(layer))
        v = torch.einsum("bpd,hde->bphe", x1, w.W_V(layer)) + _bias(w.b_V(layer))
        torch.testing.assert_close(site("attn.q"), q, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(site("attn.k"), k, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(site("attn.v"), v, atol=ATOL, rtol=1e-4)
        # z from the pattern and v (GQA: each kv head serves n_rep query heads)
        pattern = site("attn.pattern")  # [b, h, q, k]
        v_full = site("attn.v").repeat_interleave(n_rep, dim=2)
        torch.testing.assert_close(
            site("attn.z"), torch.einsum("bhqk,bkhe->bqhe", pattern, v_full), atol=ATOL, rtol=1e-4
        )
        assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)
        assert pattern.triu(1).abs().max() == 0  # causal
        if c.positional == "learned":  # no rotary: the pattern is softmax(q·k / sqrt(d_head)) by hand
            scores = torch.einsum("bqhe,bkhe->bhqk", site("attn.q"), site("attn.k")) / math.sqrt(c.d_head)
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
            torch.testing.assert_close(pattern, scores.softmax(-1), atol=ATOL, rtol=1e-4)
        attn_out = torch.einsum("bphe,hed->bpd", site("attn.z"), w.W_O(layer)) + _bias(w.b_O(layer))
        torch.testing.assert_close(site("attn.out"), attn_out, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(site("resid_mid"), site("resid_pre") + site("attn.out"), atol=ATOL, rtol=0)
        mlp_in = site("resid_pre") if c.parallel_residual else site("resid_mid")
        x2 = norm(tiny, mlp_in, "ln2", layer)
        if c.gated_mlp:
            gate = x2 @ w.W_gate(layer)
            up = x2 @ w.W_in(layer)
            torch.testing.assert_close(site("mlp.pre"), gate, atol=ATOL, rtol=1e-4)
            torch.testing.assert_close(site("mlp.pre_linear"), up, atol=ATOL, rtol=1e-4)
            post = act(tiny, gate) * up
        else:
            pre = x2 @ w.W_in(layer) + _bias(w.b_in(layer))
            torch.testing.assert_close(site("mlp.pre"), pre, atol=ATOL, rtol=1e-4)
            post = act(tiny, pre)
        torch.testing.assert_close(site("mlp.post"), post, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(
            site("mlp.out"), site("mlp.post") @ w.W_out(layer) + _bias(w.b_out(layer)), atol=ATOL, rtol=1e-4
        )
        torch.testing.assert_close(
            site("resid_post"), site("resid_mid") + site("mlp.out"), atol=ATOL, rtol=1e-5
        )
    last = cache[f"blocks.{c.n_layers - 1}.resid_post"]
    torch.testing.assert_close(cache["final.norm"], norm(tiny, last, "final"), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(
        cache["logits"], cache["final.norm"] @ w.W_U + _bias(w.b_U), atol=ATOL, rtol=1e-4
    )


@torch.no_grad()
def test_site_shapes_follow_the_design_table(tiny, tokens):
    _, cache = tiny.run_with_cache(tokens)
    b, p = tokens.shape
    c = tiny.cfg
    expected = {
        "embed": (b, p, c.d_model),
        "blocks.1.resid_pre": (b, p, c.d_model),
        "blocks.1.resid_mid": (b, p, c.d_model),
        "blocks.1.attn.q": (b, p, c.n_heads, c.d_head),
        "blocks.1.attn.k": (b, p, c.n_kv_heads, c.d_head),
        "blocks.1.attn.v": (b, p, c.n_kv_heads, c.d_head),
        "blocks.1.attn.pattern": (b, c.n_heads, p, p),
        "blocks.1.attn.z": (b, p, c.n_heads, c.d_head),
        "blocks.1.attn.out": (b, p, c.d_model),
        "blocks.1.mlp.pre": (b, p, c.d_mlp),
        "blocks.1.mlp.post": (b, p, c.d_mlp),
        "blocks.1.mlp.out": (b, p, c.d_model),
        "blocks.1.resid_post": (b, p, c.d_model),
        "final.norm": (b, p, c.d_model),
        "logits": (b, p, c.d_vocab),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
    assert list(cache) == tiny.sites  # every site, in execution order
    assert tuple(cache.stack("resid_post").shape) == (c.n_layers, b, p, c.d_model)


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_logits_equal_unpadded(tiny, side):
    rows = [[3, 4, 5, 6, 7, 8, 9], [10, 11, 12], [13, 2, 3, 4, 5]]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    padded, cache = tiny.run_with_cache(ids, sites=["blocks.*.attn.pattern"], attention_mask=mask)
    plain = tiny(ids, attention_mask=mask)
    for i, row in enumerate(rows):
        alone = tiny.hf(torch.tensor([row])).logits[0]
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        torch.testing.assert_close(plain[i, span], alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(padded[i, span], alone, atol=1e-5, rtol=1e-4)
        # no real token attends to padding
        pattern = cache["blocks.0.attn.pattern"][i][:, span][..., mask[i] == 0]
        assert pattern.numel() == 0 or pattern.abs().max() < 1e-6

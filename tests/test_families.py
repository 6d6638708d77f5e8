"""Exactness of every architecture family, on tiny random models built offline (tests/conftest.py).

One table, FAMILIES: a row says where each site lives in the Hugging Face module tree of that family, written
independently of lmscope's adapters (module paths, plus how to cut a fused output). Adding a family is adding
a row (and a tiny config in conftest.FAMILY_CONFIGS). Every test runs on every row:
  * logits bit-identical to plain HF, with no site and with every site except the ones that switch to an
    explicit computation (attn.pattern, mlp.expert_post);
  * every site bit-identical to the HF module input or output it names, resid_* to HF's hidden_states,
    attn.pattern close to HF's eager attention weights;
  * patching resid_pre of layer 0 at every position from run B reproduces run B's logits;
  * model.weights applied by hand reproduce every block's output (and each site inside it, the attention
    pattern included: q/k norms, rotary, scale, soft-cap, causal and sliding-window mask) and the logits;
  * writes flow on: resid_mid (behind post-norms too) and the mixture-of-experts routing sites.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from transformers.activations import ACT2FN

import lmscope as ls

from .conftest import tiny_hf, word_tokenizer

ATOL, RTOL = 2e-5, 1e-4
L = "model.layers.{l}"


def cut(lo: int, hi: int) -> Callable:
    """A slice of the last axis of a fused projection's output."""
    return lambda x: x[..., lo:hi]


def neox_qkv(i: int) -> Callable:  # GPT-NeoX packs [head, (q, k, v), d_head]
    return lambda x: x.unflatten(-1, (4, 3, 8))[..., i, :]


def llama_taps(**changes) -> dict:
    taps = {
        "embed": ("model.embed_tokens", "out"),
        "attn.q": (f"{L}.self_attn.q_proj", "out"),
        "attn.k": (f"{L}.self_attn.k_proj", "out"),
        "attn.v": (f"{L}.self_attn.v_proj", "out"),
        "attn.z": (f"{L}.self_attn.o_proj", "in"),
        "attn.out": (f"{L}.self_attn", "out"),
        "mlp.pre": (f"{L}.mlp.gate_proj", "out"),
        "mlp.pre_linear": (f"{L}.mlp.up_proj", "out"),
        "mlp.post": (f"{L}.mlp.down_proj", "in"),
        "mlp.in": (f"{L}.mlp", "in"),
        "mlp.out": (f"{L}.mlp", "out"),
        "final.norm": ("model.norm", "out"),
    }
    return {**taps, **changes}


def post_norm_taps() -> dict:
    return llama_taps(
        **{
            "attn.out": (f"{L}.post_attention_layernorm", "out"),
            "mlp.out": (f"{L}.post_feedforward_layernorm", "out"),
        }
    )


@dataclass(frozen=True)
class Family:
    arch: str  # conftest.tiny_hf builder
    taps: dict = field(default_factory=llama_taps)  # site -> (module path, "in"/"out"[, view of the tensor])


MOE_TAPS = {k: v for k, v in llama_taps().items() if k not in ("mlp.pre", "mlp.pre_linear", "mlp.post")} | {
    "mlp.router_logits": (f"{L}.mlp.gate", "out")
}

FAMILIES = [
    Family("llama"),
    Family(
        "gpt2",
        {
            "embed": ("transformer.wte", "out"),
            "pos_embed": ("transformer.wpe", "out"),
            "attn.q": ("transformer.h.{l}.attn.c_attn", "out", cut(0, 32)),
            "attn.k": ("transformer.h.{l}.attn.c_attn", "out", cut(32, 64)),
            "attn.v": ("transformer.h.{l}.attn.c_attn", "out", cut(64, 96)),
            "attn.z": ("transformer.h.{l}.attn.c_proj", "in"),
            "attn.out": ("transformer.h.{l}.attn", "out"),
            "mlp.pre": ("transformer.h.{l}.mlp.c_fc", "out"),
            "mlp.post": ("transformer.h.{l}.mlp.c_proj", "in"),
            "mlp.in": ("transformer.h.{l}.mlp", "in"),
            "mlp.out": ("transformer.h.{l}.mlp", "out"),
            "final.norm": ("transformer.ln_f", "out"),
        },
    ),
    Family(
        "neox",
        {
            "embed": ("gpt_neox.embed_in", "out"),
            "attn.q": ("gpt_neox.layers.{l}.attention.query_key_value", "out", neox_qkv(0)),
            "attn.k": ("gpt_neox.layers.{l}.attention.query_key_value", "out", neox_qkv(1)),
            "attn.v": ("gpt_neox.layers.{l}.attention.query_key_value", "out", neox_qkv(2)),
            "attn.z": ("gpt_neox.layers.{l}.attention.dense", "in"),
            "attn.out": ("gpt_neox.layers.{l}.attention", "out"),
            "mlp.pre": ("gpt_neox.layers.{l}.mlp.dense_h_to_4h", "out"),
            "mlp.post": ("gpt_neox.layers.{l}.mlp.dense_4h_to_h", "in"),
            "mlp.in": ("gpt_neox.layers.{l}.mlp", "in"),
            "mlp.out": ("gpt_neox.layers.{l}.mlp", "out"),
            "final.norm": ("gpt_neox.final_layer_norm", "out"),
        },
    ),
    Family("mistral"),
    Family("qwen2"),
    Family("qwen3"),
    Family("gemma"),
    Family("gemma2", post_norm_taps()),
    Family("gemma3_text", post_norm_taps()),
    Family(
        "phi3",
        llama_taps(
            **{
                "attn.q": (f"{L}.self_attn.qkv_proj", "out", cut(0, 32)),
                "attn.k": (f"{L}.self_attn.qkv_proj", "out", cut(32, 48)),
                "attn.v": (f"{L}.self_attn.qkv_proj", "out", cut(48, 64)),
                "mlp.pre": (f"{L}.mlp.gate_up_proj", "out", cut(0, 48)),
                "mlp.pre_linear": (f"{L}.mlp.gate_up_proj", "out", cut(48, 96)),
            }
        ),
    ),
    Family("olmo2", post_norm_taps()),
    Family("mixtral", MOE_TAPS),
]
# sites computed by an explicit function while hooked (not bit-identical to the fused kernels downstream)
EXPLICIT = ("attn.pattern", "mlp.expert_post")


@pytest.fixture(params=FAMILIES, ids=lambda f: f.arch)
def family(request):
    fam = request.param
    return fam, ls.Model(tiny_hf(fam.arch), word_tokenizer(), name=f"tiny-{fam.arch}")


@pytest.fixture
def tokens() -> torch.Tensor:
    # 9 positions: longer than the sliding windows (4) of the tiny mistral/qwen2/gemma2/gemma3 models
    return torch.randint(2, 64, (3, 9), generator=torch.Generator().manual_seed(1))


def _tap(hf, n_layers: int, taps: dict):
    """Record, with plain torch hooks on the HF model, the module inputs/outputs the taps name."""
    records: dict[str, torch.Tensor] = {}
    handles = []

    def add(site, path, where, view):
        module = hf.get_submodule(path)

        def keep(x):
            records[site] = view(x).detach().clone()

        if where == "in":
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, a, kw: keep(a[0] if a else kw["hidden_states"]), with_kwargs=True
                )
            )
        else:
            handles.append(
                module.register_forward_hook(
                    lambda m, a, out: keep(out[0] if isinstance(out, tuple) else out)
                )
            )

    for suffix, (path, where, *view) in taps.items():
        view = view[0] if view else (lambda x: x)
        if "{l}" in path:
            for layer in range(n_layers):
                add(f"blocks.{layer}.{suffix}", path.format(l=layer), where, view)
        else:
            add(suffix, path, where, view)
    return records, handles


@torch.no_grad()
def test_logits_identical_to_plain_hf(family, tokens):
    _, model = family
    ref = model.hf(tokens).logits
    assert torch.equal(model(tokens), ref)
    exact_sites = [s for s in model.sites if not s.endswith(EXPLICIT)]
    logits, cache = model.run_with_cache(tokens, sites=exact_sites)
    assert torch.equal(logits, ref)
    assert torch.equal(cache["logits"], ref)
    logits, _ = model.run_with_cache(tokens)  # explicit attention / experts: float rounding only
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_every_site_is_the_hf_tensor_it_names(family, tokens):
    fam, model = family
    n = model.cfg.n_layers
    records, handles = _tap(model.hf, n, fam.taps)
    try:
        out = model.hf(tokens, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    _, cache = model.run_with_cache(tokens, sites=[s for s in model.sites if not s.endswith(EXPLICIT)])
    for site, expected in records.items():
        assert torch.equal(cache[site].reshape(-1), expected.reshape(-1)), site
    hs = out.hidden_states
    for layer in range(n):
        assert torch.equal(cache[f"blocks.{layer}.resid_pre"], hs[layer])
    for layer in range(n - 1):
        assert torch.equal(cache[f"blocks.{layer}.resid_post"], hs[layer + 1])
    assert torch.equal(
        cache["embed"] if model.cfg.positional != "learned" else cache["blocks.0.resid_pre"], hs[0]
    )
    # every site the design table lists is covered by a tap or by hidden_states (or is a sum of them)
    covered = set(records) | {s for s in model.sites if s.endswith(("resid_pre", "resid_mid", "resid_post"))}
    missing = {s for s in model.sites if s not in covered} - {"logits"}
    missing = {s for s in missing if not s.endswith(EXPLICIT + ("mlp.routing",))}
    assert not missing, f"no independent reference for {sorted(missing)}: add taps to the family's row"
    for layer in range(n):  # resid_mid = resid_pre + what the block adds after attention
        site = f"blocks.{layer}"
        torch.testing.assert_close(
            cache[f"{site}.resid_mid"],
            cache[f"{site}.resid_pre"] + cache[f"{site}.attn.out"],
            atol=1e-6,
            rtol=0,
        )


@torch.no_grad()
def test_pattern_equals_hf_eager_attention_weights(family, tokens):
    _, model = family
    eager = copy.deepcopy(model.hf)
    eager.set_attn_implementation("eager")
    ref = eager(tokens, output_attentions=True).attentions
    _, cache = model.run_with_cache(tokens, sites="blocks.*.attn.pattern")
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.pattern"]
        torch.testing.assert_close(pattern, ref[layer], atol=1e-6, rtol=1e-5)
        q = torch.arange(tokens.shape[1])
        visible = q[:, None] >= q[None, :]
        if layer in model.cfg.sliding_layers:  # the window is exercised: far keys get nothing
            visible &= q[:, None] - q[None, :] < model.cfg.sliding_window
        assert pattern[..., ~visible].abs().max() == 0


@torch.no_grad()
def test_moe_sites_match_hf_router_and_experts(family, tokens):
    fam, model = family
    if not model.cfg.n_experts:
        pytest.skip("dense MLP")
    records: dict = {}
    handles = []
    for layer in range(model.cfg.n_layers):
        experts = model.hf.get_submodule(f"model.layers.{layer}.mlp.experts")

        def grab(m, args, out, layer=layer):
            records[layer] = (args, out)

        handles.append(experts.register_forward_hook(grab))
    try:
        model.hf(tokens)
    finally:
        for h in handles:
            h.remove()
    _, exact = model.run_with_cache(tokens, sites="blocks.*.mlp.routing")
    _, cache = model.run_with_cache(tokens, sites="blocks.*.mlp.expert_post")  # explicit experts: rounding
    e, k = model.cfg.n_experts, model.cfg.experts_per_token
    for layer, ((x, index, weights), out) in records.items():
        routing = exact[f"blocks.{layer}.mlp.routing"].reshape(-1, e)
        assert torch.equal(routing.gather(1, index), weights)  # HF's top-k weights at HF's top-k experts
        assert ((routing != 0).sum(-1) == k).all()
        post = cache[f"blocks.{layer}.mlp.expert_post"].reshape(-1, e, model.cfg.d_mlp)
        w = model.weights
        for expert in range(e):
            by_hand = ACT2FN[model.cfg.act_fn](x @ w.W_gate(layer)[expert]) * (x @ w.W_in(layer)[expert])
            routed = (index == expert).any(-1)
            torch.testing.assert_close(post[routed, expert], by_hand[routed], atol=ATOL, rtol=RTOL)
            assert post[~routed, expert].abs().max() == 0
        mix = torch.einsum("te,ted,edm->tm", routing, post, w.W_out(layer))
        torch.testing.assert_close(mix, out, atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_patching_resid_pre_reproduces_the_other_run(family, tokens):
    _, model = family
    other = torch.randint(2, 64, tokens.shape, generator=torch.Generator().manual_seed(7))
    logits_b, cache_b = model.run_with_cache(other, sites=["blocks.0.resid_pre"])
    patched = model(tokens, interventions=[ls.Patch("blocks.0.resid_pre", source=cache_b)])
    assert torch.equal(patched, logits_b)
    assert not torch.equal(model(tokens), logits_b)


def _norm(model, module, weight, bias, x):
    if weight is None:
        return x
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-5))
    if model.cfg.normalization == "rms":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def _b(bias):
    return 0 if bias is None else bias


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _pattern_by_hand(model, layer: int, q, k):
    """softmax of the scores from attn.q / attn.k [b, p, h, d]: q/k norms, rotary (cos/sin from the model's
    rotary module), scale, soft-cap, causal and sliding-window mask. -> [b, h, q, k]"""
    c, w, parts = model.cfg, model.weights, model.parts.layers[layer]
    eps = getattr(parts.q_norm, "variance_epsilon", getattr(parts.q_norm, "eps", None))
    if c.qk_norm == "head":
        q, k = _rms(q, w.q_norm_w(layer), eps), _rms(k, w.k_norm_w(layer), eps)
    elif c.qk_norm == "all":
        q = _rms(q.flatten(-2), w.q_norm_w(layer), eps).unflatten(-1, q.shape[-2:])
        k = _rms(k.flatten(-2), w.k_norm_w(layer), eps).unflatten(-1, k.shape[-2:])
    positions = torch.arange(q.shape[1])
    if c.positional == "rotary":
        base = getattr(model.hf, "model", None) or model.hf.gpt_neox
        extra = {"layer_type": model.hf.config.layer_types[layer]} if c.architecture == "gemma3_text" else {}
        cos, sin = base.rotary_emb(q, positions[None], **extra)  # [1, p, rotary dims]
        cos, sin, r = cos[:, :, None], sin[:, :, None], cos.shape[-1]

        def rotate(x):
            x_rot, x_pass = x[..., :r], x[..., r:]
            half = torch.cat((-x_rot[..., r // 2 :], x_rot[..., : r // 2]), dim=-1)
            return torch.cat((x_rot * cos + half * sin, x_pass), dim=-1)

        q, k = rotate(q), rotate(k)
    k = k.repeat_interleave(c.n_heads // c.n_kv_heads, dim=2)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * (c.attn_scale or c.d_head**-0.5)
    if c.attn_softcap:
        scores = torch.tanh(scores / c.attn_softcap) * c.attn_softcap
    visible = positions[:, None] >= positions[None, :]
    if layer in c.sliding_layers:
        visible &= positions[:, None] - positions[None, :] < c.sliding_window
    return scores.masked_fill(~visible, float("-inf")).softmax(-1)


@torch.no_grad()
def test_weights_reproduce_every_block_by_hand(family, tokens):
    _, model = family
    w, c = model.weights, model.cfg
    act = ACT2FN[c.act_fn]
    out = model.hf(tokens, output_hidden_states=True)
    _, cache = model.run_with_cache(tokens)
    assert torch.equal(w.W_E[tokens], cache["embed"])
    n_rep = c.n_heads // c.n_kv_heads
    for layer, parts in enumerate(model.parts.layers):
        site = lambda s, layer=layer: cache[f"blocks.{layer}.{s}"]  # noqa: E731

        def check(s, value, site=site):
            torch.testing.assert_close(site(s), value, atol=ATOL, rtol=RTOL, msg=s)

        resid_pre = out.hidden_states[layer]
        x1 = _norm(model, parts.ln1, w.ln1_w(layer), w.ln1_b(layer), resid_pre)
        q = torch.einsum("bpd,hde->bphe", x1, w.W_Q(layer)) + _b(w.b_Q(layer))
        k = torch.einsum("bpd,hde->bphe", x1, w.W_K(layer)) + _b(w.b_K(layer))
        v = torch.einsum("bpd,hde->bphe", x1, w.W_V(layer)) + _b(w.b_V(layer))
        check("attn.q", q), check("attn.k", k), check("attn.v", v)
        pattern = _pattern_by_hand(model, layer, q, k)
        check("attn.pattern", pattern)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v.repeat_interleave(n_rep, dim=2))
        check("attn.z", z)
        attn_out = torch.einsum("bphe,hed->bpd", z, w.W_O(layer)) + _b(w.b_O(layer))
        attn_out = _norm(model, parts.attn_post_norm, w.ln1_post_w(layer), None, attn_out)
        check("attn.out", attn_out)
        resid_mid = resid_pre + attn_out
        x2 = _norm(
            model, parts.ln2, w.ln2_w(layer), w.ln2_b(layer), resid_pre if c.parallel_residual else resid_mid
        )
        check("mlp.in", x2)
        if c.n_experts:
            router_logits = x2 @ w.W_router(layer)
            check("mlp.router_logits", router_logits)
            top = router_logits.softmax(-1).topk(c.experts_per_token, dim=-1)
            routing = torch.zeros_like(router_logits).scatter(
                -1, top.indices, top.values / top.values.sum(-1, keepdim=True)
            )
            check("mlp.routing", routing)
            post = act(torch.einsum("bpd,edm->bpem", x2, w.W_gate(layer))) * torch.einsum(
                "bpd,edm->bpem", x2, w.W_in(layer)
            )
            post = post * (routing != 0)[..., None]
            check("mlp.expert_post", post)
            mlp_out = torch.einsum("bpe,bpem,emd->bpd", routing, post, w.W_out(layer))
        else:
            if w.W_gate(layer) is not None:
                check("mlp.pre", x2 @ w.W_gate(layer))
                check("mlp.pre_linear", x2 @ w.W_in(layer))
                post = act(x2 @ w.W_gate(layer)) * (x2 @ w.W_in(layer))
            else:
                pre = x2 @ w.W_in(layer) + _b(w.b_in(layer))
                check("mlp.pre", pre)
                post = act(pre)
            check("mlp.post", post)
            mlp_out = post @ w.W_out(layer) + _b(w.b_out(layer))
        mlp_out = _norm(model, parts.mlp_post_norm, w.ln2_post_w(layer), None, mlp_out)
        check("mlp.out", mlp_out)
        resid_post = resid_mid + mlp_out
        if layer + 1 < c.n_layers:  # HF's last hidden state is after the final norm
            torch.testing.assert_close(resid_post, out.hidden_states[layer + 1], atol=ATOL, rtol=RTOL)
        check("resid_post", resid_post)
    final = _norm(
        model,
        model.parts.final_norm,
        w.ln_final_w,
        w.ln_final_b,
        cache[f"blocks.{c.n_layers - 1}.resid_post"],
    )
    torch.testing.assert_close(cache["final.norm"], final, atol=ATOL, rtol=RTOL)
    logits = final @ w.W_U + _b(w.b_U)
    if c.logit_softcap:
        capped = torch.tanh(logits / c.logit_softcap) * c.logit_softcap
        assert (capped - logits).abs().max() > 0.05  # the cap bends these logits: it is exercised
        logits = capped
    torch.testing.assert_close(out.logits, logits, atol=ATOL, rtol=RTOL)


def test_unsupported_model_type_names_the_supported_ones_and_the_closest():
    from transformers import LlamaConfig

    from lmscope.model.adapters import ADAPTERS, UnsupportedModelError, adapter_for

    cfg = LlamaConfig()
    cfg.model_type = "qwen2_vl"  # not supported; closest: qwen2
    with pytest.raises(UnsupportedModelError) as err:
        adapter_for(cfg)
    message = str(err.value)
    assert "'qwen2_vl'" in message and "closest supported one is 'qwen2'" in message
    assert all(t in message for t in ADAPTERS)
    cfg.model_type = "zzzz"
    with pytest.raises(NotImplementedError, match="Supported: ") as err:
        adapter_for(cfg)
    assert "closest" not in str(err.value)


def test_load_refuses_an_unsupported_model_type_before_loading(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_moe", "hidden_size": 8}))
    with pytest.raises(NotImplementedError, match="closest supported one is 'qwen2'") as err:
        ls.load(tmp_path)
    assert "gemma3_text" in str(err.value) and "mixtral" in str(err.value)


@torch.no_grad()
def test_resid_mid_writes_flow_on(family, tokens):
    """Writing resid_mid (also behind post-norms) is what the MLP reads and what resid_post builds on."""
    _, model = family
    if model.cfg.parallel_residual:
        pytest.skip("parallel residual: the MLP reads resid_pre")
    other = torch.randint(2, 64, tokens.shape, generator=torch.Generator().manual_seed(7))
    logits_b, cache_b = model.run_with_cache(other, sites=["blocks.0.resid_mid", "blocks.0.resid_post"])
    patch = ls.Patch("blocks.0.resid_mid", source=cache_b)
    logits, cache = model.run_with_cache(tokens, sites=["blocks.0.resid_post"], interventions=[patch])
    torch.testing.assert_close(
        cache["blocks.0.resid_post"], cache_b["blocks.0.resid_post"], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(logits, logits_b, atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_moe_writes_reroute(family, tokens):
    _, model = family
    if not model.cfg.n_experts:
        pytest.skip("dense MLP")
    ref = model.hf(tokens).logits
    rewrite = [
        ("blocks.*.mlp.router_logits", lambda act, site: act.clone())
    ]  # re-routes from the same logits
    assert torch.equal(model(tokens, interventions=rewrite), ref)
    rewrite = [
        ("blocks.*.mlp.routing", lambda act, site: act.clone())
    ]  # every expert runs, weight 0 off top-k
    torch.testing.assert_close(model(tokens, interventions=rewrite), ref, atol=ATOL, rtol=RTOL)

    def only_expert_1(act, site):
        return torch.zeros_like(act).index_fill(-1, torch.tensor([1]), 1.0)

    _, cache = model.run_with_cache(
        tokens,
        sites=["blocks.0.mlp.out", "blocks.0.resid_mid"],
        interventions=[("blocks.0.mlp.routing", only_expert_1)],
    )
    w = model.weights
    x2 = model.parts.layers[0].ln2(cache["blocks.0.resid_mid"])
    by_hand = (ACT2FN[model.cfg.act_fn](x2 @ w.W_gate(0)[1]) * (x2 @ w.W_in(0)[1])) @ w.W_out(0)[1]
    torch.testing.assert_close(cache["blocks.0.mlp.out"], by_hand, atol=ATOL, rtol=RTOL)
    routed = model(tokens, interventions=[ls.Ablate("blocks.1.mlp.expert_post")])  # layer 1's experts off
    skip_mlp = [("blocks.1.mlp.out", lambda act, site: torch.zeros_like(act))]
    torch.testing.assert_close(routed, model(tokens, interventions=skip_mlp), atol=ATOL, rtol=RTOL)

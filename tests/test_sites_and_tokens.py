"""Site names, aliases, globs and errors; tokenisation and padding; the weight views."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.model.sites import canonical


def test_sites_in_execution_order(tiny):
    c = tiny.cfg
    sites = tiny.sites
    assert sites[0] == "embed" and sites[-2:] == ["final.norm", "logits"]
    order = [s for s in sites if s.startswith("blocks.1.")]
    expected = [
        "resid_pre",
        "attn.q",
        "attn.k",
        "attn.v",
        "attn.pattern",
        "attn.z",
        "attn.out",
        "resid_mid",
        "mlp.in",
        "mlp.pre",
        *(["mlp.pre_linear"] if c.gated_mlp else []),
        "mlp.post",
        "mlp.out",
        "resid_post",
    ]
    assert order == [f"blocks.1.{s}" for s in expected]
    # hooks fire in this order too
    seen = []
    tiny(torch.tensor([[2, 3, 4]]), interventions=[(s, lambda a, site: seen.append(site)) for s in sites])
    assert seen == sites


def test_transformerlens_aliases(tiny_llama):
    pairs = {
        "blocks.8.hook_resid_post": "blocks.8.resid_post",
        "blocks.8.mlp.hook_post": "blocks.8.mlp.post",
        "blocks.8.attn.hook_z": "blocks.8.attn.z",
        "blocks.2.hook_attn_out": "blocks.2.attn.out",
        "hook_embed": "embed",
        "ln_final.hook_normalized": "final.norm",
    }
    for alias, name in pairs.items():
        assert canonical(alias) == name
    _, cache = tiny_llama.run_with_cache(
        torch.tensor([[2, 3]]), sites=["blocks.*.hook_resid_post", "blocks.1.mlp.hook_post"]
    )
    assert list(cache) == [
        "blocks.0.resid_post",
        "blocks.1.mlp.post",
        "blocks.1.resid_post",
        "blocks.2.resid_post",
    ]
    assert torch.equal(cache["blocks.1.hook_resid_post"], cache["blocks.1.resid_post"])


def test_globs(tiny_llama):
    assert tiny_llama.resolve_sites("blocks.*.attn.z") == [f"blocks.{i}.attn.z" for i in range(3)]
    assert len(tiny_llama.resolve_sites("blocks.1.*")) == 14  # 13 + mlp.in
    assert tiny_llama.resolve_sites(["logits", "embed", "embed"]) == ["embed", "logits"]


def test_unknown_sites_list_the_closest_names(tiny_llama):
    with pytest.raises(ls.SiteError) as err:
        tiny_llama.resolve_sites("blocks.1.resid_psot")
    assert "blocks.1.resid_post" in str(err.value) and "unknown site" in str(err.value)
    with pytest.raises(ls.SiteError, match="layers 0..2"):
        tiny_llama.resolve_sites("blocks.7.resid_post")
    with pytest.raises(ls.SiteError, match="matches no site"):
        tiny_llama.resolve_sites("blocks.*.attn.zz")
    with pytest.raises(ls.SiteError, match="pos_embed"):  # rotary model: no learned positions
        tiny_llama.resolve_sites("pos_embed")
    _, cache = tiny_llama.run_with_cache(torch.tensor([[2, 3]]), sites=["blocks.0.resid_pre"])
    with pytest.raises(ls.SiteError, match="not in this cache"):
        cache["blocks.0.mlp.post"]


def test_cache_holds_only_what_was_asked(tiny_llama, tokens):
    _, small = tiny_llama.run_with_cache(tokens, sites=["blocks.0.resid_post"])
    _, everything = tiny_llama.run_with_cache(tokens)
    assert list(small) == ["blocks.0.resid_post"]
    assert small.nbytes == tokens.numel() * tiny_llama.cfg.d_model * 4
    assert everything.nbytes > 40 * small.nbytes


def test_tokenize_pads_both_sides(tiny_llama):
    texts = ["the cat sat on the mat", "a dog ran"]
    right = tiny_llama.tokenize(texts)
    left = tiny_llama.tokenize(texts, padding_side="left")
    assert right["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert left["attention_mask"].tolist() == [[1] * 6, [0, 0, 0, 1, 1, 1]]
    assert right["input_ids"][1, :3].tolist() == left["input_ids"][1, 3:].tolist()
    logits_right, logits_left = tiny_llama(right), tiny_llama(left)
    torch.testing.assert_close(logits_right[1, :3], logits_left[1, 3:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tiny_llama(texts)[1, :3], tiny_llama("a dog ran")[0], atol=1e-5, rtol=1e-4)


def test_token_helpers_and_their_errors(tiny_llama):
    assert tiny_llama.to_tokens("the cat").tolist() == [[2, 3]]
    assert tiny_llama.to_tokens("the cat", prepend_bos=True).tolist() == [[1, 2, 3]]
    assert tiny_llama.to_str_tokens("the cat sat") == ["the", "cat", "sat"]
    with pytest.raises(ValueError, match="different token lengths"):
        tiny_llama.to_tokens(["the cat", "a"])
    with pytest.raises(ValueError, match="has no tokens"):
        tiny_llama("")
    with pytest.raises(ValueError, match="vocabulary"):
        tiny_llama(torch.tensor([[1, 999]]))
    with pytest.raises(ValueError, match="non-empty integer tensor"):
        tiny_llama(torch.zeros(1, 0, dtype=torch.long))
    no_tok = ls.Model(tiny_llama.hf)
    with pytest.raises(ValueError, match="no tokenizer"):
        no_tok("the cat")


def test_weight_views_are_views_and_documented_orientation(tiny):
    w, c = tiny.weights, tiny.cfg
    assert tuple(w.W_E.shape) == (c.d_vocab, c.d_model)
    assert tuple(w.W_U.shape) == (c.d_model, c.d_vocab)
    assert tuple(w.W_Q(0).shape) == (c.n_heads, c.d_model, c.d_head)
    assert tuple(w.W_K(0).shape) == (c.n_kv_heads, c.d_model, c.d_head)
    assert tuple(w.W_K(0, expand_kv=True).shape) == (c.n_heads, c.d_model, c.d_head)
    assert tuple(w.W_O(0).shape) == (c.n_heads, c.d_head, c.d_model)
    assert tuple(w.W_in(0).shape) == (c.d_model, c.d_mlp)
    assert tuple(w.W_out(0).shape) == (c.d_mlp, c.d_model)
    assert (w.W_gate(0) is not None) == c.gated_mlp
    # views share storage with the HF parameters: no copies
    assert (
        w.W_out(1).untyped_storage().data_ptr()
        == tiny.parts.layers[1].mlp_down.weight.untyped_storage().data_ptr()
    )
    with pytest.raises(IndexError, match="layers 0..2"):
        w.W_out(5)

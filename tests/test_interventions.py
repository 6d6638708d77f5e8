"""Interventions: each checked against the same operation done by hand on cached activations."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.model import attention


@torch.no_grad()
def test_patching_a_run_with_its_own_cache_changes_nothing(tiny, tokens):
    ref, cache = tiny.run_with_cache(tokens)
    with tiny.intervene(ls.Patch("blocks.*", source=cache)):
        patched = tiny(tokens)
    torch.testing.assert_close(patched, ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_patching_resid_pre_0_from_b_reproduces_b(tiny, tokens):
    a, b = tokens[:1], tokens[1:2]
    logits_b, cache_b = tiny.run_with_cache(b, sites=["blocks.0.resid_pre"])
    patched = tiny(a, interventions=[ls.Patch("blocks.0.resid_pre", source=cache_b)])
    assert not torch.allclose(tiny(a), logits_b)
    torch.testing.assert_close(patched, logits_b, atol=1e-5, rtol=0)


@torch.no_grad()
def test_patch_selects_heads_and_positions(tiny, tokens):
    a, b = tokens[:1], tokens[1:2]
    _, cache_a = tiny.run_with_cache(a, sites=["blocks.1.attn.z"])
    _, cache_b = tiny.run_with_cache(b, sites=["blocks.1.attn.z"])
    patch = ls.Patch(
        "blocks.1.hook_z".replace("hook_z", "attn.hook_z"), source=cache_b, heads=[2], positions=[-1]
    )
    _, patched = tiny.run_with_cache(a, sites=["blocks.1.attn.z"], interventions=[patch])
    expected = cache_a["blocks.1.attn.z"].clone()
    expected[:, -1, 2] = cache_b["blocks.1.attn.z"][:, -1, 2]
    assert torch.equal(patched["blocks.1.attn.z"], expected)


@torch.no_grad()
def test_per_example_positions(tiny, tokens):
    positions = torch.tensor([0, 3, 8])
    _, cache = tiny.run_with_cache(
        tokens,
        sites=["blocks.0.mlp.post"],
        interventions=[ls.Ablate("blocks.0.mlp.post", positions=positions)],
    )
    post = cache["blocks.0.mlp.post"]
    for i, p in enumerate(positions.tolist()):
        assert post[i, p].abs().max() == 0
        others = torch.cat([post[i, :p], post[i, p + 1 :]])
        assert (others != 0).any(dim=-1).all()


@torch.no_grad()
def test_ablations(tiny, tokens):
    site = "blocks.1.mlp.post"
    _, clean = tiny.run_with_cache(tokens, sites=[site])
    neurons = [0, 5, 7]
    _, zero = tiny.run_with_cache(tokens, sites=[site], interventions=[ls.Ablate(site, neurons=neurons)])
    expected = clean[site].clone()
    expected[..., neurons] = 0
    assert torch.equal(zero[site], expected)
    _, mean = tiny.run_with_cache(
        tokens, sites=[site], interventions=[ls.Ablate(site, how="mean", source=clean)]
    )
    torch.testing.assert_close(mean[site], clean[site].mean(0, keepdim=True).expand_as(clean[site]))
    _, res = tiny.run_with_cache(
        tokens, sites=[site], interventions=[ls.Ablate(site, "resample", source=clean, seed=3)]
    )
    order = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(3))
    assert torch.equal(res[site], clean[site][order])


@torch.no_grad()
def test_subspace_patch_formula_and_full_basis(tiny, tokens):
    site = "blocks.1.resid_pre"
    a, b = tokens[:2], tokens[1:3]
    _, ca = tiny.run_with_cache(a, sites=[site])
    _, cb = tiny.run_with_cache(b, sites=[site])
    d = tiny.cfg.d_model
    basis = torch.linalg.qr(torch.randn(d, 3, generator=torch.Generator().manual_seed(0))).Q
    _, patched = tiny.run_with_cache(
        a, sites=[site], interventions=[ls.SubspacePatch(site, basis=basis, source=cb)]
    )
    w, u = ca[site], cb[site]
    torch.testing.assert_close(patched[site], w + ((u - w) @ basis) @ basis.T)
    # one direction: w' = w + ((u - w)·v̂) v̂, with v not normalised by the caller
    v = torch.randn(d)
    _, one = tiny.run_with_cache(a, sites=[site], interventions=[ls.SubspacePatch(site, basis=v, source=cb)])
    vh = v / v.norm()
    torch.testing.assert_close(one[site], w + ((u - w) @ vh)[..., None] * vh)
    # the whole space is an ordinary patch
    full = tiny(a, interventions=[ls.SubspacePatch(site, basis=torch.eye(d), source=cb)])
    torch.testing.assert_close(full, tiny(a, interventions=[ls.Patch(site, source=cb)]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="orthonormal"):
        ls.SubspacePatch(site, basis=torch.randn(d, 2) * 3, source=cb)


@torch.no_grad()
def test_add_direction_and_project_out(tiny, tokens):
    site = "blocks.0.resid_post"
    _, clean = tiny.run_with_cache(tokens, sites=[site])
    direction = torch.randn(tiny.cfg.d_model)
    _, steered = tiny.run_with_cache(
        tokens,
        sites=[site],
        interventions=[ls.AddDirection(site, direction=direction, scale=2.0, positions=[1])],
    )
    expected = clean[site].clone()
    expected[:, 1] += 2.0 * direction
    torch.testing.assert_close(steered[site], expected)
    _, projected = tiny.run_with_cache(
        tokens, sites=[site], interventions=[ls.ProjectOut(site, directions=direction)]
    )
    assert (projected[site] @ direction).abs().max() < 1e-4
    vh = direction / direction.norm()
    torch.testing.assert_close(
        projected[site], clean[site] - (clean[site] @ vh)[..., None] * vh, atol=1e-5, rtol=1e-5
    )


@torch.no_grad()
def test_writing_resid_mid_changes_what_flows_on(tiny, tokens):
    direction = torch.randn(tiny.cfg.d_model)
    sites = ["blocks.0.resid_mid", "blocks.0.mlp.out", "blocks.0.resid_post"]
    _, clean = tiny.run_with_cache(tokens, sites=sites)
    logits, cache = tiny.run_with_cache(
        tokens, sites=sites, interventions=[ls.AddDirection("blocks.0.resid_mid", direction=direction)]
    )
    torch.testing.assert_close(
        cache["blocks.0.resid_mid"], clean["blocks.0.resid_mid"] + direction, atol=1e-5, rtol=0
    )
    # resid_post = new resid_mid + mlp.out: the edit reached the residual stream, not only the next norm
    torch.testing.assert_close(
        cache["blocks.0.resid_post"],
        cache["blocks.0.resid_mid"] + cache["blocks.0.mlp.out"],
        atol=1e-5,
        rtol=0,
    )
    assert not torch.allclose(logits, tiny(tokens))


@torch.no_grad()
def test_pattern_patch_and_qkv_writes(tiny, tokens):
    """Writes into the pattern and into (possibly fused) q/k/v reach the output."""
    a, b = tokens[:1], tokens[1:2]
    sites = ["blocks.1.attn.pattern", "blocks.1.attn.v", "blocks.1.attn.z"]
    _, cb = tiny.run_with_cache(b, sites=sites)
    _, ca = tiny.run_with_cache(a, sites=sites)
    _, patched = tiny.run_with_cache(
        a, sites=sites, interventions=[ls.Patch("blocks.1.attn.pattern", source=cb)]
    )
    n_rep = tiny.cfg.n_heads // tiny.cfg.n_kv_heads
    v = ca["blocks.1.attn.v"].repeat_interleave(n_rep, dim=2)
    expected_z = torch.einsum("bhqk,bkhe->bqhe", cb["blocks.1.attn.pattern"], v)
    torch.testing.assert_close(patched["blocks.1.attn.z"], expected_z, atol=1e-5, rtol=1e-4)
    # v patched from b at kv head 0: z of the heads reading kv head 0 becomes pattern_a @ v_mixed
    _, vp = tiny.run_with_cache(
        a, sites=sites, interventions=[ls.Patch("blocks.1.attn.v", source=cb, heads=[0])]
    )
    v_mixed = ca["blocks.1.attn.v"].clone()
    v_mixed[:, :, 0] = cb["blocks.1.attn.v"][:, :, 0]
    torch.testing.assert_close(vp["blocks.1.attn.v"], v_mixed)
    expected_z = torch.einsum(
        "bhqk,bkhe->bqhe", ca["blocks.1.attn.pattern"], v_mixed.repeat_interleave(n_rep, dim=2)
    )
    torch.testing.assert_close(vp["blocks.1.attn.z"], expected_z, atol=1e-5, rtol=1e-4)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())


def test_hooks_removed_even_when_the_forward_raises(tiny, tokens):
    impl = tiny.hf.config._attn_implementation

    def boom(act, site):
        raise RuntimeError("boom")

    before = _hook_count(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        tiny.run_with_cache(tokens, interventions=[("blocks.2.mlp.out", boom)])
    with pytest.raises(RuntimeError, match="boom"):
        with tiny.intervene(
            ls.Hook("blocks.1.attn.pattern", fn=boom), ls.AddDirection("blocks.0.resid_mid", torch.ones(1))
        ):
            tiny(tokens)
    with pytest.raises(ls.SiteError, match="has no 'blocks.0.resid_mid'"):
        tiny(tokens, interventions=[ls.Patch("blocks.*.resid_mid", source={})])
    assert _hook_count(tiny) == before == 0
    assert len(attention.PATTERN_HOOKS) == 0
    assert tiny.hf.config._attn_implementation == impl
    torch.testing.assert_close(tiny(tokens), tiny.hf(tokens).logits, atol=0, rtol=0)


def test_gradients_flow_through_interventions(tiny, tokens):
    site = "blocks.1.resid_pre"
    a, b = tokens[:1], tokens[1:2]
    _, cb = tiny.run_with_cache(b, sites=[site])
    raw = torch.randn(tiny.cfg.d_model, 2, requires_grad=True)
    steer = torch.zeros(tiny.cfg.d_model, requires_grad=True)
    interventions = [
        ls.SubspacePatch(site, basis=lambda: torch.linalg.qr(raw).Q, source=cb),
        ls.AddDirection("blocks.2.resid_pre", direction=steer),
    ]
    logits = tiny(a, interventions=interventions)
    logits[0, -1].logsumexp(-1).backward()
    assert raw.grad is not None and raw.grad.abs().sum() > 0
    assert steer.grad is not None and steer.grad.abs().sum() > 0
    _, cache = tiny.run_with_cache(a, sites=[site], keep_graph=True, interventions=interventions)
    assert cache[site].requires_grad
    _, cache = tiny.run_with_cache(a, sites=[site], interventions=interventions)
    assert not cache[site].requires_grad


@torch.no_grad()
def test_several_interventions_and_nesting(tiny, tokens):
    a, b = tokens[:1], tokens[1:2]
    _, cb = tiny.run_with_cache(b, sites=["blocks.0.resid_pre"])
    d = torch.randn(tiny.cfg.d_model)
    with tiny.intervene(ls.Patch("blocks.0.resid_pre", source=cb)):
        with tiny.intervene(ls.AddDirection("blocks.1.resid_pre", direction=d)):
            nested = tiny(a)
        outer_only = tiny(a)
    together = tiny(
        a,
        interventions=[
            ls.Patch("blocks.0.resid_pre", source=cb),
            ls.AddDirection("blocks.1.resid_pre", direction=d),
        ],
    )
    assert torch.equal(nested, together)
    torch.testing.assert_close(outer_only, tiny(b), atol=1e-5, rtol=0)


@torch.no_grad()
def test_stop_at(tiny, tokens):
    logits, cache = tiny.run_with_cache(tokens, sites=["blocks.*.resid_post"], stop_at="blocks.1.resid_post")
    assert logits is None
    assert list(cache) == ["blocks.0.resid_post", "blocks.1.resid_post"]
    _, full = tiny.run_with_cache(tokens, sites=["blocks.1.resid_post"])
    assert torch.equal(cache["blocks.1.resid_post"], full["blocks.1.resid_post"])


def test_bad_interventions_get_clear_errors(tiny_llama, tokens):
    with pytest.raises(ValueError, match="heads= needs a site with a head axis"):
        tiny_llama(tokens, interventions=[ls.Ablate("blocks.0.mlp.post", heads=[0])])
    with pytest.raises(IndexError, match="out of range"):
        tiny_llama(tokens, interventions=[ls.Ablate("blocks.0.attn.z", heads=[9])])
    with pytest.raises(ValueError, match="same length"):
        _, short = tiny_llama.run_with_cache(tokens[:, :4], sites=["blocks.0.resid_pre"])
        tiny_llama(tokens, interventions=[ls.Patch("blocks.0.resid_pre", source=short)])
    with pytest.raises(ValueError, match="returned shape"):
        tiny_llama(tokens, interventions=[("blocks.0.mlp.post", lambda act, site: act[..., :3])])
    with pytest.raises(TypeError, match="must be an lmscope intervention"):
        tiny_llama(tokens, interventions=["blocks.0.mlp.post"])
    with pytest.raises(ls.SiteError, match="blocks.0.resid_post"):
        tiny_llama(tokens, interventions=[ls.Ablate("blocks.0.resid_postt")])


@torch.no_grad()
def test_start_from_a_cached_residual_gives_the_same_result(tiny, tokens):
    ref, cache = tiny.run_with_cache(tokens, sites=["blocks.*.resid_pre"])
    for layer in range(tiny.cfg.n_layers):
        logits, later = tiny.run_with_cache(
            tokens, sites=["blocks.*.resid_post"], start_from=(layer, cache[f"blocks.{layer}.resid_pre"])
        )
        torch.testing.assert_close(logits, ref, atol=1e-6, rtol=0)
        assert later.layers("resid_post") == list(range(layer, tiny.cfg.n_layers))
    blocks = tiny.parts.blocks
    assert all(b is p.block for b, p in zip(blocks, tiny.parts.layers))  # blocks restored
    # a patch at a later layer composes with the shortcut
    _, cb = tiny.run_with_cache(tokens.flip(0), sites=["blocks.2.attn.z"])
    patch = ls.Patch("blocks.2.attn.z", source=cb, heads=[1])
    full = tiny(tokens, interventions=[patch])
    fast, _ = tiny.run_with_cache(
        tokens, sites=[], interventions=[patch], start_from=(2, cache["blocks.2.resid_pre"])
    )
    torch.testing.assert_close(fast, full, atol=1e-6, rtol=0)

"""Patching sweeps: the fast batched sweep equals the naive one-forward-per-index loop, which in turn
equals a patch built by hand."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import lmscope as ls
from lmscope.causal import sweep
from lmscope.causal.sweep import patch_sweep
from lmscope.data.tasks import ContrastTask


def toy_task(model, n=3, pos=7, seed=0, padded=False, changed=(2,)) -> ContrastTask:
    """Example i's pair differs at position changed[i % len(changed)] only, like IOI's S2."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(2, model.cfg.d_vocab, (n, pos), generator=g)
    corrupt = clean.clone()
    for i in range(n):
        p = changed[i % len(changed)]
        corrupt[i, p] = 2 + (clean[i, p] - 1) % (model.cfg.d_vocab - 2)  # another token, never a special one
    mask = None
    if padded:
        mask = torch.ones(n, pos, dtype=torch.long)
        mask[0, :2] = 0  # example 0 is left-padded by two
    answer = torch.randint(2, model.cfg.d_vocab, (n,), generator=g)
    wrong = torch.randint(2, model.cfg.d_vocab, (n,), generator=g)
    return ContrastTask(clean, corrupt, answer, wrong, attention_mask=mask, name="toy")


CASES = [
    ("blocks.*.resid_pre", "position", "denoise"),
    ("blocks.*.attn.out", "position", "noise"),
    ("blocks.*.mlp.out", "layer", "zero"),
    ("blocks.*.attn.z", "head", "denoise"),
    ("blocks.*.attn.z", "head_position", "mean"),
    ("blocks.*.attn.k", "head", "denoise"),
    ("blocks.*.attn.pattern", "head", "resample"),
    ("blocks.*.mlp.post", "neuron", "denoise"),
]


@pytest.mark.parametrize("site,per,mode", CASES)
def test_fast_sweep_equals_naive_loop(tiny, site, per, mode):
    task = toy_task(tiny, padded=(mode == "noise"))
    neurons = [0, 3, 11] if per == "neuron" else None
    kwargs = dict(site=site, per=per, mode=mode, neurons=neurons, progress=False)
    naive = patch_sweep(tiny, task, method="naive", **kwargs)
    fast = patch_sweep(tiny, task, method="fast", chunk_tokens=60, **kwargs)  # small chunks: several forwards
    assert naive.values.shape == fast.values.shape
    torch.testing.assert_close(fast.per_example, naive.per_example, atol=1e-4, rtol=1e-4)
    assert not torch.isnan(fast.values).any()


# Prefix reuse and no-op patches: pairs that differ late, per example at different positions, left-padded.
LATE_CASES = [
    ("blocks.*.resid_pre", "position", "denoise", (4,)),
    ("blocks.*.attn.z", "head", "denoise", (5, 3)),
    ("blocks.*.attn.v", "head_position", "noise", (4, 6)),
    ("blocks.*.mlp.out", "layer", "denoise", (6,)),
]


@pytest.mark.parametrize("site,per,mode,changed", LATE_CASES)
@pytest.mark.parametrize("padded", [False, True])
def test_fast_sweep_with_reused_prefix_equals_naive_loop(tiny, site, per, mode, changed, padded):
    task = toy_task(tiny, pos=8, padded=padded, changed=changed)
    kwargs = dict(site=site, per=per, mode=mode, progress=False)
    naive = patch_sweep(tiny, task, method="naive", **kwargs)
    fast = patch_sweep(tiny, task, method="fast", chunk_tokens=40, **kwargs)
    torch.testing.assert_close(fast.per_example, naive.per_example, atol=1e-4, rtol=1e-4)


def test_first_changes_find_no_ops_and_the_unchanged_prefix(tiny_llama):
    task = toy_task(tiny_llama, pos=8, changed=(5, 3))
    # 8 = changes nothing. Layer 0's residual differs only at the changed tokens, later ones from there on.
    resid_pre = [8, 8, 8, 3, 8, 5, 8, 8] + [8, 8, 8, 3, 4, 5, 6, 7] * 2
    z_per_head = [3] * 12  # all positions: the earliest change of any example
    for site, per, expected in [
        ("blocks.*.resid_pre", "position", resid_pre),
        ("blocks.*.attn.z", "head", z_per_head),
    ]:
        plan = sweep.plan_sweep(tiny_llama, site, per, n_pos=8)
        sites = list(dict.fromkeys(idx.site for idx in plan.indices))
        base, source, _, _ = sweep._sources(tiny_llama, task, sites, "denoise", seed=0)
        assert sweep._first_changes(plan, source, base.acts, n_pos=8) == expected
    # zero ablation changes every position; resample of one example is the example itself
    plan = sweep.plan_sweep(tiny_llama, "blocks.*.attn.z", "head", n_pos=8)
    sites = tiny_llama.resolve_sites("blocks.*.attn.z")
    base, source, _, _ = sweep._sources(tiny_llama, task.subset([0]), sites, "zero", seed=0)
    assert set(sweep._first_changes(plan, source, base.acts, n_pos=8)) == {0}
    base, source, _, _ = sweep._sources(tiny_llama, task.subset([0]), sites, "resample", seed=0)
    assert set(sweep._first_changes(plan, source, base.acts, n_pos=8)) == {8}


def test_chunks_follow_layers_and_respect_the_token_limit():
    firsts = [3, 4, 5, 3, 4, 5]
    chunks = sweep._chunks(list(range(6)), firsts, n=2, n_pos=6, target=256, max_tokens=13)
    assert chunks == [[0, 1], [2, 3], [4, 5]]  # [0, 1, 2] would be 3 replicas x 2 examples x 3 positions
    assert sorted(sum(chunks, [])) == list(range(6))
    assert sweep._chunks(list(range(6)), firsts, n=2, n_pos=6, target=256, max_tokens=10_000) == [
        list(range(6))
    ]  # 36 tokens in all: one forward
    # a forward closes once it reaches the target: 2 replicas x 2 examples x 3 positions >= 10
    assert sweep._chunks(list(range(6)), firsts, n=2, n_pos=6, target=10, max_tokens=10_000) == chunks


@torch.no_grad()
@pytest.mark.parametrize("padded", [False, True])
def test_run_with_a_prefix_cache_equals_the_full_run(tiny, tokens, padded):
    mask = torch.ones_like(tokens)
    if padded:
        mask[0, :3] = 0
    inputs = {"input_ids": tokens, "attention_mask": mask}
    kv = DynamicCache()
    full, cache = tiny.run_with_cache(inputs, sites=["blocks.2.resid_pre"], kv_cache=kv)
    torch.testing.assert_close(full, tiny(inputs), atol=0, rtol=0)
    assert kv.get_seq_length() == tokens.shape[1]

    def prefix(p0: int) -> DynamicCache:  # a fresh one per run: runs extend the cache they get
        return DynamicCache([(layer.keys[:, :, :p0], layer.values[:, :, :p0]) for layer in kv.layers])

    for p0 in (1, 4, 8):
        suffix, _ = tiny.run_with_cache(inputs, sites=[], kv_cache=prefix(p0))
        torch.testing.assert_close(suffix, full[:, p0:], atol=1e-5, rtol=1e-5)
        late, _ = tiny.run_with_cache(
            inputs,
            sites=[],
            kv_cache=prefix(p0),
            start_from=(2, cache["blocks.2.resid_pre"][:, p0:]),
            logits_to_keep=1,
        )
        torch.testing.assert_close(late, full[:, -1:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="kv_cache holds 9 positions"):
        tiny.run_with_cache(inputs, sites=[], kv_cache=kv)


@torch.no_grad()
def test_naive_sweep_entry_equals_a_hand_built_patch(tiny_llama):
    task = toy_task(tiny_llama)
    res = patch_sweep(tiny_llama, task, "blocks.*.resid_pre", per="position", progress=False)
    _, clean = tiny_llama.run_with_cache(task.clean, sites=["blocks.1.resid_pre"])
    patched = tiny_llama(
        task.corrupt, interventions=[ls.Patch("blocks.1.resid_pre", source=clean, positions=[2])]
    )
    ld = patched[:, -1].gather(1, task.answer[:, None]) - patched[:, -1].gather(1, task.wrong[:, None])
    torch.testing.assert_close(res.per_example[1, 2], ld.squeeze(1), atol=1e-5, rtol=1e-5)
    clean_ld = tiny_llama(task.clean)[:, -1]
    clean_ld = (clean_ld.gather(1, task.answer[:, None]) - clean_ld.gather(1, task.wrong[:, None])).mean()
    assert res.clean == pytest.approx(float(clean_ld), abs=1e-5)
    # patching the only changed token at layer 0 restores the clean run exactly; other positions do nothing
    torch.testing.assert_close(res.values[0, 2], torch.tensor(1.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(res.values[:, :2], torch.zeros(3, 2), atol=1e-4, rtol=0)
    top = res.top(1)
    assert top[0][0]["position"].startswith("2")
    assert (res.ci_low <= res.values + 1e-6).all() and (res.values <= res.ci_high + 1e-6).all()


def test_sweep_errors(tiny_llama):
    task = toy_task(tiny_llama)
    with pytest.raises(ValueError, match="per='head' needs a site with heads"):
        patch_sweep(tiny_llama, task, "blocks.*.resid_pre", per="head")
    with pytest.raises(ValueError, match="several kinds of site"):
        patch_sweep(tiny_llama, task, "blocks.1.*", per="layer")
    with pytest.raises(ValueError, match="mode="):
        patch_sweep(tiny_llama, task, "blocks.*.resid_pre", mode="denoising")
    with pytest.raises(ls.SiteError):
        patch_sweep(tiny_llama, task, "blocks.*.resid_pree")

"""Patching sweeps: the fast batched sweep equals the naive one-forward-per-index loop, which in turn
equals a patch built by hand."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.causal.sweep import patch_sweep
from lmscope.data.tasks import ContrastTask


def toy_task(model, n=3, pos=7, seed=0, padded=False) -> ContrastTask:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(2, model.cfg.d_vocab, (n, pos), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(2, model.cfg.d_vocab, (n,), generator=g)  # one token differs, like IOI's S2
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

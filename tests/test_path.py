"""Path patching equals the two-pass computation built by hand from the core's interventions."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.causal import metrics as M
from lmscope.causal.path import path_patch
from lmscope.causal.sweep import patch_sweep

from .test_sweep import toy_task


@torch.no_grad()
def _hand_frozen(model, task, sender, record):
    """Clean prompts; the sender head from the corrupt run; every other head frozen at its clean value."""
    sites = [f"blocks.{i}.attn.z" for i in range(model.cfg.n_layers)]
    _, clean = model.run_with_cache(task.clean, sites=sites)
    _, corrupt = model.run_with_cache(task.corrupt, sites=sites)
    hooks = []
    for site in sites:
        value = clean[site].clone()
        if site == f"blocks.{sender[0]}.attn.z":
            value[:, :, sender[1]] = corrupt[site][:, :, sender[1]]
        hooks.append(ls.Hook(site, fn=lambda act, s, v=value: v))
    return model.run_with_cache(task.clean, sites=record, interventions=hooks)


def test_path_to_logits_equals_hand_computation(tiny):
    task = toy_task(tiny, n=3)
    result = path_patch(tiny, task, senders=["blocks.0.attn.z[1]"], receivers="logits", progress=False)
    logits, _ = _hand_frozen(tiny, task, (0, 1), [])
    torch.testing.assert_close(result.per_example[0], M.logit_diff(logits, task), atol=1e-5, rtol=1e-5)


def test_path_to_receiver_queries_equals_two_hand_passes(tiny):
    task = toy_task(tiny, n=3)
    result = path_patch(
        tiny, task, senders="blocks.0.attn.z[2]", receivers=["blocks.2.attn.q[1]"], progress=False
    )
    _, recorded = _hand_frozen(tiny, task, (0, 2), ["blocks.2.attn.q"])
    with torch.no_grad():
        logits = tiny(task.clean, interventions=[ls.Patch("blocks.2.attn.q", source=recorded, heads=[1])])
    torch.testing.assert_close(result.per_example[0], M.logit_diff(logits, task), atol=1e-5, rtol=1e-5)
    # receivers' values (v) work too, and a receiver path differs from the path to logits
    to_v = path_patch(
        tiny, task, senders="blocks.0.attn.z[2]", receivers="blocks.1.attn.v[0]", progress=False
    )
    assert not torch.allclose(to_v.per_example, result.per_example)


def test_every_head_sweep(tiny_llama):
    task = toy_task(tiny_llama, n=3)
    grid = path_patch(tiny_llama, task, senders="all", receivers="logits", chunk=5, progress=False)
    assert grid.axes == ["layer", "head"] and grid.shape == (3, 4)
    single = path_patch(tiny_llama, task, senders=["blocks.1.attn.z[2]"], progress=False)
    torch.testing.assert_close(grid.per_example[1, 2], single.per_example[0], atol=1e-5, rtol=1e-5)
    # in the last layer nothing downstream can be frozen: path patching = noising that head
    noise = patch_sweep(tiny_llama, task, "blocks.*.attn.z", per="head", mode="noise", progress=False)
    torch.testing.assert_close(grid.per_example[2], noise.per_example[2], atol=1e-5, rtol=1e-5)


def test_path_patch_errors(tiny_llama):
    task = toy_task(tiny_llama)
    with pytest.raises(ValueError, match=r"is not a sender .*blocks\.L\.attn\.z\[H\]"):
        path_patch(tiny_llama, task, senders=["blocks.1.attn.z"])
    with pytest.raises(ValueError, match="is not a receiver"):  # a head's output does not receive
        path_patch(tiny_llama, task, senders=["blocks.0.attn.z[0]"], receivers=["blocks.2.attn.z[1]"])
    with pytest.raises(ValueError, match=r"2 key/value heads, indexed 0\.\.1"):
        path_patch(tiny_llama, task, senders=["blocks.0.attn.z[0]"], receivers=["blocks.2.attn.k[3]"])
    with pytest.raises(ValueError, match="no path"):
        path_patch(tiny_llama, task, senders=["blocks.2.attn.z[0]"], receivers=["blocks.1.attn.q[0]"])


def test_aliases_name_the_same_heads_and_results_use_canonical_names(tiny):
    """TransformerLens names and the L{l}H{h} shorthand give exactly the canonical result."""
    task = toy_task(tiny, n=3)
    canonical = path_patch(
        tiny, task, senders="blocks.0.attn.z[2]", receivers="blocks.2.attn.q[1]", progress=False
    )
    alias = path_patch(tiny, task, senders="L0H2", receivers="blocks.2.attn.hook_q[1]", progress=False)
    torch.testing.assert_close(alias.per_example, canonical.per_example, atol=0, rtol=0)
    assert alias.labels["senders"] == ["blocks.0.attn.z[2]"]
    assert alias.meta["receivers"] == "blocks.2.attn.q[1]"

"""Head inspection: DLA adds up to the logit difference; attention lookups match the cached pattern."""

from __future__ import annotations

import pytest
import torch

from lmscope.causal.heads import attention_to, direct_logit_attribution, head_dla

from .test_sweep import toy_task


def test_dla_components_add_up_to_the_logit_difference(tiny):
    task = toy_task(tiny, n=4)
    parts = direct_logit_attribution(tiny, task)
    total = parts["heads"].sum((1, 2)) + parts["mlp"].sum(1) + parts["embed"] + parts["biases"]
    torch.testing.assert_close(total, parts["logit_diff"], atol=1e-4, rtol=1e-4)
    assert head_dla(tiny, task).values.shape == (3, 4)


def test_attention_to_named_positions(tiny_llama):
    task = toy_task(tiny_llama, n=3)
    task.positions = {"END": torch.full((3,), 6), "A": torch.tensor([0, 1, 2]), "B": torch.tensor([5, 5, 5])}
    got = attention_to(tiny_llama, task, query="END", keys=("A", "B"))
    _, cache = tiny_llama.run_with_cache(task.clean, sites=["blocks.1.attn.pattern"])
    expected = torch.stack(
        [cache["blocks.1.attn.pattern"][i, :, 6, a] for i, a in enumerate([0, 1, 2])]
    ).mean(0)
    torch.testing.assert_close(got["A"].values[1], expected)
    with pytest.raises(ValueError, match="no positions"):
        attention_to(tiny_llama, task, keys=("IO",))

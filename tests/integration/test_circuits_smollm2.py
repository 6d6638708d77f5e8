"""Lens and circuits on the bundled SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
import torch

from lmscope.circuits.lens import TrainConfig, collect_residuals, lens_stats, prompt_lens, train_tuned_lens
from lmscope.circuits.text import text_contexts

pytestmark = pytest.mark.integration


@torch.no_grad()
def test_logit_lens_ends_at_the_model_and_sharpens_late(smollm2):
    picture = prompt_lens(smollm2, "When Mary and John went to the store, John gave a drink to")
    assert max(picture.kl[-1]) < 1e-3 and picture.final_rank[-1] == [0] * len(picture.tokens)
    assert picture.top_tokens[-1][-1] == " Mary"
    early, late = sum(picture.kl[2]), sum(picture.kl[-2])
    assert late < 0.5 * early


def test_a_briefly_trained_tuned_lens_beats_the_logit_lens_on_held_out_text(smollm2):
    torch.manual_seed(0)
    site = ["blocks.12.resid_post"]
    train = collect_residuals(smollm2, text_contexts(smollm2, 1024, split="train"), site)
    held_out = collect_residuals(smollm2, text_contexts(smollm2, 512, split="test"), site)
    lens = train_tuned_lens(smollm2, train, TrainConfig(steps=20, batch_size=64, lr=3e-3), progress=False)
    logit, tuned = lens_stats(smollm2, held_out), lens_stats(smollm2, held_out, lens)
    assert tuned.kl[0] < 0.8 * logit.kl[0]


# The name movers' copying (and the negative name mover's suppression) is checked on the heads the IOI
# roles finder picks, in test_ioi_report.py: no head is assumed here.

"""Model.generate: equals HF generate without interventions (greedy, and sampling with the same seed) on every
family; with interventions it equals rerunning the whole sequence each step with model.run; the per-step
cache joins into what one forward over the generated sequence records. The KV-cache paths (prefix cache,
sweep, DAS, generate) call transformers with its current argument name, so no deprecation warning."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

import lmscope as ls
from tests.conftest import ARCHS, FAMILY_CONFIGS, tiny_hf, word_tokenizer
from tests.test_sweep import toy_task

ALL = ARCHS + list(FAMILY_CONFIGS)  # gpt2, neox and every Llama-like family, sliding windows, MoE
N_NEW = 12  # longer than the tiny configs' sliding window (4): the cache crops those layers


def tiny_model(arch: str, eos: bool = False) -> ls.Model:
    """eos=False: no end token, so every run generates N_NEW tokens (the random models emit theirs early)."""
    model = ls.Model(tiny_hf(arch), word_tokenizer(), name=f"tiny-{arch}")
    if not eos:
        model.hf.generation_config.eos_token_id = None
    return model


def prompt(seed: int = 3, pos: int = 6) -> torch.Tensor:
    return torch.randint(2, 64, (1, pos), generator=torch.Generator().manual_seed(seed))


def hf_generate(model: ls.Model, ids: torch.Tensor, n: int, **kwargs) -> torch.Tensor:
    """Plain HF generate, no lmscope hooks: [prompt + new] ids."""
    out = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, **kwargs)
    return out[0]


def rerun_generate(model: ls.Model, ids: torch.Tensor, n: int, interventions) -> torch.Tensor:
    """The independent computation: no KV cache, the whole sequence rerun each step with model.run.
    `interventions` is a function of the current length (so position-indexed ones can follow it)."""
    for _ in range(n):
        logits = model.run(ids, interventions=interventions(ids.shape[1]))
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0]


@pytest.mark.parametrize("arch", ALL)
def test_greedy_equals_hf_generate(arch):
    model, ids = tiny_model(arch), prompt()
    out = model.generate(ids, N_NEW)
    expected = hf_generate(model, ids, N_NEW, do_sample=False)
    assert torch.equal(out.tokens, expected)
    assert torch.equal(out.new_tokens, expected[ids.shape[1] :])
    assert out.text == model.tokenizer.decode(expected[ids.shape[1] :].tolist())
    assert len(out.steps) == N_NEW and out.prompt_len == ids.shape[1]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "mixtral"])
def test_sampling_equals_hf_generate_with_the_same_seed(arch):
    model, ids = tiny_model(arch), prompt()
    options = [dict(), dict(temperature=0.7, top_k=9, top_p=0.9), dict(temperature=1.6, top_p=0.5)]
    for seed, opts in enumerate(options):
        out = model.generate(ids, N_NEW, do_sample=True, seed=seed, **opts)
        torch.manual_seed(seed)  # HF samples from torch's global generator
        # HF fills in top_k=50 when none is given; 0 switches it off (lmscope's top_k=None)
        expected = hf_generate(model, ids, N_NEW, do_sample=True, **{"top_k": 0, **opts})
        assert torch.equal(out.tokens, expected), opts
    again = model.generate(ids, N_NEW, do_sample=True, seed=0)
    assert torch.equal(again.tokens, model.generate(ids, N_NEW, do_sample=True, seed=0).tokens)
    other = [model.generate(ids, N_NEW, do_sample=True, seed=s).tokens for s in (1, 2)]
    assert not torch.equal(other[0], other[1])  # 12 near-uniform draws: the seed matters
    greedy = model.generate(ids, N_NEW).tokens
    assert not all(torch.equal(greedy, t) for t in [again.tokens, *other])


def test_stops_after_the_end_token_like_hf():
    model, ids = tiny_model("llama"), prompt()
    free = model.generate(ids, N_NEW).new_tokens
    model.hf.generation_config.eos_token_id = int(free[2])  # the 3rd new token (or an earlier repeat) ends it
    out = model.generate(ids, N_NEW)
    expected = hf_generate(model, ids, N_NEW, do_sample=False)
    assert torch.equal(out.tokens, expected)
    assert len(out.new_tokens) <= 3 and int(out.new_tokens[-1]) == int(free[2])
    assert len(out.steps) == len(out.new_tokens)


@pytest.mark.parametrize("arch", ALL)
def test_step_caches_join_into_one_forward_over_the_sequence(arch):
    model, ids = tiny_model(arch), prompt()
    moe = "blocks.2.mlp.routing" in model.sites
    neurons = ["blocks.2.mlp.routing", "blocks.2.mlp.expert_post"] if moe else ["blocks.2.mlp.post"]
    sites = ["blocks.0.resid_post", "blocks.1.attn.pattern", "blocks.2.attn.z", *neurons, "logits"]
    out = model.generate(ids, N_NEW, cache_sites=sites)
    assert out.steps[0]["blocks.0.resid_post"].shape[1] == ids.shape[1]  # the prompt at step 0
    assert all(step[neurons[-1]].shape[1] == 1 for step in out.steps[1:])  # then one position
    _, full = model.run_with_cache(out.tokens[None, :-1], sites=sites)  # the last token is never run
    for site in sites:
        torch.testing.assert_close(out.stacked(site), full[site], atol=1e-5, rtol=1e-4)
    assert out.stacked("blocks.0.hook_resid_post").shape[1] == len(out.tokens) - 1


@pytest.mark.parametrize("arch", ["llama", "gpt2", "neox", "gemma3_text", "qwen2", "mixtral"])
def test_intervention_equals_rerunning_the_whole_sequence(arch):
    model, ids = tiny_model(arch), prompt()
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    push = ls.AddDirection("blocks.1.resid_post", direction=direction, scale=4.0)
    out = model.generate(ids, N_NEW, interventions=[push], cache_sites=["blocks.2.resid_post"])
    assert torch.equal(out.tokens, rerun_generate(model, ids, N_NEW, lambda _: [push]))
    assert not torch.equal(out.tokens, model.generate(ids, N_NEW).tokens)  # the push changes the text
    _, full = model.run_with_cache(out.tokens[None, :-1], sites=["blocks.2.resid_post"], interventions=[push])
    torch.testing.assert_close(
        out.stacked("blocks.2.resid_post"), full["blocks.2.resid_post"], atol=1e-5, rtol=1e-4
    )


def test_position_indexed_intervention_counts_within_each_step(tiny_llama):
    """positions=[-1] hits the last prompt token at step 0, then each step's one new token: as rerunning the
    sequence with the intervention at every position from the prompt's last on."""
    model, ids = tiny_llama, prompt()
    model.hf.generation_config.eos_token_id = None
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))

    def push(positions):
        return ls.AddDirection("blocks.0.resid_post", direction=direction, scale=5.0, positions=positions)

    out = model.generate(ids, N_NEW, interventions=[push([-1])])
    start = ids.shape[1] - 1
    expected = rerun_generate(model, ids, N_NEW, lambda length: [push(list(range(start, length)))])
    assert torch.equal(out.tokens, expected)
    only_prompt_end = rerun_generate(model, ids, N_NEW, lambda _: [push([start])])
    assert not torch.equal(out.tokens, only_prompt_end)  # later steps were pushed too
    with pytest.raises(IndexError, match="out of range"):  # an absolute position past step 0's single one
        model.generate(ids, 3, interventions=[push([2])])


def test_generate_accepts_text_and_the_explorer_uses_it(tiny_llama):
    from lmscope.explorer import live

    out = tiny_llama.generate("the cat sat", 4)
    ids = tiny_llama.to_tokens("the cat sat")
    assert torch.equal(out.tokens[: ids.shape[1]], ids[0])
    assert torch.equal(out.tokens, hf_generate(tiny_llama, ids, 4, do_sample=False))
    assert not hasattr(live, "greedy_generate")  # no private loop left: steer calls model.generate


def test_bad_options_say_what_to_do(tiny_llama):
    with pytest.raises(ValueError, match="do_sample=True"):
        tiny_llama.generate(prompt(), 3, top_k=5)
    with pytest.raises(ValueError, match="do_sample=True"):
        tiny_llama.generate(prompt(), 3, seed=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_llama.generate(prompt(), 0)
    with pytest.raises(ValueError, match="top_p"):
        tiny_llama.generate(prompt(), 3, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        tiny_llama.generate(prompt(), 3, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="one prompt"):
        tiny_llama.generate(torch.randint(2, 64, (2, 5)), 3)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_kv_cache_paths_emit_no_deprecation_warning(arch):
    """transformers 5.24 renamed forward's past_key_values to cache (FutureWarning via warnings; the output's
    .past_key_values logs once): each lmscope path that passes a KV cache runs with both turned into errors."""
    import transformers
    from transformers import DynamicCache

    from lmscope.causal.subspace import site_problem
    from lmscope.causal.sweep import patch_sweep

    model = tiny_model(arch)
    task = toy_task(model, pos=8, changed=(5,))
    records = _Records()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(records)
    transformers.utils.logging.warning_once.cache_clear()  # a message logged earlier would not log again
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.filterwarnings("error", message=".*past_key_values.*")
            kv = DynamicCache()
            model.run_with_cache(prompt(pos=8), sites=[], kv_cache=kv)
            prefix = DynamicCache([(layer.keys[:, :, :5], layer.values[:, :, :5]) for layer in kv.layers])
            model.run_with_cache(prompt(pos=8), sites=[], kv_cache=prefix)
            patch_sweep(model, task, "blocks.*.resid_pre", per="position", method="fast", progress=False)
            problem = site_problem(model, task, "blocks.1.resid_post")
            problem.run(problem.base, torch.arange(len(task)))
            model.generate(prompt(), 3, cache_sites=["blocks.0.resid_post"])
            model.generate(prompt(), 3, do_sample=True, seed=0)
    finally:
        hf_logger.removeHandler(records)
    assert not [m for m in records.messages if "past_key_values" in m or "deprecated" in m]

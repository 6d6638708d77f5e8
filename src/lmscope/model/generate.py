"""Generation with interventions and a per-step activation cache (Model.generate).

Keys and values are cached (a transformers DynamicCache built from the model's config, as HF `generate`
builds it), so step 0 runs the whole prompt and every later step runs one new position. Without
interventions the tokens equal HF `model.hf.generate` with the same options: greedy, and sampling too, since
the same HF warpers (temperature, top-k, top-p, in HF's order) shape the float32 next-token logits and
`torch.multinomial` draws from a generator seeded with `seed` (the stream `torch.manual_seed(seed)` gives
HF on the same device).

Interventions apply at every step, to the positions that step computes. An intervention that treats
positions alike (AddDirection or Ablate everywhere, ProjectOut, SubspacePatch without positions) therefore
gives what rerunning the whole sequence with it would: earlier positions' keys/values were computed with it.
A position-indexed one counts positions within each step: positions=[-1] acts on the last prompt token at
step 0 and then on every generated token; positions=[3] reaches prompt position 3 at step 0 and is out of
range (IndexError) at later steps, which run one position. A Patch from a cache of the prompt matches only
step 0's shape; patch one position (positions=[-1]) with a one-position source to act at every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from .cache import ActivationCache
from .sites import canonical, layout


@dataclass
class Generation:
    """One generated continuation.

    text:       the new text only (None when the model has no tokenizer)
    tokens:     [prompt_len + n_new] the prompt's ids, then the new ones
    new_tokens: [n_new] the new ids (the last may be the end token, which stops generation)
    steps:      one ActivationCache per forward (n_new of them): steps[0] holds the cache_sites over the
                prompt's positions ([1, prompt_len, ...]), steps[t] over position prompt_len + t - 1 ([1, 1, ...]),
                the token generated at step t - 1. The last new token is never run, as in HF generate.
    prompt_len: how many of `tokens` are the prompt
    """

    text: str | None
    tokens: Tensor
    new_tokens: Tensor
    steps: list[ActivationCache]
    prompt_len: int

    def stacked(self, site: str) -> Tensor:
        """`site` over every position run, steps joined: what one forward over tokens[:-1] records.

        Position-wise sites: [1, prompt_len + n_new - 1, ...]. attn.pattern: [1, n_heads, pos, pos], each
        step's query rows placed at their positions and its keys right-aligned to the query (a sliding-window
        layer's cache holds only the last keys); keys a step did not see are 0, as a masked key's weight is.
        """
        parts = [step[site] for step in self.steps]
        if layout(canonical(site)).split()[1] == "p":
            return torch.cat(parts, dim=1)
        total = sum(p.shape[2] for p in parts)
        out = parts[0].new_zeros(*parts[0].shape[:2], total, total)
        end = 0
        for p in parts:  # [1, h, q, k]: queries end-q..end-1, keys end-k..end-1
            start, end = end, end + p.shape[2]
            out[:, :, start:end, end - p.shape[3] : end] = p
        return out


def generate(
    model,
    prompt,
    max_new_tokens: int,
    interventions=(),
    cache_sites: str | Iterable[str] = (),
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Generation:
    """Continue `prompt` (text, or ids [pos] / [1, pos]) by up to max_new_tokens tokens; see the module doc.

    Greedy by default; do_sample=True samples after temperature, top_k and top_p, reproducibly for a given
    seed (seed=None draws from torch's global generator). Only these options shape the distribution: None
    means no cut (HF generate fills in top_k=50, and a model's generation_config may add its own settings;
    pass them here explicitly to match). Stops after the model's end token (hf.generation_config.eos_token_id),
    which is kept in new_tokens.
    """
    from transformers import DynamicCache, LogitsProcessorList
    from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    _check_options(max_new_tokens, do_sample, temperature, top_k, top_p, seed)
    ids, mask, _ = model._prepare(prompt, None)
    if ids.shape[0] != 1 or mask is not None:
        raise ValueError(
            f"generate continues one prompt; got a batch of {ids.shape[0]}: call it once per prompt"
        )
    names = model.resolve_sites(cache_sites) if cache_sites else []
    keep_all = "logits" in names  # the logits site over every prompt position, not only the last
    warpers = LogitsProcessorList()
    if do_sample:  # HF's order (GenerationMixin._get_logits_processor)
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k=top_k))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=top_p))
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(device=ids.device).manual_seed(seed)
    eos = model.hf.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    kv = DynamicCache(config=model.hf.config.get_text_config(decoder=True))
    prompt_len, steps, new = ids.shape[1], [], []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, cache = model.run_with_cache(
                ids,
                sites=names,
                interventions=interventions,
                kv_cache=kv,
                logits_to_keep=0 if keep_all else 1,
            )  # logits [1, positions run (or 1), d_vocab]
            steps.append(cache)
            scores = warpers(ids, logits[:, -1].float())  # [1, d_vocab], float32 as in HF
            if do_sample:
                probs = torch.softmax(scores, dim=-1)
                nxt = torch.multinomial(probs, num_samples=1, generator=generator)  # [1, 1]
            else:
                nxt = scores.argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            new.append(int(nxt))
            if new[-1] in eos:
                break
    new_tokens = ids[0, prompt_len:].cpu()
    return Generation(
        text=None if model.tokenizer is None else model.to_string(new_tokens),
        tokens=ids[0].cpu(),
        new_tokens=new_tokens,
        steps=steps,
        prompt_len=prompt_len,
    )


def _check_options(max_new_tokens, do_sample, temperature, top_k, top_p, seed) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a whole number >= 1 (or None for no cut), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1] (or None for no cut), got {top_p!r}")
    if not do_sample:
        given = [
            f"{name}={value!r}"
            for name, value, default in [
                ("temperature", temperature, 1.0),
                ("top_k", top_k, None),
                ("top_p", top_p, None),
                ("seed", seed, None),
            ]
            if value != default
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} only apply when sampling: pass do_sample=True (greedy decoding ignores them)"
            )

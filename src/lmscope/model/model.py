"""Model: an unmodified Hugging Face causal LM plus canonical sites, caching and interventions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import Tensor

from .adapters import HookSpec, adapter_for, global_specs, layer_specs
from .cache import ActivationCache
from .generate import Generation, generate
from .hooks import SiteFn, StopForward, hooked
from .interventions import Intervention
from .sites import SiteError, resolve, site_names
from .weights import Weights

Inputs = str | Sequence[str] | Tensor | Mapping


class Model:
    """Wraps `hf` (a PreTrainedModel, put in eval mode) and its tokenizer. Logits are those of `hf` itself."""

    def __init__(self, hf, tokenizer=None, name: str = ""):
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.adapter = adapter_for(hf.config)
        self.cfg = replace(
            self.adapter.config(hf.config), name=name or getattr(hf.config, "name_or_path", "")
        )
        self.parts = self.adapter.parts(hf)
        self.sites: list[str] = site_names(self.cfg)
        self._specs = self._build_specs()
        self.weights = Weights(self.parts, self.cfg, self.adapter)

    def _build_specs(self) -> dict[str, HookSpec]:
        by_name = dict(global_specs(self.parts))
        for layer, parts in enumerate(self.parts.layers):
            qkv = self.adapter.qkv_specs(parts, self.cfg)
            mlp = self.adapter.mlp_specs(parts, self.cfg)
            for suffix, spec in layer_specs(parts, self.cfg, qkv, mlp).items():
                by_name[f"blocks.{layer}.{suffix}"] = spec
        return {name: by_name[name] for name in self.sites}  # execution order

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"Model({c.name or c.architecture!r}: {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads "
            f"({c.n_kv_heads} kv), d_mlp {c.d_mlp}, vocab {c.d_vocab})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    # ---- sites -------------------------------------------------------------------------------------------
    def resolve_sites(self, patterns: str | Iterable[str]) -> list[str]:
        """Names, TransformerLens aliases and globs -> canonical site names in execution order."""
        return resolve(patterns, self.sites)

    # ---- running -----------------------------------------------------------------------------------------
    def __call__(self, inputs: Inputs, attention_mask: Tensor | None = None, interventions=()) -> Tensor:
        """Logits [batch, pos, d_vocab]. `interventions` apply to this call only."""
        logits, _ = self.run_with_cache(
            inputs, sites=[], attention_mask=attention_mask, interventions=interventions
        )
        return logits

    run = __call__

    def run_with_cache(
        self,
        inputs: Inputs,
        sites: str | Iterable[str] | None = None,
        *,
        attention_mask: Tensor | None = None,
        interventions=(),
        keep_graph: bool = False,
        stop_at: str | None = None,
        start_from: tuple[int, Tensor] | None = None,
        logits_to_keep: int = 0,
        kv_cache=None,
    ) -> tuple[Tensor | None, ActivationCache]:
        """Run and record `sites` (names or globs; None = every site). Returns (logits, cache).

        Cached values are what flowed on, i.e. after any intervention on the same site. They are detached
        unless keep_graph=True. With stop_at=SITE the forward ends right after that site and logits is None.
        start_from=(layer, resid_pre) skips blocks before `layer` and feeds resid_pre [batch, pos, d_model]
        (e.g. cached from an earlier run of the same inputs) into it: the same result, less compute.
        Sites before that layer are then not computed. logits_to_keep=k > 0 computes logits for the last k
        positions only (HF's option; saves memory when only the next token matters).
        kv_cache: a transformers Cache (e.g. DynamicCache) holding the keys/values of the first P positions of
        these same inputs (P = its length; e.g. from an earlier run, cropped). Only positions P.. are computed:
        logits, recorded sites and a start_from resid_pre cover those; positions continue from P and the mask
        covers all. The cache is extended in place, so an empty DynamicCache records this run's keys/values.
        (Passed to HF as `cache=`, the name transformers >= 5.24 uses; `past_key_values` is deprecated there.)
        """
        names = self.sites if sites is None else self.resolve_sites(sites) if sites else []
        store: dict[str, Tensor] = {}

        def save(act: Tensor, site: str) -> None:
            store[site] = act if keep_graph else act.detach()

        requests = self._requests(interventions) + [(name, save) for name in names]
        skipped = 0
        if start_from is not None:
            skipped, resid_pre = start_from
            if not 0 <= skipped < self.cfg.n_layers:
                raise ValueError(f"start_from layer {skipped} out of range 0..{self.cfg.n_layers - 1}")
            feed = (f"blocks.{skipped}.resid_pre", lambda act, site: _match_feed(resid_pre, act))
            requests.insert(0, feed)
        if stop_at is not None:
            [stop_site] = self.resolve_sites([stop_at])
            requests.append((stop_site, _stop))
        ids, mask, position_ids = self._prepare(inputs, attention_mask)
        past = 0 if kv_cache is None else kv_cache.get_seq_length()
        if past:  # the cache stands for positions < past: run the rest, attending to all (mask stays whole)
            if not past < ids.shape[1]:
                raise ValueError(f"kv_cache holds {past} positions; the inputs have only {ids.shape[1]}")
            ids = ids[:, past:]
            position_ids = None if position_ids is None else position_ids[:, past:]
        logits = None
        with hooked(self.hf, self._specs, requests), _skipping(self.parts.blocks, skipped):
            try:
                logits = self.hf(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position_ids,
                    cache=kv_cache,
                    use_cache=kv_cache is not None,
                    logits_to_keep=logits_to_keep,
                ).logits
            except StopForward:
                pass
        return logits, ActivationCache(store)

    def generate(
        self,
        prompt: Inputs,
        max_new_tokens: int,
        interventions=(),
        cache_sites: str | Iterable[str] = (),
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Generation:
        """Continue one prompt with a key/value cache; interventions act at every step. Returns a Generation
        (text, tokens, new_tokens, and steps: the cache_sites recorded at each step). See model/generate.py."""
        return generate(
            self,
            prompt,
            max_new_tokens,
            interventions=interventions,
            cache_sites=cache_sites,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )

    @contextmanager
    def intervene(self, *interventions):
        """Apply interventions to every forward inside the block (also model.hf(...) and generate)."""
        with hooked(self.hf, self._specs, self._requests(interventions)):
            yield self

    def _requests(self, interventions) -> list[tuple[str, SiteFn]]:
        if isinstance(interventions, Intervention) or (
            isinstance(interventions, tuple) and len(interventions) == 2 and isinstance(interventions[0], str)
        ):
            interventions = [interventions]
        requests = []
        for item in interventions:
            if isinstance(item, Intervention):
                site, fn = item.site, item
            elif isinstance(item, tuple) and len(item) == 2 and callable(item[1]):
                site, fn = item
            else:
                raise TypeError(
                    f"an intervention must be an lmscope intervention (ls.Patch, ls.Ablate, ...) or a (site, fn) "
                    f"pair, got {item!r}"
                )
            requests += [(name, fn) for name in self.resolve_sites([site])]
        return requests

    # ---- tokens ------------------------------------------------------------------------------------------
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer: pass token ids (a LongTensor [batch, pos]) instead of text"
            )
        return self.tokenizer

    def _pad_id(self) -> int:
        tok = self._need_tokenizer()
        for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
            if candidate is not None:
                return candidate
        return 0

    def _encode(self, text: str, prepend_bos: bool | None) -> list[int]:
        tok = self._need_tokenizer()
        if not isinstance(text, str):
            raise TypeError(f"expected text (str), got {type(text).__name__}")
        ids = tok(text)["input_ids"]
        bos = tok.bos_token_id
        if prepend_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        elif prepend_bos is False and bos is not None and ids and ids[0] == bos:
            ids = ids[1:]
        if not ids:
            raise ValueError(
                f"the text {text!r} has no tokens; give at least one character (or prepend_bos=True)"
            )
        return ids

    def tokenize(
        self, texts: str | Sequence[str], prepend_bos: bool | None = None, padding_side: str = "right"
    ):
        """{'input_ids': [batch, pos], 'attention_mask': [batch, pos]}, padded on `padding_side`.

        prepend_bos=None keeps the tokenizer's own behaviour; True/False forces a BOS token on/off.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no texts given")
        rows = [self._encode(t, prepend_bos) for t in texts]
        width, pad = max(map(len, rows)), self._pad_id()
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[i, span] = torch.tensor(row)
            mask[i, span] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def to_tokens(self, texts: str | Sequence[str], prepend_bos: bool | None = None) -> Tensor:
        """Token ids [batch, pos]. Texts of different lengths need a mask: use tokenize() or pass the texts."""
        enc = self.tokenize(texts, prepend_bos)
        if not bool(enc["attention_mask"].all()):
            raise ValueError(
                "these texts have different token lengths; use model.tokenize(texts), which also returns the "
                "attention mask, or pass the list of texts to the model directly"
            )
        return enc["input_ids"]

    def to_str_tokens(self, text: str | Tensor, prepend_bos: bool | None = None) -> list[str]:
        """One example's tokens as strings (each token decoded on its own)."""
        ids = (
            self._encode(text, prepend_bos)
            if isinstance(text, str)
            else torch.as_tensor(text).flatten().tolist()
        )
        tok = self._need_tokenizer()
        return [tok.decode([i]) for i in ids]

    def to_string(self, tokens: Tensor | Sequence[int]) -> str:
        return self._need_tokenizer().decode(torch.as_tensor(tokens).flatten().tolist())

    def _prepare(self, inputs: Inputs, attention_mask: Tensor | None):
        """-> (input_ids [b, p], attention mask or None, position_ids or None) on the model's device."""
        if isinstance(inputs, str) or (
            isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], str)
        ):
            enc = self.tokenize(inputs)
            ids, attention_mask = enc["input_ids"], enc["attention_mask"]
        elif isinstance(inputs, Mapping):
            ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask", attention_mask)
        elif isinstance(inputs, Tensor):
            ids = inputs
        else:
            raise TypeError(
                f"inputs must be text, a list of texts, token ids or a tokenize() result; got {inputs!r}"
            )
        ids = torch.as_tensor(ids)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[1] == 0 or ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(
                f"token ids must be a non-empty integer tensor [batch, pos], got {ids.dtype} {tuple(ids.shape)}"
            )
        if int(ids.max()) >= self.cfg.d_vocab or int(ids.min()) < 0:
            raise ValueError(
                f"token ids must lie in 0..{self.cfg.d_vocab - 1} (the vocabulary), got {int(ids.max())}"
            )
        ids = ids.to(self.device, torch.long)
        if attention_mask is None:
            return ids, None, None
        mask = torch.as_tensor(attention_mask).to(self.device)
        if mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask {tuple(mask.shape)} must match the token ids {tuple(ids.shape)}"
            )
        if bool(mask.all()):  # no padding: identical to a call without a mask
            return ids, None, None
        # Positions count real tokens only, so a left-padded example sees the positions it would unpadded.
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return ids, mask, position_ids


def _stop(act: Tensor, site: str) -> None:
    raise StopForward(site)


def _match_feed(resid_pre: Tensor, act: Tensor) -> Tensor:
    if resid_pre.shape != act.shape:
        raise ValueError(
            f"start_from resid_pre is {tuple(resid_pre.shape)}, the run needs {tuple(act.shape)}"
        )
    return resid_pre.to(act.dtype)


class _Skip(torch.nn.Module):
    """Stands in for a skipped block: passes the residual through untouched, at no cost."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextmanager
def _skipping(blocks: torch.nn.ModuleList, n: int):
    """Temporarily replace blocks[:n] so the HF forward loop runs only the later blocks."""
    originals = [blocks[i] for i in range(n)]
    try:
        for i in range(n):
            blocks[i] = _Skip()
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


__all__ = ["Model", "SiteError"]

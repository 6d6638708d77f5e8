"""The explorer's live box: one model per server (loaded on the first request), SAEs per run, and the two
computations behind the box: per-token activations of a unit, and greedy generation steered by its direction.

Requests run one at a time under a lock: interventions are hooks on the one shared model, and two requests
hooking it at once would see each other's hooks.
"""

from __future__ import annotations

import math
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..model import SiteError

MAX_PROMPT_CHARS = 2000
MAX_PROMPT_TOKENS = 256
MAX_NEW_TOKENS = 64
MAX_SCALE = 1e4


class InputError(ValueError):
    """A request that cannot be served as asked (the server answers ``status`` with this message)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def check_prompt(text: object) -> str:
    """The prompt if it is usable text within the character limit; InputError otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("the prompt is empty: type some text to run through the model")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(
            f"the prompt is too long: {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}. "
            "Shorten it and try again.",
            status=413,
        )
    return text


# ---- SAEs ---------------------------------------------------------------------------------------------------


def load_run_sae(path: Path):
    """The SAE saved in an ``sae`` run folder (cfg.json + sae_weights.safetensors)."""
    from ..features.sae import load_sae

    try:
        return load_sae(path)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"could not load the SAE of this run: {err}", status=500) from err


# ---- the model -----------------------------------------------------------------------------------------------


def _load_model(name: str):
    from ..model.loading import BUNDLED_NAME, load

    return load(None if name in ("", BUNDLED_NAME) else name)


class LiveModel:
    """The server's one model. ``model``: a loaded ``lmscope.Model``, a name for ``lmscope.load`` (used for
    every run), or None: load the model named in the first run asked about, lazily."""

    def __init__(self, model=None):
        self._fixed_name = model if isinstance(model, str) else None
        self._model = None if model is None or isinstance(model, str) else model
        self._name = getattr(getattr(self._model, "cfg", None), "name", "") if self._model is not None else ""
        self._saes: dict[Path, object] = {}
        self.lock = threading.RLock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model_for(self, run_model: str):
        """The model to use for a run recorded with model ``run_model`` (loads it on first use)."""
        with self.lock:
            if self._model is None:
                self._name = self._fixed_name if self._fixed_name is not None else run_model
                try:
                    self._model = _load_model(self._name)
                except (OSError, ValueError) as err:
                    raise InputError(
                        f"could not load the model {self._name or 'SmolLM2-135M-Instruct'!r}: {err}. "
                        "Start the explorer with --model pointing at a local model folder or .gguf file.",
                        status=503,
                    ) from err
            pinned = self._fixed_name is not None or self._name == ""
            if not pinned and run_model and run_model != self._name and run_model != self._model.cfg.name:
                raise InputError(
                    f"this server has the model {self._name!r} loaded, but the run was made with {run_model!r}; "
                    "start another explorer for that run (or pass --model to use one model for all runs)",
                    status=409,
                )
            return self._model

    def sae_for(self, run_path: Path):
        with self.lock:
            if run_path not in self._saes:
                self._saes[run_path] = load_run_sae(run_path)
            return self._saes[run_path]


@dataclass(frozen=True)
class UnitRef:
    """What the live box needs to know about a unit: neuron ``index`` at ``site``, or SAE feature ``index``."""

    kind: str  # "neuron" or "feature"
    site: str
    index: int
    run_path: Path
    run_model: str


def _tokens(model, text: str) -> Tensor:
    """[1, pos] token ids with a BOS in front (as in the corpus contexts); InputError past the token limit."""
    ids = model.to_tokens(check_prompt(text), prepend_bos=True)
    if ids.shape[1] > MAX_PROMPT_TOKENS:
        raise InputError(
            f"the prompt is too long: {ids.shape[1]} tokens; the limit is {MAX_PROMPT_TOKENS}", status=413
        )
    return ids


def _has_bos(model, ids: Tensor) -> bool:
    bos = getattr(model.tokenizer, "bos_token_id", None)
    return bos is not None and int(ids[0, 0]) == bos


@contextmanager
def _running(live: LiveModel):
    """The model's lock, no autograd, and a run that does not fit the loaded model as a clear InputError."""
    with live.lock, torch.no_grad():
        try:
            yield
        except (SiteError, IndexError, RuntimeError) as err:  # a site, index or width the model lacks
            detail = err.args[0] if err.args else type(err).__name__
            raise InputError(f"this run does not fit the loaded model: {detail}", status=409) from err


def unit_activations(live: LiveModel, unit: UnitRef, text: str) -> dict:
    """Per-token activations of ``unit`` on ``text``: {"tokens": [str], "acts": [float]} (the BOS position
    the model reads first is run but not returned)."""
    with _running(live):
        model = live.model_for(unit.run_model)
        ids = _tokens(model, text)
        if unit.kind == "feature":
            sae = live.sae_for(unit.run_path)
            site = sae.cfg.site
            _, cache = model.run_with_cache(ids, sites=[site], stop_at=site)
            acts = sae.encode(cache[site][0])[:, unit.index]  # [pos]
        else:
            _, cache = model.run_with_cache(ids, sites=[unit.site], stop_at=unit.site)
            acts = cache[unit.site][0, :, unit.index]  # [pos]
        start = 1 if _has_bos(model, ids) else 0
        return {
            "tokens": model.to_str_tokens(ids[0, start:]),
            "acts": [float(a) for a in acts[start:].float().tolist()],
        }


_MLP_SITE = re.compile(r"^blocks\.(\d+)\.mlp\.(pre|post|pre_linear)$")


def steering_direction(live: LiveModel, unit: UnitRef) -> tuple[str, Tensor]:
    """(site, direction [d]): a neuron writes W_out[index] into mlp.out; a feature its decoder row into the site
    its SAE reads."""
    model = live.model_for(unit.run_model)
    if unit.kind == "feature":
        sae = live.sae_for(unit.run_path)
        return sae.cfg.site, sae.W_dec[unit.index].detach()
    match = _MLP_SITE.match(unit.site)
    if match is None:
        raise InputError(f"steering needs an MLP neuron (blocks.L.mlp.post); this unit reads {unit.site}")
    layer = int(match.group(1))
    return f"blocks.{layer}.mlp.out", model.weights.W_out(layer)[unit.index].detach()


def steer(live: LiveModel, unit: UnitRef, text: str, scale: float, n_tokens: int) -> dict:
    """Greedy continuations of ``text`` with and without ``scale`` x the unit's direction added at every
    position: {"unsteered": str, "steered": str, "unsteered_ids": [int], "site": str, ...}."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and abs(scale) <= MAX_SCALE):
        raise InputError(f"scale must be a finite number within ±{MAX_SCALE:g}, got {scale!r}")
    if not (isinstance(n_tokens, int) and 1 <= n_tokens <= MAX_NEW_TOKENS):
        raise InputError(f"n_tokens must be a whole number from 1 to {MAX_NEW_TOKENS}, got {n_tokens!r}")
    from ..model import AddDirection

    with _running(live):
        model = live.model_for(unit.run_model)
        ids = _tokens(model, text)
        site, direction = steering_direction(live, unit)
        # Greedy, keys/values cached; the direction is added at every position of every step.
        plain = model.generate(ids, n_tokens).new_tokens.tolist()
        push = AddDirection(site, direction=direction, scale=scale)
        steered = model.generate(ids, n_tokens, interventions=[push]).new_tokens.tolist()
        return {
            "site": site,
            "scale": float(scale),
            "unsteered": model.to_string(plain),
            "steered": model.to_string(steered),
            "unsteered_ids": plain,
            "steered_ids": steered,
            "unsteered_tokens": model.to_str_tokens(torch.tensor(plain)),
            "steered_tokens": model.to_str_tokens(torch.tensor(steered)),
        }

"""A set of per-layer transcoders for one model: the folder format, the model check, and splicing them in.

A transcoder reads a layer's MLP input and reconstructs its output (``blocks.L.mlp.out``); it is an
lmscope SAE whose config has ``target_site`` set (features/sae/). The folder format:

    transcoders/
      transcoders.json       manifest: format, model (name, dims, embedding checksum), tokenizer (name,
                             vocab size, hash), input ("mlp.in": after the pre-MLP norm, or "resid_mid":
                             before it), and one entry per layer: folder, site, target_site
      layer_00/              cfg.json + sae_weights.safetensors (the SAE format; W_skip with a skip)
      layer_01/ ...

Loading against a model checks the manifest's model and tokenizer and refuses a mismatch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..data.tokens import tokenizer_hash
from ..features.sae import SAE, load_sae, save_sae
from ..model.interventions import Hook
from ..runs import read_json, write_json

MANIFEST = "transcoders.json"
FORMAT = "lmscope-transcoders"
INPUTS = ("mlp.in", "resid_mid")  # the MLP's input after its norm, or the residual before it


def model_identity(model) -> dict:
    """What a transcoder set remembers of its model: name, dims and a checksum of the embedding table."""
    c = model.cfg
    emb = model.weights.W_E.detach()[: min(256, c.d_vocab)].double()
    return {
        "name": c.name,
        "architecture": c.architecture,
        "n_layers": c.n_layers,
        "d_model": c.d_model,
        "d_vocab": c.d_vocab,
        # 4 significant digits: the same weights loaded in float32 or bfloat16 agree, another model does not
        "embed_checksum": float(f"{float(emb.abs().sum()):.4g}"),
    }


def tokenizer_identity(model) -> dict:
    tok = model.tokenizer
    if tok is None:
        return {"name": "", "vocab_size": model.cfg.d_vocab, "hash": ""}
    return {"name": getattr(tok, "name_or_path", ""), "vocab_size": len(tok), "hash": tokenizer_hash(tok)}


@dataclass
class TranscoderSet:
    """Transcoders by layer (layer -> SAE with target_site = blocks.L.mlp.out), and whose model they are."""

    transcoders: dict[int, SAE]
    input: str = "mlp.in"
    model: dict = field(default_factory=dict)
    tokenizer: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.input not in INPUTS:
            raise ValueError(f"a transcoder reads one of {INPUTS}, got {self.input!r}")
        self.transcoders = dict(sorted(self.transcoders.items()))

    @property
    def layers(self) -> list[int]:
        return list(self.transcoders)

    def input_site(self, layer: int) -> str:
        return f"blocks.{layer}.{self.input}"

    @staticmethod
    def output_site(layer: int) -> str:
        return f"blocks.{layer}.mlp.out"

    def __getitem__(self, layer: int) -> SAE:
        return self.transcoders[layer]

    # ---- identity ----------------------------------------------------------------------------------------
    def check_model(self, model) -> None:
        """Raise ValueError when `model` (or its tokenizer) is not the one these transcoders were trained on."""
        mine, theirs = self.model, model_identity(model)
        keys = ("architecture", "n_layers", "d_model", "d_vocab", "embed_checksum")
        differ = [k for k in keys if k in mine and mine[k] != theirs[k]]
        if differ:
            detail = ", ".join(f"{k}: {mine[k]} vs {theirs[k]}" for k in differ)
            raise ValueError(
                f"these transcoders were trained on model {mine.get('name')!r}, not {theirs['name']!r} "
                f"({detail}); load the model they were made for, or train transcoders for this one"
            )
        tok, other = self.tokenizer, tokenizer_identity(model)
        if tok.get("hash") and other["hash"] and tok["hash"] != other["hash"]:
            raise ValueError(
                f"these transcoders were trained with tokenizer {tok.get('name')!r} (vocab {tok.get('vocab_size')}), "
                f"the model has {other['name']!r} (vocab {other['vocab_size']}); token positions would not match"
            )

    # ---- folder format -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        layers = {}
        for layer, tc in self.transcoders.items():
            folder = f"layer_{layer:02d}"
            save_sae(tc, path / folder)
            layers[str(layer)] = {"folder": folder, "site": tc.cfg.site, "target_site": tc.cfg.target_site}
        manifest = {
            "format": FORMAT,
            "version": 1,
            "input": self.input,
            "model": self.model,
            "tokenizer": self.tokenizer,
            "layers": layers,
        }
        write_json(path / MANIFEST, manifest)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model=None, device="cpu") -> TranscoderSet:
        """Read a transcoder folder; with `model`, refuse transcoders made for another model or tokenizer."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(
                f"{path} is not a transcoder folder (no {MANIFEST}); train one with "
                "lmscope.graphs.train_transcoders"
            )
        manifest = read_json(path / MANIFEST)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path / MANIFEST} is not an lmscope transcoder manifest")
        tcs = {int(k): load_sae(path / v["folder"], device=device) for k, v in manifest["layers"].items()}
        out = cls(tcs, manifest["input"], manifest.get("model", {}), manifest.get("tokenizer", {}))
        if model is not None:
            out.check_model(model)
        return out

    # ---- running -----------------------------------------------------------------------------------------
    def usable(self, layer: int, x: Tensor) -> Tensor:
        """Positions [batch, pos] where the transcoder's features are used: not the first (BOS, left out of
        training) and not above its max_norm (massive activations). Elsewhere the error node holds it all."""
        keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        keep[:, 0] = False
        max_norm = self.transcoders[layer].cfg.max_norm
        if max_norm is not None:
            keep &= x.float().norm(dim=-1) <= max_norm
        return keep

    def features(self, layer: int, x: Tensor) -> Tensor:
        """Feature activations [batch, pos, d_sae] of the input x [batch, pos, d_in] (0 where not usable)."""
        f = self.transcoders[layer].encode(x)
        return f * self.usable(layer, x)[..., None]

    def output(self, layer: int, x: Tensor, f: Tensor | None = None) -> Tensor:
        """The transcoder's estimate of mlp.out [batch, pos, d_model]: decode(f) + b_dec + x @ W_skip."""
        tc = self.transcoders[layer]
        f = self.features(layer, x) if f is None else f
        return tc.decode(f.to(tc.W_dec.dtype)) + tc.skip_out(x)

    def splice(
        self,
        errors: dict[int, Tensor] | None = None,
        edit: Callable[[int, Tensor], Tensor] | None = None,
        layers: list[int] | None = None,
        record: dict | None = None,
    ) -> list[Hook]:
        """Interventions replacing each layer's MLP output by its transcoder's (features recomputed live).

        errors: layer -> [batch or 1, pos, d_model] added to the output (the clean run's error: with every
            error, the spliced model reproduces the real one exactly). edit(layer, f) -> f changes the feature
            activations [batch, pos, d_sae] (ablate, steer, clamp). record: filled with layer -> the transcoder's
            input x [batch, pos, d_in] of this run (pre-activations: tcs[layer].pre_acts(x)).
        """
        stash: dict[int, Tensor] = {}
        hooks = []
        for layer in self.layers if layers is None else layers:

            def read(act, site, layer=layer):
                stash[layer] = act
                return act

            def write(act, site, layer=layer):
                x = stash.pop(layer)
                f = self.features(layer, x)
                if edit is not None:
                    f = edit(layer, f)
                if record is not None:
                    record[layer] = x.detach()
                out = self.output(layer, x, f)
                if errors is not None and layer in errors:
                    out = out + errors[layer].to(out.device, out.dtype)
                return out.to(act.dtype)

            hooks += [Hook(self.input_site(layer), fn=read), Hook(self.output_site(layer), fn=write)]
        return hooks


__all__ = ["INPUTS", "MANIFEST", "TranscoderSet", "model_identity", "tokenizer_identity"]

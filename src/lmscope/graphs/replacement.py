"""The local replacement model at one prompt: transcoders for the MLPs, attention and norms frozen.

Every MLP output is split into its transcoder's parts: sum_f a_f d_f (the features, each a graph node),
b_dec, x @ W_skip (the skip connection, a linear path) and the error y - y_hat (a constant node). Attention
patterns and the norms' denominators are frozen at their values on the prompt (mean-centring and the norm
weights stay), so from the token embeddings and the MLP writes to any transcoder's input x_L or to the final
residual the model is affine. `forward` runs this affine model from the weights (model.weights), batched:

    embed [B, P, d]  writes [L, B, P, d]  ->  xs: per layer the transcoder input [B, P, d_in];  final [B, P, d]

At the clean point (embed = the prompt's, writes = features' decode + errors) it reproduces the real model's
activations (tests/test_graphs.py checks it against the cache). Supported: sequential blocks (not GPT-NeoX's
parallel residual), pre-, sandwich- and post-norms, RMSNorm and LayerNorm, dense or mixture-of-experts MLPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .transcoders import TranscoderSet


def _eps(norm) -> float:
    for name in ("variance_epsilon", "eps", "epsilon"):
        if hasattr(norm, name):
            return float(getattr(norm, name))
    raise ValueError(f"cannot find the epsilon of norm module {type(norm).__name__}")


@dataclass
class FrozenNorm:
    """A norm with its denominator frozen: (u - mean u if LayerNorm) / scale * w + b; scale [P, 1]."""

    scale: Tensor
    weight: Tensor | None
    bias: Tensor | None
    centre: bool

    @classmethod
    def at(cls, module, weight, bias, u: Tensor, kind: str) -> FrozenNorm | None:
        """The norm `module` (weights w, b) frozen at its input u [P, d] on the prompt."""
        if module is None:
            return None
        u = u.double()
        if kind == "rms":
            scale = (u.pow(2).mean(-1, keepdim=True) + _eps(module)).sqrt()
        else:
            scale = (u.var(-1, unbiased=False, keepdim=True) + _eps(module)).sqrt()
        w = None if weight is None else weight.detach().double()
        b = None if bias is None else bias.detach().double()
        return cls(scale, w, b, kind != "rms")

    def __call__(self, u: Tensor) -> Tensor:
        if self.centre:
            u = u - u.mean(-1, keepdim=True)
        out = u / self.scale
        if self.weight is not None:
            out = out * self.weight
        return out if self.bias is None else out + self.bias


@dataclass
class Replacement:
    """The frozen local replacement model of `model` with transcoders `tcs` at one prompt (float64).

    tokens [P]; embed [P, d] (resid_pre of layer 0); patterns[ly] [H, P, P]; x[ly] [P, d_in] (transcoder
    inputs); f[ly] [P, d_sae] (feature activations, 0 at BOS / massive activations); errors[ly] [P, d];
    logits [P, d_vocab] of the real model.
    """

    model: object
    tcs: TranscoderSet
    tokens: Tensor
    embed: Tensor
    patterns: list[Tensor]
    norms: dict
    x: list[Tensor]
    f: list[Tensor]
    errors: list[Tensor]
    logits: Tensor

    @property
    def n_layers(self) -> int:
        return len(self.patterns)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    def feature_writes(self) -> Tensor:
        """sum_f a_f d_f per layer and position [L, P, d] (the features' part of each MLP output)."""
        return torch.stack([self.f[ly] @ self.tcs[ly].W_dec.detach().double() for ly in range(self.n_layers)])

    def clean_writes(self) -> Tensor:
        """The MLP writes of the prompt, features + errors [L, P, d]."""
        return self.feature_writes() + torch.stack(self.errors)

    def forward(self, embed: Tensor, writes: Tensor) -> tuple[list[Tensor], Tensor]:
        """The affine frozen model. embed [B, P, d], writes [L, B, P, d] -> (xs [B, P, d_in] per layer,
        final normalised residual [B, P, d])."""
        w, tcs = self.model.weights, self.tcs
        r, xs = embed, []
        for layer in range(self.n_layers):
            norms = self.norms[layer]
            x1 = r if norms["ln1"] is None else norms["ln1"](r)
            v = torch.einsum("bpd,hde->bphe", x1, w.W_V(layer, expand_kv=True).detach().double())
            b_v = w.b_V(layer, expand_kv=True)
            if b_v is not None:
                v = v + b_v.detach().double()
            z = torch.einsum("hqk,bkhe->bqhe", self.patterns[layer], v)
            a = torch.einsum("bqhe,hed->bqd", z, w.W_O(layer).detach().double())
            if w.b_O(layer) is not None:
                a = a + w.b_O(layer).detach().double()
            if norms["ln1_post"] is not None:
                a = norms["ln1_post"](a)
            r = r + a
            x = r if (tcs.input == "resid_mid" or norms["ln2"] is None) else norms["ln2"](r)
            xs.append(x)
            tc = tcs[layer]
            r = r + writes[layer] + tc.b_dec.detach().double()
            if tc.W_skip is not None:
                r = r + x @ tc.W_skip.detach().double()
        return xs, self.norms["final"](r)

    def pre_activation(self, layer: int, x: Tensor, features: Tensor) -> Tensor:
        """Pre-activations of `features` [n] of layer `layer` from inputs x [n, d_in] -> [n]."""
        tc = self.tcs[layer]
        W = tc.W_enc.detach().double()[:, features]  # [d_in, n]
        return (x * W.T).sum(-1) + tc.b_enc.detach().double()[features]

    def logit(self, final: Tensor, token: int) -> Tensor:
        """The target token's logit (before any soft-cap) from final normalised residuals [n, d] -> [n]."""
        w = self.model.weights
        out = final @ w.W_U.detach().double()[:, token]
        return out if w.b_U is None else out + float(w.b_U[token])


@torch.no_grad()
def build_replacement(model, tcs: TranscoderSet, tokens: Tensor) -> Replacement:
    """Run the real model on `tokens` [P] (one prompt) and freeze what the replacement model needs."""
    c, w = model.cfg, model.weights
    if c.parallel_residual:
        raise ValueError(
            f"{c.name or c.architecture}: attention and MLP read the same residual (parallel blocks); "
            "attribution graphs support sequential blocks only"
        )
    missing = [layer for layer in range(c.n_layers) if layer not in tcs.transcoders]
    if missing:
        raise ValueError(f"attribution graphs need a transcoder for every layer; missing layers {missing}")
    tcs.check_model(model)
    tokens = torch.as_tensor(tokens).flatten()
    L = c.n_layers
    sites = ["blocks.0.resid_pre", f"blocks.{L - 1}.resid_post"]
    for layer in range(L):
        sites += [
            f"blocks.{layer}.{s}" for s in ("resid_pre", "resid_mid", "attn.pattern", "attn.z", "mlp.out")
        ]
        sites.append(tcs.input_site(layer))
    logits, cache = model.run_with_cache(tokens[None], sites=sorted(set(sites)))
    kind = c.normalization
    norms, xs, fs, errors, patterns = [], [], [], [], []
    for layer, parts in enumerate(model.parts.layers):
        site = f"blocks.{layer}"
        attn_pre_post = torch.einsum("bphe,hed->bpd", cache[f"{site}.attn.z"].double(), w.W_O(layer).double())
        if w.b_O(layer) is not None:
            attn_pre_post = attn_pre_post + w.b_O(layer).double()
        norms.append(
            {
                "ln1": FrozenNorm.at(
                    parts.ln1, w.ln1_w(layer), w.ln1_b(layer), cache[f"{site}.resid_pre"][0], kind
                ),
                "ln1_post": FrozenNorm.at(
                    parts.attn_post_norm, w.ln1_post_w(layer), None, attn_pre_post[0], kind
                ),
                "ln2": FrozenNorm.at(
                    parts.ln2, w.ln2_w(layer), w.ln2_b(layer), cache[f"{site}.resid_mid"][0], kind
                ),
            }
        )
        patterns.append(cache[f"{site}.attn.pattern"][0].double())
        x = cache[tcs.input_site(layer)]
        f = tcs.features(layer, x)
        y_hat = tcs.output(layer, x, f)
        xs.append(x[0].double())
        fs.append(f[0].double())
        errors.append((cache[f"{site}.mlp.out"].double() - y_hat.double())[0])
    norms_by = dict(enumerate(norms))
    norms_by["final"] = FrozenNorm.at(
        model.parts.final_norm, w.ln_final_w, w.ln_final_b, cache[f"blocks.{L - 1}.resid_post"][0], kind
    )
    return Replacement(
        model=model,
        tcs=tcs,
        tokens=tokens,
        embed=cache["blocks.0.resid_pre"][0].double(),
        patterns=patterns,
        norms=norms_by,
        x=xs,
        f=fs,
        errors=errors,
        logits=logits[0].double(),
    )


__all__ = ["FrozenNorm", "Replacement", "build_replacement"]

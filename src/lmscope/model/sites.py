"""Canonical site names: listing them in execution order, TransformerLens aliases, globs, helpful errors."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable

from .config import ModelConfig

# Per-layer sites in the order they are computed. The layout string names each axis of the canonical
# tensor: b = batch, p = position, h = head, d = feature (d_model, d_mlp or d_head), q/k = query/key position.
LAYER_SITES: dict[str, str] = {
    "resid_pre": "b p d",
    "attn.q": "b p h d",
    "attn.k": "b p h d",
    "attn.v": "b p h d",
    "attn.pattern": "b h q k",
    "attn.z": "b p h d",
    "attn.out": "b p d",
    "resid_mid": "b p d",
    "mlp.pre": "b p d",
    "mlp.pre_linear": "b p d",  # only for gated (GLU) MLPs: the up-projection
    "mlp.post": "b p d",
    # mixture-of-experts models have these three instead of mlp.pre/pre_linear/post (e = expert):
    "mlp.router_logits": "b p e",  # the router's logits, before softmax and top-k
    "mlp.routing": "b p e",  # each expert's weight in the token's mix: 0 for experts not in its top k
    "mlp.expert_post": "b p e d",  # each expert's neurons (input of its down projection); 0 where not routed
    "mlp.out": "b p d",
    "resid_post": "b p d",
}
GLOBAL_SITES: dict[str, str] = {
    "embed": "b p d",
    "pos_embed": "b p d",
    "final.norm": "b p d",
    "logits": "b p d",
}

# TransformerLens names -> canonical names ({l} stands for the layer index).
_TL_LAYER_ALIASES = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "attn.hook_q": "attn.q",
    "attn.hook_k": "attn.k",
    "attn.hook_v": "attn.v",
    "attn.hook_pattern": "attn.pattern",
    "attn.hook_z": "attn.z",
    "hook_attn_out": "attn.out",
    "hook_mlp_out": "mlp.out",
    "mlp.hook_pre": "mlp.pre",
    "mlp.hook_pre_linear": "mlp.pre_linear",
    "mlp.hook_post": "mlp.post",
}
_TL_GLOBAL_ALIASES = {
    "hook_embed": "embed",
    "hook_pos_embed": "pos_embed",
    "ln_final.hook_normalized": "final.norm",
    "unembed": "logits",
}
_MOE_SITES = ("mlp.router_logits", "mlp.routing", "mlp.expert_post")
_DENSE_MLP_SITES = ("mlp.pre", "mlp.pre_linear", "mlp.post")
_LAYER_NAME = re.compile(r"^blocks\.(\d+|\*)\.(.+)$")


class SiteError(KeyError):
    """An unknown or unsupported site name. The message lists the closest valid names."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


def site_names(cfg: ModelConfig) -> list[str]:
    """Every canonical site of a model, in execution order."""
    names = ["embed"]
    if cfg.positional == "learned":
        names.append("pos_embed")
    for layer in range(cfg.n_layers):
        for suffix in LAYER_SITES:
            if suffix == "mlp.pre_linear" and not cfg.gated_mlp:
                continue
            if suffix in (_DENSE_MLP_SITES if cfg.n_experts else _MOE_SITES):
                continue
            names.append(f"blocks.{layer}.{suffix}")
    return names + ["final.norm", "logits"]


def split_site(name: str) -> tuple[int | None, str]:
    """'blocks.3.attn.z' -> (3, 'attn.z'); 'embed' -> (None, 'embed')."""
    match = _LAYER_NAME.match(name)
    if match and match.group(1).isdigit():
        return int(match.group(1)), match.group(2)
    return None, name


def layout(name: str) -> str:
    """The axis layout of a canonical site, e.g. 'b p h d' for attn.z."""
    _, suffix = split_site(name)
    return LAYER_SITES.get(suffix) or GLOBAL_SITES[suffix]


def canonical(name: str) -> str:
    """Translate a TransformerLens alias (or a glob written with one) to the canonical spelling."""
    name = name.strip()
    if name in _TL_GLOBAL_ALIASES:
        return _TL_GLOBAL_ALIASES[name]
    match = _LAYER_NAME.match(name)
    if match and match.group(2) in _TL_LAYER_ALIASES:
        return f"blocks.{match.group(1)}.{_TL_LAYER_ALIASES[match.group(2)]}"
    return name


def resolve(patterns: str | Iterable[str], valid: list[str]) -> list[str]:
    """Expand names and globs into canonical site names, in execution order, without repeats.

    Raises SiteError naming the closest valid sites when a name (or a glob) matches nothing.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    valid_set = set(valid)
    wanted: set[str] = set()
    for raw in patterns:
        if not isinstance(raw, str) or not raw.strip():
            raise SiteError(f"site names must be non-empty strings, got {raw!r}")
        name = canonical(raw)
        if any(ch in name for ch in "*?["):
            matches = fnmatch.filter(valid, name)
            if not matches:
                raise SiteError(f"the glob {raw!r} matches no site. {_suggest(name, valid)}")
            wanted.update(matches)
        elif name in valid_set:
            wanted.add(name)
        else:
            raise SiteError(f"unknown site {raw!r}. {_suggest(name, valid)}")
    return [name for name in valid if name in wanted]


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name.replace("*", "0"), valid, n=5, cutoff=0.5)
    hints = []
    layer, suffix = split_site(name)
    n_layers = 1 + max(split_site(v)[0] or 0 for v in valid)
    if layer is not None and suffix in LAYER_SITES and not 0 <= layer < n_layers:
        hints.append(f"This model has layers 0..{n_layers - 1}.")
    if close:
        hints.append(f"Closest valid names: {', '.join(close)}.")
    hints.append("`lmscope sites` (or model.sites) lists them all.")
    return " ".join(hints)


def site_shape(cfg: ModelConfig, name: str) -> str:
    """Human-readable shape of a site, e.g. '[batch, pos, 9, 64]' for attn.z of SmolLM2."""
    _, suffix = split_site(name)
    last = {
        "attn.q": f"{cfg.n_heads}, {cfg.d_head}",
        "attn.z": f"{cfg.n_heads}, {cfg.d_head}",
        "attn.k": f"{cfg.n_kv_heads}, {cfg.d_head}",
        "attn.v": f"{cfg.n_kv_heads}, {cfg.d_head}",
        "mlp.pre": str(cfg.d_mlp),
        "mlp.pre_linear": str(cfg.d_mlp),
        "mlp.post": str(cfg.d_mlp),
        "mlp.router_logits": str(cfg.n_experts),
        "mlp.routing": str(cfg.n_experts),
        "mlp.expert_post": f"{cfg.n_experts}, {cfg.d_mlp}",
        "logits": str(cfg.d_vocab),
    }.get(suffix, str(cfg.d_model))
    if suffix == "attn.pattern":
        return f"[batch, {cfg.n_heads}, query_pos, key_pos]"
    return f"[batch, pos, {last}]"

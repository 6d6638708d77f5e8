"""Canonical site names: listing them in execution order, TransformerLens aliases, globs, helpful errors;
and the one grammar for naming a component (a head, its q/k/v input, a neuron): parse_component."""

from __future__ import annotations

import difflib
import fnmatch
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

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
    "mlp.in": "b p d",  # the MLP's input: resid_mid after the pre-MLP norm (what the MLP module reads)
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
    "ln2.hook_normalized": "mlp.in",
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


# ------------------------------------------------------------------------------------------- components
# One written form for the parts of a model a user names, parsed here and nowhere else:
#   blocks.{l}.attn.z[h]                      head h's output (the head itself, e.g. a path-patching sender)
#   blocks.{l}.attn.q[h] / .attn.k[h] / .v[h] its query / key / value input (k, v: key/value head h, which
#                                             grouped-query models share between query heads)
#   blocks.{l}.attn.pattern[h]                its attention pattern
#   blocks.{l}.mlp.post[n]                    neuron n (also .mlp.pre[n], .mlp.pre_linear[n])
#   blocks.{l}.attn, blocks.{l}.mlp           a whole attention / MLP layer
#   any site name without an index            the whole site (embed, blocks.{l}.resid_post, logits, ...)
# Aliases: TransformerLens names (blocks.7.attn.hook_z[3], blocks.7.mlp.hook_post[9], unembed), the usual
# shorthand L7H3 (a head) and L13N1033 (a neuron), and, deprecated, the old short forms 7.3 (a head),
# 7.3.q / .k / .v (query head 3's inputs) and mlp.7 / mlp.7.gate.

HEAD_KINDS = ("attn.q", "attn.k", "attn.v", "attn.pattern", "attn.z")
NEURON_KINDS = ("mlp.pre", "mlp.pre_linear", "mlp.post")
WHOLE_KINDS = {"attn": "attn.out", "mlp": "mlp.out"}  # a whole layer part -> the site holding its output
_SHORTHAND = re.compile(r"^L(\d+)\s*\.?\s*([HN])(\d+)$", re.IGNORECASE)
_OLD_HEAD = re.compile(r"^(\d+)\.(\d+)(?:\.([qkv]))?$")
_OLD_MLP = re.compile(r"^mlp\.(\d+)(\.gate)?$")
_INDEXED = re.compile(r"^([^\[\]]+?)\s*\[\s*([^\[\]]*?)\s*\]$")
_FORMS = {
    "attn.z": "blocks.L.attn.z[H]",
    "attn.q": "blocks.L.attn.q[H]",
    "attn.k": "blocks.L.attn.k[H]",
    "attn.v": "blocks.L.attn.v[H]",
    "attn.pattern": "blocks.L.attn.pattern[H]",
    "mlp.post": "blocks.L.mlp.post[N]",
    "mlp.pre": "blocks.L.mlp.pre[N]",
    "mlp.pre_linear": "blocks.L.mlp.pre_linear[N]",
    "attn": "blocks.L.attn",
    "mlp": "blocks.L.mlp",
}
_GRAMMAR = (
    "Components are written blocks.L.attn.z[H] (head H's output), blocks.L.attn.q[H] / .k[H] / .v[H] (its "
    "inputs), blocks.L.mlp.post[N] (a neuron), blocks.L.attn / blocks.L.mlp (a whole layer part) or a site "
    "name such as embed, blocks.L.resid_post, logits."
)


class ComponentError(SiteError, ValueError):
    """A component name that does not parse, or names something this model does not have."""


@dataclass(frozen=True)
class Component:
    """A named part of a model. layer: None for global sites (embed, logits, ...). kind: what follows
    blocks.{layer} ("attn.z", "attn.q", "mlp.post", "attn", "mlp", "resid_post", ...) or the global site's
    name. index: the head (HEAD_KINDS) or neuron (NEURON_KINDS), None for the whole thing.
    str() gives the canonical name, e.g. 'blocks.7.attn.z[3]'."""

    layer: int | None
    kind: str
    index: int | None = None

    @property
    def site(self) -> str:
        """The site holding its activation: 'blocks.7.attn.z' for blocks.7.attn.z[3], the output site for
        a whole attention or MLP layer."""
        kind = WHOLE_KINDS.get(self.kind, self.kind)
        return kind if self.layer is None else f"blocks.{self.layer}.{kind}"

    @property
    def is_head(self) -> bool:
        return self.kind in HEAD_KINDS and self.index is not None

    @property
    def is_neuron(self) -> bool:
        return self.kind in NEURON_KINDS and self.index is not None

    def __str__(self) -> str:
        return format_component(self.layer, self.kind, self.index)


def format_component(layer: int | None, kind: str, index: int | None = None) -> str:
    """The canonical name: (7, 'attn.z', 3) -> 'blocks.7.attn.z[3]'; (None, 'embed') -> 'embed'."""
    if layer is None and kind not in GLOBAL_SITES:
        raise ComponentError(f"{kind!r} is not a global site ({', '.join(GLOBAL_SITES)}); give its layer")
    if layer is not None and kind not in LAYER_SITES and kind not in WHOLE_KINDS:
        raise ComponentError(
            f"{kind!r} is not a layer part: one of {', '.join([*LAYER_SITES, *WHOLE_KINDS])}"
        )
    if index is not None and kind not in HEAD_KINDS + NEURON_KINDS:
        raise ComponentError(f"{kind} takes no index; heads ({_FORMS['attn.z']}) and neurons "
                             f"({_FORMS['mlp.post']}) do")  # fmt: skip
    name = kind if layer is None else f"blocks.{int(layer)}.{kind}"
    return name if index is None else f"{name}[{int(index)}]"


def index_range(cfg: ModelConfig, kind: str) -> tuple[int, str]:
    """(how many, of what) an index of `kind` ranges over: key/value heads for attn.k / attn.v (n_kv_heads),
    heads for the other attention sites, neurons for the MLP sites."""
    if kind in ("attn.k", "attn.v"):
        return cfg.n_kv_heads, "key/value heads"
    if kind in HEAD_KINDS:
        return cfg.n_heads, "heads"
    if kind in NEURON_KINDS:
        return cfg.d_mlp, "neurons"
    raise ComponentError(f"{kind} takes no index")


def head_input(cfg: ModelConfig, layer: int, head: int, part: str) -> Component:
    """The q, k or v input that query head `head` reads: for k and v under grouped-query attention that is
    key/value head head // (n_heads / n_kv_heads)."""
    if part not in ("q", "k", "v"):
        raise ComponentError(f"a head's input is q, k or v, got {part!r}")
    if not 0 <= head < cfg.n_heads:
        raise ComponentError(f"head {head}: this model has heads 0..{cfg.n_heads - 1}")
    index = head if part == "q" else head // (cfg.n_heads // cfg.n_kv_heads)
    return Component(layer, f"attn.{part}", index)


def parse_component(
    name: str | Component,
    cfg: ModelConfig,
    kinds: Iterable[str] | None = None,
    indexed: bool | None = None,
    what: str = "component",
) -> Component:
    """Parse a component name (see the grammar above) and check it against the model.

    kinds: the kinds the caller accepts (None: any); indexed: True to require a head or neuron index,
    False to forbid one. Raises ComponentError (a ValueError and a SiteError) saying what is wrong: an
    unknown name lists the closest valid names, an index out of range gives the range.
    """
    comp = name if isinstance(name, Component) else _parse(name, cfg)
    _check(comp, cfg, str(name))
    kinds = tuple(kinds) if kinds is not None else None
    wrong_kind = kinds is not None and comp.kind not in kinds
    if wrong_kind or (indexed and comp.index is None) or (indexed is False and comp.index is not None):
        allowed = [_FORMS.get(k, k) for k in (kinds or _FORMS)]
        if indexed is False:
            allowed = [a.split("[")[0] for a in allowed]
        raise ComponentError(f"{name!r} ({comp}) is not a {what} here; write {' or '.join(allowed)}")
    return comp


def _parse(name: str, cfg: ModelConfig) -> Component:
    if not isinstance(name, str) or not name.strip():
        raise ComponentError(f"a component name must be a non-empty string, got {name!r}. {_GRAMMAR}")
    text = name.strip()
    if any(ch in text for ch in "*?"):
        raise ComponentError(f"{name!r}: a component names one thing; globs select sites. {_GRAMMAR}")
    match = _SHORTHAND.match(text)
    if match:  # L7H3 / L13N1033, as papers and lmscope's own titles write them
        layer, unit, index = int(match.group(1)), match.group(2).upper(), int(match.group(3))
        return Component(layer, "attn.z" if unit == "H" else "mlp.post", index)
    old = _old_form(text, cfg)
    if old is not None:
        warnings.warn(f"{text!r} is an old short form; write {str(old)!r}", FutureWarning, stacklevel=4)
        return old
    match = _INDEXED.match(text)
    base, index = (match.group(1), match.group(2)) if match else (text, None)
    if "[" in base or "]" in base:
        raise ComponentError(f"{name!r}: write one index in brackets at the end, e.g. blocks.7.attn.z[3]")
    if index is not None and not index.isdigit():
        raise ComponentError(f"{name!r}: the index in brackets must be a whole number >= 0, got {index!r}")
    base = canonical(base)
    layer, kind = split_site(base)
    known = kind in LAYER_SITES or kind in WHOLE_KINDS if layer is not None else kind in GLOBAL_SITES
    if not known:
        raise ComponentError(f"unknown component {name!r}. {_suggest_component(base, index, cfg)}")
    return Component(layer, kind, None if index is None else int(index))


def _old_form(text: str, cfg: ModelConfig) -> Component | None:
    """The short forms used before the grammar: 'L.H', 'L.H.q|k|v' (H a query head), 'mlp.L', 'mlp.L.gate'."""
    match = _OLD_HEAD.match(text)
    if match:
        layer, head, part = int(match.group(1)), int(match.group(2)), match.group(3)
        if not part:
            return Component(layer, "attn.z", head)
        _check(Component(layer, "attn.q", head), cfg, text)  # H counts query heads here
        return head_input(cfg, layer, head, part)
    match = _OLD_MLP.match(text)
    if match:
        layer = int(match.group(1))
        if match.group(2) and not cfg.gated_mlp:
            raise ComponentError(f"{text!r}: this model's MLPs have no gate")
        return Component(layer, "mlp.pre" if match.group(2) else "mlp")
    return None


def _check(comp: Component, cfg: ModelConfig, name: str) -> None:
    if comp.layer is not None and not 0 <= comp.layer < cfg.n_layers:
        raise ComponentError(f"{name!r}: this model has layers 0..{cfg.n_layers - 1}")
    if comp.kind not in WHOLE_KINDS and comp.site not in site_names(cfg):
        raise ComponentError(
            f"{name!r}: this model has no site {comp.site}. {_suggest_component(comp.site, None, cfg)}"
        )
    if comp.index is None:
        return
    if comp.kind not in HEAD_KINDS + NEURON_KINDS:
        raise ComponentError(
            f"{name!r}: {comp.kind} takes no index; index heads ({_FORMS['attn.z']}, .q/.k/.v) or neurons "
            f"({_FORMS['mlp.post']})"
        )
    n, what = index_range(cfg, comp.kind)
    if not 0 <= comp.index < n:
        raise ComponentError(f"{name!r}: {comp.kind} has {n} {what}, indexed 0..{n - 1}")


def _suggest_component(base: str, index: str | None, cfg: ModelConfig) -> str:
    layers = range(cfg.n_layers)
    valid = site_names(cfg) + [f"blocks.{layer}.{whole}" for layer in layers for whole in WHOLE_KINDS]
    close = difflib.get_close_matches(base, valid, n=5, cutoff=0.5)
    hint = (
        f"Closest valid names: {', '.join(c if index is None else f'{c}[{index}]' for c in close)}. "
        if close
        else ""
    )
    return hint + _GRAMMAR

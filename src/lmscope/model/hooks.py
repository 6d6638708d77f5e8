"""The only place lmscope registers torch hooks.

A request is (site name, fn) where fn(activation, site) returns a replacement tensor of the same shape,
or None to leave the activation as it is (readers such as the cache). Requests on sites that share a
module hook (q, k and v of a fused projection; attn.out and resid_mid) share one torch hook, so the
cost is one Python call per hooked module, not per site.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from torch import Tensor, nn

from . import attention, experts
from .adapters import HookSpec

SiteFn = Callable[[Tensor, str], "Tensor | None"]


class StopForward(Exception):
    """Raised by a hook to end the forward pass early (see Model.run_with_cache(stop_at=...))."""


def _apply(site: str, spec: HookSpec, fns: list[SiteFn], x, lead: tuple | None = None):
    """Run fns on the canonical view of x; return what to pass on in its place, or None if nothing changed.

    lead: the (batch, pos) shape that a spec with flat_tokens_of flattens into its first axis.
    """
    canon = spec.read(x)
    if lead is not None:
        canon = canon.view(*lead, *canon.shape[1:])
    changed = False
    for fn in fns:
        new = fn(canon, site)
        if new is not None:
            if new.shape != canon.shape:
                raise ValueError(
                    f"an intervention on {site} returned shape {tuple(new.shape)}, expected {tuple(canon.shape)}"
                )
            canon, changed = new, True
    if not changed:
        return None
    if not canon.is_contiguous():  # HF code calls .view() on what we pass on (e.g. an expanded mean)
        canon = canon.contiguous()
    if lead is not None:
        canon = canon.view(-1, *canon.shape[len(lead) :])
    return spec.write(x, canon)


def _run_group(group: list[tuple[str, HookSpec, list[SiteFn]]], x, shapes: dict):
    changed = None
    for site, spec, fns in group:
        lead = None if spec.flat_tokens_of is None else shapes[spec.flat_tokens_of]
        new = _apply(site, spec, fns, x, lead)
        if new is not None:
            x = changed = new
    return changed


def _first_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_first_input(args: tuple, kwargs: dict, x: Tensor):
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


def _with_first_output(output, x: Tensor):
    return (x, *output[1:]) if isinstance(output, tuple) else x


def _first_output(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _register(key, group, handles: list, fused: list, shapes: dict) -> None:
    """Hook one (module, where) for its group of sites. fused collects (registry, module, fn) for sites
    computed inside a replaced function (attention pattern, experts), removed on exit."""
    module, where = key
    whole = group[0][1].whole
    if where == "in":
        if whole:

            def pre_hook(mod, args, kwargs):
                new = _run_group(group, args, shapes)
                return None if new is None else (new, kwargs)

        else:

            def pre_hook(mod, args, kwargs):
                new = _run_group(group, _first_input(args, kwargs), shapes)
                return None if new is None else _with_first_input(args, kwargs, new)

        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
    elif where == "out":

        def hook(mod, args, output):
            new = _run_group(group, output if whole else _first_output(output), shapes)
            if new is None:
                return None
            return new if whole else _with_first_output(output, new)

        handles.append(module.register_forward_hook(hook))
    elif where == "resid_mid":
        # resid_mid = resid_pre + attn.out. resid_pre is taken at the first norm's input, which sees the block
        # input after every block pre-hook (e.g. a resid_pre patch) has run.
        stash: dict[str, Tensor] = {}
        [(site, spec, fns)] = group

        def save_resid_pre(mod, args, kwargs):
            stash["resid_pre"] = _first_input(args, kwargs)

        def mid_hook(mod, args, output):
            resid_pre = stash.pop("resid_pre")
            attn_out = _first_output(output)
            new = _apply(site, spec, fns, resid_pre + attn_out)
            return None if new is None else _with_first_output(output, new - resid_pre)

        handles.append(spec.resid_pre_at.register_forward_pre_hook(save_resid_pre, with_kwargs=True))
        handles.append(module.register_forward_hook(mid_hook))
    elif where in ("pattern", "experts"):
        [(site, spec, fns)] = group

        def inner_hook(x: Tensor) -> Tensor:
            lead = None if spec.flat_tokens_of is None else shapes[spec.flat_tokens_of]
            new = _apply(site, spec, fns, x, lead)
            return x if new is None else new

        registry = attention.PATTERN_HOOKS if where == "pattern" else experts.EXPERT_HOOKS
        registry.setdefault(module, []).append(inner_hook)
        fused.append((registry, module, inner_hook))
    else:
        raise ValueError(f"unknown hook location {where!r}")


def _track_token_shape(module, shapes: dict, handles: list) -> None:
    """Record the (batch, pos) shape of `module`'s input on every call, for specs with flat_tokens_of."""

    def pre_hook(mod, args, kwargs):
        shapes[mod] = tuple(_first_input(args, kwargs).shape[:-1])

    handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))


@contextmanager
def hooked(hf: nn.Module, specs: dict[str, HookSpec], requests: list[tuple[str, SiteFn]]):
    """Register hooks for `requests` (site names already resolved) on the HF model; remove them on exit.

    `specs` must be in execution order; fns on one site run in request order.
    """
    per_site: dict[str, list[SiteFn]] = {}
    for site, fn in requests:
        per_site.setdefault(site, []).append(fn)
    groups: dict[tuple, list] = {}
    for site, spec in specs.items():  # execution order, so grouped sites apply in order
        if site in per_site:
            groups.setdefault((spec.module, spec.where), []).append((site, spec, per_site[site]))
    handles: list = []
    fused: list = []
    shapes: dict = {}
    config = hf.config
    base_attn, base_experts = config._attn_implementation, getattr(config, "_experts_implementation", None)
    try:
        for module in {spec.flat_tokens_of for group in groups.values() for _, spec, _ in group} - {None}:
            _track_token_shape(module, shapes, handles)
        for key, group in groups.items():
            _register(key, group, handles, fused, shapes)
        wheres = {where for _, where in groups}
        if "pattern" in wheres and not base_attn.startswith("lmscope_"):
            config._attn_implementation = attention.hooked_implementation(base_attn)
        if "experts" in wheres and not str(base_experts).startswith("lmscope_"):
            config._experts_implementation = experts.hooked_implementation(base_experts)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for registry, module, fn in fused:
            hooks = registry.get(module, [])
            if fn in hooks:
                hooks.remove(fn)
            if not hooks:
                registry.pop(module, None)
        config._attn_implementation = base_attn
        if "experts" in {where for _, where in groups}:
            config._experts_implementation = base_experts

"""ActivationCache: the activations one run recorded, keyed by canonical site name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from .sites import SiteError, canonical, split_site


class ActivationCache(Mapping[str, Tensor]):
    """A read-only mapping site -> tensor. Accepts TransformerLens aliases as keys.

    Only the sites that were asked for are held, so memory scales with the request.
    """

    def __init__(self, acts: dict[str, Tensor]):
        self._acts = acts

    def __getitem__(self, name: str) -> Tensor:
        key = canonical(name)
        if key not in self._acts:
            held = ", ".join(list(self._acts)[:8]) + (" ..." if len(self._acts) > 8 else "")
            raise SiteError(
                f"site {name!r} is not in this cache (it holds {len(self._acts)} sites: {held}). "
                f"Ask for it with run_with_cache(..., sites=[{key!r}])."
            )
        return self._acts[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical(name) in self._acts

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} sites, {self.nbytes / 2**20:.1f} MiB)"

    def stack(self, suffix: str) -> Tensor:
        """Stack one per-layer site across the cached layers: stack('resid_post') -> [layer, batch, pos, d_model]."""
        layers = self.layers(suffix)
        if not layers:
            raise SiteError(f"no layer of {suffix!r} is in this cache; cache e.g. 'blocks.*.{suffix}'")
        suffix = _layer_suffix(suffix)
        return torch.stack([self._acts[f"blocks.{layer}.{suffix}"] for layer in layers])

    def layers(self, suffix: str) -> list[int]:
        """The layers for which `suffix` is cached, ascending (the first axis of stack(suffix))."""
        suffix = _layer_suffix(suffix)
        return sorted(layer for name in self._acts for layer, s in [split_site(name)] if s == suffix)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._acts.values())

    def to(self, *args, **kwargs) -> ActivationCache:
        return ActivationCache({k: v.to(*args, **kwargs) for k, v in self._acts.items()})

    def detach(self) -> ActivationCache:
        return ActivationCache({k: v.detach() for k, v in self._acts.items()})

    def to_dict(self) -> dict[str, Tensor]:
        return dict(self._acts)


def _layer_suffix(suffix: str) -> str:
    """'hook_resid_post' or 'resid_post' -> 'resid_post'."""
    return split_site(canonical(f"blocks.0.{suffix}"))[1]

"""Controls for subspace claims: the same search where the component's weights are random.

Makelov et al. (App. B.5) find an "effective" subspace even in an MLP whose weights were replaced by random
matrices: then the effect cannot come from what that MLP computes. Sutter et al. (2025) make the same point
for whole random models.
"""

from __future__ import annotations

import contextlib

import torch

from ..model.sites import split_site
from .das import das
from .result import Check

RANDOM_WEIGHT_SHARE = 0.5  # suspicious when the random-weight search reaches this share of the effect


@contextlib.contextmanager
def random_mlp(model, layer: int, seed: int = 0):
    """Inside the block, layer's MLP matrices are Gaussian with each matrix's Frobenius norm kept.

    The original values are copied back bit for bit when the block ends, also when it raises."""
    w = model.weights
    mats = [m for m in (w.W_in(layer), w.W_gate(layer), w.W_out(layer)) if m is not None]
    saved = [m.detach().clone() for m in mats]
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for m, orig in zip(mats, saved):
                noise = torch.randn(m.shape, generator=gen, dtype=torch.float32)
                m.copy_((noise * (orig.float().norm() / noise.norm())).to(m.dtype))
        yield
    finally:
        with torch.no_grad():
            for m, orig in zip(mats, saved):
                m.copy_(orig)


def random_weight_check(model, task, site, test_task, v, k: int, epochs: int, seed: int) -> Check:
    """The DAS search at an MLP-neuron site of a random-weight MLP; compares its held-out effect with v's
    (v: the audited subspace's PatchOutcome)."""
    [site] = model.resolve_sites([site])
    layer, kind = split_site(site)
    if kind != "mlp.post":
        return Check("random_weights", "n/a", "random-weight control runs for MLP neuron sites (mlp.post)")
    with random_mlp(model, layer, seed):
        control = das(
            model, task, site, k=k, test_task=test_task, epochs=epochs, n_random=0, seed=seed, progress=False
        )
    fldd = control.held_out.fldd
    share = fldd / v.fldd if abs(v.fldd) > 1e-6 else float("nan")
    values = {"fldd_random_weights": fldd, "share": share}
    if share != share:
        detail = f"DAS in a random-weight MLP {layer} loses {fldd:.0%}; the audited subspace has no effect to compare"
        return Check("random_weights", "n/a", detail, values)
    status = "suspicious" if share >= RANDOM_WEIGHT_SHARE else "pass"
    detail = (
        f"DAS in a random-weight MLP {layer} loses {fldd:.0%} of the logit difference held out "
        f"({share:.0%} of the audited subspace's effect)"
    )
    return Check("random_weights", status, detail, values)

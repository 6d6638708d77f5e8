"""lmscope <-> SAELens interoperability: an SAE saved by lmscope loads with SAELens's SAE.load_from_disk, and
one saved by SAELens (save_model) loads with lmscope's load_sae; both give the same feature activations and
reconstructions on the same inputs. Needs sae-lens (too heavy for the default test set-up):

    python benchmarks/saelens_roundtrip.py            # prints one line per case, exits 1 on a mismatch

Without sae-lens it prints "sae-lens not installed: skipped (not a pass)" and exits 0.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

try:
    import sae_lens
except ImportError:
    print("sae-lens not installed: skipped (not a pass)")
    sys.exit(0)

from lmscope.features.sae import SAE, load_sae, sae_config, save_sae

TOL = dict(rtol=1e-5, atol=1e-5)
D_IN, D_SAE = 24, 96
CASES = {  # lmscope config -> the architecture SAELens reads
    "standard": {},
    "topk": {"k": 8},
    "batchtopk": {"k": 8},
    "matryoshka_batchtopk": {"k": 8},
    "jumprelu": {},
}


def randomised(sae, seed: int):
    """Random weights, biases and (JumpReLU) thresholds, so that every term of the forward matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            p = getattr(sae, name)
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if name.startswith("b") else 1.0))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(sae.threshold.shape, generator=gen) * 2)
    return sae


def compare(name: str, ours, theirs, x) -> bool:
    with torch.no_grad():
        pairs = {
            "encode": (ours.encode(x), theirs.encode(x)),
            "decode": (ours(x), theirs.decode(theirs.encode(x))),
        }
    ok = True
    for what, (a, b) in pairs.items():
        try:
            torch.testing.assert_close(a.float(), b.float(), **TOL)
            diff = float((a.float() - b.float()).abs().max())
            print(f"  {name:48s} {what}: equal (max |diff| {diff:.2e}, {int((a != 0).sum())} nonzeros)")
        except AssertionError as err:
            ok = False
            print(f"  {name:48s} {what}: MISMATCH {str(err).splitlines()[0]}")
    return ok


def lmscope_to_saelens(tmp: Path, x) -> bool:
    ok = True
    for i, (arch, fields) in enumerate(CASES.items()):
        cfg = sae_config(arch, d_in=D_IN, d_sae=D_SAE, site="blocks.3.resid_post", model="test", **fields)
        ours = randomised(SAE(cfg), seed=i)
        folder = tmp / f"lmscope-{arch}"
        save_sae(ours, folder)
        theirs = sae_lens.SAE.load_from_disk(folder)
        name = f"lmscope {arch} -> SAELens {type(theirs).__name__}"
        ok &= compare(name, ours, theirs, x)
    return ok


def saelens_to_lmscope(tmp: Path, x) -> bool:
    ok = True
    configs = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 8}),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {}),
    }
    for i, (arch, (cls, cfg_cls, fields)) in enumerate(configs.items()):
        cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, **fields)
        cfg.metadata.hook_name = "blocks.3.hook_resid_post"
        theirs = randomised(cls(cfg), seed=10 + i)
        folder = tmp / f"saelens-{arch}"
        theirs.save_model(folder)
        ours = load_sae(folder)
        assert ours.cfg.site == "blocks.3.resid_post", ours.cfg.site
        ok &= compare(f"SAELens {cls.__name__} -> lmscope {ours.architecture}", ours, theirs, x)
    return ok


def main() -> int:
    print(f"sae-lens {sae_lens.__version__}, torch {torch.__version__}")
    x = torch.randn(256, D_IN, generator=torch.Generator().manual_seed(123)) * 2
    with tempfile.TemporaryDirectory() as tmp:
        ok = lmscope_to_saelens(Path(tmp), x) & saelens_to_lmscope(Path(tmp), x)
    print("round trip: PASS" if ok else "round trip: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

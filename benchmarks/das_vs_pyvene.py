"""DAS training: lmscope vs pyvene's LowRankRotatedSpaceIntervention, in one process, on the same task.

    python benchmarks/das_vs_pyvene.py [--site blocks.21.resid_post] [--epochs 10] [--batch 20] [--n 80]

pyvene is not an lmscope dependency. pyvene 0.1.8 installs without touching torch or transformers with
`pip install --no-deps pyvene==0.1.8`, but `import pyvene` also needs matplotlib (its package imports it);
to keep lmscope's environment as it is, install both into a side folder and put it on PYTHONPATH:

    pip install --no-deps --target /tmp/pyvene_extra pyvene==0.1.8 matplotlib contourpy cycler fonttools \
        kiwisolver pyparsing pillow python-dateutil six
    PYTHONPATH=/tmp/pyvene_extra MPLBACKEND=Agg python benchmarks/das_vs_pyvene.py

Every method trains a 1-dim subspace at the block output of the site's layer, last position, with the same
loss (cross-entropy towards the source's answer), initial direction, Adam + linear decay, batches and step
count. pyvene runs in its usual call (the source prompts run every step) and with the sources' activations
cached once (`source_representations`, its faster form); lmscope runs das()'s training (site_problem +
train_subspace). The table shows preparation and training times, steps/s and the speed-up over each pyvene
form; the loss curves at equal steps follow (they agree to float tolerance when both are right).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from das import (  # benchmarks/das.py: the shared task, batches, initial rotation and tables
    Timer,
    arguments,
    lmscope_das,
    load_note,
    print_curves,
    print_table,
    rotation_and_optimiser,
    setup,
    source_at_last,
)

from lmscope.model.sites import split_site


def import_pyvene():
    """pyvene, or None with the reason printed (not installed, or not importable against this transformers)."""
    import transformers

    try:
        import pyvene
    except Exception as exc:  # an ImportError, or pyvene failing against this transformers version
        print(
            f"pyvene could not be imported ({type(exc).__name__}: {exc}); transformers {transformers.__version__}, "
            f"torch {torch.__version__}. Install it as the docstring says; only lmscope runs below."
        )
        return None
    print(
        f"pyvene {getattr(pyvene, '__version__', '0.1.8?')} from {pyvene.__file__}; transformers "
        f"{transformers.__version__}, torch {torch.__version__}"
    )
    return pyvene


def with_positions(inputs: dict) -> dict:
    """HF inputs plus the position ids lmscope gives left-padded prompts (HF counts padding otherwise)."""
    mask = inputs.get("attention_mask")
    if mask is None:
        return dict(inputs)
    return {**inputs, "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)}


def pyvene_das(pv, model, task, site: str, steps: list, lr: float, seed: int, cached: bool) -> dict:
    """pyvene's DAS loop: IntervenableModel + LowRankRotatedSpaceIntervention on the block output."""
    layer, kind = split_site(site)
    if kind != "resid_post":
        raise SystemExit("this comparison patches a block's output: give a blocks.L.resid_post site")
    last = task.clean.shape[1] - 1  # prompts are left-padded: the prediction position is the last
    with Timer() as prepare:
        source = source_at_last(model, task, site)[:, None] if cached else None  # [n, 1, d]
    config = pv.IntervenableConfig(
        representations=[pv.RepresentationConfig(layer, "block_output", "pos", 1, low_rank_dimension=1)],
        intervention_types=pv.LowRankRotatedSpaceIntervention,
    )
    intervenable = pv.IntervenableModel(config, model.hf)
    intervenable.disable_model_gradients()
    (intervention,) = intervenable.interventions.values()
    intervention = intervention[0] if isinstance(intervention, tuple) else intervention
    # the same initial direction as lmscope, and the same parametrisation state behind it: torch's orthogonal
    # map is base @ householder(original), and `base` (the completion of the initial direction to a full
    # orthonormal basis) steers how Adam's updates move the direction. lmscope's weight is [k, d], pyvene's
    # rotate_layer weight [d, k]: torch stores a wide matrix's original transposed, so copy it transposed.
    rotation, _, _ = rotation_and_optimiser(model.cfg.d_model, 1, lr, seed, len(steps))
    ours, theirs = rotation.parametrizations.weight, intervention.rotate_layer.parametrizations.weight
    with torch.no_grad():
        theirs.original.copy_(ours.original.T)
        for buf, mine in zip(theirs.buffers(), ours.buffers()):
            buf.copy_(mine)
    assert torch.allclose(intervention.rotate_layer.weight, rotation.weight.T), "initial directions differ"
    params = list(intervention.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=max(len(steps), 1))
    clean, corrupt = with_positions(task.inputs("clean")), with_positions(task.inputs("corrupt"))
    losses = []
    with Timer() as train:
        for idx in steps:
            b = len(idx)
            where = {"sources->base": ([[[last]] * b], [[[last]] * b])}
            base = {k: v[idx] for k, v in clean.items()}
            if cached:
                _, out = intervenable(base, unit_locations=where, source_representations=source[idx])
            else:
                _, out = intervenable(base, [{k: v[idx] for k, v in corrupt.items()}], unit_locations=where)
            loss = F.cross_entropy(out.logits[:, -1].float(), task.wrong[idx])
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            losses.append(float(loss.detach()))
    return {"prepare": prepare, "train": train, "losses": losses}


def main() -> None:
    args = arguments(__doc__).parse_args()
    pv = import_pyvene()
    model, task, steps = setup(args)
    rows = {}
    if pv is not None:
        for cached, name in ((False, "pyvene (usual call)"), (True, "pyvene (cached sources)")):
            try:
                rows[name] = pyvene_das(pv, model, task, args.site, steps, args.lr, args.seed, cached)
            except Exception as exc:  # say why pyvene cannot run here rather than hide it
                print(f"{name} failed against this transformers: {type(exc).__name__}: {exc}")
    rows["lmscope das (cached prefix)"] = lmscope_das(
        model, task, args.site, args.epochs, args.batch, args.lr, args.seed
    )
    for reference in [name for name in rows if name.startswith("pyvene")] or list(rows)[:1]:
        print(f"\nspeed-up over {reference} (target: lmscope >= 5x pyvene)")
        print_table(rows, reference=reference)
    print_curves(rows, every=max(1, len(steps) // 8))
    print(load_note())


if __name__ == "__main__":
    main()

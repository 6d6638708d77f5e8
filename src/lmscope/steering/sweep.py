"""sweep: steer along one direction at several scales (and ablate it), measuring effect and side effects.

    res = ls.steering.sweep(model, Direction.from_sae("runs/sae", 123), None, [0, 2, 4, 8],
                            prompts, {"french": fr_text, "python": py_text},
                            target=Target.corpus_label("french"), saes=[sae, sae_next_layer])
    res.to_dict(); res.to_html(); res.save("runs/steer")

Each condition is one intervention at the site, on every position: AddDirection(scale * vector) for each
scale, and (ablation=True) ProjectOut of the direction's ablation subspace. For each: the intended effect
(see target.py), the side effects on every label's reference text and the SAE features (side_effects.py),
and greedy continuations of the first prompts, beside the unsteered ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..model import AddDirection, Hook, Intervention, ProjectOut
from .direction import Direction
from .result import SteeringResult
from .side_effects import SAEMeter, next_token_stats, reference_contexts, target_feature
from .target import Target


@dataclass
class Condition:
    name: str
    scale: float | None  # None: ablation
    intervention: object  # an Intervention, or a Hook wrapping one for sites with a head axis


def _flat(act: Tensor) -> Tensor:
    return act.reshape(*act.shape[:2], -1)


def _on_flat(inner: Intervention) -> Hook:
    """Apply `inner` (which works on [b, p, d]) to a site whose positions hold [heads, d_head]."""
    return Hook(inner.site, fn=lambda act, site: inner(_flat(act), site).view_as(act))


def conditions(
    direction: Direction, site: str, scales: Sequence[float], ablation: bool, tail, names=None
) -> list[Condition]:
    """The interventions of a sweep. tail: the site's shape after [batch, pos]; names: one per scale
    (default "scale S")."""
    wrap = len(tail) > 1
    names = names or [f"scale {s:g}" for s in scales]
    out = []
    for s, name in zip(scales, names):
        iv = AddDirection(site, direction=direction.vector, scale=float(s))
        out.append(Condition(name, float(s), _on_flat(iv) if wrap else iv))
    if ablation:
        iv = ProjectOut(site, directions=direction.ablation_basis)
        out.append(Condition("ablation", None, _on_flat(iv) if wrap else iv))
    return out


def check_scales(scales) -> list[float]:
    try:
        values = [float(s) for s in scales]
    except (TypeError, ValueError) as err:
        raise ValueError(f"scales must be numbers, e.g. [0, 2, 4, 8]; got {scales!r}") from err
    if not values:
        raise ValueError("no scales given: pass e.g. scales=[0, 2, 4, 8]")
    bad = [s for s in values if not math.isfinite(s)]
    if bad:
        raise ValueError(f"scales must be finite numbers; got {bad} among {values}")
    return values


def _one_site(model, name: str, what: str) -> str:
    sites = model.resolve_sites([name])
    if len(sites) != 1:
        raise ValueError(f"{what} must name one site, not {len(sites)} ({name!r})")
    return sites[0]


def _check_finite(logits: Tensor, cond: Condition, direction: Direction, act_norm: float) -> None:
    if not torch.isfinite(logits).all():
        raise ValueError(
            f"{cond.name} at {direction.site} made the model's logits NaN or infinite (the direction's norm is "
            f"{direction.norm:.3g}, the site's activations {act_norm:.3g} on average): use smaller scales"
        )


@torch.no_grad()
def sweep(
    model,
    direction: Direction,
    site: str | None = None,
    scales: Sequence[float] = (0, 2, 4, 8),
    prompts: Sequence[str] = (),
    reference_text: str | Mapping[str, str | Sequence[str]] | None = None,
    *,
    target: Target | None = None,
    saes=(),
    ablation: bool = True,
    relative: bool = False,
    ctx_len: int = 64,
    n_contexts: int = 8,
    batch_size: int = 8,
    max_new_tokens: int = 20,
    n_generate: int = 4,
    progress: bool = False,
) -> SteeringResult:
    """Steer `model` along `direction` at `site` (default: the direction's own) with each scale.

    prompts: texts whose next token the target measures and whose first n_generate are continued (greedy,
    max_new_tokens). reference_text: {label: text or texts}, cut into n_contexts contexts of ctx_len tokens
    per label, for KL and loss changes. relative=True reads each scale as a size relative to the site:
    the added vector's norm over the mean activation norm on the prompts (so 0.1 adds a tenth of a typical
    activation, whatever the direction's own norm), which puts directions of any origin on one footing.
    saes: SAEs (their cfg.site says where they read) whose features'
    changes are measured and compared with the decoder-cosine prediction. Returns a SteeringResult.
    """
    if not isinstance(direction, Direction):
        raise TypeError(
            f"direction must be a steering.Direction (see its constructors), got {type(direction)}"
        )
    site = _one_site(model, site or direction.site, "site")
    scales = check_scales(scales)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or any(not isinstance(p, str) or not p for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty texts")
    if reference_text is None:
        raise ValueError("reference_text is needed: {label: text} of held-out text for the side effects")
    if target is not None and not isinstance(target, Target):
        raise TypeError(f"target must be a steering.Target, got {type(target).__name__}")
    saes = [saes] if hasattr(saes, "W_dec") else list(saes)
    sae_sites = [_one_site(model, sae.cfg.site or "?", "an SAE's cfg.site") for sae in saes]

    # ---- prompts: the site's width and scale, the intended effect on the next token, NaN check ----------------
    enc = model.tokenize(prompts, padding_side="left")
    clean_logits, cache = model.run_with_cache(enc, sites=[site])
    act = cache[site]
    tail = tuple(act.shape[2:])
    width = math.prod(tail)
    if direction.width != width:
        raise ValueError(
            f"direction {direction.name!r} has width {direction.width}, but {site} holds {width} values per "
            f"position {list(tail)}: use a direction found at this site (or one of the same width)"
        )
    real = enc["attention_mask"].bool().clone()
    real[torch.arange(len(prompts)), real.int().argmax(1)] = False  # first token: BOS or an attention sink
    act_norm = (
        float(_flat(act).float().norm(dim=-1)[real.to(act.device)].mean()) if real.any() else float("nan")
    )
    names = None
    if relative:
        if not act_norm > 0:
            raise ValueError(f"relative scales need the activation norm at {site}, which is {act_norm}")
        names = [f"size {s:g}" for s in scales]
        scales = [s * act_norm / direction.norm for s in scales]
    conds = conditions(direction, site, scales, ablation, tail, names)
    measure_ids = wrong_ids = None
    clean_measure = measures = None
    if target is not None and target.kind in ("tokens", "logit_diff"):
        measure_ids, wrong_ids = target.token_ids(model, len(prompts))
        clean_measure = target.prompt_measure(clean_logits[:, -1], measure_ids, wrong_ids).cpu()
        measures = []
    for cond in conds:
        logits = model.run(enc, interventions=[cond.intervention])
        _check_finite(logits, cond, direction, act_norm)
        if measures is not None:
            measures.append(target.prompt_measure(logits[:, -1], measure_ids, wrong_ids).cpu())

    # ---- reference text: KL, loss change, SAE features ------------------------------------------------------
    ref = reference_contexts(model, reference_text, ctx_len, n_contexts)
    labels = list(ref)
    if target is not None and target.kind == "label" and target.label not in labels:
        raise ValueError(f"target label {target.label!r} has no reference text; the labels are {labels}")
    n_c = len(conds)
    kl_sum = torch.zeros(n_c, len(labels), dtype=torch.float64)
    loss_sum = torch.zeros(n_c, len(labels), dtype=torch.float64)
    clean_loss, counts = torch.zeros(len(labels), dtype=torch.float64), torch.zeros(len(labels))
    meters = [SAEMeter(sae, s, n_c) for sae, s in zip(saes, sae_sites)]
    removed_sum, removed_norm, removed_n = torch.zeros(width, dtype=torch.float64), 0.0, 0
    q = torch.linalg.qr(direction.ablation_basis.double()).Q  # [d, k], for the ablation's mean removed vector
    record = list(dict.fromkeys(sae_sites + [site]))
    batches = [(li, b) for li, label in enumerate(labels) for b in ref[label].split(batch_size)]
    for li, ids in tqdm(batches, desc=f"steering {direction.name}", disable=not progress):
        base_logits, base = model.run_with_cache(ids, sites=record)
        lp = base_logits[:, :-1].float().log_softmax(-1)
        clean_loss[li] -= float(lp.gather(-1, ids[:, 1:, None].to(lp.device)).sum())
        counts[li] += ids.shape[0] * (ids.shape[1] - 1)
        x = _flat(base[site])[:, 1:].double().cpu()  # not BOS
        removed = -(x @ q) @ q.T
        removed_sum += removed.sum((0, 1))
        removed_norm += float(removed.norm(dim=-1).sum())
        removed_n += x.shape[0] * x.shape[1]
        keeps = [m.tokens(base[m.site]) for m in meters]
        f_clean = [m.add_clean(base[m.site], k) for m, k in zip(meters, keeps)]
        for ci, cond in enumerate(conds):
            logits, steered = model.run_with_cache(ids, sites=sae_sites, interventions=[cond.intervention])
            _check_finite(logits, cond, direction, act_norm)
            kl, loss_delta = next_token_stats(lp, logits, ids)
            kl_sum[ci, li] += float(kl.double().sum())
            loss_sum[ci, li] += float(loss_delta.double().sum())
            for m, k, f in zip(meters, keeps, f_clean):
                m.add(ci, steered[m.site], k, f)

    mean_dx = torch.stack(
        [
            direction.vector.double() * c.scale if c.scale is not None else removed_sum / removed_n
            for c in conds
        ]
    )
    interference, feature_arrays = [], {}
    for j, (m, sae) in enumerate(zip(meters, saes)):
        predict = mean_dx if sae.d_in == width else None
        rec, arrays = m.summary(predict, target_feature(sae, direction))
        interference.append(rec)
        feature_arrays.update({f"sae{j}.{k}": v for k, v in arrays.items()})

    # ---- continuations (and the probe's score on them) ------------------------------------------------------
    shown = prompts[:n_generate]
    gens = {"prompts": shown, "clean": [], "steered": {c.name: [] for c in conds}}
    probe_scores = {"clean": [], **{c.name: [] for c in conds}}
    for prompt in shown:
        for name, ivs in [("clean", [])] + [(c.name, [c.intervention]) for c in conds]:
            text, tokens, n_prompt = _generate(model, prompt, max_new_tokens, ivs)
            (gens["clean"] if name == "clean" else gens["steered"][name]).append(text)
            if target is not None and target.kind == "probe":
                probe_scores[name].append(_probe_read(model, target, tokens, n_prompt))

    # ---- per condition ---------------------------------------------------------------------------------------
    clean_loss_per = (clean_loss / counts.double()).tolist()
    off = [
        i for i, lab in enumerate(labels) if target is None or target.kind != "label" or lab != target.label
    ]
    off = off or list(range(len(labels)))
    rows = []
    for ci, cond in enumerate(conds):
        kl = (kl_sum[ci] / counts).tolist()
        loss = (loss_sum[ci] / counts).tolist()
        effect = measure = None
        if measures is not None:
            measure = float(measures[ci].mean())
            effect = float((measures[ci] - clean_measure).mean())
        elif target is not None and target.kind == "label":
            effect = -loss[labels.index(target.label)]
            measure = clean_loss_per[labels.index(target.label)] + loss[labels.index(target.label)]
        elif target is not None and target.kind == "probe":
            scores = torch.tensor(probe_scores[cond.name])
            measure = float(scores.mean())
            effect = float((scores - torch.tensor(probe_scores["clean"])).mean())
        size = (
            abs(cond.scale) * direction.norm if cond.scale is not None else removed_norm / max(removed_n, 1)
        )
        rows.append(
            {
                "name": cond.name,
                "scale": cond.scale,
                "ablation": cond.scale is None,
                "relative_size": size / act_norm if act_norm > 0 else None,
                "effect": effect,
                "measure": measure,
                "kl": dict(zip(labels, kl)),
                "loss_delta": dict(zip(labels, loss)),
                "cost_kl": sum(kl[i] for i in off) / len(off),
                "cost_loss": sum(loss[i] for i in off) / len(off),
                "interference": [
                    {k: v for k, v in rec["conditions"][ci].items()} | {"site": rec["site"]}
                    for rec in interference
                ],
            }
        )
    clean_value = None
    if clean_measure is not None:
        clean_value = float(clean_measure.mean())
    elif target is not None and target.kind == "probe":
        clean_value = float(torch.tensor(probe_scores["clean"]).mean())
    elif target is not None:
        clean_value = clean_loss_per[labels.index(target.label)]
    clean = {"loss": dict(zip(labels, clean_loss_per)), "act_norm": act_norm, "measure": clean_value}
    for rec in interference:
        rec.pop("conditions")
    config = {
        "ctx_len": ctx_len,
        "relative": relative,
        "n_contexts": {lab: int(ref[lab].shape[0]) for lab in labels},
        "max_new_tokens": max_new_tokens,
        "n_prompts": len(prompts),
        "model": getattr(model.cfg, "name", ""),
    }
    return SteeringResult(
        direction=direction.to_dict(),
        site=site,
        target=None if target is None else target.to_dict(),
        labels=labels,
        off_target_labels=[labels[i] for i in off],
        conditions=rows,
        clean=clean,
        generations=gens,
        interference=interference,
        feature_arrays=feature_arrays,
        config=config,
    )


def _generate(model, prompt: str, max_new_tokens: int, interventions) -> tuple[str, Tensor, int]:
    """(new text, all token ids [n], prompt length) of a greedy continuation (model.generate)."""
    gen = model.generate(prompt, max_new_tokens, interventions=interventions)
    return gen.text, gen.tokens, gen.prompt_len


def _probe_read(model, target: Target, tokens: Tensor, n_prompt: int) -> float:
    """The probe's logit on the continuation tokens[n_prompt:], read by the unsteered model at its site."""
    [site] = model.resolve_sites([target.site])
    _, cache = model.run_with_cache(tokens[None], sites=[site], stop_at=site)
    acts = _flat(cache[site])[0, n_prompt:].float().cpu()  # [n_new, d]
    return target.probe_measure(acts)

"""Train transcoders for every layer in one pass over the data, and evaluate them.

    cfg = TopKConfig(d_in=576, d_sae=4608, k=32, batch_size=4096, total_tokens=2_000_000)   # a template
    tcs = train_transcoders(model, dataset, cfg, out_dir="runs/tc", skip=True)
    result = evaluate_transcoders(tcs, model, dataset)      # per layer: FVU, L0, dead; loss recovered

Training uses the SAE trainer unchanged (features/sae/train.py): one Trainer per layer, each with a config
whose target_site is the layer's mlp.out. One model forward per chunk of contexts records every layer's input
and output (``LayerwiseSource``); each layer's trainer reads its own columns [x_l | y_l] of those rows.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..features.sae import ModelSource, Trainer
from ..features.sae.config import SAEConfig
from ..features.sae.evaluate import ReconstructionStats, _next_token_losses
from ..model.interventions import Hook
from .transcoders import INPUTS, TranscoderSet, model_identity, tokenizer_identity


class LayerwiseSource(ModelSource):
    """ModelSource over several sites at once: a row is the concatenation of every site's activation, so one
    forward (stopping after the last site) feeds every layer. `columns(site)` says where a site's part is."""

    def __init__(self, model, dataset, sites: list[str], batch_size: int, **kwargs):
        sites = model.resolve_sites(sites)  # execution order
        super().__init__(model, dataset, sites[-1], batch_size, **kwargs)
        self.sites = sites  # one forward, stopping after the last, caches them all
        self.width = model.cfg.d_model  # every site used here (mlp.in, resid_mid, mlp.out) is d_model wide
        self._calibration: tuple[int, Tensor] | None = None

    def columns(self, site: str) -> slice:
        i = self.sites.index(site)
        return slice(i * self.width, (i + 1) * self.width)

    def _rows(self, cache) -> Tensor:
        return torch.cat([cache[s].float() for s in self.sites], dim=-1)  # [b, p, n_sites * d]

    def calibration(self, n: int) -> Tensor:
        if self._calibration is None or self._calibration[0] != n:  # one forward for every layer's trainer
            self._calibration = (n, super().calibration(n))
        return self._calibration[1]


@dataclasses.dataclass
class LayerView:
    """One layer's rows [x | y] of a LayerwiseSource (what a transcoder's Trainer reads)."""

    source: LayerwiseSource
    x: slice
    y: slice

    def _cut(self, rows: Tensor) -> Tensor:
        return torch.cat([rows[:, self.x], rows[:, self.y]], dim=1)

    def batch(self, step: int) -> Tensor:
        return self._cut(self.source.batch(step))

    def calibration(self, n: int) -> Tensor:
        return self._cut(self.source.calibration(n))


def transcoder_config(template: SAEConfig, model, layer: int, input: str, skip: bool) -> SAEConfig:
    """The template (any SAE architecture's config) made into layer `layer`'s transcoder config."""
    d = model.cfg.d_model
    return dataclasses.replace(
        template,
        d_in=d,
        d_out=d,
        site=f"blocks.{layer}.{input}",
        target_site=f"blocks.{layer}.mlp.out",
        skip=skip,
        model=model.cfg.name,
        seed=template.seed + layer,
    )


def train_transcoders(
    model,
    dataset,
    template: SAEConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    layers: list[int] | None = None,
    input: str = "mlp.in",
    skip: bool = False,
    chunk_batches: int = 4,
    model_batch: int = 16,
    progress: bool = True,
) -> TranscoderSet:
    """Train one transcoder per layer (all of them by default) on `dataset` (a TokenDataset), all from the
    same forward passes. template: an SAE config (TopKConfig, JumpReLUConfig, ...) whose shape fields are
    filled in per layer. out_dir: checkpoints per layer (resumed when present) and, at the end, the
    transcoder folder (see transcoders.py)."""
    if input not in INPUTS:
        raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
    layers = list(range(model.cfg.n_layers)) if layers is None else sorted(layers)
    cfgs = {layer: transcoder_config(template, model, layer, input, skip) for layer in layers}
    sites = [s for layer in layers for s in (cfgs[layer].site, cfgs[layer].target_site)]
    source = LayerwiseSource(
        model, dataset, sites, template.batch_size, seed=template.seed,
        chunk_batches=chunk_batches, model_batch=model_batch,
    )  # fmt: skip
    out = None if out_dir is None else Path(out_dir)
    trainers = {}
    for layer, cfg in cfgs.items():
        view = LayerView(source, source.columns(cfg.site), source.columns(cfg.target_site))
        trainers[layer] = Trainer(cfg, view, None if out is None else out / f"layer_{layer:02d}")
    steps = {t.state.step for t in trainers.values()}
    if len(steps) != 1:
        raise ValueError(
            f"the layers' checkpoints are at different steps {sorted(steps)}; delete them to restart"
        )
    total = template.total_steps
    bar = tqdm(total=total, initial=steps.pop(), disable=not progress, desc="transcoders", unit="step")
    with bar:
        while next(iter(trainers.values())).state.step < total:
            records = {}
            for layer, trainer in trainers.items():
                records[layer] = record = trainer.train_step(trainer.source.batch(trainer.state.step))
                if record["step"] % template.log_every == 0 or record["step"] == total:
                    trainer.state.log.append(record)
                if record["step"] % template.checkpoint_every == 0 or record["step"] == total:
                    trainer.checkpoint()
            bar.update(1)
            mean = {k: sum(r[k] for r in records.values()) / len(records) for k in ("mse", "l0", "dead")}
            bar.set_postfix(mse=f"{mean['mse']:.4g}", l0=f"{mean['l0']:.1f}", dead=f"{mean['dead']:.1%}")
    tcs = TranscoderSet(
        {layer: t.final_sae() for layer, t in trainers.items()},
        input=input,
        model=model_identity(model),
        tokenizer=tokenizer_identity(model),
    )
    if out is not None:
        tcs.save(out)
        for layer, t in trainers.items():  # the training logs beside each layer's weights
            from ..runs import write_json

            write_json(out / f"layer_{layer:02d}" / "training_log.json", t.state.log)
    return tcs


@dataclasses.dataclass
class TranscoderEval:
    """Per layer: explained variance of mlp.out (1 - FVU), L0, dead fraction; all layers replaced at once:
    CE clean / replaced / MLPs zero-ablated and the loss recovered."""

    layers: list[dict]
    metrics: dict

    def to_dict(self) -> dict:
        return {"layers": self.layers, **self.metrics}

    def to_html(self) -> str:
        from ..report import Text, page, table

        note = Text(
            "Explained variance: 1 - sum ||y - y_hat||^2 / sum ||y - mean y||^2 over the evaluated tokens "
            "(BOS and massive-activation tokens left out), y = mlp.out. Loss recovered: every MLP replaced "
            "by its transcoder at once, (CE_zero - CE_replaced) / (CE_zero - CE_clean), where CE_zero "
            "zero-ablates every MLP output."
        )
        return page(
            "Transcoders",
            [
                ("Per layer", table(self.layers, float_format="{:.4g}")),
                ("All layers replaced at once", [table([self.metrics], float_format="{:.4g}"), note]),
            ],
        )


def _zero_mlps(layers: list[int]) -> list[Hook]:
    def zero(act, site):
        out = torch.zeros_like(act)
        out[:, 0] = act[:, 0]  # BOS left alone, as with the transcoders
        return out

    return [Hook(f"blocks.{layer}.mlp.out", fn=zero) for layer in layers]


@torch.no_grad()
def evaluate_transcoders(
    tcs: TranscoderSet,
    model,
    dataset,
    n_contexts: int | None = 32,
    batch_size: int = 8,
    progress: bool = True,
) -> TranscoderEval:
    """Evaluate every transcoder on contexts of `dataset` (a TokenDataset or token ids [n, ctx_len])."""
    tcs.check_model(model)
    tokens = dataset if isinstance(dataset, Tensor) else dataset.tokens
    mask = torch.ones_like(tokens) if isinstance(dataset, Tensor) else dataset.attention_mask
    if n_contexts is not None:
        tokens, mask = tokens[:n_contexts], mask[:n_contexts]
    stats = {layer: ReconstructionStats(tcs[layer].d_sae) for layer in tcs.layers}
    sites = [s for layer in tcs.layers for s in (tcs.input_site(layer), tcs.output_site(layer))]
    ce: dict[str, list[Tensor]] = {"clean": [], "replaced": [], "zero": []}
    for i in tqdm(range(0, len(tokens), batch_size), desc="transcoder eval", disable=not progress):
        ids, m = tokens[i : i + batch_size], mask[i : i + batch_size]
        m_arg = None if bool(m.all()) else m
        clean, cache = model.run_with_cache(ids, sites=sites, attention_mask=m_arg)
        for layer in tcs.layers:
            x, y = cache[tcs.input_site(layer)], cache[tcs.output_site(layer)].float()
            used = tcs.usable(layer, x) & m.bool()
            f = tcs.features(layer, x)
            stats[layer].update(y[used], tcs.output(layer, x, f)[used], f[used])
        replaced = model(ids, attention_mask=m_arg, interventions=tcs.splice())
        zero = model(ids, attention_mask=m_arg, interventions=_zero_mlps(tcs.layers))
        valid = (m[:, :-1] * m[:, 1:]).bool()
        for name, logits in (("clean", clean), ("replaced", replaced), ("zero", zero)):
            ce[name].append(_next_token_losses(logits, ids, valid))
    rows = []
    for layer, s in stats.items():
        met = s.metrics()
        rows.append(
            {
                "layer": layer,
                "explained_variance": met["explained_variance"],
                "fvu": 1 - met["explained_variance"],
                "l0": met["l0"],
                "dead_fraction": met["dead_fraction"],
                "n_tokens": met["n_tokens"],
            }
        )
    mean = {k: float(torch.cat(v).mean()) for k, v in ce.items()}
    metrics = {
        "ce_clean": mean["clean"],
        "ce_replaced": mean["replaced"],
        "ce_zero": mean["zero"],
        "loss_recovered": (mean["zero"] - mean["replaced"]) / (mean["zero"] - mean["clean"]),
    }
    return TranscoderEval(rows, metrics)


__all__ = ["LayerView", "LayerwiseSource", "TranscoderEval", "evaluate_transcoders", "train_transcoders"]

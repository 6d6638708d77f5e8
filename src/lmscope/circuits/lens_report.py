"""The run folder of `lmscope lens`: numbers as JSON, a tuned lens as safetensors, a self-contained
report.html."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..report import Text, act_color, heatmap, line_chart, page, render, save_page, table
from ..runs import write_json, write_run
from .lens import (
    PromptLens,
    TrainConfig,
    TunedLens,
    collect_residuals,
    lens_sites,
    lens_stats,
    prompt_lens,
    train_tuned_lens,
)
from .text import describe_source, text_contexts

DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"


@dataclass
class LensOptions:
    """What `lmscope lens` sets besides the tuned lens's TrainConfig (write_lens_run's defaults are these)."""

    prompt: str = field(default=DEFAULT_PROMPT, metadata={"help": "the prompt to picture"})
    train: bool = field(
        default=False, metadata={"help": "train a tuned lens on corpus text (saved in --out)"}
    )
    lens_dir: str | None = field(
        default=None,
        metadata={"flag": "--lens", "help": "a run folder holding a trained tuned lens to evaluate"},
    )
    train_tokens: int = field(
        default=32768, metadata={"flag": "--tokens", "help": "training tokens to cache"}
    )
    eval_tokens: int = field(default=2048, metadata={"help": "held-out tokens"})
    ctx_len: int = field(default=128, metadata={"help": "tokens per context"})
    corpus: str | None = field(
        default=None,
        metadata={"help": "corpus folder (default: the default corpus, else Python stdlib files)"},
    )
    out: str = field(default="lens_run", metadata={"help": "run folder to write"})


def write_lens_run(
    model,
    out_dir: str | Path,
    *,
    prompt: str = LensOptions.prompt,
    train: bool = LensOptions.train,
    train_tokens: int = LensOptions.train_tokens,
    eval_tokens: int = LensOptions.eval_tokens,
    lens_dir: str | Path | None = None,
    corpus: str | Path | None = None,
    cfg: TrainConfig | None = None,
    ctx_len: int = LensOptions.ctx_len,
    progress: bool = True,
) -> Path:
    """Logit lens (and a tuned lens, trained here or loaded from `lens_dir`) on held-out text and a prompt.

    Writes stats.json, prompt.json, tuned_lens.* (when trained), report.html and run.json into `out_dir`.
    Training checkpoints into out_dir/checkpoint.pt, so running the same command again resumes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or TrainConfig()
    lens = TunedLens.load(lens_dir) if lens_dir is not None else None
    if train:
        contexts = text_contexts(
            model, train_tokens, split="train", ctx_len=ctx_len, corpus=corpus, seed=cfg.seed
        )
        cache = collect_residuals(model, contexts, dtype=torch.float16, progress=progress)
        lens = train_tuned_lens(model, cache, cfg, checkpoint=out / "checkpoint.pt", progress=progress)
        del cache
        gc.collect()
        lens.save(out)
    held_out = text_contexts(model, eval_tokens, split="test", ctx_len=ctx_len, corpus=corpus)
    cache = collect_residuals(model, held_out, lens.sites if lens else lens_sites(model), progress=progress)
    stats = {"logit": lens_stats(model, cache, progress=progress).to_dict()}
    if lens is not None:
        stats["tuned"] = lens_stats(model, cache, lens, progress=progress).to_dict()
    del cache
    pictures = {"logit": prompt_lens(model, prompt)}
    if lens is not None:
        pictures["tuned"] = prompt_lens(model, prompt, lens)
    source = f"{describe_source(corpus)} (test split)"
    write_json(out / "stats.json", {"held_out": source, **stats})
    write_json(out / "prompt.json", {name: p.to_dict() for name, p in pictures.items()})
    loss = lens.info.get("loss") if lens is not None else None
    save_page(_lens_page(model, stats, pictures, source, loss), out / "report.html")
    for leftover in (out / "checkpoint.pt", out / "checkpoint.json"):
        leftover.unlink(missing_ok=True)
    write_run(
        out,
        "lens",
        f"Logit{' and tuned' if lens is not None else ''} lens",
        model=model.cfg.name,
        prompt=prompt,
        held_out=source,
        eval_tokens=stats["logit"]["n_tokens"],
        tuned=lens is not None,
        trained_here=train,
        lens_dir=str(lens_dir) if lens_dir else None,
    )
    return out


def _layer_labels(sites: list[str]) -> list[str]:
    return [s.removeprefix("blocks.").replace(".", " ", 1) for s in sites]


def _lens_page(model, stats: dict, pictures: dict[str, PromptLens], source: str, loss) -> str:
    sites = stats["logit"]["sites"]
    x = list(range(len(sites)))
    kl = {f"{name} lens": s["kl"] for name, s in stats.items()}
    rank = {f"{name} lens": [1 + r for r in s["mean_rank"]] for name, s in stats.items()}  # log axis
    rows = [
        {"site": site, **{f"KL {n}": stats[n]["kl"][i] for n in stats}}
        | {f"rank {n}": stats[n]["mean_rank"][i] for n in stats}
        | {f"top-1 {n}": stats[n]["top1"][i] for n in stats}
        for i, site in enumerate(sites)
    ]
    sections = [
        (
            "What this shows",
            Text(
                f"Each layer's residual stream (resid_post) read through the final norm and unembedding: the "
                f"logit lens as is, the tuned lens after a learned affine translator per layer. KL(final || lens) "
                f"in nats and the rank of the model's own top token (0 = the lens agrees), averaged over "
                f"{stats['logit']['n_tokens']} held-out tokens of {source}. Position 0 (BOS) is left out."
            ),
        ),
        ("KL to the final distribution per layer", line_chart(kl, x, xlabel="layer", ylabel="KL (nats)")),
        (
            "Rank of the final top token per layer",
            line_chart(rank, x, xlabel="layer", ylabel="1 + mean rank", log_y=True),
        ),
        ("Per layer", table(rows)),
    ]
    for name, picture in pictures.items():
        sections.append(
            (f"Prompt through the {name} lens: top token per layer and position", _token_grid(picture))
        )
        sections.append(
            (
                f"KL(final || {name} lens) per layer and position",
                heatmap(
                    picture.kl, _layer_labels(picture.sites), picture.tokens, center=None, cmap="sequential"
                ),
            )
        )
    if loss:
        sections.append(
            ("Tuned lens training loss (mean KL over layers)", line_chart({"train KL": loss}, xlabel="step"))
        )
    return page(f"Lens: {model.cfg.name}", sections, subtitle="lmscope lens")


def _token_grid(p: PromptLens) -> str:
    """An HTML table, rows = sites, columns = input positions; each cell the lens's top token, shaded by
    its probability (the token ramp of lmscope.report, probability 1 = full colour), with the top-k and
    the KL in the tooltip."""
    rows = [
        {
            "label": label,
            "cells": [
                {
                    "token": repr(token)[1:-1],
                    "color": act_color(p.top_probs[i][j], 1.0),
                    "tip": ", ".join(f"{t!r} {q:.2f}" for t, q in p.topk[i][j]) + f" | KL {p.kl[i][j]:.2f}",
                }
                for j, token in enumerate(p.top_tokens[i])
            ],
        }
        for i, label in enumerate(_layer_labels(p.sites))
    ]
    return render("circuits/token_grid.html", tokens=[repr(t)[1:-1] for t in p.tokens], rows=rows)

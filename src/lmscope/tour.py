"""`lmscope tour`: the README's main job, on the bundled model: every capability once, small, each stage
cached as a run folder, then the explorer over all of them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data.tasks import single_token_id as single_token
from .model import Model, load
from .model.sites import split_site

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"
SAE_SITE = "blocks.6.resid_post"


@dataclass
class TourOptions:
    """What `lmscope tour` sets (run_tour's defaults are these)."""

    top_k: int = field(default=5, metadata={"help": "predictions shown for the tour's prompt"})
    root: str | None = field(
        default=None,
        metadata={"flag": "--out", "help": "where the tour's run folders go (default: <cache>/tour)"},
    )
    port: int = field(default=8765, metadata={"help": "the explorer's port (the same default as explore's)"})
    serve: bool = field(default=True, metadata={"help": "stop after the stages instead of serving"})


def top_predictions(model: Model, logits: torch.Tensor, k: int) -> list[tuple[str, float]]:
    """The k most likely next tokens after the last position of logits [pos, d_vocab], with probabilities."""
    probs = logits[-1].float().softmax(-1)
    values, ids = probs.topk(k)
    return [(model.to_string([i]), float(p)) for p, i in zip(values.tolist(), ids.tolist())]


def describe(model: Model) -> str:
    c = model.cfg
    per_layer = sorted(
        {split_site(s)[1] for s in model.sites if s.startswith("blocks.")},
        key=lambda s: model.sites.index(f"blocks.0.{s}"),
    )
    return "\n".join(
        [
            f"model        {c.name} ({c.architecture} adapter)",
            f"layers       {c.n_layers}, d_model {c.d_model}, d_mlp {c.d_mlp}, vocab {c.d_vocab}",
            f"attention    {c.n_heads} heads of {c.d_head}, {c.n_kv_heads} key/value heads, {c.positional} positions",
            f"norm / mlp   {c.normalization} norm, {'gated ' if c.gated_mlp else ''}{c.act_fn} MLP",
            f"sites        {len(model.sites)}: embed, blocks.{{0..{c.n_layers - 1}}}.{{{', '.join(per_layer)}}}, final.norm, logits",
        ]
    )


def _stage(name: str, run_dir: Path, build, out) -> float:
    """Run one tour stage unless its run folder is already complete (run.json is written last)."""
    if (run_dir / "run.json").is_file():
        out(f"[{name}] cached: {run_dir}")
        return 0.0
    start = time.perf_counter()
    out(f"[{name}] ...")
    build(run_dir)
    took = time.perf_counter() - start
    out(f"[{name}] done in {took:.0f} s: {run_dir}")
    return took


def run_tour(
    model_name: str | None = None,
    top_k: int = TourOptions.top_k,
    out=print,
    root: str | Path | None = TourOptions.root,
    serve: bool = TourOptions.serve,
    port: int = TourOptions.port,
    scale: float = 1.0,
) -> dict:
    """The README's main job: look inside, find a context neuron, train a small SAE, patch IOI, run DAS
    with the illusion audit, then serve the explorer over the results.

    Every stage writes a run folder under `root` (default: <lmscope cache>/tour) and is skipped when that
    folder is complete, so a second run goes straight to the explorer. scale < 1 shrinks every stage (tests).
    """
    from .causal.das_report import run_das_audit
    from .causal.ioi_report import write_ioi_report
    from .data.corpus import build_corpus, load_corpus
    from .data.tokens import tokenize_corpus
    from .features.neuron_report import run_neurons
    from .features.sae.run import features_run, train_run
    from .model import cache_root
    from .runs import write_run

    root = Path(root) if root is not None else cache_root() / "tour"
    start = time.perf_counter()
    model = load(model_name)
    name = model_name or "SmolLM2-135M-Instruct"
    out(f"Loaded in {time.perf_counter() - start:.1f} s.\n")
    out(describe(model))
    with torch.no_grad():
        logits = model(IOI_PROMPT)
    mary, john = single_token(model, " Mary"), single_token(model, " John")
    logit_diff = float(logits[0, -1, mary] - logits[0, -1, john])
    out(
        f"\n{IOI_PROMPT!r} -> " + ", ".join(f"{t!r} {p:.2f}" for t, p in top_predictions(model, logits[0], 3))
    )
    out(f"logit(' Mary') - logit(' John') = {logit_diff:+.2f}\n")

    n = lambda x: max(2, int(round(x * scale)))  # noqa: E731
    labels = ["english", "french", "german", "python"]
    corpus = root / "corpus"
    timings = {}
    timings["corpus"] = _stage(
        "corpus: English, French, German man pages and Python source",
        corpus,
        lambda d: build_corpus(d, labels=labels, max_docs_per_label=n(160), progress=False),
        out,
    )
    timings["neurons"] = _stage(
        "neurons: the best single neuron per language, with ablation",
        root / "neurons",
        lambda d: run_neurons(
            model, d, corpus=corpus, n_train=n(60), n_test=n(20), ctx_len=128, progress=False
        ),
        out,
    )

    def sae(d: Path) -> None:
        docs = load_corpus(corpus, split="train")
        dataset = tokenize_corpus(model, docs, ctx_len=128)
        train_run(
            d,
            model,
            "blocks.15.resid_post",
            "topk",
            expansion=4,
            tokens=n(200_000),
            dataset=dataset,
            progress=False,
            cards=False,
            k=32,
            batch_size=1024,
        )
        features_run(d, model, dataset=dataset, n_tokens=n(40_000), ablate=4, progress=False)

    timings["sae"] = _stage("SAE: TopK, 2304 features on blocks.15.resid_post", root / "sae", sae, out)

    def ioi(d: Path) -> None:
        report, _ = write_ioi_report(
            model, d / "report.html", n=n(8), n_eval=n(40), progress=False, log=lambda *a: None
        )
        write_run(d, "patching", "IOI: patching, attribution and path patching", model=name)

    timings["ioi"] = _stage("IOI: patching sweeps, attribution, path patching", root / "ioi", ioi, out)
    timings["das"] = _stage(
        "DAS + illusion audit: IOI's name-order signal in blocks.21.resid_post",
        root / "das",
        lambda d: run_das_audit(
            model,
            "blocks.21.resid_post",
            d,
            n=n(60),
            n_test=n(40),
            epochs=4,
            readers=["23.0.q", "23.1.q", "23.2.q"],
            controls=False,
            model_name=name,
            progress=False,
        ),
        out,
    )
    out(f"\nTour stages took {time.perf_counter() - start:.0f} s in all.")
    if serve:
        from .explorer import serve as serve_explorer

        serve_explorer(root, port=port, model=model)
    return {"logit_diff": logit_diff, "root": root, "timings": timings}

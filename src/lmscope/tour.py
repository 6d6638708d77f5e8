"""`lmscope tour`: the README's main job, on the bundled model: every capability once, small, each stage
cached as a run folder, then the explorer over all of them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data.tasks import single_token_id as single_token
from .model import Model, load
from .model.sites import parse_component, split_site
from .runs import read_json

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"
LABELS = ["english", "french", "german", "python"]
SAE_EXPANSION = 4  # features per residual dimension


@dataclass
class TourOptions:
    """What `lmscope tour` sets (run_tour's defaults are these)."""

    top_k: int = field(default=5, metadata={"help": "predictions shown for the tour's prompt"})
    root: str | None = field(
        default=None,
        metadata={
            "flag": "--out",
            "help": "where the tour's run folders go (default: <cache>/tour/<model name>)",
        },
    )
    port: int = field(default=8765, metadata={"help": "the explorer's port (the same default as explore's)"})
    serve: bool = field(default=True, metadata={"help": "stop after the stages instead of serving"})
    progress: bool = field(default=True, metadata={"help": "hide the progress bars of the long stages"})


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


def _stage(name: str, run_dir: Path, build, finding, out) -> float:
    """Run one tour stage unless its run folder is already complete (run.json is written last), then print
    its finding, read back from the folder (so a cached stage reports the same line)."""
    if (run_dir / "run.json").is_file():
        out(f"[{name}] cached: {run_dir}")
        took = 0.0
    else:
        start = time.perf_counter()
        out(f"[{name}] ...")
        build(run_dir)
        took = time.perf_counter() - start
        out(f"[{name}] done in {took:.0f} s: {run_dir}")
    out(f"  {finding(run_dir)}")
    return took


# ---- sites chosen from the model's shape ---------------------------------------------------------------
def sae_site(model: Model) -> str:
    """The residual stream in the middle of the model: far enough in for abstract features."""
    return f"blocks.{model.cfg.n_layers // 2}.resid_post"


def name_movers(model: Model, ioi_result: dict) -> list[tuple[int, int]]:
    """(layer, head) of the name movers the IOI stage found (ioi.json's roles), strongest first."""
    heads = [parse_component(r["head"], model.cfg) for r in ioi_result["roles"] if r["role"] == "name mover"]
    return [(c.layer, c.index) for c in heads]


def das_site_and_readers(model: Model, ioi_result: dict) -> tuple[str, list[str] | None]:
    """Where DAS looks for IOI's name-order signal, and who reads it: the residual stream two layers before
    the earliest name mover (the S-inhibition heads have written there, the movers have not yet read it),
    read by the name movers' queries. Without name movers: two thirds of the way in, no readers."""
    movers = name_movers(model, ioi_result)
    if not movers:
        return f"blocks.{2 * model.cfg.n_layers // 3}.resid_post", None
    layer = max(0, min(layer for layer, _ in movers) - 2)
    return f"blocks.{layer}.resid_post", [f"blocks.{mover}.attn.q[{head}]" for mover, head in movers]


# ---- one-line findings, read from each stage's run folder --------------------------------------------------
def corpus_finding(run_dir: Path) -> str:
    from collections import Counter

    from .data.corpus import load_corpus

    counts = Counter(doc.label for doc in load_corpus(run_dir))
    return "corpus: " + ", ".join(f"{n} {label}" for label, n in sorted(counts.items())) + " documents"


def neurons_finding(run_dir: Path) -> str:
    """The French neuron (or the first feature's): where, how well it separates, what zeroing it costs."""
    result = read_json(run_dir / "neurons.json")
    feature = "french" if "french" in result["best_neurons"] else next(iter(result["best_neurons"]))
    best = result["best_neurons"][feature][0]
    unit = f"L{best['layer']} N{best['neuron']}"
    delta = result["ablations"][unit]["loss_delta"]
    other = "english" if "english" in delta and feature != "english" else None
    own, rest = delta.get(feature, float("nan")), delta[other] if other else None
    if rest is None:  # no English text: compare with the mean over the other labels
        rest, other = result["ablations"][unit]["out_of_context"], "the rest"
    line = f"{feature.capitalize()}: {unit}, test F1 {best['f1']:.2f}; zeroing it "
    if own > 0 and rest > 0:
        return line + f"raises {feature.capitalize()} loss {own / rest:.0f}x more than {other.capitalize()}"
    return (
        line + f"changes {feature.capitalize()} loss by {own:+.4f}, {other.capitalize()} loss by {rest:+.4f}"
    )


def sae_finding(run_dir: Path) -> str:
    cfg = read_json(run_dir / "cfg.json")
    last = read_json(run_dir / "training_log.json")[-1]
    stats = read_json(run_dir / "feature_stats.json")
    fired = sum(d > 0 for d in stats["density"])
    return (
        f"SAE: {cfg['d_sae']} features on {cfg['site']}, {last['tokens']:,} tokens: L0 {last['l0']:.1f}, "
        f"MSE {last['mse']:.3g}; {fired} of {stats['n_features']} fired on {stats['n_tokens']:,} tokens"
    )


def ioi_finding(run_dir: Path) -> str:
    result = read_json(run_dir / "ioi.json")
    perf = result["performance"]
    movers = [r for r in result["roles"] if r["role"] == "name mover"]
    found = ", ".join(f"{r['head']} (DLA {r['DLA']:+.2f})" for r in movers) or "none above the thresholds"
    return f"IOI: logit diff {perf['logit_diff']:.2f}, accuracy {perf['accuracy']:.0%}; name movers {found}"


def das_finding(run_dir: Path) -> str:
    das, audit = read_json(run_dir / "das.json"), read_json(run_dir / "audit.json")
    held_out = das["test"] or das["train"]
    return (
        f"DAS at {das['site']} (k={das['k']}): patching the subspace flips {held_out['flipped']:.0%} of "
        f"held-out answers (IIA {held_out['iia']:.2f}, logit difference lost {held_out['fldd']:.2f}); "
        f"audit verdict: {audit['verdict']}"
    )


def run_tour(
    model: str | Model | None = None,
    top_k: int = TourOptions.top_k,
    out=print,
    root: str | Path | None = TourOptions.root,
    serve: bool = TourOptions.serve,
    port: int = TourOptions.port,
    progress: bool = TourOptions.progress,
    scale: float = 1.0,
) -> dict:
    """The README's main job: look inside, find a context neuron, train a small SAE, patch IOI, run DAS
    with the illusion audit, then serve the explorer over the results.

    model: a loaded Model, or what `load` takes (a hub id, a local folder, a .gguf; None = the bundled
    SmolLM2). Sites come from the model's shape and from earlier stages (the DAS readers are the name
    movers the IOI stage found). Every stage writes a run folder under `root` (default: <lmscope
    cache>/tour, one folder per model) and is skipped when that folder is complete, so a second run goes
    straight to the explorer. scale < 1 shrinks every stage (tests).
    """
    from .causal.das_report import run_das_audit
    from .causal.ioi_report import write_ioi_report
    from .data.corpus import build_corpus, load_corpus
    from .data.tokens import tokenize_corpus
    from .features.neuron_report import run_neurons
    from .features.sae.run import features_run, train_run
    from .model import cache_root
    from .runs import write_json, write_run

    start = time.perf_counter()
    model = model if isinstance(model, Model) else load(model)
    name = model.cfg.name
    root = Path(root) if root is not None else cache_root() / "tour" / name
    out(f"Loaded in {time.perf_counter() - start:.1f} s.\n")
    out(describe(model))
    with torch.no_grad():
        logits = model(IOI_PROMPT)
    mary, john = single_token(model, " Mary"), single_token(model, " John")
    logit_diff = float(logits[0, -1, mary] - logits[0, -1, john])
    predictions = top_predictions(model, logits[0], top_k)
    out(f"\n{IOI_PROMPT!r} -> " + ", ".join(f"{t!r} {p:.2f}" for t, p in predictions))
    out(f"logit(' Mary') - logit(' John') = {logit_diff:+.2f}\n")

    n = lambda x: max(2, int(round(x * scale)))  # noqa: E731
    corpus = root / "corpus"
    timings = {}
    timings["corpus"] = _stage(
        "corpus: English, French, German man pages and Python source",
        corpus,
        lambda d: build_corpus(d, labels=LABELS, max_docs_per_label=n(160), progress=progress),
        corpus_finding,
        out,
    )
    timings["neurons"] = _stage(
        "neurons: the best single neuron per language, with ablation",
        root / "neurons",
        lambda d: run_neurons(
            model, d, corpus=corpus, n_train=n(60), n_test=n(20), ctx_len=128, progress=progress
        ),
        neurons_finding,
        out,
    )

    site = sae_site(model)

    def sae(d: Path) -> None:
        docs = load_corpus(corpus, split="train")
        dataset = tokenize_corpus(model, docs, ctx_len=128)
        train_run(
            d,
            model,
            site,
            "topk",
            expansion=SAE_EXPANSION,
            tokens=n(200_000),
            dataset=dataset,
            progress=progress,
            cards=False,
            k=32,
            batch_size=1024,
        )
        features_run(d, model, dataset=dataset, n_tokens=n(40_000), ablate=4, progress=progress)

    d_sae = SAE_EXPANSION * model.cfg.d_model
    timings["sae"] = _stage(f"SAE: TopK, {d_sae} features on {site}", root / "sae", sae, sae_finding, out)

    def ioi(d: Path) -> None:
        report, _ = write_ioi_report(
            model, d / "report.html", n=n(8), n_eval=n(40), progress=progress, log=lambda *a: None
        )
        # what later stages and the finding read: the clean performance and the heads found per role
        write_json(d / "ioi.json", {"performance": report.performance, "roles": report.roles})
        write_run(d, "patching", "IOI: patching, attribution and path patching", model=name)

    timings["ioi"] = _stage(
        "IOI: patching sweeps, attribution, path patching", root / "ioi", ioi, ioi_finding, out
    )
    das_site, readers = das_site_and_readers(model, read_json(root / "ioi" / "ioi.json"))
    timings["das"] = _stage(
        f"DAS + illusion audit: IOI's name-order signal in {das_site}"
        + (f", read by the name movers' queries {', '.join(readers)}" if readers else ""),
        root / "das",
        lambda d: run_das_audit(
            model,
            das_site,
            d,
            n=n(60),
            n_test=n(40),
            epochs=4,
            readers=readers,
            controls=False,
            model_name=name,
            progress=progress,
        ),
        das_finding,
        out,
    )
    out(f"\nTour stages took {time.perf_counter() - start:.0f} s in all.")
    if serve:
        from .explorer import serve as serve_explorer

        serve_explorer(root, port=port, model=model)
    return {"logit_diff": logit_diff, "root": root, "timings": timings}

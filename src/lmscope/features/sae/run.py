"""SAE run folders: what `lmscope sae train|eval|features` write, and their report.

A run folder (kind "sae") holds cfg.json + sae_weights.safetensors (the SAE), training_log.json,
checkpoint.pt (to resume), metrics.json (after eval), feature_stats.json and features/00000.json, ...
(256 cards a page), report.html and run.json (written last). run.json also records where the training
data came from, so eval and features find it again.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from ...report import Text, histogram, line_chart, page, save_page, table
from ...runs import read_json, write_json, write_run
from . import distributed as D
from .config import CONFIGS, JumpReLUConfig, SAEConfig, StandardConfig, TopKConfig, config_class, sae_config
from .evaluate import SAEEval, evaluate_sae
from .features import FeatureActivations, feature_cards
from .io import CFG_FILE, LOG_FILE, load_sae
from .sources import ModelSource, RowSource
from .train import train_sae

PAGE = 256  # cards per features/NNNNN.json page
EVAL_FILES = {
    "probing": "evals/sparse_probing.json",
    "labels": "evals/labels.json",
    "absorption": "evals/absorption.json",
}
METRICS_FILE = "metrics.json"
STATS_FILE = "feature_stats.json"
SOURCES_FILE = "sources.json"


def parse_count(text: str | int) -> int:
    """'2M' -> 2_000_000, '500k' -> 500_000, '4096' -> 4096."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGbB]?)\s*", str(text))
    if not match:
        raise ValueError(f"expected a count such as 4096, 500k or 2M, got {text!r}")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def load_tokens(
    path: str | os.PathLike | None, corpus: str | os.PathLike | None, model, split: str, ctx_len: int = 128
):
    """A TokenDataset: from a saved file, or tokenised from a corpus folder's split."""
    from ...data.tokens import TokenDataset, tokenize_corpus

    if path:
        return TokenDataset.load(path)
    if not corpus:
        raise ValueError(
            "give token data: --dataset FILE (a saved TokenDataset) or --corpus DIR (built corpus)"
        )
    from ...data.corpus import load_corpus

    docs = load_corpus(corpus, split=split)
    if not docs:
        raise ValueError(f"the corpus at {corpus} has no {split!r} documents")
    names = sorted({d.label for d in load_corpus(corpus)})
    return tokenize_corpus(model, docs, ctx_len=ctx_len, label_names=names)


def train_run(
    out_dir: str | os.PathLike,
    model,
    site: str,
    architecture: str = "topk",
    expansion: int = 8,
    tokens: int | str = 2_000_000,
    *,
    store=None,
    dataset=None,
    sources: dict | None = None,
    progress: bool = True,
    cards: bool = True,
    **cfg_fields,
) -> Path:
    """Train an SAE on `site` (from an ActivationStore when given, else on the fly from `dataset`), then
    write its feature stats, cards and report. cfg_fields go to the architecture's config (k, lr, seed, ...).
    """
    out = Path(out_dir)
    [site] = model.resolve_sites([site])
    d_in = store.d(site) if store is not None else _site_width(model, site)
    cfg = sae_config(
        architecture,
        d_in=d_in,
        d_sae=expansion * d_in,
        site=site,
        model=model.cfg.name,
        total_tokens=parse_count(tokens),
        **cfg_fields,
    )
    if store is not None:
        source = RowSource.from_store(store, site, cfg.batch_size, seed=cfg.seed)
    elif dataset is not None:
        source = ModelSource(model, dataset, site, cfg.batch_size, seed=cfg.seed)
    else:
        raise ValueError("train_run needs store= (an ActivationStore) or dataset= (a TokenDataset)")
    if D.world()[0] == 0:
        write_json(out / SOURCES_FILE, sources or {})
    sae = train_sae(cfg, source, out, progress=progress)
    if D.world()[0] != 0:
        return out
    if cards:
        features_run(out, model, store=store, dataset=dataset, progress=progress, sae=sae)
    else:
        finish(out)
    return out


def _site_width(model, site: str) -> int:
    _, cache = model.run_with_cache(torch.tensor([[0, 1]]), sites=[site], stop_at=site)
    return int(cache[site][0, 0].numel())


def features_run(
    out_dir, model, *, store=None, dataset=None, n_tokens=200_000, ablate=8, progress=True, sae=None
) -> Path:
    """feature_stats.json and features/NNNNN.json pages for the SAE in out_dir, from the store (the first
    n_tokens rows) or by running the model over `dataset`; then the report."""
    out = Path(out_dir)
    sae = sae or load_sae(out)
    if store is not None:
        acts = FeatureActivations.from_store(sae, store, n_tokens=n_tokens, progress=progress)
    elif dataset is not None:
        acts = FeatureActivations.from_model(
            sae, model, dataset, n_contexts=max(1, n_tokens // dataset.ctx_len), progress=progress
        )
    else:
        raise ValueError(
            "feature cards need activations: an ActivationStore (store=) or a TokenDataset (dataset=)"
        )
    write_json(out / STATS_FILE, acts.stats())
    cards = feature_cards(sae, model, acts, ablate=ablate, progress=progress)
    for start in range(0, len(cards), PAGE):
        write_json(
            out / "features" / f"{start // PAGE:05d}.json",
            {"start": start, "cards": cards[start : start + PAGE]},
        )
    return finish(out)


def eval_run(
    out_dir,
    model,
    dataset,
    n_contexts: int = 64,
    progress: bool = True,
    *,
    probing: bool = False,
    labels: bool = False,
    absorption: bool = False,
    train_dataset=None,
    store=None,
    n_probe_contexts: int = 512,
    n_label_tokens: int = 100_000,
    n_words: int = 2000,
    seed: int = 0,
) -> SAEEval:
    """metrics.json (reconstruction on held-out contexts, CE / loss recovered / KL) and the report, plus
    the feature evaluations asked for (evals/, one JSON each, each a section of the report):
    probing: sparse probes on the corpus labels, train documents from train_dataset (n_probe_contexts
        random contexts of each split); labels: automatic labels fitted on n_label_tokens of the training
        data (store if given, else train_dataset) and scored on as many held-out tokens of `dataset`;
    absorption: the first-letter task on n_words of the tokenizer's words."""
    out = Path(out_dir)
    sae = load_sae(out)
    result = evaluate_sae(sae, model, dataset, n_contexts=n_contexts, progress=progress)
    write_json(out / METRICS_FILE, {k: v for k, v in result.to_dict().items() if k != "density"})
    if (probing or (labels and store is None)) and train_dataset is None:
        raise ValueError(
            "probing and labels need training documents: give train_dataset (or store for labels)"
        )
    if probing:
        from .evals import sparse_probing

        train, test = (_sample(d, n_probe_contexts, seed) for d in (train_dataset, dataset))
        write_json(
            out / EVAL_FILES["probing"], sparse_probing(sae, model, train, test, seed=seed, progress=progress)
        )
    if labels:
        from .evals import auto_labels
        from .features import _TokenText

        if store is not None:
            fitted = FeatureActivations.from_store(sae, store, n_tokens=n_label_tokens, progress=progress)
        else:
            part = _sample(train_dataset, max(1, n_label_tokens // train_dataset.ctx_len), seed)
            fitted = FeatureActivations.from_model(sae, model, part, n_contexts=None, progress=progress)
        part = _sample(dataset, max(1, n_label_tokens // dataset.ctx_len), seed)
        held_out = FeatureActivations.from_model(sae, model, part, n_contexts=None, progress=progress)
        record = auto_labels(fitted, held_out, _TokenText(model.tokenizer))
        write_json(out / EVAL_FILES["labels"], record)
    if absorption:
        from .evals import absorption as absorption_eval
        from .evals import first_letter_vocab, word_activations

        words = first_letter_vocab(model.tokenizer, max_words=n_words, seed=seed)
        acts = word_activations(model, sae.cfg.site, words.token_ids)
        write_json(
            out / EVAL_FILES["absorption"], absorption_eval(sae, acts, words.letters, words.words, seed=seed)
        )
    finish(out)
    return result


def _sample(dataset, n: int, seed: int):
    """At most n contexts of a TokenDataset, drawn at random (the corpus's documents come in label order)."""
    if len(dataset) <= n:
        return dataset
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return dataset[pick.sort().values.tolist()]


def _read(path: Path):
    return read_json(path) if path.is_file() else None


def report_html(out_dir) -> str:
    """The run's page: config, training curves, evaluation, feature densities, the densest features."""
    out = Path(out_dir)
    record = json.loads((out / CFG_FILE).read_text())
    cfg = record.get("lmscope_config", {})
    sections: list[tuple[str, object]] = []
    summary = [
        ["site", record.get("site", "")],
        [
            "architecture",
            f"{cfg.get('architecture', record['architecture'])} (saved as {record['architecture']})",
        ],
        ["d_in x d_sae", f"{record['d_in']} x {record['d_sae']} ({record['d_sae'] / record['d_in']:.0f}x)"],
        ["training tokens", cfg.get("total_tokens", "")],
        ["batch, lr", f"{cfg.get('batch_size', '')}, {cfg.get('lr', '')}"],
    ]
    if "k" in cfg:
        summary.append(["k", cfg["k"]])
    if "l1_coefficient" in cfg:
        summary.append(["L1 coefficient", cfg["l1_coefficient"]])
    if "l0_coefficient" in cfg:
        mode = cfg.get("jumprelu_sparsity_loss_mode", "step")
        target = f", target L0 {cfg.get('target_l0')}" if mode == "quadratic" else ""
        summary.append(["L0 coefficient (sparsity loss)", f"{cfg['l0_coefficient']} ({mode}{target})"])
    if cfg.get("matryoshka_widths"):
        summary.append(["Matryoshka prefixes", " ".join(map(str, cfg["matryoshka_widths"]))])
    summary.append(["input scale (folded into the weights)", record.get("norm_scaling_factor_folded", 1.0)])
    sections.append(("SAE", table(summary, ["", "value"], float_format="{:.4g}")))
    log = _read(out / LOG_FILE)
    if log:
        tokens = [r["tokens"] for r in log]
        sections.append(
            (
                "Training loss",
                line_chart(
                    {"loss": [r["loss"] for r in log], "MSE": [r["mse"] for r in log]},
                    x=tokens,
                    xlabel="tokens",
                    log_y=True,
                ),
            )
        )
        sections.append(
            (
                "L0 and dead features",
                line_chart(
                    {"L0": [r["l0"] for r in log], "dead %": [100 * r["dead"] for r in log]},
                    x=tokens,
                    xlabel="tokens",
                ),
            )
        )
    metrics = _read(out / METRICS_FILE)
    if metrics:
        ev = SAEEval(metrics, torch.zeros(0), site=metrics.get("site", ""))
        sections.append(
            (
                "Evaluation (held-out contexts)",
                table(ev.table_rows(), ["metric", "value"], float_format="{:.4g}"),
            )
        )
    for name, path in EVAL_FILES.items():
        evaluation = _read(out / path)
        if evaluation:
            from . import evals

            sections += getattr(evals, f"{name}_sections")(evaluation)
    stats = _read(out / STATS_FILE)
    if stats:
        density = torch.tensor(stats["density"])
        alive = density[density > 0]
        text = (
            f"{stats['n_tokens']} tokens: {int((density == 0).sum())} of {len(density)} features never fire "
            f"({(density == 0).float().mean():.1%}); {int((density > 0.01).sum())} fire on more than 1% of tokens."
        )
        sections.append(("Feature density", Text(text)))
        if len(alive):
            sections.append(
                ("", histogram(alive.log10(), bins=40, xlabel="log10 density", ylabel="features"))
            )
        rows = [_card_row(card) for card in _cards(out, density.argsort(descending=True)[:25].tolist())]
        if rows:
            sections.append(
                ("The densest features (every card: features/*.json)", table(rows, float_format="{:.4g}"))
            )
    title = f"SAE {record.get('site', '')} ({cfg.get('architecture', record['architecture'])}, {record['d_sae']} features)"
    return page(title, sections, subtitle=record.get("model", ""))


def _cards(out: Path, indices: list[int]) -> list[dict]:
    """The cards of `indices` from the features/NNNNN.json pages (each page read once)."""
    pages: dict[int, list[dict]] = {}
    cards = []
    for i in indices:
        path = out / "features" / f"{i // PAGE:05d}.json"
        if i // PAGE not in pages:
            pages[i // PAGE] = read_json(path)["cards"] if path.is_file() else []
        page_cards = pages[i // PAGE]
        if i % PAGE < len(page_cards):
            cards.append(page_cards[i % PAGE])
    return cards


def _card_row(card: dict) -> dict:
    return {
        "feature": card["index"],
        "title": card["title"],
        "density": card["density"],
        "max act": card["max_act"],
        "promotes": " ".join(t for t, _ in card["promoted"][:5]),
        "ablation Δloss": (card.get("ablation") or {}).get("loss_delta", {}).get("all"),
    }


def finish(out_dir) -> Path:
    """Write report.html, then run.json (kind "sae", with the headline numbers)."""
    out = Path(out_dir)
    record = json.loads((out / CFG_FILE).read_text())
    save_page(report_html(out), out / "report.html")
    metrics = _read(out / METRICS_FILE) or {}
    cfg = record.get("lmscope_config", {})
    headline = {
        k: metrics[k]
        for k in ("explained_variance", "loss_recovered", "l0", "dead_fraction", "kl")
        if k in metrics
    }
    write_run(
        out,
        "sae",
        f"SAE {record.get('site', '')} ({record['architecture']}, {record['d_sae']} features)",
        model=record.get("model", ""),
        site=record.get("site", ""),
        architecture=cfg.get("architecture", record["architecture"]),
        d_in=record["d_in"],
        d_sae=record["d_sae"],
        sources=_read(out / SOURCES_FILE) or {},
        **headline,
    )
    return out


def _defaults(fn) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()}


_TRAIN, _EVAL, _FEATURES = _defaults(train_run), _defaults(eval_run), _defaults(features_run)


@dataclass
class SAECommand:
    """What `lmscope sae train|eval|features` sets. Every default is read from where it is used: the
    SAE configs (k, l1, batch size, lr, tokens, dead tokens, seed) and train_run / eval_run / features_run."""

    action: str = field(metadata={"positional": True, "choices": ("train", "eval", "features")})
    run_dir: str | None = field(
        default=None, metadata={"positional": True, "help": "the run folder (or use --out)"}
    )
    out: str | None = field(default=None, metadata={"help": "the run folder (same as RUN_DIR)"})
    site: str | None = field(
        default=None,
        metadata={"help": "train: the site to read, e.g. blocks.12.resid_post or blocks.12.mlp.post"},
    )
    arch: str = field(
        default=_TRAIN["architecture"], metadata={"choices": tuple(CONFIGS), "help": "architecture"}
    )
    k: int = field(default=TopKConfig.k, metadata={"help": "TopK architectures: active features per token"})
    l1: float | None = field(
        default=None,
        metadata={
            "help": f"standard: the L1 coefficient (default: {StandardConfig.l1_coefficient}, the config's)"
        },
    )
    expansion: int = field(default=_TRAIN["expansion"], metadata={"help": "features per input dimension"})
    tokens: int = field(
        default=SAEConfig.total_tokens,
        metadata={"parse": parse_count, "help": "training tokens, e.g. 500k or 2M"},
    )
    batch_size: int = field(default=SAEConfig.batch_size, metadata={"help": "tokens per optimizer step"})
    lr: float = field(default=SAEConfig.lr, metadata={"help": "Adam learning rate"})
    dead_tokens: int = field(
        default=SAEConfig.dead_tokens,
        metadata={"parse": parse_count, "help": "a feature silent this long is dead"},
    )
    seed: int = SAEConfig.seed
    store: str | None = field(
        default=None, metadata={"help": "an activation store folder holding the site (else run the model)"}
    )
    corpus: str | None = field(
        default=None, metadata={"help": "corpus folder (default: <cache>/corpora/default)"}
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "a saved TokenDataset to train on (instead of the corpus's train split)"},
    )
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "a saved TokenDataset to evaluate on (default: the corpus's test split)"},
    )
    n_contexts: int = field(default=_EVAL["n_contexts"], metadata={"help": "eval: contexts to run"})
    n_tokens: int = field(default=_FEATURES["n_tokens"], metadata={"help": "features: tokens to scan"})
    ablate: int = field(
        default=_FEATURES["ablate"], metadata={"help": "features: densest features to ablate"}
    )
    l0: float | None = field(
        default=None,
        metadata={"help": f"jumprelu: the L0 coefficient (default {JumpReLUConfig.l0_coefficient})"},
    )
    target_l0: float | None = field(
        default=None,
        metadata={"help": "jumprelu: hold L0 near this (the quadratic sparsity loss; else the L0 itself)"},
    )
    matryoshka_widths: tuple[int, ...] | None = field(
        default=None,
        metadata={"help": "matryoshka_batchtopk: the nested prefix sizes (default d_sae/16 .. d_sae)"},
    )
    probing: bool = field(
        default=False, metadata={"help": "eval: sparse probing on latents vs neurons vs a rotated basis"}
    )
    labels: bool = field(default=False, metadata={"help": "eval: automatic feature labels, scored held out"})
    absorption: bool = field(default=False, metadata={"help": "eval: first-letter feature absorption"})


def sae_command(opts: SAECommand, model_name: str | None = None) -> str:
    """What `lmscope sae train|eval|features` runs; returns a one-line summary. Data not given on the
    command line is taken from the run's sources.json (train records where its data came from)."""
    from ...data.store import ActivationStore
    from ...model import load

    action, run_dir = opts.action, opts.run_dir or opts.out
    if not run_dir:
        raise ValueError(f"sae {action} needs a run folder: lmscope sae {action} DIR (or --out DIR)")
    out = Path(run_dir)
    recorded = _read(out / SOURCES_FILE) or {}
    store = opts.store or recorded.get("store")
    corpus = opts.corpus or recorded.get("corpus")
    dataset = opts.dataset or recorded.get("dataset")
    eval_dataset = opts.eval_dataset or recorded.get("eval_dataset")
    if corpus is None and not (store and dataset and eval_dataset):
        from ...data.corpus import default_corpus_dir

        corpus = str(default_corpus_dir())
        if not Path(corpus).is_dir() and not (action == "features" and store):
            raise FileNotFoundError(
                f"no corpus at {corpus}: build one with `lmscope corpus build`, or pass "
                "--store / --dataset / --corpus"
            )
    model = load(model_name)
    the_store = ActivationStore(store) if store else None
    if action == "train":
        if not opts.site:
            raise ValueError("sae train needs --site, e.g. --site blocks.12.resid_post")
        cfg_fields = {"batch_size": opts.batch_size, "lr": opts.lr, "seed": opts.seed}
        cfg_fields["dead_tokens"] = parse_count(opts.dead_tokens)
        known = {f.name for f in fields(config_class(opts.arch))}
        if "k" in known:
            cfg_fields["k"] = opts.k
        if "l1_coefficient" in known and opts.l1 is not None:
            cfg_fields["l1_coefficient"] = opts.l1
        if "l0_coefficient" in known and opts.l0 is not None:
            cfg_fields["l0_coefficient"] = opts.l0
        if "target_l0" in known and opts.target_l0 is not None:
            cfg_fields.update(target_l0=opts.target_l0, jumprelu_sparsity_loss_mode="quadratic")
        if "matryoshka_widths" in known and opts.matryoshka_widths:
            cfg_fields["matryoshka_widths"] = tuple(opts.matryoshka_widths)
        train_data = None if the_store else load_tokens(dataset, corpus, model, "train")
        sources = {"store": store, "corpus": corpus, "dataset": dataset, "eval_dataset": eval_dataset}
        train_run(
            out,
            model,
            opts.site,
            opts.arch,
            opts.expansion,
            opts.tokens,
            store=the_store,
            dataset=train_data,
            sources=sources,
            **cfg_fields,
        )
        return f"wrote {out} (report.html); evaluate it with: lmscope sae eval {out}"
    if action == "eval":
        extra = opts.probing or (opts.labels and the_store is None)
        result = eval_run(
            out,
            model,
            load_tokens(eval_dataset, corpus, model, "test"),
            n_contexts=opts.n_contexts,
            probing=opts.probing,
            labels=opts.labels,
            absorption=opts.absorption,
            train_dataset=load_tokens(dataset, corpus, model, "train") if extra else None,
            store=the_store,
            seed=opts.seed,
        )
        m = result.metrics
        return (
            f"explained variance {m['explained_variance']:.3f}, loss recovered {m['loss_recovered']:.3f}, "
            f"L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%}, KL {m['kl']:.4f} -> {out / METRICS_FILE}"
            + "".join(f"; {name} -> {out / path}" for name, path in EVAL_FILES.items() if getattr(opts, name))
        )
    if action == "features":
        data = None if the_store else load_tokens(dataset, corpus, model, "train")
        features_run(out, model, store=the_store, dataset=data, n_tokens=opts.n_tokens, ablate=opts.ablate)
        return f"wrote {out / STATS_FILE} and {out / 'features'}/*.json; report: {out / 'report.html'}"
    raise ValueError(f"unknown sae action {action!r}: train, eval or features")

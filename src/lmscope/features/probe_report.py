"""`lmscope probe`: sparse-probe sweeps on a labelled corpus, as a run folder (kind "probe").

    result = run_probe(model, "runs/probe", labels=["english", "french", "german", "python"])

Sequence-level features (each label against the rest, and code against prose) are read from each
document's mean mlp.post over its first ctx_len tokens; a token-level feature (a two-word phrase, picked
from the English text unless given) from the activation at the phrase's last token. Every layer x k is
probed on the train split and scored on the test split, in the neuron basis and in a random one. The folder
gets probe.json (every number), report.html, the cached activations and run.json.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.tokens import tokenize_corpus
from ..report import Text, line_chart, page, save_page, table
from ..runs import write_json, write_run
from .basis import basis_kurtosis_by_site
from .collect import bigram_examples, frequent_bigram, token_activations
from .documents import cached_document_means, corpus_splits, features_of, targets
from .probing import METHODS
from .sweeps import DEFAULT_KS, best_neurons, probe_sweep, summarize_sweep

KURTOSIS_TOKENS = 1024  # random document tokens whose activations the privileged-basis statistics read


def int_list(text: str | None) -> list[int] | None:
    """'0-3,8,10' -> [0, 1, 2, 3, 8, 10]; None stays None."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"expected numbers and ranges like '0-3,8', got {text!r}")
        out += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
    return out


def parse_bigram(text: str) -> tuple[str, str] | str | None:
    """'auto' -> 'auto', 'none' -> None, ' standard| output' -> (' standard', ' output')."""
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    first, sep, second = text.partition("|")
    if not sep:
        raise ValueError(
            f"the bigram is 'FIRST|SECOND' (e.g. ' standard| output'), auto or none; got {text!r}"
        )
    return first, second


@dataclass
class CorpusSweepOptions:
    """What `lmscope probe` and `lmscope neurons` share: which documents, layers and seed."""

    corpus: str | None = field(
        default=None, metadata={"help": "corpus folder (default: the default corpus, built if missing)"}
    )
    labels: list[str] | None = field(
        default=None,
        metadata={"sep": ",", "help": "labels, e.g. english,french,german,python (default: all)"},
    )
    layers: list[int] | None = field(
        default=None, metadata={"parse": int_list, "help": "e.g. '0-29' or '4,8,12' (default: every layer)"}
    )
    n_train: int = field(default=150, metadata={"help": "train documents per label"})
    n_test: int = field(default=50, metadata={"help": "test documents per label"})
    ctx_len: int = field(default=128, metadata={"help": "tokens read per document"})
    seed: int = 0


@dataclass
class ProbeOptions(CorpusSweepOptions):
    """What `lmscope probe` sets (run_probe's defaults are these)."""

    ks: tuple[int, ...] = field(
        default=DEFAULT_KS, metadata={"flag": "--k", "parse": int_list, "help": "sparsity levels"}
    )
    method: str = field(default="mean_diff", metadata={"choices": METHODS})
    bigram: tuple[str, str] | str | None = field(
        default="auto",
        metadata={"parse": parse_bigram, "help": "token-level feature 'FIRST|SECOND', auto or none"},
    )
    out: str = field(default="probe_run", metadata={"help": "run folder to write"})


def _layers(model, layers: Sequence[int] | None) -> list[int]:
    n = model.cfg.n_layers
    layers = list(range(n)) if layers is None else sorted(set(int(x) for x in layers))
    bad = [x for x in layers if not 0 <= x < n]
    if bad or not layers:
        raise ValueError(f"layers {bad or layers} out of range: the model has layers 0..{n - 1}")
    return layers


def _bigram_data(model, train_docs, test_docs, sites, bigram, ctx_len, seed):
    """Token-level feature data: (name, X_train, y_train, X_test, y_test), or None when no phrase fits.

    Contexts of at most 64 tokens: a token's activation needs only the text before it, and every context
    holding an example is a forward pass, so short ones keep this step a fraction of the document pass.
    """
    ctx = min(ctx_len, 64)
    train = tokenize_corpus(model, train_docs, ctx_len=ctx, max_contexts=1200)
    test = tokenize_corpus(model, test_docs, ctx_len=ctx, max_contexts=600)
    if bigram is None or bigram == "auto":
        bigram = frequent_bigram(train, model.tokenizer)
        if bigram is None:
            return None
    first, second = bigram
    r, p, y_train = bigram_examples(train, model.tokenizer, first, second, max_examples=240, seed=seed)
    X_train = token_activations(model, train, r, p, sites)
    r, p, y_test = bigram_examples(test, model.tokenizer, first, second, max_examples=120, seed=seed)
    X_test = token_activations(model, test, r, p, sites)
    return f"bigram:{first}{second}", X_train, y_train, X_test, y_test


def run_probe(
    model,
    out: str | Path,
    corpus: str | Path | None = None,
    labels: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    ks: Sequence[int] = ProbeOptions.ks,
    method: str = ProbeOptions.method,
    n_train: int = ProbeOptions.n_train,
    n_test: int = ProbeOptions.n_test,
    ctx_len: int = ProbeOptions.ctx_len,
    bigram: tuple[str, str] | str | None = ProbeOptions.bigram,
    n_rotations: int = 10,
    seed: int = ProbeOptions.seed,
    progress: bool = True,
) -> dict:
    """Sweep sparse probes over layers x k for every feature of the corpus; write the run folder.

    bigram: (first, second) words for the token-level feature, "auto" (a frequent English phrase), or None
    to skip it. n_rotations: random rotations for the kurtosis baseline of each layer's neurons.
    Returns the content of probe.json.
    """
    start = time.perf_counter()
    out = Path(out)
    layers = _layers(model, layers)
    sites = [f"blocks.{layer}.mlp.post" for layer in layers]
    train_ds, test_ds, corpus_path = corpus_splits(model, corpus, labels, n_train, n_test, ctx_len)
    train_file, test_file = out / "doc_means_train.safetensors", out / "doc_means_test.safetensors"
    train = cached_document_means(model, train_ds, sites, train_file, KURTOSIS_TOKENS, progress)
    test = cached_document_means(model, test_ds, sites, test_file, 0, progress)
    features = features_of(train.label_names)
    y_train, y_test = targets(train, features), targets(test, features)
    sweep = probe_sweep(
        train.means, y_train, test.means, y_test, layers, ks, method, seed=seed, progress=progress
    )
    best = {f: best_neurons(train.means, y_train[f], test.means, y_test[f], layers) for f in features}
    token_feature = None
    if bigram is not None and "english" in train.label_names:
        from ..data.corpus import load_corpus

        docs = {s: load_corpus(corpus_path, split=s, labels=["english"]) for s in ("train", "test")}
        data = _bigram_data(model, docs["train"], docs["test"], sites, bigram, ctx_len, seed)
        if data is not None:
            name, Xa, ya, Xb, yb = data
            sweep += probe_sweep(Xa, {name: ya}, Xb, {name: yb}, layers, ks, method, seed=seed)
            best[name] = best_neurons(Xa, ya, Xb, yb, layers)
            token_feature = {"name": name, "n_train": len(ya), "n_test": len(yb), "positives": int(ya.sum())}
    basis = [b.to_dict() for b in basis_kurtosis_by_site(train.sample, n_rotations, seed)]
    result = {
        "model": model.cfg.name,
        "corpus": str(corpus_path),
        "label_names": train.label_names,
        "features": features,
        "token_feature": token_feature,
        "n_docs": {"train": len(train.labels), "test": len(test.labels)},
        "ctx_len": ctx_len,
        "layers": layers,
        "ks": [k for k in ks if k <= model.cfg.d_mlp],
        "method": method,
        "summary": summarize_sweep(sweep),
        "best_neurons": best,
        "sweep": sweep,
        "basis": basis,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "probe.json", result)
    save_page(probe_page(result), out / "report.html")
    write_run(out, "probe", f"Sparse probing: {', '.join(features)}", model=model.cfg.name, method=method)
    return result


def _f1_vs_k(rows: list[dict], feature: str, layers: list[int], best_layer: int):
    """F1 against log2(k): a few layers spread over depth and the best one, plus the best layer rotated."""
    shown = sorted({layers[round(i * (len(layers) - 1) / 4)] for i in range(5)} | {best_layer})
    series = {}
    for layer in shown:
        for basis in ("native", "rotated"):
            if basis == "rotated" and layer != best_layer:
                continue
            pts = sorted(
                (r["k"], r["f1"])
                for r in rows
                if r["feature"] == feature and r["layer"] == layer and r["basis"] == basis
            )
            if pts:
                series[f"L{layer}" + (" rotated" if basis == "rotated" else "")] = [f for _, f in pts]
                ks = [k for k, _ in pts]
    return line_chart(
        series, x=[math.log2(k) for k in ks], title=f"{feature}: test F1 vs k", xlabel="log2 k", ylabel="F1"
    )


def _f1_by_layer(rows: list[dict], feature: str, layers: list[int]):
    series = {}
    for basis in ("native", "rotated"):
        by_layer = {
            r["layer"]: r["f1"]
            for r in rows
            if r["feature"] == feature and r["k"] == 1 and r["basis"] == basis
        }
        if by_layer:
            series[f"k=1 {basis}"] = [by_layer.get(layer, float("nan")) for layer in layers]
    return line_chart(
        series, x=layers, title=f"{feature}: 1-sparse test F1 by layer", xlabel="layer", ylabel="F1"
    )


def probe_page(result: dict) -> str:
    """report.html of a probe run, from the content of its probe.json."""
    rows, layers = result["sweep"], result["layers"]
    lines = []
    for feature, best in result["best_neurons"].items():
        if best:
            b = best[0]
            lines.append(
                f"{feature}: best single neuron L{b['layer']} N{b['neuron']} (sign {b['sign']:+d}), test F1 "
                f"{b['f1']:.3f} (train {b['train_f1']:.3f})"
            )
    intro = Text(
        f"Corpus {result['corpus']}: {result['n_docs']['train']} train / {result['n_docs']['test']} test "
        f"documents, labels {', '.join(result['label_names'])}, first {result['ctx_len']} tokens of each. "
        f"Probes: {result['method']}, k in {result['ks']}, on the mean of blocks.L.mlp.post over each "
        f"document's tokens; F1 is on the test split. The rotated basis multiplies the activations by a "
        f"random orthogonal matrix: a probe that does much better in the neuron basis reads a privileged "
        f"direction.\n\n" + "\n".join(lines)
    )
    sections = [("Summary", intro)]
    summary_rows = [
        {
            "feature": f,
            "layer": s["best_layer_k1"],
            "neuron": s["best_neuron_k1"],
            "train F1": s["train_f1_k1"],
            "test F1": s["best_f1_k1"],
            "rotated test F1": s["rotated_f1_k1"],
        }
        for f, s in result["summary"].items()
    ]
    note = Text(
        "The top neuron by mean difference at each layer as a 1-sparse probe; the layer is the one with "
        "the best train F1. The lines above pick among each layer's top 8 neurons by train F1."
    )
    sections.append(("Mean-difference 1-sparse probe per feature", [note, table(summary_rows)]))
    for feature, s in result["summary"].items():
        figures = [_f1_by_layer(rows, feature, layers), _f1_vs_k(rows, feature, layers, s["best_layer_k1"])]
        best_rows = [
            {
                k: r[k]
                for k in ("layer", "neuron", "sign", "f1", "precision", "recall", "train_f1", "mean_diff")
            }
            for r in result["best_neurons"].get(feature, [])[:6]
        ]
        sections.append((f"Feature: {feature}", [*figures, table(best_rows)]))
    basis = result["basis"]
    if basis:
        basis_layers = [int(b["site"].split(".")[1]) for b in basis]
        fig = line_chart(
            {
                "native (per neuron)": [b["kurtosis_dim"] for b in basis],
                "rotated mean (per neuron)": [b["rotated_dim_mean"] for b in basis],
                "native (per token)": [b["kurtosis_tok"] for b in basis],
                "rotated mean (per token)": [b["rotated_tok_mean"] for b in basis],
            },
            x=basis_layers,
            title="Kurtosis of mlp.post: neuron basis vs random rotations",
            xlabel="layer",
            ylabel="kurtosis",
            log_y=True,
        )
        note = Text(
            f"Per-token activations of {basis[0]['n_tokens']} random document tokens, centred; "
            f"{basis[0]['n_rotations']} Haar rotations per layer. A Gaussian gives 3."
        )
        keys = (
            "site",
            "kurtosis_dim",
            "rotated_dim_mean",
            "z_dim",
            "kurtosis_tok",
            "rotated_tok_mean",
            "z_tok",
        )
        sections.append(("Privileged basis", [note, fig, table([{k: b[k] for k in keys} for b in basis])]))
    return page("Sparse probing", sections, subtitle=f"{result['model']} — {result['seconds']} s")

"""`lmscope neurons`: the best neurons for each corpus feature, as unit cards and a report (kind "neurons").

    result = run_neurons(model, "runs/neurons", labels=["english", "french", "german", "python"])

For each feature (each label against the rest; code against prose) the best single neurons are found
with 1-sparse probes on per-document mean activations (train split, scored on the test split). Each gets
a unit card: top and quantile examples from the test documents, its output weights read in the
vocabulary. Each feature's best neuron (or top `n_ablate`) is then zeroed everywhere and the next-token
loss compared per label: a context neuron hurts its own label's text much more than the others'.
Writes units.json ({"site_kind", "units": [card, ...]}), neurons.json, report.html and run.json.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..report import Text, bar_chart, example_html, line_chart, page, render, save_page, table
from ..runs import read_json, write_json, write_run
from .documents import cached_document_means, corpus_splits, features_of, targets
from .neurons import (
    SITE_KIND,
    ablation_effects,
    context_split,
    superposition_fingerprint,
    unit_activations,
    unit_cards,
)
from .probe_report import CorpusSweepOptions, _layers
from .sweeps import best_neurons


@dataclass
class NeuronsOptions(CorpusSweepOptions):
    """What `lmscope neurons` sets (run_neurons's defaults are these)."""

    per_feature: int = field(default=3, metadata={"help": "neurons per feature: cards + ablations"})
    n_ablate: int = field(default=1, metadata={"help": "best neurons zeroed together"})
    ablation_docs: int = field(default=12, metadata={"help": "test documents per label for ablations"})
    from_probe: str | None = field(
        default=None, metadata={"help": "a probe run folder whose activations to reuse"}
    )
    out: str = field(default="neurons_run", metadata={"help": "run folder to write"})


def _first_docs(dataset, per_label: int):
    """The first `per_label` documents (contexts) of each label of a one-document-per-context dataset."""
    counts: dict[int, int] = {}
    rows = []
    for i, lab in enumerate(dataset.labels[:, 1].tolist()):  # position 0 is BOS, 1 the document's first token
        if counts.get(lab, 0) < per_label:
            counts[lab] = counts.get(lab, 0) + 1
            rows.append(i)
    return dataset[rows]


def _cached_ablations(model, dataset, sets: dict, path: Path, progress: bool) -> dict[str, dict]:
    """ablation_effects, saving each finished set to `path` so an interrupted run resumes where it was."""
    key = [model.cfg.name, dataset.fingerprint()]
    done = {}
    if path.is_file():
        saved = read_json(path)
        if saved.get("key") == key:
            done = {name: e for name, e in saved["effects"].items() if name in sets}

    def save(name: str, effect: dict) -> None:
        done[name] = effect
        write_json(path, {"key": key, "effects": done})

    todo = {name: units for name, units in sets.items() if name not in done}
    if todo:
        ablation_effects(model, dataset, todo, progress=progress, on_result=save)
    return {name: dict(done[name]) for name in sets}


def run_neurons(
    model,
    out: str | Path,
    corpus: str | Path | None = None,
    labels: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    n_train: int = NeuronsOptions.n_train,
    n_test: int = NeuronsOptions.n_test,
    ctx_len: int = NeuronsOptions.ctx_len,
    per_feature: int = NeuronsOptions.per_feature,
    n_ablate: int = NeuronsOptions.n_ablate,
    ablation_docs: int = NeuronsOptions.ablation_docs,
    seed: int = NeuronsOptions.seed,
    progress: bool = True,
    from_probe: str | Path | None = None,
) -> dict:
    """Find, describe and ablate the best neurons of every feature; write the run folder.

    per_feature: neurons per feature given a card; each is also zeroed on its own (a pass over the
    ablation documents each). n_ablate > 1: also zero each feature's best n_ablate together.
    ablation_docs: test documents per label for the ablation losses. from_probe: a
    `lmscope probe` run folder on the same corpus and settings whose cached activations to reuse.
    Returns the content of neurons.json.
    """
    start = time.perf_counter()
    out = Path(out)
    layers = _layers(model, layers)
    sites = [f"blocks.{layer}.{SITE_KIND}" for layer in layers]
    train_ds, test_ds, corpus_path = corpus_splits(model, corpus, labels, n_train, n_test, ctx_len)
    means = {}
    for split, ds in (("train", train_ds), ("test", test_ds)):
        name = f"doc_means_{split}.safetensors"
        reuse = Path(from_probe) / name if from_probe else None
        means[split] = cached_document_means(model, ds, sites, out / name, 0, progress, reuse)
    train, test = means["train"], means["test"]
    features = features_of(train.label_names)
    y_train, y_test = targets(train, features), targets(test, features)
    best = {
        f: best_neurons(
            train.means, y_train[f], test.means, y_test[f], layers, top=max(per_feature, n_ablate)
        )
        for f in features
    }
    units, found_by = [], {}
    for feature, rows in best.items():
        for r in rows[:per_feature]:
            unit = (r["layer"], r["neuron"])
            if unit not in found_by:
                units.append(unit)
                found_by[unit] = {"feature": feature, **{k: r[k] for k in ("f1", "train_f1", "sign")}}
    acts = unit_activations(model, test_ds, units, progress=progress)
    cards = unit_cards(model, test_ds, units, acts, seed=seed)
    for card, unit in zip(cards, units):
        probe = found_by[unit]
        card["title"] = f"L{unit[0]} N{unit[1]}: {probe['feature']} ({'+' if probe['sign'] > 0 else '-'})"
        card["extra"].update(probe=probe, density_rule="share of tokens above 10% of max_act")

    ablation_ds = _first_docs(test_ds, ablation_docs)
    sets = {_units([unit]): [unit] for unit in units}
    if n_ablate > 1:
        sets |= {
            f"{f}: top {n_ablate}": [(r["layer"], r["neuron"]) for r in best[f][:n_ablate]] for f in features
        }
    effects = _cached_ablations(model, ablation_ds, sets, out / "ablations_cache.json", progress)
    for name, effect in effects.items():
        feature = name.split(":")[0] if ":" in name else found_by[tuple(effect["units"][0])]["feature"]
        effect.update(feature=feature, **context_split(effect, features[feature]))
    for card, unit in zip(cards, units):
        card["ablation"] = {"loss_delta": effects[_units([unit])]["loss_delta"]}

    fingerprint = superposition_fingerprint(model, ablation_ds[: min(8, len(ablation_ds))])
    result = {
        "model": model.cfg.name,
        "corpus": str(corpus_path),
        "label_names": train.label_names,
        "features": features,
        "n_docs": {"train": len(train.labels), "test": len(test.labels), "ablation": len(ablation_ds)},
        "ctx_len": ctx_len,
        "layers": layers,
        "best_neurons": best,
        "ablations": effects,
        "fingerprint": fingerprint,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "units.json", {"site_kind": SITE_KIND, "units": cards})
    write_json(out / "neurons.json", result)
    save_page(neurons_page(result, cards), out / "report.html")
    write_run(out, "neurons", f"Neurons: {', '.join(features)}", model=model.cfg.name, n_units=len(cards))
    return result


def _card_html(card: dict, n_examples: int = 5) -> str:
    probe = card.get("extra", {}).get("probe", {})
    # A neuron that is lower on its feature shows the feature in its most negative examples.
    negative = probe.get("sign", 1) < 0 and card["extra"].get("bottom_examples")
    shown = (card["extra"]["bottom_examples"] if negative else card["top_examples"])[:n_examples]
    scale = max((abs(a) for ex in shown for a in ex["acts"] if a is not None), default=1.0)
    return render(
        "features/neuron_card.html",
        card=card,
        f1=probe.get("f1", float("nan")),
        promoted=", ".join(repr(t) for t, _ in card["promoted"][:8]),
        suppressed=", ".join(repr(t) for t, _ in card["suppressed"][:8]),
        zeroing=", ".join(
            f"{lab} {v:+.4f}" for lab, v in card.get("ablation", {}).get("loss_delta", {}).items()
        ),
        which="lowest" if negative else "highest",
        examples=[example_html(ex, scale) for ex in shown],
    )


CARD_NOTE = (
    "Promotes / suppresses: the tokens whose logits the neuron's output weights raise and lower most, "
    "W_out[n] times the final norm's weight, through W_U. RMSNorm also divides by the residual's norm, "
    "which depends on the input, so that scale is left out (it does not change the ranking). Examples are "
    "from the test documents, shaded by activation (orange positive, blue negative), the peak underlined; a "
    "neuron that is lower on its feature (sign -) shows its lowest activations."
)


def _units(units: list) -> str:
    return ", ".join(f"L{layer} N{neuron}" for layer, neuron in units)


def _ablation_chart(name: str, effect: dict):
    labels = list(effect["loss_delta"])
    return bar_chart(
        [effect["loss_delta"][lab] for lab in labels],
        labels=labels,
        title=f"Zeroing {name} ({effect['feature']}): loss change per label",
        xlabel="loss change (nats / token)",
        value_format="{:+.4f}",
    )


def strongest_context_units(result: dict) -> dict[str, str]:
    """feature -> the ablated unit set of that feature whose loss change is largest in context relative
    to out of context (in_context - out_of_context)."""
    out = {}
    for name, e in result["ablations"].items():
        gap = e["in_context"] - (e["out_of_context"] or 0.0)
        best = out.get(e["feature"])
        if best is None or gap > best[1]:
            out[e["feature"]] = (name, gap)
    return {feature: name for feature, (name, _) in out.items()}


def neurons_page(result: dict, cards: list[dict]) -> str:
    """report.html of a neurons run."""
    effects, lines, figures = result["ablations"], [], []
    strongest = strongest_context_units(result)
    for feature, rows in result["best_neurons"].items():
        b = rows[0]
        name = _units([(b["layer"], b["neuron"])])
        e = effects[name]
        lines.append(
            f"{feature}: best single neuron {name} (sign {b['sign']:+d}, 1-sparse test F1 {b['f1']:.3f}, chosen "
            f"by train F1 {b['train_f1']:.3f}); zeroing it changes the loss by {e['in_context']:+.4f} "
            f"nats/token on {feature} text, {e['out_of_context']:+.4f} on the rest"
        )
        figures.append(_ablation_chart(name, e))
        if strongest.get(feature, name) != name:
            s = effects[strongest[feature]]
            lines.append(
                f"    strongest context effect among its top neurons: {strongest[feature]}: "
                f"{s['in_context']:+.4f} on {feature}, {s['out_of_context']:+.4f} on the rest"
            )
            figures.append(_ablation_chart(strongest[feature], s))
    intro = Text(
        f"Corpus {result['corpus']}: {result['n_docs']['train']} train / {result['n_docs']['test']} test "
        f"documents, first {result['ctx_len']} tokens of each. Neurons are blocks.L.mlp.post; each "
        f"feature's best are 1-sparse probes on per-document mean activations. Ablation: the neuron is "
        f"zeroed at every position of {result['n_docs']['ablation']} test documents and the next-token "
        f"cross-entropy compared, grouped by the label of the predicted token.\n\n" + "\n".join(lines)
    )
    rows = [
        {
            "ablated": name,
            "feature": e["feature"],
            "in context": e["in_context"],
            "out of context": e["out_of_context"],
            **{f"Δ {lab}": v for lab, v in e["loss_delta"].items()},
        }
        for name, e in effects.items()
    ]
    best_rows = [
        {"feature": f, **{k: r[k] for k in ("layer", "neuron", "sign", "f1", "train_f1", "mean_diff")}}
        for f, rs in result["best_neurons"].items()
        for r in rs[:4]
    ]
    fp = result["fingerprint"]
    series = {k: [row.get(k, float("nan")) for row in fp] for k in fp[0] if k != "layer"}
    fingerprint_note = Text(
        "Per layer: median input-weight norm of the neurons (and of the gate for GLU MLPs); with input "
        "biases the median of |W_in[:, n]|·b_in[n]; without, the median over neurons of the mean "
        "pre-activation and the share of positive pre-activations (on a few test documents)."
    )
    sections = [
        ("Summary", intro),
        ("Ablation", [*figures, table(rows, float_format="{:+.4f}")]),
        ("Best neurons (1-sparse probes)", table(best_rows)),
        ("Unit cards", [Text(CARD_NOTE), "".join(_card_html(c) for c in cards)]),
        (
            "Superposition fingerprint",
            [
                fingerprint_note,
                line_chart(
                    series, x=[r["layer"] for r in fp], title="MLP statistics by layer", xlabel="layer"
                ),
            ],
        ),
    ]
    return page("Neurons", sections, subtitle=f"{result['model']} — {result['seconds']} s")

"""`lmscope steer`: directions named on the command line, swept against one target, saved as one run folder.

Direction specs (--direction, repeatable; each becomes one line of the dose-response plot):
    sae:FOLDER:FEATURE          an SAE folder (cfg.json + sae_weights.safetensors) and a feature index
    sae:FOLDER:LABEL            ... the feature most active on LABEL's train documents against the rest
    das:FOLDER                  a DAS run folder (or its subspace.safetensors)
    neuron:blocks.L.mlp.post[N] a neuron's output weights
    neuron:LABEL@L              ... of layer L's neuron most active on LABEL's train documents (a context
                                neuron, e.g. neuron:french@5)
    probe:LABEL@SITE            a sparse probe (k = --probe-k) for LABEL against the other labels, fitted on
                                the corpus's train documents at SITE
    mean_diff:LABEL@SITE        mean activation of LABEL's train documents minus the other labels' at SITE
    mean_diff:LABEL-OTHER@SITE  ... minus OTHER's only
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PROMPTS = ["The best thing about", "Once upon a time,", "My favourite", "Here is the"]


def _token_list(text: str) -> list[str]:
    """'␣le,␣la' -> [' le', ' la']: tokens keep their spaces (they matter to the tokenizer)."""
    parts = [p for p in text.split(",") if p]
    if not parts:
        raise ValueError(f"no tokens in {text!r}; write them comma-separated, e.g. ' le, la, les'")
    return parts


@dataclass
class SteerOptions:
    """What `lmscope steer` sets."""

    direction: list[str] = field(
        metadata={"action": "append", "help": "a direction spec (repeat to compare several; see --help)"}
    )
    scales: list[float] = field(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.4],
        metadata={"sep": ",", "help": "comma-separated; sizes relative to the site unless --natural"},
    )
    natural: bool = field(
        default=False,
        metadata={
            "help": "scales in each direction's own units (SAE feature / neuron activation, 1 = the whole mean "
            "difference, probe logit) instead of |added vector| / mean |activation| at the site"
        },
    )
    corpus: str | None = field(default=None, metadata={"help": "corpus folder (default: the default corpus)"})
    labels: list[str] | None = field(
        default=None,
        metadata={"sep": ",", "help": "labels whose test text measures side effects (default all)"},
    )
    target_tokens: list[str] | None = field(
        default=None,
        metadata={"parse": _token_list, "help": "intended effect: log P(these next tokens), e.g. ' le, la'"},
    )
    target_label: str | None = field(
        default=None, metadata={"help": "intended effect: lower loss on this label's reference text"}
    )
    target_probe: str | None = field(
        default=None, metadata={"help": "intended effect: a probe LABEL@SITE's score on the continuations"}
    )
    ioi: int = field(
        default=0,
        metadata={"help": "use N IOI prompts, target logit(IO) - logit(S) (the DAS name-order demo)"},
    )
    prompt: list[str] | None = field(
        default=None,
        metadata={"action": "append", "help": "a prompt (repeatable; default: a few generic ones)"},
    )
    sae: list[str] | None = field(
        default=None, metadata={"sep": ",", "help": "SAE folders whose features' interference is measured"}
    )
    ablation: bool = field(default=True, metadata={"help": "skip the ablation condition"})
    ctx_len: int = field(default=64, metadata={"help": "reference context length (tokens)"})
    n_contexts: int = field(default=8, metadata={"help": "reference contexts per label"})
    n_docs: int = field(default=32, metadata={"help": "train documents per label for probe / mean_diff"})
    probe_k: int = field(default=8, metadata={"help": "neurons a probe direction may read"})
    max_new_tokens: int = field(default=20, metadata={"help": "tokens generated per continuation"})
    n_generate: int = field(default=4, metadata={"help": "prompts continued per condition"})
    seed: int = 0
    out: str = field(default="steer_run", metadata={"help": "run folder to write"})


def _at(spec: str, what: str) -> tuple[str, str]:
    if "@" not in spec:
        raise ValueError(f"{what} {spec!r}: write LABEL@SITE, e.g. french@blocks.12.resid_post")
    label, site = spec.rsplit("@", 1)
    return label, site


def _docs(by_label: dict, label: str, what: str) -> list[str]:
    if label not in by_label:
        raise ValueError(
            f"{what}: label {label!r} is not in the corpus; it has {', '.join(sorted(by_label))}"
        )
    return by_label[label]


def _contrast(train: dict, label: str, other: str, what: str) -> tuple[list[str], list[str]]:
    """(LABEL's texts, OTHER's or, without OTHER, every other label's)."""
    pos = _docs(train, label, what)
    neg = _docs(train, other, what) if other else [t for lab, ts in train.items() if lab != label for t in ts]
    if not neg:
        raise ValueError(f"{what}: the corpus has no other label to contrast {label!r} with")
    return pos, neg


def parse_direction(model, spec: str, train: dict[str, list[str]], opts: SteerOptions):
    """One --direction spec -> a Direction (see the module docstring)."""
    from ..features.sae import load_sae
    from .direction import Direction, fit_probe
    from .select import label_feature, label_neuron

    kind, _, rest = spec.partition(":")
    if kind == "sae":
        folder, _, feature = rest.rpartition(":")
        if not folder or not feature:
            raise ValueError(f"{spec!r}: write sae:FOLDER:FEATURE or sae:FOLDER:LABEL, e.g. sae:runs/sae:123")
        if feature.isdigit():
            return Direction.from_sae(folder, int(feature))
        sae = load_sae(folder)
        pos, neg = _contrast(train, feature, "", spec)
        index = label_feature(model, sae, pos, neg, opts.ctx_len)
        return Direction.from_sae(sae, index, name=f"SAE feature {index} ({feature})")
    if kind == "das":
        return Direction.from_das(rest)
    if kind == "neuron" and "@" in rest:
        label, layer = _at(rest, kind)
        if not layer.isdigit():
            raise ValueError(f"{spec!r}: write neuron:LABEL@LAYER, e.g. neuron:french@5")
        pos, neg = _contrast(train, label, "", spec)
        name = label_neuron(model, pos, neg, int(layer), opts.ctx_len)
        return Direction.from_neuron(model, name, name=f"{name} ({label})")
    if kind == "neuron":
        return Direction.from_neuron(model, rest)
    if kind in ("probe", "mean_diff"):
        label, site = _at(rest, kind)
        label, _, other = label.partition("-")
        pos, neg = _contrast(train, label, other, spec)
        vs = other or "rest"
        if kind == "mean_diff":
            return Direction.mean_difference(model, pos, neg, site, opts.ctx_len, name=f"mean {label} - {vs}")
        probe = fit_probe(model, pos, neg, site, k=opts.probe_k, seed=opts.seed)
        return Direction.from_probe(probe, site, name=f"probe {label} vs {vs} (k={opts.probe_k})")
    raise ValueError(f"direction spec {spec!r}: start with sae:, das:, neuron:, probe: or mean_diff:")


def run_steer(model, opts: SteerOptions, model_name: str = "", progress: bool = True):
    """Sweep every direction of `opts` and write the run folder. Returns (results, run folder)."""
    from ..data.corpus import load_corpus
    from ..features.sae import load_sae
    from .direction import fit_probe
    from .result import save_run
    from .sweep import check_scales, sweep
    from .target import Target

    scales = check_scales(opts.scales)
    chosen = [t for t in (opts.target_tokens, opts.target_label, opts.target_probe, opts.ioi or None) if t]
    if len(chosen) > 1:
        raise ValueError("give one target: --target-tokens, --target-label, --target-probe or --ioi")
    train, test = defaultdict(list), defaultdict(list)
    for doc in load_corpus(opts.corpus, labels=opts.labels):
        side = train if doc.split == "train" else test
        if len(side[doc.label]) < opts.n_docs:
            side[doc.label].append(doc.text)
    if not test:
        raise ValueError(
            "the corpus has no test documents for the reference text; rebuild it with a test split"
        )
    prompts = opts.prompt or DEFAULT_PROMPTS
    target = None
    if opts.ioi:
        from ..data.tasks import ioi

        task = ioi(model, n=opts.ioi, split="test", seed=opts.seed)
        prompts = task.clean_prompts
        target = Target.logit_difference(
            task.answer.tolist(), task.wrong.tolist(), name="logit(IO) - logit(S)"
        )
    elif opts.target_tokens:
        target = Target.next_tokens(opts.target_tokens)
    elif opts.target_label:
        target = Target.corpus_label(opts.target_label)
    elif opts.target_probe:
        label, site = _at(opts.target_probe, "--target-probe")
        pos, neg = _contrast(train, label, "", "--target-probe")
        probe = fit_probe(model, pos, neg, site, k=opts.probe_k, seed=opts.seed)
        target = Target.probe_score(probe, site, name=f"probe {label} at {site}")
    saes = [load_sae(path) for path in opts.sae or []]
    results = []
    for spec in opts.direction:
        direction = parse_direction(model, spec, train, opts)
        results.append(
            sweep(
                model,
                direction,
                None,
                scales,
                prompts,
                dict(test),
                target=target,
                saes=saes,
                ablation=opts.ablation,
                relative=not opts.natural,
                ctx_len=opts.ctx_len,
                n_contexts=opts.n_contexts,
                max_new_tokens=opts.max_new_tokens,
                n_generate=opts.n_generate,
                progress=progress,
            )
        )
    return results, save_run(results, Path(opts.out), model_name)

"""The `lmscope` command. Thin: it parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="hub id, local HF folder or .gguf file (default: the bundled SmolLM2-135M-Instruct)",
    )


def _cmd_info(args) -> None:
    from .model import cache_root, load
    from .tour import describe

    model = load(args.model)
    print(describe(model))
    if model.adapter.notes:
        print(f"notes        {model.adapter.notes}")
    print(f"cache        {cache_root()}")


def _cmd_sites(args) -> None:
    from .model import load
    from .model.sites import site_shape

    model = load(args.model)
    names = model.resolve_sites([args.filter]) if args.filter else model.sites
    for name in names:
        print(f"{name:32s} {site_shape(model.cfg, name)}")


def _cmd_run(args) -> None:
    import torch

    from .model import load
    from .tour import top_predictions

    if not args.text.strip():
        raise ValueError('empty prompt: give some text, e.g. lmscope run "The capital of France is"')
    model = load(args.model)
    print("tokens: " + " | ".join(model.to_str_tokens(args.text)))
    with torch.no_grad():
        logits = model(args.text)
    for text, p in top_predictions(model, logits[0], args.top_k):
        print(f"  {text!r:>16}  {p:.4f}")


def _cmd_tour(args) -> None:
    from .tour import run_tour

    run_tour(args.model, top_k=args.top_k, root=args.out, serve=not args.no_serve, port=args.port)


def _cmd_ioi(args) -> None:
    from .causal.ioi_report import write_ioi_report
    from .model import load

    if args.n < 2:
        raise ValueError("--n must be at least 2 prompt pairs")
    model = load(args.model)
    report, path = write_ioi_report(model, args.out, n=args.n, n_eval=args.n_eval, seed=args.seed)
    for row in report.roles:
        print(f"  {row['role']:20s} head {row['head']}")
    agreement = report.atp_agreement["attn.z per head"]["spearman"]
    print(f"attribution vs exact (heads): Spearman {agreement:.2f}")
    print(f"wrote {path}")


def _cmd_explore(args) -> None:
    from .explorer import export_page, serve

    if args.export:
        print(f"wrote {export_page(args.run_dir, args.export, args.out, model=args.model)}")
    else:
        serve(args.run_dir, host=args.host, port=args.port, model=args.model)


def _cmd_export(args) -> None:
    from .explorer import export_page

    print(f"wrote {export_page(args.run_dir, args.page, args.out, model=args.model)}")


def _cmd_das(args) -> None:
    from .causal.das_report import run_das_audit
    from .model import load

    model = load(args.model)
    readers = args.readers.split(",") if args.readers else None
    res = run_das_audit(
        model,
        args.site,
        args.out,
        n=args.n,
        n_test=args.n_test,
        k=args.k,
        epochs=args.epochs,
        lr=args.lr,
        readers=readers,
        controls=not args.no_controls,
        subspace=getattr(args, "subspace", None),
        seed=args.seed,
        model_name=args.model or "SmolLM2-135M-Instruct",
    )
    if res.das is not None:
        held = res.das.held_out
        print(
            f"DAS held out: IIA {held.iia:.2f}, logit difference lost {held.fldd:.0%}, flipped {held.flipped:.0%}"
        )
    for row in res.audit.table():
        print(
            f"  {row['patch']:18s} LD {row['logit_diff']:+.2f}  lost {row['fldd']:6.0%}  flipped {row['flipped']:4.0%}"
        )
    print(f"verdict: {res.audit.verdict}")
    for reason in res.audit.reasons:
        print(f"  - {reason}")
    print(f"wrote {res.run_dir / 'report.html'}")


def _das_args(p, audit: bool) -> None:
    _model_arg(p)
    p.add_argument("--site", required=True, help="e.g. blocks.21.resid_post or blocks.21.mlp.post")
    if audit:
        p.add_argument(
            "--subspace",
            required=True,
            help="a DAS run folder, its subspace.safetensors, or mean_difference / probe / gradient",
        )
    p.add_argument("--readers", help="reader heads of a residual site, e.g. 23.0.q,23.1.q,23.2.q")
    p.add_argument("--n", type=int, default=200, help="training prompt pairs (default 200)")
    p.add_argument("--n-test", type=int, default=100, help="held-out prompt pairs (default 100)")
    p.add_argument("--k", type=int, default=1, help="subspace dimension (default 1)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--no-controls", action="store_true", help="skip the random-weight search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="das_run" if not audit else "audit_run", help="run folder to write")
    p.set_defaults(fn=_cmd_das)


def _cmd_corpus(args) -> None:
    from .data.corpus import build_corpus, corpus_summary, default_corpus_dir
    from .data.sources import builtin_sources, jsonl_file, text_files

    if args.action == "sources":
        for src in builtin_sources():
            print(
                f"{src.name:18s} {'ok' if src.available else src.missing}"
                + (f"  -> {src.install}" if src.install else "")
            )
        return
    labels = args.labels.split(",") if args.labels else None
    extra = []
    for spec in args.text or []:
        label, sep, folder = spec.partition("=")
        if not sep:
            raise ValueError(f"--text takes LABEL=FOLDER, got {spec!r}")
        extra.append(text_files(folder, label))
    extra += [jsonl_file(path) for path in args.jsonl or []]
    sources = extra if args.no_builtin else [*builtin_sources(), *extra] if extra else None
    out = build_corpus(
        args.out or default_corpus_dir(),
        labels=labels,
        max_docs_per_label=args.max_docs,
        max_chars=args.max_chars,
        test_fraction=args.test_fraction,
        seed=args.seed,
        sources=sources,
        workers=args.workers,
    )
    print(corpus_summary(out))
    print(f"wrote {out}")


def _corpus_args(sub) -> None:
    p = sub.add_parser("corpus", help="build a labelled text corpus from local man pages and source code")
    p.add_argument(
        "action", choices=["build", "sources"], help="build: write a corpus; sources: list what is here"
    )
    p.add_argument("--out", default=None, help="corpus folder (default: <cache>/corpora/default)")
    p.add_argument("--labels", help="comma-separated, e.g. english,french,python (default: all present)")
    p.add_argument("--max-docs", type=int, default=400, help="documents per label at most (default 400)")
    p.add_argument("--max-chars", type=int, default=4000, help="characters per document at most")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="parallel man-page renders (default 2)")
    p.add_argument("--text", action="append", metavar="LABEL=FOLDER", help="add your .txt files (repeatable)")
    p.add_argument(
        "--jsonl", action="append", metavar="FILE", help='add a JSONL of {"text", "label"} (repeatable)'
    )
    p.add_argument("--no-builtin", action="store_true", help="use only --text/--jsonl sources")
    p.set_defaults(fn=_cmd_corpus)


def _cmd_harvest(args) -> None:
    from .data.store import harvest_corpus
    from .model import cache_root, load

    model = load(args.model)
    store = harvest_corpus(
        model,
        args.sites.split(","),
        args.out or cache_root() / "stores" / "default",
        corpus=args.corpus,
        split=None if args.split == "all" else args.split,
        labels=args.labels.split(",") if args.labels else None,
        ctx_len=args.ctx_len,
        max_contexts=args.max_contexts,
        dtype=args.dtype,
        batch_size=args.batch_size,
        shard_tokens=args.shard_tokens,
        resume=not args.restart,
    )
    print(f"{store.n_tokens} tokens x {len(store.sites)} sites in {store.n_shards} shards: {store.path}")


def _harvest_args(sub) -> None:
    p = sub.add_parser("harvest", help="store activations of sites over a corpus (sharded, resumable)")
    _model_arg(p)
    p.add_argument("--sites", required=True, help="comma-separated names or globs, e.g. 'blocks.*.mlp.post'")
    p.add_argument("--corpus", default=None, help="corpus folder (default: <cache>/corpora/default)")
    p.add_argument("--split", default="train", choices=["train", "test", "all"])
    p.add_argument("--labels", help="comma-separated labels to keep (default: all)")
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--max-contexts", type=int, default=None, help="stop after this many contexts")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-tokens", type=int, default=65536)
    p.add_argument("--restart", action="store_true", help="start over instead of resuming --out")
    p.add_argument("--out", default=None, help="store folder (default: <cache>/stores/default)")
    p.set_defaults(fn=_cmd_harvest)


def _cmd_sae(args) -> None:
    from .features.sae.run import sae_command

    print(
        sae_command(
            args.action,
            args.run_dir or args.out,
            args.model,
            site=args.site,
            arch=args.arch,
            k=args.k,
            l1=args.l1,
            expansion=args.expansion,
            tokens=args.tokens,
            batch_size=args.batch_size,
            lr=args.lr,
            dead_tokens=args.dead_tokens,
            seed=args.seed,
            store=args.store,
            corpus=args.corpus,
            dataset=args.dataset,
            eval_dataset=args.eval_dataset,
            n_contexts=args.n_contexts,
            n_tokens=args.n_tokens,
            ablate=args.ablate,
        )
    )


def _sae_args(sub) -> None:
    p = sub.add_parser("sae", help="sparse autoencoders: train, evaluate, feature cards -> run folder")
    p.add_argument("action", choices=["train", "eval", "features"])
    p.add_argument("run_dir", nargs="?", default=None, help="the run folder (or use --out)")
    _model_arg(p)
    p.add_argument("--out", default=None, help="the run folder (same as RUN_DIR)")
    p.add_argument("--site", help="train: the site to read, e.g. blocks.12.resid_post or blocks.12.mlp.post")
    p.add_argument("--arch", default="topk", choices=["topk", "batchtopk", "standard"])
    p.add_argument("--k", type=int, default=32, help="topk/batchtopk: active features per token")
    p.add_argument("--l1", type=float, default=None, help="standard: the L1 coefficient (default 5)")
    p.add_argument("--expansion", type=int, default=8, help="features per input dimension (default 8)")
    p.add_argument("--tokens", default="2M", help="training tokens, e.g. 500k or 2M (default 2M)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--dead-tokens", default="1M", help="a feature silent this long is dead (default 1M)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", help="an activation store folder holding the site (else run the model)")
    p.add_argument("--corpus", help="corpus folder (default: <cache>/corpora/default)")
    p.add_argument("--dataset", help="a saved TokenDataset to train on (instead of the corpus's train split)")
    p.add_argument(
        "--eval-dataset", help="a saved TokenDataset to evaluate on (default: the corpus's test split)"
    )
    p.add_argument("--n-contexts", type=int, default=64, help="eval: contexts to run (default 64)")
    p.add_argument("--n-tokens", type=int, default=200_000, help="features: tokens to scan (default 200k)")
    p.add_argument("--ablate", type=int, default=8, help="features: densest features to ablate (default 8)")
    p.set_defaults(fn=_cmd_sae)


def _cmd_lens(args) -> None:
    from .circuits.lens import TrainConfig
    from .circuits.lens_report import DEFAULT_PROMPT, write_lens_run
    from .model import load

    model = load(args.model)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    out = write_lens_run(
        model,
        args.out,
        prompt=args.prompt or DEFAULT_PROMPT,
        train=args.train,
        train_tokens=args.tokens,
        eval_tokens=args.eval_tokens,
        lens_dir=args.lens,
        corpus=args.corpus,
        cfg=cfg,
        ctx_len=args.ctx_len,
    )
    print(f"wrote {out / 'report.html'}")


def _lens_args(sub) -> None:
    p = sub.add_parser("lens", help="logit lens and tuned lens: KL and rank per layer, a prompt's picture")
    _model_arg(p)
    p.add_argument("--prompt", help="the prompt to picture (default: an IOI sentence)")
    p.add_argument("--train", action="store_true", help="train a tuned lens on corpus text (saved in --out)")
    p.add_argument("--lens", help="a run folder holding a trained tuned lens to evaluate")
    p.add_argument("--tokens", type=int, default=32768, help="training tokens to cache (default 32768)")
    p.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens (default 2048)")
    p.add_argument("--ctx-len", type=int, default=128, help="tokens per context (default 128)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128, help="tokens per training step")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (decays linearly to 0)")
    p.add_argument("--corpus", help="corpus folder (default: the default corpus, else Python stdlib files)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="lens_run", help="run folder to write (default lens_run)")
    p.set_defaults(fn=_cmd_lens)


def _cmd_circuits(args) -> None:
    from .circuits.circuits_report import write_circuits_run
    from .model import load

    model = load(args.model)
    heads = [h for h in args.heads.split(",") if h] if args.heads else []
    tokens = [t for t in args.tokens.split(",") if t] if args.tokens else None
    out = write_circuits_run(model, args.out, heads=heads, tokens=tokens, offset=args.offset)
    print(f"wrote {out / 'report.html'}")


def _circuits_args(sub) -> None:
    p = sub.add_parser("circuits", help="QK/OV circuits, copying scores, composition scores, virtual weights")
    _model_arg(p)
    p.add_argument("--heads", help="heads to look at closely, e.g. 23.0,23.1,24.4")
    p.add_argument(
        "--tokens",
        help="comma-separated single tokens for the restricted circuits, as they appear in text (mid-sentence "
        "words start with a space: ' Mary, John'); default: 16 first names, also seen in IOI prompts",
    )
    p.add_argument("--offset", type=int, default=0, help="relative position for rotary QK circuits")
    p.add_argument("--out", default="circuits_run", help="run folder to write (default circuits_run)")
    p.set_defaults(fn=_cmd_circuits)


def _int_list(text: str | None) -> list[int] | None:
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


def _cmd_probe(args) -> None:
    from .features.probe_report import run_probe
    from .model import load

    if args.bigram in ("auto", "none"):
        bigram = None if args.bigram == "none" else "auto"
    else:
        first, sep, second = args.bigram.partition("|")
        if not sep:
            raise ValueError(
                f"--bigram takes 'FIRST|SECOND' (e.g. ' standard| output'), auto or none; got {args.bigram!r}"
            )
        bigram = (first, second)
    result = run_probe(
        load(args.model),
        args.out,
        corpus=args.corpus,
        labels=args.labels.split(",") if args.labels else None,
        layers=_int_list(args.layers),
        ks=_int_list(args.k),
        method=args.method,
        n_train=args.n_train,
        n_test=args.n_test,
        ctx_len=args.ctx_len,
        bigram=bigram,
        seed=args.seed,
    )
    for feature, s in result["summary"].items():
        print(
            f"  {feature:24s} best 1-sparse: L{s['best_layer_k1']} N{s['best_neuron_k1']} F1 {s['best_f1_k1']:.3f}"
            f" (rotated {s['rotated_f1_k1']:.3f})"
        )
    print(f"wrote {args.out}")


def _cmd_neurons(args) -> None:
    from .features.neuron_report import run_neurons
    from .model import load

    result = run_neurons(
        load(args.model),
        args.out,
        corpus=args.corpus,
        labels=args.labels.split(",") if args.labels else None,
        layers=_int_list(args.layers),
        n_train=args.n_train,
        n_test=args.n_test,
        ctx_len=args.ctx_len,
        per_feature=args.per_feature,
        n_ablate=args.n_ablate,
        ablation_docs=args.ablation_docs,
        seed=args.seed,
        from_probe=args.from_probe,
    )
    for name, e in result["ablations"].items():
        print(
            f"  zero {name:12s} ({e['feature']}): loss {e['in_context']:+.4f} on {e['feature']} text, "
            f"{e['out_of_context']:+.4f} on the rest"
        )
    print(f"wrote {args.out}")


def _probe_args(sub) -> None:
    for name, help_text in (
        (
            "probe",
            "sparse probes over layers x k on a labelled corpus -> run folder (report.html, probe.json)",
        ),
        (
            "neurons",
            "the best neurons per label: unit cards, vocabulary projections, ablations -> run folder",
        ),
    ):
        p = sub.add_parser(name, help=help_text)
        _model_arg(p)
        p.add_argument(
            "--corpus", default=None, help="corpus folder (default: the default corpus, built if missing)"
        )
        p.add_argument(
            "--labels", help="comma-separated labels, e.g. english,french,german,python (default: all)"
        )
        p.add_argument("--layers", help="e.g. '0-29' or '4,8,12' (default: every layer)")
        p.add_argument("--n-train", type=int, default=150, help="train documents per label (default 150)")
        p.add_argument("--n-test", type=int, default=50, help="test documents per label (default 50)")
        p.add_argument("--ctx-len", type=int, default=128, help="tokens read per document (default 128)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", default=f"{name}_run", help=f"run folder to write (default {name}_run)")
        if name == "probe":
            p.add_argument("--k", default="1,2,4,8,16,32,64", help="sparsity levels (default 1,2,4,...,64)")
            p.add_argument("--method", default="mean_diff", choices=["mean_diff", "l1", "adaptive", "mip"])
            p.add_argument(
                "--bigram", default="auto", help="token-level feature 'FIRST|SECOND', auto or none"
            )
            p.set_defaults(fn=_cmd_probe)
        else:
            p.add_argument(
                "--per-feature",
                type=int,
                default=3,
                help="neurons per feature: cards + ablations (default 3)",
            )
            p.add_argument("--n-ablate", type=int, default=1, help="best neurons zeroed together (default 1)")
            p.add_argument(
                "--ablation-docs", type=int, default=12, help="test documents per label for ablations"
            )
            p.add_argument("--from-probe", default=None, help="a probe run folder whose activations to reuse")
            p.set_defaults(fn=_cmd_neurons)


def _cmd_toy(args) -> None:
    from pathlib import Path

    from .toy import run_toy, save_toy_run

    if Path(args.out).is_file():  # before training, not after
        raise ValueError(f"--out {args.out} is a file; give a folder for the run")
    recipe = {"steps": 2000, "batch_size": 512, "lr": 1e-2, "schedule": "cosine"} if args.fast else {}
    for key in ("steps", "batch_size", "lr"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    results = run_toy(
        n_features=args.n,
        n_hidden=args.m,
        sparsities=args.sparsity,
        importance=args.importance,
        n_seeds=args.seeds,
        phase=not args.no_phase,
        compute=not args.no_compute,
        seed=args.seed,
        device=args.device,
        **recipe,
    )
    for row in results.relu.measures():
        print(f"  S={row['sparsity']:<6g} ReLU represents {row['n_represented']:2d} of {args.n} features")
    if results.phase is not None:
        print(f"phase diagram: {results.phase.counts()}")
    print(f"wrote {save_toy_run(results, args.out)}")


def _toy_args(sub) -> None:
    from .toy.sweep import PAPER_SPARSITIES

    p = sub.add_parser("toy", help="toy models of superposition (Elhage et al. 2022) -> run folder")
    p.add_argument("--n", type=int, default=5, help="features (default 5)")
    p.add_argument("--m", type=int, default=2, help="hidden dimensions (default 2)")
    p.add_argument(
        "--sparsity", type=float, nargs="+", default=list(PAPER_SPARSITIES), help="sparsities S in [0, 1)"
    )
    p.add_argument("--importance", type=float, default=0.9, help="importance decay: I_i = d**i (default 0.9)")
    p.add_argument(
        "--seeds", type=int, default=2, help="replicates per sparsity, best kept (default 2; phase: >= 6)"
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (default 10000, the paper's)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default 1024)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    p.add_argument(
        "--fast", action="store_true", help="2000 steps, batch 512, lr 1e-2 with cosine decay: ~10x quicker"
    )
    p.add_argument("--no-phase", action="store_true", help="skip the 2-feature phase diagram")
    p.add_argument("--no-compute", action="store_true", help="skip the |x| computation model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--out", default="toy_run", help="run folder to write (default toy_run)")
    p.set_defaults(fn=_cmd_toy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmscope", description="Mechanistic interpretability workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="the model's architecture and where lmscope caches it")
    _model_arg(p)
    p.set_defaults(fn=_cmd_info)
    p = sub.add_parser("sites", help="list every site (hookable activation) with its shape")
    _model_arg(p)
    p.add_argument("--filter", help="a glob such as 'blocks.3.*' or 'blocks.*.attn.z'")
    p.set_defaults(fn=_cmd_sites)
    p = sub.add_parser("run", help="run a prompt and show the top next-token predictions")
    _model_arg(p)
    p.add_argument("text")
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(fn=_cmd_run)
    p = sub.add_parser(
        "ioi", help="IOI circuit analysis: patching, attribution, path patching -> ioi_report.html"
    )
    _model_arg(p)
    p.add_argument("--n", type=int, default=20, help="prompt pairs for the patching sweeps (default 20)")
    p.add_argument("--n-eval", type=int, default=100, help="prompt pairs for accuracy (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="ioi_report.html")
    p.set_defaults(fn=_cmd_ioi)
    p = sub.add_parser(
        "explore", help="browse run folders (neurons, SAE features, probes, reports) in a browser"
    )
    p.add_argument("run_dir", nargs="?", default=".", help="a run folder or a folder of them (default: here)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--model", default=None, help="model for the live box (default: the one each run names)")
    p.add_argument("--export", metavar="PAGE", help="write PAGE (e.g. /runs/ID/units/12) to --out instead")
    p.add_argument("--out", default="lmscope-page.html", help="file for --export (default lmscope-page.html)")
    p.set_defaults(fn=_cmd_explore)
    p = sub.add_parser("export", help="write one explorer page as a self-contained HTML file")
    p.add_argument("run_dir", help="a run folder or a folder of them")
    p.add_argument("page", help="the page's address, e.g. / or /runs/ID or '/runs/ID/units/12?text=hello'")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--model", default=None, help="model for a page with ?text= (default: the run's own)")
    p.set_defaults(fn=_cmd_export)
    p = sub.add_parser("das", help="DAS on IOI's name-order signal + the illusion audit -> run folder")
    _das_args(p, audit=False)
    p = sub.add_parser("audit", help="audit a saved or candidate subspace for the MLP-in-the-middle illusion")
    _das_args(p, audit=True)
    _corpus_args(sub)
    _harvest_args(sub)
    _lens_args(sub)
    _sae_args(sub)
    _circuits_args(sub)
    _probe_args(sub)
    _toy_args(sub)
    p = sub.add_parser(
        "tour", help="the guided tour: corpus, neurons, SAE, IOI, DAS audit, then the explorer"
    )
    _model_arg(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--out", default=None, help="where the tour's run folders go (default: <cache>/tour)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--no-serve", action="store_true", help="stop after the stages instead of serving")
    p.set_defaults(fn=_cmd_tour)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, KeyError, FileNotFoundError, OSError, NotImplementedError) as err:
        print(f"lmscope {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`lmscope graph`: one prompt's attribution graph, pruned, checked by interventions, written as a run folder.

out/  graph.json (pruned nodes and edges), attribution.safetensors (all nodes, the computed rows, biases),
      verification.json, report.html, run.json (kind "graph")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..report import save_page
from ..runs import write_json, write_run
from .attribution import attribute
from .prune import prune
from .replacement import build_replacement
from .report import graph_html
from .transcoders import TranscoderSet
from .verify import top_features, verify


@dataclass
class GraphOptions:
    prompt: str = field(default="", metadata={"positional": True, "help": "the prompt to trace"})
    target: str = field(
        default="", metadata={"help": "the next token whose logit is traced (one token, e.g. ' Mary')"}
    )
    transcoders: str = field(
        default="", metadata={"help": "a transcoder folder (lmscope.graphs.train_transcoders)"}
    )
    out: str = field(default="runs/graph", metadata={"help": "run folder to write"})
    nodes: int = field(default=50, metadata={"help": "feature and error nodes kept after pruning"})
    edge_threshold: float = field(default=0.98, metadata={"help": "share of the edge score kept"})
    max_feature_nodes: int = field(
        default=1024, metadata={"help": "features whose incoming edges are computed"}
    )
    max_prompt_tokens: int = field(
        default=64, metadata={"help": "longest prompt accepted (tokens, BOS included)"}
    )
    verify_top: int = field(
        default=10, metadata={"help": "top features ablated in the real model to check the graph"}
    )
    batch_size: int = field(default=64, metadata={"help": "targets per backward pass"})


def target_id(model, target: str) -> int:
    """The token id of `target`, which must be exactly one token of the model's tokenizer."""
    if not target:
        raise ValueError("give the target token (--target), e.g. ' Mary' (with its leading space)")
    ids = model.tokenize(target, prepend_bos=False)["input_ids"][0].tolist()
    if len(ids) != 1:
        pieces = [model.to_string([i]) for i in ids]
        raise ValueError(
            f"the target {target!r} is {len(ids)} tokens {pieces}, not one; pick a single token "
            "(a leading space often makes a word one token)"
        )
    return ids[0]


def prompt_tokens(model, prompt: str, limit: int) -> torch.Tensor:
    ids = model.to_tokens(prompt, prepend_bos=True)[0]
    if len(ids) > limit:
        raise ValueError(
            f"the prompt is {len(ids)} tokens, over the limit of {limit} (--max-prompt-tokens); graphs grow "
            "with the square of the nodes, so shorten the prompt or raise the limit knowingly"
        )
    return ids


def trace(model, tcs: TranscoderSet, prompt: str, target: str, opts: GraphOptions | None = None) -> dict:
    """Attribute, prune and verify. Returns {"attribution", "pruned", "verification", "replacement"}."""
    opts = opts or GraphOptions()
    token = target_id(model, target)
    tokens = prompt_tokens(model, prompt, opts.max_prompt_tokens)
    rep = build_replacement(model, tcs, tokens)
    str_tokens = model.to_str_tokens(tokens)
    graph = attribute(rep, token, opts.max_feature_nodes, opts.batch_size, str_tokens)
    pruned = prune(graph, opts.nodes, opts.edge_threshold)
    checked = top_features(graph, pruned.kept, pruned.influence, opts.verify_top)
    verification = verify(rep, graph, checked)
    return {"attribution": graph, "pruned": pruned, "verification": verification, "replacement": rep}


def write_graph_run(model, opts: GraphOptions) -> Path:
    from safetensors.torch import save_file

    if not opts.transcoders:
        raise ValueError("give the transcoder folder (--transcoders PATH)")
    tcs = TranscoderSet.load(opts.transcoders, model=model)
    result = trace(model, tcs, opts.prompt, opts.target, opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    graph, pruned, ver = result["attribution"], result["pruned"], result["verification"]
    n = graph.nodes
    save_file(
        {
            "layer": n.layer, "pos": n.pos, "feature": n.feature, "activation": n.activation, "pre": n.pre,
            "targets": graph.targets, "rows": graph.rows.contiguous(), "bias": graph.bias,
        },
        str(out / "attribution.safetensors"),
    )  # fmt: skip
    summary = {"prompt": opts.prompt, "target": opts.target, "logit": float(n.pre[-1]), **pruned.to_dict()}
    write_json(out / "graph.json", summary)
    write_json(out / "verification.json", ver.to_dict())
    save_page(graph_html(pruned, ver, opts.prompt, opts.target), out / "report.html")
    write_run(out, "graph", f"Attribution graph: {opts.prompt!r} -> {opts.target!r}", model=model.cfg.name,
              transcoders=str(opts.transcoders), correlations=ver.correlations)  # fmt: skip
    return out


__all__ = ["GraphOptions", "prompt_tokens", "target_id", "trace", "write_graph_run"]

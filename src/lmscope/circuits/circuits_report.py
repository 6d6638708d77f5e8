"""The run folder of `lmscope circuits`: copying scores of every head, composition scores of every head
pair, and a close look at chosen heads, as JSON + safetensors and a self-contained report.html."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save

from ..model.sites import format_component, head_input, parse_component
from ..report import Text, bar_chart, heatmap, page, save_page, table
from ..runs import write_atomic, write_json, write_run
from .composition import KINDS, composition_scores, virtual_weights
from .qkov import (
    copying_score_of,
    copying_scores,
    ov_circuit,
    qk_circuit,
    token_ids,
    token_residuals,
)
from .text import describe_source, text_contexts


@dataclass
class CircuitsOptions:
    """What `lmscope circuits` sets (write_circuits_run's defaults are these)."""

    heads: list[str] | None = field(
        default=None,
        metadata={"sep": ",", "help": "heads to look at closely, e.g. blocks.23.attn.z[0],L24H4"},
    )
    tokens: list[str] | None = field(
        default=None,
        metadata={
            "sep": ",",
            "help": "comma-separated single tokens for the restricted circuits, as they appear in text "
            "(mid-sentence words start with a space: ' Mary, John'); default: 16 first names, also seen in "
            "IOI prompts",
        },
    )
    offset: int = field(default=0, metadata={"help": "relative position for rotary QK circuits"})
    out: str = field(default="circuits_run", metadata={"help": "run folder to write"})


def default_tokens(model) -> list[str]:
    """Up to 16 first names that are one token mid-sentence (" Mary"), from the IOI task's list."""
    from ..data.tasks.ioi import NAMES

    return [f" {name}" for name in NAMES if _is_single_token(model, f" {name}")][:16]


def _is_single_token(model, text: str) -> bool:
    return len(model.tokenizer(text, add_special_tokens=False)["input_ids"]) == 1


def context_inputs(model, ids: torch.Tensor, names: bool) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Text in which the tokens occur, for their in-context residuals: IOI prompts for first names, else
    corpus text. -> (token ids [n, pos], attention mask or None, a description)."""
    if names:
        from ..data.tasks.ioi import ioi

        task = ioi(model, n=200, split="all", seed=0)
        return task.clean, task.attention_mask, "200 IOI prompts"
    ctx_len = min(128, model.cfg.n_ctx)
    return (
        text_contexts(model, 16384, split="train", ctx_len=ctx_len),
        None,
        f"16k tokens of {describe_source()}",
    )


@torch.no_grad()
def top_neuron_writers(model, head: str, part: str, k: int = 10) -> list[dict]:
    """The k neurons of earlier MLP layers with the largest virtual weights into a head's q, k or v input:
    [{"neuron": "blocks.L.mlp.post[N]", "norm": |W_out[n] N W_part^h|}, ...] (weights only; activations
    scale them). head: a head's name, e.g. 'blocks.7.attn.z[3]'."""
    comp = parse_component(head, model.cfg, kinds=("attn.z",), indexed=True, what="head")
    reader = head_input(model.cfg, comp.layer, comp.index, part)
    rows = []
    for earlier in range(comp.layer):
        norms = virtual_weights(model, format_component(earlier, "mlp"), reader).norm(dim=-1)  # [d_mlp]
        top = norms.topk(min(k, len(norms)))
        rows += [
            {"neuron": format_component(earlier, "mlp.post", int(i)), "norm": float(v)}
            for v, i in zip(top.values, top.indices)
        ]
    return sorted(rows, key=lambda r: -r["norm"])[:k]


def write_circuits_run(
    model,
    out_dir: str | Path,
    *,
    heads: list[str],
    tokens: list[str] | None = None,
    offset: int = CircuitsOptions.offset,
) -> Path:
    """Copying scores of every head (whole vocabulary; `tokens` as embeddings and in context), composition
    scores of every head pair, and for each of `heads`: its OV and QK circuits on `tokens`, its composition
    with earlier heads and the earlier neurons with the largest virtual weights into it. `tokens` default to
    first names, seen in context in IOI prompts; other tokens are seen in corpus text where they occur.
    Writes copying.json, composition.safetensors, composition.json, heads.json, report.html, run.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = token_ids(model, tokens or default_tokens(model))
    inputs, mask, where = context_inputs(model, ids, names=tokens is None)
    present = torch.tensor([int(t) for t in ids if bool((inputs == t).any())], dtype=torch.long)
    resid = token_residuals(model, inputs, present, mask) if len(present) else None
    decode = model.tokenizer.decode
    data = {
        "tokens": [decode([int(i)]) for i in ids],
        "context_tokens": [decode([int(i)]) for i in present],
        "context": where,
        "vocab": copying_scores(model),
        "tokens_scores": copying_scores(model, ids),
        "context_scores": copying_scores(model, present, resid=resid) if resid is not None else None,
    }
    comp = composition_scores(model)
    details = [_head_detail(model, spec, ids, present, resid, comp, offset, data) for spec in heads]
    write_json(out / "copying.json", {k: v.tolist() if torch.is_tensor(v) else v for k, v in data.items()})
    write_atomic(out / "composition.safetensors", save({k: comp.get(k).contiguous() for k in KINDS}))
    top = {kind: comp.top(kind, 20) for kind in KINDS}
    summary = {"baseline": comp.baseline, "baseline_std": comp.baseline_std, "top": top}
    write_json(out / "composition.json", summary)
    write_json(out / "heads.json", details)
    save_page(_page(model, data, comp, top, details, offset), out / "report.html")
    write_run(out, "circuits", "QK/OV circuits and composition", model=model.cfg.name, analysis="circuits",
              heads=[d["head"] for d in details], tokens=data["tokens"], offset=offset)  # fmt: skip
    return out


def _head_detail(model, spec: str, ids, present, resid, comp, offset: int, data: dict) -> dict:
    name = parse_component(spec, model.cfg, kinds=("attn.z",), indexed=True, what="head")
    layer, head = name.layer, name.index
    ov = ov_circuit(model, layer, head, ids, ids)  # [n, n]
    own = torch.arange(len(ids))
    detail = {
        "head": str(name),
        "layer": layer,
        "copying_vocab": float(data["vocab"][layer, head]),
        "copying_tokens": copying_score_of(ov),
        "self_top_tokens": float(
            (ov.argmax(1) == own).float().mean()
        ),  # share of tokens promoting themselves most
        "ov": ov.tolist(),
        "qk": qk_circuit(model, layer, head, ids, ids, offset=offset).tolist(),
        "writers": {
            kind: comp.get(kind)[:layer, :, layer, head].tolist() for kind in KINDS
        },  # [layer, n_heads]
        "inputs": {part: str(head_input(model.cfg, layer, head, part)) for part in ("q", "k", "v")},
        "neurons": {part: top_neuron_writers(model, name, part) for part in ("q", "k", "v")},
    }
    if resid is not None:
        ov_in_context = ov_circuit(model, layer, head, src_resid=resid[layer], dst_tokens=present)
        detail["copying_context"] = copying_score_of(ov_in_context)
        detail["self_top_context"] = float(
            (ov_in_context.argmax(1) == torch.arange(len(present))).float().mean()
        )
        detail["ov_context"] = ov_in_context.tolist()
    return detail


NOTE = """Weights only, except for the in-context circuits. OV circuit: the logit of each token (columns) added \
per unit of attention to each source token (rows): ln1 of the source, W_V W_O, the final norm's weight, W_U. \
QK circuit: the attention score (before 1/sqrt(d_head)) of a query token (rows) on a key token (columns) \
{offset_note}.

Direct path: the source is the token's bare embedding, as layer 0 sees it (exact there). In context: the \
source is the token's mean residual stream (resid_pre of the head's layer) where it occurs in {context}: \
what a late head actually reads at a token. The two can disagree, even in sign.

Copying score = sum(eigenvalues) / sum(|eigenvalues|) of the OV circuit: +1 when attending to a token raises \
that token's logit, -1 when it lowers it. Composition of a writer head (earlier layer) into a reader head: \
|W_OV1 W_QK2| / (|W_OV1| |W_QK2|) for Q, the transpose of W_QK2 for K, |W_OV1 W_OV2| / ... for V. Random \
matrices of these shapes score {baseline:.3f} +- {std:.4f} (about 1/sqrt(d_model) = {inv_sqrt:.3f}); the norms' \
scale cancels out of the ratio."""


def _grid(values, model, title: str):
    layers, heads = [str(i) for i in range(model.cfg.n_layers)], [str(h) for h in range(model.cfg.n_heads)]
    return heatmap(values, layers, heads, title=title, xlabel="head", ylabel="layer")


def _page(model, data: dict, comp, top: dict, details: list[dict], offset: int) -> str:
    c = model.cfg
    layers, labels = [str(i) for i in range(c.n_layers)], data["tokens"]
    note = NOTE.format(
        offset_note=f"at relative offset {offset} (rotary)" if offset else "with no rotary rotation (offset 0)",
        context=data["context"], baseline=comp.baseline, std=comp.baseline_std, inv_sqrt=c.d_model**-0.5,
    )  # fmt: skip
    copying = [_grid(data["vocab"], model, "direct path, whole vocabulary")]
    copying.append(_grid(data["tokens_scores"], model, f"direct path, {len(labels)} tokens"))
    if data["context_scores"] is not None:
        n = len(data["context_tokens"])
        copying.append(_grid(data["context_scores"], model, f"in context, {n} tokens"))
    rows = [
        {"head": d["head"]} | {k: d.get(k) for k in ("copying_vocab", "copying_tokens", "copying_context")}
        | {"self-top (direct)": d["self_top_tokens"], "self-top (context)": d.get("self_top_context")}
        for d in details
    ]  # fmt: skip
    sections = [("What this shows", Text(note)), ("Copying score per head", copying)]
    if rows:
        sections.append(
            ("Chosen heads (self-top: share of tokens whose OV row peaks on themselves)", table(rows))
        )
    for kind in KINDS:
        grid = comp.get(kind).nan_to_num(float("-inf")).amax(dim=(1, 3))  # [writer layer, reader layer]
        grid = grid.masked_fill(grid == float("-inf"), float("nan"))
        fig = heatmap(
            grid, layers, layers, xlabel="reader layer", ylabel="writer layer", center=None, cmap="sequential"
        )
        pairs = [
            {"writer": w, "reader": r, "score": s, "x baseline": s / comp.baseline}
            for w, r, s in top[kind][:10]
        ]
        sections.append(
            (f"{kind.upper()}-composition: strongest head pair per layer pair", [fig, table(pairs)])
        )
    for d in details:
        sections.append(
            (f"Head {d['head']}", _head_parts(d, labels, data["context_tokens"], layers, c.n_heads))
        )
    return page(f"Circuits: {c.name}", sections, subtitle="lmscope circuits")


def _head_parts(
    d: dict, labels: list[str], context_labels: list[str], layers: list[str], n_heads: int
) -> list:
    name, layer = d["head"], d["layer"]
    parts = [
        heatmap(
            d["ov"], labels, labels, title="OV circuit, direct path", xlabel="logit of", ylabel="attending to"
        )
    ]
    if "ov_context" in d:
        parts.append(heatmap(d["ov_context"], context_labels, context_labels, title="OV circuit, in context",
                             xlabel="logit of", ylabel="attending to"))  # fmt: skip
    parts.append(
        heatmap(d["qk"], labels, labels, title="QK circuit, direct path", xlabel="key", ylabel="query")
    )
    for kind in KINDS if layer > 0 else ():
        parts.append(heatmap(d["writers"][kind], layers[:layer], [str(h) for h in range(n_heads)],
                             title=f"{kind.upper()}-composition into {name}", xlabel="writer head",
                             ylabel="writer layer", center=None, cmap="sequential"))  # fmt: skip
    for part, neurons in d["neurons"].items():
        if neurons:
            title = f"neurons writing most into {d['inputs'][part]} (virtual weight norm)"
            parts.append(bar_chart([n["norm"] for n in neurons], [n["neuron"] for n in neurons], title=title))
    return parts

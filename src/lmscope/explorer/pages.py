"""Server-rendered HTML for the explorer: plain functions from data to one self-contained page each.

Every page inlines its CSS and its little JavaScript, so the same HTML works served and exported. In an
export (``export=True``) links to other pages become plain text and the live box is replaced by a note:
nothing in an exported page calls a server.
"""

from __future__ import annotations

import html
import json
import math
from urllib.parse import urlencode

import numpy as np

from ..report import histogram, line_chart
from .data import Run, Units
from .live import MAX_NEW_TOKENS, MAX_PROMPT_CHARS
from .static import CSS, JS

BEFORE, AFTER = 32, 8  # tokens of context shown around an example's peak
MAX_HIST_SAMPLES = 2_000_000  # histogram() takes values: saved counts are expanded up to this many


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def link(href: str, text: str, export: bool, cls: str = "") -> str:
    """An ``<a>`` to another explorer page; plain text in an export, which must not point at a server."""
    c = f' class="{cls}"' if cls else ""
    return f"<span{c}>{esc(text)}</span>" if export else f'<a href="{esc(href)}"{c}>{esc(text)}</a>'


def fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    v = float(value)
    return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:,.{digits}f}"


def fmt_density(d: object) -> str:
    if d is None or not math.isfinite(float(d)):
        return "–"
    d = float(d)
    if d <= 0:
        return "0 (dead)"
    return f"{100 * d:.3g}% (1 in {1 / d:,.0f})" if d < 0.01 else f"{100 * d:.3g}%"


def act_color(v: float, scale_max: float) -> str:
    """Background for a token: orange for positive activations, blue for negative (same as ``static.JS``)."""
    m = scale_max if scale_max and scale_max > 0 and math.isfinite(scale_max) else 1.0
    t = max(-1.0, min(1.0, v / m)) if math.isfinite(v) else 0.0
    if t >= 0:
        return f"rgba(249, 115, 22, {0.85 * t:.3f})"
    return f"rgba(37, 99, 235, {-0.85 * t:.3f})"


def shown_token(tok: str) -> str:
    return tok.replace("\n", "\u21b5").replace("\t", "\u21e5")


def token_spans(
    tokens: list[str],
    acts: list[float],
    scale_max: float,
    peak: int | None = None,
    prefix: str = "",
    suffix: str = "",
) -> str:
    """Tokens with their activation as background; hovering shows the value. ``prefix``/``suffix``: HTML
    placed inside the same line (the ellipses of a cut example)."""
    out = []
    for i, (tok, a) in enumerate(zip(tokens, acts)):
        a = float("nan") if a is None else float(a)
        cls = "tok peak" if i == peak else "tok"
        tip = f"{tok!r}  activation {a:.3f}"
        out.append(
            f'<span class="{cls}" style="background:{act_color(a, scale_max)}" data-act="{a:.4f}" '
            f'title="{esc(tip)}">{esc(shown_token(tok))}</span>'
        )
    return f'<div class="tokens">{prefix}{"".join(out)}{suffix}</div>'


def example_html(example: dict, scale_max: float) -> str:
    """One saved text example ({"tokens", "acts", "peak", "label"}), cut to a window around its peak."""
    tokens, acts = list(example.get("tokens", [])), list(example.get("acts", []))
    n = min(len(tokens), len(acts))
    if n == 0:
        return ""
    peak = example.get("peak")
    if not isinstance(peak, int) or not 0 <= peak < n:  # (None in acts is a NaN that JSON could not hold)
        peak = int(np.argmax(np.nan_to_num(np.asarray(acts[:n], dtype=float), nan=-np.inf)))
    lo, hi = max(0, peak - BEFORE), min(n, peak + AFTER + 1)
    label = example.get("label")
    meta = f'<span class="meta">{esc(label) + " · " if label else ""}{fmt(acts[peak])}</span>'
    pre = '<span class="ell">… </span>' if lo > 0 else ""
    post = '<span class="ell"> …</span>' if hi < n else ""
    return f'<div class="example">{meta}{token_spans(tokens[lo:hi], acts[lo:hi], scale_max, peak - lo, pre, post)}</div>'


def layout(
    title: str, body: str, crumbs: list[tuple[str, str | None]], export: bool, export_href: str = ""
) -> str:
    """A whole page: the top bar with breadcrumbs, then ``body``. Everything is inline."""
    nav = '<span class="sep">/</span>'.join(link(h, t, export) if h else esc(t) for t, h in crumbs)
    save = (
        ""
        if export or not export_href
        else f'<a class="export-link" href="{esc(export_href)}" download>save this page as HTML</a>'
    )
    note = (
        '<p class="note">A static export of the lmscope explorer: the live box and links need the server '
        "(<code>lmscope explore RUN_DIR</code>).</p>"
        if export
        else ""
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(title)} · lmscope explorer</title>",
            f"<style>{CSS}</style></head><body>",
            f'<header class="top"><span class="brand">lm<b>scope</b> explorer</span><nav>{nav}</nav>{save}</header>',
            f"<main>{note}{body}</main>",
            "" if export else f"<script>{JS}</script>",
            "</body></html>",
        ]
    )


def _when(run: Run) -> str:
    return run.created.replace("T", " ")[:19]  # ISO time to the second, as people read it


def error_page(status: int, message: str, export: bool = False) -> str:
    titles = {
        400: "Bad request",
        404: "Not found",
        405: "Method not allowed",
        409: "Conflict",
        413: "Too long",
        422: "Invalid input",
        500: "Something went wrong",
        503: "Unavailable",
    }
    heading = titles.get(status, "Error")
    body = (
        f'<div class="card error-page"><div class="code">{status}</div><h1>{esc(heading)}</h1>'
        f'<p class="error-box" id="error-message">{esc(message)}</p>'
        f"<p>{link('/', 'Back to the list of runs', export)}</p></div>"
    )
    return layout(heading, body, [("runs", "/"), (heading, None)], export)


# ---- index ----------------------------------------------------------------------------------------------


def index_page(runs: list[Run], root: str, export: bool = False) -> str:
    if not runs:
        body = (
            f'<h1>No runs yet</h1><p class="subtitle">No run folders (with a run.json) under {esc(root)}.</p>'
            '<div class="card">Runs are written by lmscope commands such as <code>lmscope tour</code>; '
            "point <code>lmscope explore</code> at the folder that holds them.</div>"
        )
        return layout("Runs", body, [("runs", None)], export)
    rows = []
    for run in sorted(runs, key=lambda r: (r.created, r.rel), reverse=True):
        rows.append(
            f'<tr><td><span class="badge {esc(run.kind)}">{esc(run.kind)}</span></td>'
            f"<td>{link(f'/runs/{run.id}', run.title, export)}</td><td>{esc(run.model)}</td>"
            f'<td class="muted">{esc(_when(run))}</td><td class="mono muted">{esc(run.rel)}</td></tr>'
        )
    body = (
        f'<h1>Runs</h1><p class="subtitle">{len(runs)} run folder{"s" if len(runs) != 1 else ""} under '
        f'<code>{esc(root)}</code></p><div class="card"><table id="runs"><thead><tr><th>kind</th><th>title</th>'
        f"<th>model</th><th>created</th><th>folder</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    return layout("Runs", body, [("runs", None)], export, "/?export=1")


# ---- a unit list ------------------------------------------------------------------------------------------


def _density_histogram(density: np.ndarray) -> str:
    alive = density[np.isfinite(density) & (density > 0)]
    if alive.size < 2:
        return ""
    fig = histogram(
        np.log10(alive), bins=40, xlabel="log10 density (fraction of tokens active)", ylabel="units"
    )
    n_dead = int(np.sum(density == 0))
    return f"<figure>{fig.svg}</figure><p class='muted'>{n_dead:,} units never active (dead)</p>"


def units_page(
    run: Run, units: Units, order: np.ndarray, page: int, per_page: int, params: dict, export: bool = False
) -> str:
    """The paged, sorted, filtered list of a run's neurons or features. ``order``: matching unit indices."""
    n_pages = max(1, math.ceil(len(order) / per_page))
    page = min(max(page, 1), n_pages)
    shown = order[(page - 1) * per_page : page * per_page]
    s = units.stats
    with_id, with_title = units.unit_kind == "neuron", s.titles is not None
    densest = max(float(np.nanmax(s.density)) if np.isfinite(s.density).any() else 0.0, 1e-12)
    rows = []
    for i in shown.tolist():
        d = float(s.density[i])
        bar = f'<span class="bar" style="width:{60 * d / densest:.1f}px"></span>' if math.isfinite(d) else ""
        cells = [f"<td class='num'>{link(f'/runs/{run.id}/units/{i}', str(i), export)}</td>"]
        cells += [f"<td class='mono'>{esc(units.id_of(i))}</td>"] if with_id else []
        cells += [f"<td>{esc(units.title(i))}</td>"] if with_title else []
        cells += [
            f"<td class='num'>{fmt_density(d)}</td><td>{bar}</td>",
            f"<td class='num'>{fmt(s.max_act[i])}</td><td class='num'>{fmt(s.mean_act[i])}</td>",
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = (
        '<th class="num">#</th>'
        + ("<th>id</th>" if with_id else "")
        + ("<th>title</th>" if with_title else "")
    )
    head += '<th class="num">density</th><th></th><th class="num">max act</th><th class="num">mean act</th>'
    unit_word = "feature" if units.unit_kind == "feature" else "neuron"

    def page_link(p: int, text: str | None = None) -> str:
        if p == page:
            return f'<span class="cur">{text or p}</span>'
        return link(f"/runs/{run.id}?{urlencode({**params, 'page': p})}", text or str(p), export)

    pages = sorted({1, n_pages, *range(max(1, page - 2), min(n_pages, page + 2) + 1)})
    pager, last = [], 0
    for p in pages:
        if p - last > 1:
            pager.append('<span class="ell">…</span>')
        pager.append(page_link(p))
        last = p
    sel = {
        k: " selected" if params.get("sort", "density") == k else ""
        for k in ("density", "max_act", "mean_act", "index")
    }
    desc = params.get("order", "desc") == "desc"
    filters = (
        ""
        if export
        else f"""<form class="filters" method="get" action="/runs/{esc(run.id)}">
<label>filter<input type="text" name="q" value="{esc(params.get("q", ""))}" placeholder="title, id or #"></label>
<label>min density<input type="number" step="any" min="0" max="1" name="min_density" value="{esc(params.get("min_density", ""))}"></label>
<label>max density<input type="number" step="any" min="0" max="1" name="max_density" value="{esc(params.get("max_density", ""))}"></label>
<label>sort by<select name="sort"><option value="density"{sel["density"]}>density</option>
<option value="max_act"{sel["max_act"]}>max activation</option><option value="mean_act"{sel["mean_act"]}>mean activation</option>
<option value="index"{sel["index"]}>index</option></select></label>
<label>order<select name="order"><option value="desc"{" selected" if desc else ""}>descending</option>
<option value="asc"{"" if desc else " selected"}>ascending</option></select></label>
<button type="submit">apply</button></form>"""
    )
    body = f"""<h1>{esc(run.title)} <span class="kind">· {esc(run.kind)}</span></h1>
<p class="subtitle">{len(units):,} {unit_word}s · model {esc(run.model or "?")} · {esc(_when(run))}</p>
<div class="toprow"><div class="card hist"><h2>Density of all {unit_word}s</h2>{_density_histogram(s.density)}</div>
{_meta_card(run)}</div>
<div class="card"><h2>{unit_word.title()}s</h2>{filters}
<p class="muted">{len(order):,} match · page {page} of {n_pages}</p>
<table id="units"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
<div class="pager">{"".join(pager)}</div></div>"""
    export_href = f"/runs/{run.id}?{urlencode({**params, 'page': page, 'export': 1})}"
    return layout(run.title, body, [("runs", "/"), (run.title, None)], export, export_href)


def _meta_card(run: Run) -> str:
    skip = {"kind", "title", "model", "created"}
    rows = "".join(
        f"<tr><td class='muted'>{esc(k)}</td><td class='mono'>{esc(_short_json(v))}</td></tr>"
        for k, v in run.record.items()
        if k not in skip
    )
    return f'<div class="card"><h2>Run</h2><table><tbody>{rows}</tbody></table></div>' if rows else ""


def _short_json(v: object, limit: int = 160) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


# ---- one unit ---------------------------------------------------------------------------------------------


def _hist_figure(card: dict) -> str:
    h = card.get("histogram") or {}
    edges, counts = np.asarray(h.get("edges", []), dtype=float), np.asarray(h.get("counts", []), dtype=float)
    if len(edges) != len(counts) + 1 or counts.sum() <= 0:
        return '<p class="muted">No histogram saved.</p>'
    note = ""
    total = counts.sum()
    if total > MAX_HIST_SAMPLES:  # histogram() counts values: hand it a scaled-down sample of the same shape
        counts = np.round(counts * MAX_HIST_SAMPLES / total)
        note = f'<p class="muted">counts scaled by {MAX_HIST_SAMPLES / total:.2g} to draw</p>'
    centers = (edges[:-1] + edges[1:]) / 2
    values = np.repeat(centers, counts.astype(np.int64))
    fig = histogram(values, bins=edges.tolist(), xlabel="activation", ylabel="tokens")
    return f'<figure id="histogram">{fig.svg}</figure>{note}'


def _value_rows(pairs: list, limit: int = 12, tokens: bool = True, signed: bool = False) -> str:
    """Rows of (label, value) with a bar as long as |value| relative to the largest: logit effects, ablation.
    Positive values are orange, negative blue."""
    rows = [
        (str(p[0]), p[1])
        for p in pairs[:limit]
        if isinstance(p, (list, tuple))
        and len(p) == 2
        and isinstance(p[1], (int, float))
        and math.isfinite(p[1])
    ]
    if not rows:
        return '<p class="muted">none saved</p>'
    top = max(abs(v) for _, v in rows) or 1.0
    out = []
    for label, v in rows:
        shown = esc(shown_token(label)) if tokens else esc(label)
        value = f"{v:+.3f}" if signed else fmt(v)  # counts stay whole numbers
        out.append(
            f'<div class="vrow"><span class="t{" mono" if tokens else ""}" title="{esc(repr(label))}">{shown}</span>'
            f'<span class="track"><span class="fill {"pos" if v >= 0 else "neg"}" style="width:{100 * abs(v) / top:.1f}%">'
            f'</span></span><span class="n">{value}</span></div>'
        )
    return "".join(out)


def _ablation(card: dict) -> str:
    deltas = (card.get("ablation") or {}).get("loss_delta") or {}
    if not deltas:
        return ""
    rows = _value_rows(list(deltas.items()), limit=40, tokens=False, signed=True)
    return (
        f'<div class="card" id="ablation"><h2>Ablation effect</h2>'
        f'<p class="muted small">change in loss when this unit is ablated, by text label</p>{rows}</div>'
    )


def _is_pairs(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[1], (int, float)) for p in value
        )
    )


def _extra(card: dict) -> str:
    """The card's free-form ``extra`` numbers: (label, value) lists as bars, the rest as a small table."""
    extra = card.get("extra")
    if not isinstance(extra, dict) or not extra:
        return ""
    lists, rows = [], []
    for key, value in list(extra.items())[:12]:
        name = esc(str(key).replace("_", " "))
        if _is_pairs(value):
            lists.append(f"<h3>{name}</h3>{_value_rows(value, limit=10)}")
        else:
            shown = fmt(value) if isinstance(value, (int, float)) else _short_json(value, 80)
            rows.append(f"<tr><td class='muted'>{name}</td><td class='num'>{esc(shown)}</td></tr>")
    table = f"<table><tbody>{''.join(rows)}</tbody></table>" if rows else ""
    return f'<div class="card" id="extra"><h2>More</h2>{table}{"".join(lists)}</div>'


def _nearest(card: dict, units: Units, run: Run, export: bool) -> str:
    near = card.get("nearest") or []
    items = []
    for pair in near[:10]:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            continue
        j = units.index_of(pair[0])
        name = link(f"/runs/{run.id}/units/{j}", str(pair[0]), export) if j is not None else esc(pair[0])
        title = (
            f' <span class="muted">{esc(units.title(j))}</span>' if j is not None and units.title(j) else ""
        )
        items.append(
            f"<li>{name}{title} <span class='muted' style='float:right'>cos {fmt(pair[1])}</span></li>"
        )
    if not items:
        return ""
    word = "features" if units.unit_kind == "feature" else "units"
    return f'<div class="card"><h2>Nearest {word}</h2><ul class="plain">{"".join(items)}</ul></div>'


def _examples(card: dict, scale_max: float) -> str:
    top = [example_html(e, scale_max) for e in card.get("top_examples") or []]
    parts = [
        f'<div class="card" id="top-examples"><h2>Top activations</h2>{"".join(top) or "<p class=muted>none saved</p>"}</div>'
    ]
    quantiles = card.get("quantile_examples") or []
    if quantiles:
        groups = []
        for q in quantiles:
            lo, hi = (q.get("range") or [None, None])[:2]
            exs = "".join(example_html(e, scale_max) for e in q.get("examples") or [])
            groups.append(f"<h3>activation {fmt(lo)} to {fmt(hi)}</h3>{exs}")
        parts.append(
            f'<div class="card" id="quantile-examples"><h2>Examples by activation range</h2>{"".join(groups)}</div>'
        )
    return "".join(parts)


def _live_box(
    run: Run, index: int, scale_max: float, live: dict | None, steer: dict | None, text: str, export: bool
) -> str:
    if export:
        result = ""
        if live:
            result = f"<p class='muted'>Activations on the text below:</p>{token_spans(live['tokens'], live['acts'], scale_max)}"
        return f'<div class="card" id="live"><h2>Try your own text</h2><p class="note">The live box needs the explorer server; it is off in this export.</p>{result}{_steer_html(steer)}</div>'
    api = f"/api/runs/{run.id}/units/{index}"
    result = (
        token_spans(live["tokens"], live["acts"], max(scale_max, max(live["acts"] + [0.0]))) if live else ""
    )
    default_scale = f"{4 * scale_max:.3g}" if scale_max > 0 else "4"
    return f"""<div class="card" id="live"><h2>Try your own text</h2>
<form class="live" id="live-form" method="get" action="/runs/{esc(run.id)}/units/{index}#live" data-api="{esc(api)}/activations" data-max="{scale_max:.6g}">
<textarea name="text" maxlength="{MAX_PROMPT_CHARS}" placeholder="Type text to see this unit's activation on every token">{esc(text)}</textarea>
<div class="row"><button type="submit" id="live-run">Show activations</button><span class="muted">up to {MAX_PROMPT_CHARS:,} characters; the model loads on first use</span></div></form>
<div class="result" id="live-result">{result}</div>
<form class="live" id="steer-form" method="get" action="/runs/{esc(run.id)}/units/{index}#live" data-api="{esc(api)}/steer">
<h3>Steer generation with this unit's direction</h3>
<div class="row"><label>scale <input type="number" step="any" name="scale" value="{default_scale}"></label>
<label>tokens <input type="number" min="1" max="{MAX_NEW_TOKENS}" name="n_tokens" value="16"></label>
<button type="submit" class="secondary" id="steer-run">Generate</button></div></form>
<div class="result" id="steer-result">{_steer_html(steer)}</div></div>"""


def _steer_html(steer: dict | None) -> str:
    if not steer:
        return ""
    shown = {k: steer[k] if steer[k].strip() else "(no visible text)" for k in ("unsteered", "steered")}
    return (
        f'<div class="steer"><div><div class="muted">without steering</div><pre>{esc(shown["unsteered"])}</pre></div>'
        f'<div><div class="muted">steered (scale {fmt(steer["scale"])} at {esc(steer["site"])})</div>'
        f"<pre>{esc(steer['steered'])}</pre></div></div>"
    )


def unit_page(
    run: Run,
    units: Units,
    index: int,
    card: dict | None,
    export: bool = False,
    text: str = "",
    live: dict | None = None,
    steer: dict | None = None,
) -> str:
    """One neuron or feature: stats, histogram, examples, logit effects, ablation, neighbours, live box."""
    card = card or {}
    s = units.stats
    word = "Feature" if units.unit_kind == "feature" else "Neuron"
    uid = card.get("id", units.id_of(index))
    scale_max = float(card.get("max_act") or s.max_act[index] or 0.0)
    scale_max = scale_max if math.isfinite(scale_max) else 0.0
    chips = [
        ("density", fmt_density(card.get("density", s.density[index]))),
        ("max activation", fmt(card.get("max_act", s.max_act[index]))),
        ("mean activation", fmt(card.get("mean_act", s.mean_act[index]))),
        ("site", card.get("site") or run.record.get("site") or "–"),
    ]
    chip_html = "".join(
        f'<div class="chip"><span class="k">{esc(k)}</span><span class="v">{esc(v)}</span></div>'
        for k, v in chips
    )
    missing = (
        ""
        if card
        else '<p class="note">No card was saved for this unit (dead features get none): only its statistics are known.</p>'
    )
    prev_next = " ".join(
        link(f"/runs/{run.id}/units/{j}", label, export)
        for j, label in ((index - 1, f"← {index - 1}"), (index + 1, f"{index + 1} →"))
        if 0 <= j < len(units)
    )
    title = card.get("title") or units.title(index)
    top = ""
    if card:
        logits = (
            f'<div class="card" id="logits"><h2>Logit effects</h2><div class="logits">'
            f"<div><h3>promoted</h3>{_value_rows(card.get('promoted') or [])}</div>"
            f"<div><h3>suppressed</h3>{_value_rows(card.get('suppressed') or [])}</div></div></div>"
        )
        side = _ablation(card) + _nearest(card, units, run, export) + _extra(card)
        top = (
            f'<div class="toprow"><div class="card hist"><h2>Activation histogram</h2>{_hist_figure(card)}</div>'
            f"{logits}{f'<div class=stack>{side}</div>' if side else ''}</div>"
        )
    rest = _live_box(run, index, scale_max, live, steer, text, export) + (
        _examples(card, scale_max) if card else ""
    )
    body = f"""<div class="row" style="justify-content:space-between"><h1>{word} {esc(uid)} <span class="kind">{esc(title)}</span></h1>
<span class="muted">{prev_next}</span></div>{missing}<div class="chips">{chip_html}</div>{top}{rest}"""
    query = {"export": 1, **({"text": text} if text else {})}
    return layout(
        f"{word} {uid}",
        body,
        [("runs", "/"), (run.title, f"/runs/{run.id}"), (f"{word.lower()} {uid}", None)],
        export,
        f"/runs/{run.id}/units/{index}?{urlencode(query)}",
    )


# ---- other kinds: probe curves and saved reports -----------------------------------------------------------


Curves = dict[str, dict[int, dict[int, float]]]  # feature -> k -> layer -> F1


def probe_curves(probe: object) -> Curves:
    """F1 by feature, k and layer from a probe.json: its list of records with "layer", "k" and "f1" (and
    optionally "feature" and "basis"; rotated-basis controls are left out). Empty when there is none."""
    candidates = (
        [probe] if isinstance(probe, list) else list(probe.values()) if isinstance(probe, dict) else []
    )
    for records in candidates:
        if not (isinstance(records, list) and records and all(isinstance(r, dict) for r in records)):
            continue
        if not all({"layer", "k", "f1"} <= r.keys() for r in records):
            continue
        curves: Curves = {}
        for r in records:
            if r["f1"] is not None and r.get("basis", "native") == "native":
                by_k = curves.setdefault(str(r.get("feature", "")), {})
                by_k.setdefault(int(r["k"]), {})[int(r["layer"])] = float(r["f1"])
        return curves
    return {}


def _probe_cards(probe: object, limit: int = 12) -> str:
    """One chart per probed feature: test F1 against layer, a line per k."""
    cards = []
    for feature, by_k in list(probe_curves(probe).items())[:limit]:
        layers = sorted({layer for c in by_k.values() for layer in c})
        series = {f"k = {k}": [by_k[k].get(layer, math.nan) for layer in layers] for k in sorted(by_k)}
        fig = line_chart(series, x=layers, xlabel="layer", ylabel="test F1")
        name = f": {esc(feature)}" if feature else ""
        cards.append(
            f'<div class="card hist"><h2>F1 by layer for each k{name}</h2><figure>{fig.svg}</figure></div>'
        )
    return f'<div class="toprow" id="probe-curves">{"".join(cards)}</div>' if cards else ""


def report_frame(run: Run, report_html: str | None, export: bool) -> str:
    """A saved report.html shown in a sandboxed frame (scripts, forms and navigation all off)."""
    if report_html is None:
        return '<div class="card"><p class="muted">This run has no report.html.</p></div>'
    src = f'srcdoc="{esc(report_html)}"' if export else f'src="/runs/{esc(run.id)}/report.html"'
    return f'<iframe class="report" id="report" sandbox="" referrerpolicy="no-referrer" {src} title="saved report"></iframe>'


def run_page(
    run: Run, report_html: str | None, export: bool = False, probe: object = None, note: str = ""
) -> str:
    """A run without units: its metadata, the probe curves when there are any, and its saved report."""
    parts = [
        f'<p class="note" id="run-note">{esc(note)}</p>' if note else "",
        _probe_cards(probe) if probe is not None else "",
        _meta_card(run),
        report_frame(run, report_html, export),
    ]
    body = (
        f'<h1>{esc(run.title)} <span class="kind">· {esc(run.kind)}</span></h1>'
        f'<p class="subtitle">model {esc(run.model or "?")} · {esc(_when(run))} · '
        f'<span class="mono">{esc(run.rel)}</span></p>{"".join(parts)}'
    )
    return layout(run.title, body, [("runs", "/"), (run.title, None)], export, f"/runs/{run.id}?export=1")

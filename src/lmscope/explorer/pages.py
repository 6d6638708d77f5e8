"""The explorer's pages: plain functions from data to one self-contained page each.

The markup, CSS and script are Jinja2 templates in ``templates/`` (rendered by ``lmscope.report.render``,
which escapes every value); this module only turns runs, units and cards into the values they show. Every
page inlines its CSS and its little script, so the same HTML works served and exported. In an export
(``export=True``) links to other pages become plain text and the live box is replaced by a note: nothing
in an exported page calls a server.
"""

from __future__ import annotations

import json
import math
from urllib.parse import urlencode

import numpy as np

from ..report import example_html, histogram, line_chart, render, token_spans
from ..report.tokens import RAMP, shown_token
from .data import Run, Units
from .live import MAX_NEW_TOKENS, MAX_PROMPT_CHARS

BEFORE, AFTER = 32, 8  # tokens of context shown around an example's peak
MAX_HIST_SAMPLES = 2_000_000  # histogram() takes values: saved counts are expanded up to this many
ERROR_TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Too long",
    422: "Invalid input",
    500: "Something went wrong",
    503: "Unavailable",
}


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


def _page(template: str, title: str, crumbs: list, export: bool, export_href: str = "", **context) -> str:
    """A whole page: ``template`` (which extends layout.html) with the top bar's breadcrumbs."""
    return render(
        f"explorer/{template}",
        title=title,
        crumbs=crumbs,
        export=export,
        export_href=export_href,
        ramp=RAMP,
        **context,
    )


def _when(run: Run) -> str:
    return run.created.replace("T", " ")[:19]  # ISO time to the second, as people read it


def error_page(status: int, message: str, export: bool = False) -> str:
    heading = ERROR_TITLES.get(status, "Error")
    crumbs = [("runs", "/"), (heading, None)]
    return _page("error.html", heading, crumbs, export, status=status, heading=heading, message=message)


# ---- index ----------------------------------------------------------------------------------------------


def index_page(
    runs: list[Run], root: str, export: bool = False, unreadable: list[tuple[str, str]] = ()
) -> str:
    """The list of runs, newest first, and the run folders that could not be read, with the reason."""
    shown = [
        {"id": r.id, "kind": r.kind, "title": r.title, "model": r.model, "when": _when(r), "rel": r.rel}
        for r in sorted(runs, key=lambda r: (r.created, r.rel), reverse=True)
    ]
    return _page(
        "index.html",
        "Runs",
        [("runs", None)],
        export,
        "/?export=1" if runs else "",
        runs=shown,
        root=root,
        unreadable=list(unreadable),
    )


# ---- a unit list ------------------------------------------------------------------------------------------


def units_page(
    run: Run, units: Units, order: np.ndarray, page: int, per_page: int, params: dict, export: bool = False
) -> str:
    """The paged, sorted, filtered list of a run's neurons or features. ``order``: matching unit indices."""
    n_pages = max(1, math.ceil(len(order) / per_page))
    page = min(max(page, 1), n_pages)
    s = units.stats
    densest = max(float(np.nanmax(s.density)) if np.isfinite(s.density).any() else 0.0, 1e-12)
    rows = []
    for i in order[(page - 1) * per_page : page * per_page].tolist():
        d = float(s.density[i])
        rows.append(
            {
                "index": i,
                "density": d,
                "id": units.id_of(i),
                "title": units.title(i),
                "density_text": fmt_density(d),
                "bar": 60 * d / densest if math.isfinite(d) else None,
                "max_act": fmt(s.max_act[i]),
                "mean_act": fmt(s.mean_act[i]),
            }
        )
    pager, last = [], 0
    for p in sorted({1, n_pages, *range(max(1, page - 2), min(n_pages, page + 2) + 1)}):
        if p - last > 1:
            pager.append((None, None))
        href = None if p == page else f"/runs/{run.id}?{urlencode({**params, 'page': p})}"
        pager.append((p, href))
        last = p
    alive = s.density[np.isfinite(s.density) & (s.density > 0)]
    density_figure = (
        histogram(
            np.log10(alive), bins=40, xlabel="log10 density (fraction of tokens active)", ylabel="units"
        )
        if alive.size >= 2
        else None
    )
    return _page(
        "units.html",
        run.title,
        [("runs", "/"), (run.title, None)],
        export,
        f"/runs/{run.id}?{urlencode({**params, 'page': page, 'export': 1})}",
        run=run,
        when=_when(run),
        meta=_meta(run),
        word="feature" if units.unit_kind == "feature" else "neuron",
        n_units=len(units),
        n_match=len(order),
        n_dead=int(np.sum(s.density == 0)),
        density_figure=density_figure,
        params=params,
        descending=params.get("order", "desc") == "desc",
        page=page,
        n_pages=n_pages,
        rows=rows,
        pager=pager,
        with_id=units.unit_kind == "neuron",
        with_title=s.titles is not None,
    )


def _meta(run: Run) -> list[tuple[str, str]]:
    skip = {"kind", "title", "model", "created"}
    return [(k, _short_json(v)) for k, v in run.record.items() if k not in skip]


def _short_json(v: object, limit: int = 160) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


# ---- one unit ---------------------------------------------------------------------------------------------


def _histogram(card: dict) -> tuple[object, str]:
    """(the activation histogram of a card or None, a note on how it was drawn)."""
    h = card.get("histogram") or {}
    edges, counts = np.asarray(h.get("edges", []), dtype=float), np.asarray(h.get("counts", []), dtype=float)
    if len(edges) != len(counts) + 1 or counts.sum() <= 0:
        return None, ""
    note, total = "", counts.sum()
    if total > MAX_HIST_SAMPLES:  # histogram() counts values: hand it a scaled-down sample of the same shape
        counts = np.round(counts * MAX_HIST_SAMPLES / total)
        note = f"counts scaled by {MAX_HIST_SAMPLES / total:.2g} to draw"
    centers = (edges[:-1] + edges[1:]) / 2
    values = np.repeat(centers, counts.astype(np.int64))
    return histogram(values, bins=edges.tolist(), xlabel="activation", ylabel="tokens"), note


def _is_pair(p: object) -> bool:
    return isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[1], (int, float))


def _value_rows(pairs: list, limit: int = 12, tokens: bool = True, signed: bool = False) -> list[dict]:
    """(label, value) pairs as rows for the value_rows macro: a bar as long as |value| relative to the
    largest (logit effects, ablation)."""
    pairs = [(str(p[0]), p[1]) for p in pairs[:limit] if _is_pair(p) and math.isfinite(p[1])]
    top = max((abs(v) for _, v in pairs), default=1.0) or 1.0
    return [
        {
            "label": shown_token(label) if tokens else label,
            "tip": repr(label),
            "value": v,
            "width": 100 * abs(v) / top,
            "text": f"{v:+.3f}" if signed else fmt(v),  # counts stay whole numbers
        }
        for label, v in pairs
    ]


def _extra(card: dict) -> tuple[list, list]:
    """The card's free-form ``extra`` numbers: ([(name, value)] for a table, [(name, rows)] as bars)."""
    extra = card.get("extra")
    rows, lists = [], []
    for key, value in list(extra.items())[:12] if isinstance(extra, dict) else []:
        name = str(key).replace("_", " ")
        if isinstance(value, list) and value and all(_is_pair(p) for p in value):
            lists.append((name, _value_rows(value, limit=10)))
        else:
            rows.append((name, fmt(value) if isinstance(value, (int, float)) else _short_json(value, 80)))
    return rows, lists


def _nearest(card: dict, units: Units) -> list[dict]:
    near = [p for p in (card.get("nearest") or [])[:10] if isinstance(p, (list, tuple)) and len(p) == 2]
    out = []
    for unit_id, cos in near:
        j = units.index_of(unit_id)
        out.append(
            {"id": unit_id, "index": j, "title": units.title(j) if j is not None else "", "cos": fmt(cos)}
        )
    return out


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
    live_html = None
    if live:
        live_scale = scale_max if export else max(scale_max, max(live["acts"] + [0.0]))
        live_html = token_spans(live["tokens"], live["acts"], live_scale)
    figure, note = _histogram(card)
    extra_rows, extra_lists = _extra(card)

    def examples(exs: list) -> list:
        return [example_html(e, scale_max, BEFORE, AFTER) for e in exs or []]

    quantiles = [
        (
            fmt((q.get("range") or [None, None])[0]),
            fmt((q.get("range") or [None, None])[1]),
            examples(q.get("examples")),
        )
        for q in card.get("quantile_examples") or []
    ]
    query = {"export": 1, **({"text": text} if text else {})}
    return _page(
        "unit.html",
        f"{word} {uid}",
        [("runs", "/"), (run.title, f"/runs/{run.id}"), (f"{word.lower()} {uid}", None)],
        export,
        f"/runs/{run.id}/units/{index}?{urlencode(query)}",
        run=run,
        index=index,
        card=card,
        word=word,
        uid=uid,
        unit_title=card.get("title") or units.title(index),
        prev_next=[
            (j, t)
            for j, t in ((index - 1, f"← {index - 1}"), (index + 1, f"{index + 1} →"))
            if 0 <= j < len(units)
        ],
        chips=chips,
        histogram=figure,
        histogram_note=note,
        promoted=_value_rows(card.get("promoted") or []),
        suppressed=_value_rows(card.get("suppressed") or []),
        ablation=_value_rows(
            list(((card.get("ablation") or {}).get("loss_delta") or {}).items()), 40, False, True
        ),
        nearest=_nearest(card, units),
        extra_rows=extra_rows,
        extra_lists=extra_lists,
        live=live_html,
        steer=steer,
        steer_scale=fmt(steer["scale"]) if steer else "",
        text=text,
        api=f"/api/runs/{run.id}/units/{index}",
        scale_max=scale_max,
        default_scale=f"{4 * scale_max:.3g}" if scale_max > 0 else "4",
        max_chars=MAX_PROMPT_CHARS,
        max_new_tokens=MAX_NEW_TOKENS,
        top_examples=examples(card.get("top_examples")),
        quantiles=quantiles,
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


def _probe_figures(probe: object, limit: int = 12) -> list:
    """(feature, chart) per probed feature: test F1 against layer, a line per k."""
    figures = []
    for feature, by_k in list(probe_curves(probe).items())[:limit]:
        layers = sorted({layer for c in by_k.values() for layer in c})
        series = {f"k = {k}": [by_k[k].get(layer, math.nan) for layer in layers] for k in sorted(by_k)}
        figures.append((feature, line_chart(series, x=layers, xlabel="layer", ylabel="test F1")))
    return figures


def run_page(
    run: Run, report_html: str | None, export: bool = False, probe: object = None, note: str = ""
) -> str:
    """A run without units: its metadata, the probe curves when there are any, and its saved report (in a
    sandboxed frame: scripts, forms and navigation all off)."""
    return _page(
        "run.html",
        run.title,
        [("runs", "/"), (run.title, None)],
        export,
        f"/runs/{run.id}?export=1",
        run=run,
        when=_when(run),
        note=note,
        probe_curves=_probe_figures(probe) if probe is not None else [],
        meta=_meta(run),
        report_html=report_html,
    )

"""Dependency-free SVG charts: heatmap, bar chart, line chart, scatter plot and histogram.

Every chart takes plain numbers (a numpy array, nested lists, or anything with ``.tolist()`` such as a torch
tensor) and returns a :class:`Figure` holding one ``<svg>`` string. Nothing here knows about the rest of
lmscope, and nothing in the output loads an external resource: no scripts, fonts, stylesheets or links.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runs import write_atomic
from .html import page
from .markup import esc

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
DIVERGING = ["#2166ac", "#67a9cf", "#d1e5f0", "#f7f7f7", "#fddbc7", "#ef8a62", "#b2182b"]  # ColorBrewer RdBu
SEQUENTIAL = ["#f7fbff", "#c6dbef", "#6baed6", "#2171b5", "#08306b"]  # ColorBrewer Blues
SERIES = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000"]  # Okabe-Ito
NAN_COLOR, POSITIVE, NEGATIVE = "#bdbdbd", "#d6604d", "#4393c3"
INK, MUTED, GRID = "#333333", "#666666", "#e6e6e6"
CHAR_W = 6.6  # rough width of one character of 11px text; used only to size margins
PLOT_W, PLOT_H = 520, 300  # plotting area of the x/y charts, in pixels
_XMLNS = 'xmlns="http://www.w3.org/2000/svg"'  # only in standalone .svg files, which need it to render


@dataclass
class Figure:
    """One SVG picture. ``str(fig)`` is the ``<svg>`` markup; notebooks display it directly."""

    svg: str
    title: str = ""

    def _repr_svg_(self) -> str:
        return _standalone_svg(self.svg)

    def __str__(self) -> str:
        return self.svg

    def __html__(self) -> str:  # a Figure goes into a template as is, not escaped
        return self.svg

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path``: a full HTML page if it ends with ``.html``, otherwise an SVG file."""
        path = Path(path)
        if path.suffix.lower() in (".html", ".htm"):
            return write_atomic(path, page(self.title or path.stem, [("", self)]))
        return write_atomic(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + _standalone_svg(self.svg))


def _standalone_svg(svg: str) -> str:
    return svg.replace("<svg ", f"<svg {_XMLNS} ", 1)


# ----------------------------------------------------------------------------------------------- helpers



def _as_array(values: object, name: str, ndim: int | None = None) -> np.ndarray:
    """``values`` as a float array; torch tensors that numpy cannot read directly go through ``.tolist()``."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError, RuntimeError) as err:
        if not hasattr(values, "tolist"):
            raise ValueError(
                f"{name} must be numbers in a rectangular array; got {type(values).__name__}"
            ) from err
        arr = np.asarray(values.tolist(), dtype=float)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array; got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; got shape {tuple(arr.shape)}")
    return arr


def _labels(labels: object, n: int, name: str) -> list[str]:
    if labels is None:
        return [str(i) for i in range(n)]
    labels = labels.tolist() if hasattr(labels, "tolist") else list(labels)
    if len(labels) != n:
        per = {"row_labels": "row", "col_labels": "column"}.get(name, "value")
        raise ValueError(f"{name} must have {n} entries (one per {per}); got {len(labels)}")
    return [str(s) for s in labels]


def _check_format(value_format: str) -> str:
    try:
        value_format.format(1.5)
    except (IndexError, KeyError, ValueError) as err:
        raise ValueError(
            f"value_format must format one number, like '{{:.2f}}'; got {value_format!r}"
        ) from err
    return value_format


def _n(v: float) -> str:
    """A pixel coordinate, rounded to one decimal to keep files small."""
    s = f"{v:.1f}".rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def _fmt_tick(v: float) -> str:
    return "0" if v == 0 else f"{v:.4g}"


def _short(label: str, limit: int = 20) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _text(x: float, y: float, s: str, anchor: str = "middle", size: float = 11, **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return (
        f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}" font-size="{_n(size)}"{extra}>{esc(s)}</text>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str = INK, **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" stroke="{stroke}"{extra}/>'


def _tip(text: str) -> str:
    return f"<title>{esc(text)}</title>"


def _figure(width: float, height: float, body: list[str], title: str = "") -> Figure:
    head = (
        f'<svg width="{_n(width)}" height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}" role="img" '
        f'aria-label="{esc(title or "chart")}" font-family="{FONT}" font-size="11" fill="{INK}" '
        'style="white-space:pre;background:#ffffff">'
    )
    if title:
        body = [_text(width / 2, 20, title, size=14, font_weight="600"), *body]
    return Figure("\n".join([head, *body, "</svg>"]), title=title)


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _ramp(stops: list[str], t: float) -> str:
    """The colour at position ``t`` in [0, 1] along ``stops``, interpolated linearly in RGB."""
    pos = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    a, b, f = _rgb(stops[i]), _rgb(stops[i + 1]), pos - i
    return "#{:02x}{:02x}{:02x}".format(*(round(p + (q - p) * f) for p, q in zip(a, b)))


def _is_dark(color: str) -> bool:
    r, g, b = _rgb(color)
    return 0.299 * r + 0.587 * g + 0.114 * b < 140


# ------------------------------------------------------------------------------------------------- axes


def nice_ticks(lo: float, hi: float, max_ticks: int = 6, integer: bool = False) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    lo, hi = min(lo, hi), max(lo, hi)
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(max_ticks - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw and not (integer and m == 2.5))
    step = max(step, 1.0) if integer else step
    start, stop = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [float(f"{k * step:.12g}") for k in range(start, stop + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    last = max(last, first + 1)
    every = math.ceil((last - first + 1) / 8)  # at most ~8 labelled decades
    last = first + math.ceil((last - first) / every) * every
    return [10.0**e for e in range(first, last + 1, every)]


@dataclass
class _Axis:
    """Maps data values in [lo, hi] to pixels in [px0, px1] (px1 < px0 for a y axis)."""

    lo: float
    hi: float
    px0: float
    px1: float
    ticks: list[float]
    log: bool = False

    def px(self, v: float) -> float:
        f = math.log10 if self.log else float
        return self.px0 + (f(v) - f(self.lo)) / (f(self.hi) - f(self.lo)) * (self.px1 - self.px0)


def _axis(lo: float, hi: float, px0: float, px1: float, log: bool = False, integer: bool = False) -> _Axis:
    ticks = _log_ticks(lo, hi) if log else nice_ticks(lo, hi, integer=integer)
    return _Axis(ticks[0], ticks[-1], px0, px1, ticks, log)


def _frame(xa: _Axis | None, ya: _Axis | None, box: tuple[float, float, float, float]) -> list[str]:
    """Grid lines, tick labels and the axis lines of a plot occupying ``box`` = (left, top, right, bottom)."""
    left, top, right, bottom = box
    parts = ['<g class="frame">']
    for t in ya.ticks if ya else []:
        y = ya.px(t)
        parts += [_line(left, y, right, y, GRID), _text(left - 6, y, _fmt_tick(t), "end", dy="0.35em")]
    for t in xa.ticks if xa else []:
        x = xa.px(t)
        parts += [_line(x, top, x, bottom, GRID), _text(x, bottom + 15, _fmt_tick(t))]
    parts += [_line(left, bottom, right, bottom, MUTED), _line(left, top, left, bottom, MUTED), "</g>"]
    return parts


def _axis_titles(
    box: tuple[float, float, float, float], xlabel: str, ylabel: str, x_gap: float = 34
) -> list[str]:
    left, top, right, bottom = box
    parts = [_text((left + right) / 2, bottom + x_gap, xlabel, size=12)] if xlabel else []
    if ylabel:
        x, y = 16, (top + bottom) / 2
        parts.append(_text(x, y, ylabel, size=12, transform=f"rotate(-90 {_n(x)} {_n(y)})"))
    return parts


def _xy_box(title: str, legend_w: float = 0) -> tuple[tuple[float, float, float, float], float, float]:
    """(plot box, figure width, figure height) of the standard x/y chart."""
    left, top = 72, 40 if title else 16
    box = (left, top, left + PLOT_W, top + PLOT_H)
    return box, left + PLOT_W + 24 + legend_w, top + PLOT_H + 48


# ----------------------------------------------------------------------------------------------- charts


def _cell_size(
    cell_size: float | tuple[float, float] | None, n_rows: int, n_cols: int
) -> tuple[float, float]:
    """(width, height) of one heatmap cell: square up to 40px if the map fits ~800x480, else stretched."""
    if cell_size is not None:
        cw, ch = cell_size if isinstance(cell_size, tuple) else (cell_size, cell_size)
        if not (cw > 0 and ch > 0):
            raise ValueError(f"cell_size must be positive; got {cell_size!r}")
        return float(cw), float(ch)
    side = min(40.0, 800 / n_cols, 480 / n_rows)
    if side >= 8:
        return side, side
    return max(2.0, min(40.0, 800 / n_cols)), max(2.0, min(40.0, 480 / n_rows))


def _colorbar(
    x: float, top: float, height: float, stops: list[str], lo: float, hi: float, center: float | None
) -> list[str]:
    """A vertical colour bar (a stack of thin rects, ``hi`` at the top) with min / max (/ centre) ticks."""
    steps = 48
    parts = ['<g class="colorbar" shape-rendering="crispEdges">']
    for k in range(steps):
        y, color = top + height * k / steps, _ramp(stops, 1 - (k + 0.5) / steps)
        parts.append(
            f'<rect x="{_n(x)}" y="{_n(y)}" width="12" height="{_n(height / steps + 0.5)}" fill="{color}"/>'
        )
    parts.append(
        f'<rect x="{_n(x)}" y="{_n(top)}" width="12" height="{_n(height)}" fill="none" stroke="{MUTED}"/>'
    )
    marks = [(hi, top), (lo, top + height)] + ([(center, top + height / 2)] if center is not None else [])
    for v, y in marks:
        parts += [_line(x + 12, y, x + 16, y, MUTED), _text(x + 19, y, _fmt_tick(v), "start", dy="0.35em")]
    return [*parts, "</g>"]


def heatmap(
    values: object,
    row_labels: list | None = None,
    col_labels: list | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    center: float | None = 0.0,
    cmap: str = "diverging",
    value_format: str = "{:.2f}",
    cell_size: float | tuple[float, float] | None = None,
) -> Figure:
    """A grid of coloured cells. ``values``: [rows, cols]; labels: one per row / column.

    ``cmap="diverging"`` is blue-white-red centred at ``center`` with a symmetric range (max |v - center|);
    ``center=None`` or ``cmap="sequential"`` runs white to dark blue from min to max. NaN cells are grey.
    Every cell has a tooltip ``"row, col: value"``; small maps also print the value in the cell.
    ``cell_size``: pixels per cell, one number or (width, height); by default it fits about 800x480 pixels.
    """
    vals = _as_array(values, "values", ndim=2)  # (R, C)
    n_rows, n_cols = vals.shape
    rows, cols = _labels(row_labels, n_rows, "row_labels"), _labels(col_labels, n_cols, "col_labels")
    fmt = _check_format(value_format)
    if cmap not in ("diverging", "sequential"):
        raise ValueError(f"cmap must be 'diverging' or 'sequential'; got {cmap!r}")
    finite = vals[np.isfinite(vals)]
    diverging = cmap == "diverging" and center is not None
    if diverging:
        half = float(np.max(np.abs(finite - center))) if finite.size else 0.0
        lo, hi, stops = center - (half or 1.0), center + (half or 1.0), DIVERGING
    else:
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        hi, stops = hi if hi > lo else lo + 1.0, SEQUENTIAL

    cw, ch = _cell_size(cell_size, n_rows, n_cols)
    row_every, col_every = math.ceil(13 / ch), math.ceil(13 / cw)  # keep labels >= 13px apart
    shown_rows = [_short(s) for s in rows[::row_every]]
    shown_cols = [_short(s) for s in cols[::col_every]]
    col_len = max(len(s) for s in shown_cols) * CHAR_W
    rotate = col_len > cw * col_every - 4

    left = 10 + (22 if ylabel else 0) + max(len(s) for s in shown_rows) * CHAR_W + 6
    if rotate:  # the first column label slants down-left; keep it inside the picture
        left = max(left, col_len * 0.71 - cw / 2 + 4)
    top = 40 if title else 16
    width_px, height_px = n_cols * cw, n_rows * ch
    label_h = col_len * 0.71 + 16 if rotate else 18
    bar_h = max(height_px, 80)
    bar_x = left + width_px + 16
    tick_labels = [_fmt_tick(lo), _fmt_tick(hi)] + ([_fmt_tick(center)] if diverging else [])
    width = bar_x + 12 + 8 + max(len(s) for s in tick_labels) * CHAR_W + 12
    height = top + max(height_px, bar_h) + label_h + (24 if xlabel else 0) + 8

    colors = [
        [_ramp(stops, (v - lo) / (hi - lo)) if math.isfinite(v) else NAN_COLOR for v in r] for r in vals
    ]
    texts = [[fmt.format(v) for v in r] for r in vals.tolist()]
    parts = [
        f'<g class="cells" transform="translate({_n(left)},{_n(top)}) scale({cw:.4g},{ch:.4g})" '
        'shape-rendering="crispEdges">'
    ]
    erows, ecols = [esc(s) for s in rows], [esc(s) for s in cols]
    for i in range(n_rows):
        for j in range(n_cols):
            parts.append(
                f'<rect x="{j}" y="{i}" width="1" height="1" fill="{colors[i][j]}">'
                f"<title>{erows[i]}, {ecols[j]}: {esc(texts[i][j])}</title></rect>"
            )
    parts.append("</g>")
    longest = max(len(t) for r in texts for t in r)
    if n_rows * n_cols <= 400 and longest * 6 <= cw - 4 and ch >= 14:
        size = min(11.0, ch * 0.6)
        parts.append('<g class="cell-values" pointer-events="none">')
        for i in range(n_rows):
            for j in range(n_cols):
                if not math.isfinite(vals[i, j]):
                    continue
                ink = "#ffffff" if _is_dark(colors[i][j]) else INK
                x, y = left + (j + 0.5) * cw, top + (i + 0.5) * ch
                parts.append(_text(x, y, texts[i][j], size=size, fill=ink, dy="0.35em"))
        parts.append("</g>")

    parts.append('<g class="labels">')
    for k, s in enumerate(shown_rows):
        parts.append(_text(left - 6, top + (k * row_every + 0.5) * ch, s, "end", dy="0.35em"))
    for k, s in enumerate(shown_cols):
        x, y = left + (k * col_every + 0.5) * cw, top + height_px + 6
        if rotate:
            parts.append(_text(x, y, s, "end", dy="0.7em", transform=f"rotate(-45 {_n(x)} {_n(y)})"))
        else:
            parts.append(_text(x, y + 10, s))
    parts.append("</g>")
    box = (left, top, left + width_px, top + height_px)
    parts += _axis_titles(box, xlabel, ylabel, x_gap=label_h + 14)

    parts += _colorbar(bar_x, top, bar_h, stops, lo, hi, center if diverging else None)
    return _figure(width, height, parts, title)


def bar_chart(
    values: object,
    labels: list | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    horizontal: bool = True,
    value_format: str = "{:.2f}",
) -> Figure:
    """One bar per value (``values``: [n]; ``labels``: n names). Positive bars are red, negative blue.

    Bars grow from a zero line; each has a tooltip ``"label: value"``. NaN values get no bar.
    """
    vals = _as_array(values, "values", ndim=1)  # (n,)
    names, fmt = _labels(labels, len(vals), "labels"), _check_format(value_format)
    finite = vals[np.isfinite(vals)]
    lo, hi = min(0.0, float(finite.min(initial=0.0))), max(0.0, float(finite.max(initial=0.0)))
    shown = [_short(s, 24) for s in names]
    name_len = max(len(s) for s in shown) * CHAR_W
    top = 40 if title else 16
    if horizontal:
        band = 22.0
        left = 10 + (22 if ylabel else 0) + name_len + 8
        box = (left, top, left + PLOT_W, top + band * len(vals))
        va = _axis(lo, hi, box[0], box[2])
        width, height = box[2] + 56, box[3] + 32 + (24 if xlabel else 0)
        parts = _frame(va, None, box)
    else:
        band = max(4.0, min(40.0, 560 / len(vals)))
        every = math.ceil(13 / band)
        rotate = name_len > band * every - 4
        label_h = name_len * 0.71 + 16 if rotate else 20
        left = max(72.0, name_len * 0.71 - band / 2 + 4) if rotate else 72.0
        box = (left, top, left + band * len(vals), top + PLOT_H)
        va = _axis(lo, hi, box[3], box[1])
        width, height = max(box[2], 240) + 24, box[3] + label_h + (24 if xlabel else 0) + 8
        parts = _frame(None, va, box)
    zero = va.px(0.0)
    parts.append('<g class="bars">')
    for k, v in enumerate(vals.tolist()):
        if not math.isfinite(v):
            continue
        end, color, tip = va.px(v), (POSITIVE if v >= 0 else NEGATIVE), _tip(f"{names[k]}: {fmt.format(v)}")
        lo_px, size = min(zero, end), abs(end - zero)
        if horizontal:
            y = box[1] + k * band + 4
            rect = f'x="{_n(lo_px)}" y="{_n(y)}" width="{_n(size)}" height="{_n(band - 8)}"'
        else:
            x = box[0] + (k + 0.15) * band
            rect = f'x="{_n(x)}" y="{_n(lo_px)}" width="{_n(band * 0.7)}" height="{_n(size)}"'
        parts.append(f'<rect class="bar" {rect} fill="{color}">{tip}</rect>')
    parts.append("</g>")
    parts.append('<g class="labels">')
    for k, s in enumerate(shown):
        if horizontal:
            parts.append(_text(box[0] - 8, box[1] + (k + 0.5) * band, s, "end", dy="0.35em"))
            if math.isfinite(vals[k]) and len(vals) <= 60:  # the value at the end of its bar
                end, text, y = va.px(float(vals[k])), fmt.format(vals[k]), box[1] + (k + 0.5) * band
                if vals[k] >= 0:
                    parts.append(_text(end + 4, y, text, "start", size=10, fill=MUTED, dy="0.35em"))
                elif end - 4 - len(text) * 6 >= box[0]:
                    parts.append(_text(end - 4, y, text, "end", size=10, fill=MUTED, dy="0.35em"))
                else:  # no room left of the bar (the category labels are there): write inside it
                    parts.append(_text(end + 4, y, text, "start", size=10, fill="#ffffff", dy="0.35em"))
        elif k % every == 0:
            x, y = box[0] + (k + 0.5) * band, box[3] + 6
            if rotate:
                parts.append(_text(x, y, s, "end", dy="0.7em", transform=f"rotate(-45 {_n(x)} {_n(y)})"))
            else:
                parts.append(_text(x, y + 10, s))
    parts.append("</g>")
    zero_line = (
        _line(zero, box[1], zero, box[3], INK) if horizontal else _line(box[0], zero, box[2], zero, INK)
    )
    parts.append(zero_line.replace("<line ", '<line class="zero" ', 1))
    x_gap = 34 if horizontal else label_h + 14
    parts += _axis_titles(box, xlabel, ylabel, x_gap=x_gap)
    return _figure(width, height, parts, title)


def line_chart(
    series: dict[str, object],
    x: object = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    log_y: bool = False,
) -> Figure:
    """Named lines with a legend. ``series``: name -> [n] values; ``x``: [n] positions (default 0..n-1), or a
    dict name -> that series' own positions (e.g. each line over its own x values).

    NaN values break a line. Short lines also get a dot with a tooltip per point.
    """
    if not isinstance(series, dict) or not series:
        raise ValueError(f"series must be a non-empty dict of name -> values; got {type(series).__name__}")
    ys = {str(name): _as_array(v, f"series[{name!r}]", ndim=1) for name, v in series.items()}
    xs = {}
    for name, y in ys.items():
        own = x.get(name) if isinstance(x, dict) else x
        xs[name] = np.arange(len(y), dtype=float) if own is None else _as_array(own, "x", ndim=1)
        if len(xs[name]) != len(y):
            raise ValueError(
                f"x has {len(xs[name])} values but series {name!r} has {len(y)}; they must match"
            )
    all_x, all_y = np.concatenate(list(xs.values())), np.concatenate(list(ys.values()))
    ok = np.isfinite(all_x) & np.isfinite(all_y)
    if not ok.any():
        raise ValueError("line_chart got no finite (x, y) points")
    if log_y and (all_y[ok] <= 0).any():
        raise ValueError(f"log_y needs positive values; the smallest is {all_y[ok].min():.4g}")
    legend_w = 28 + max(len(_short(n, 24)) for n in ys) * CHAR_W
    box, width, height = _xy_box(title, legend_w)
    height += 24 if xlabel else 0
    integer_x = bool(np.all(all_x[ok] == np.round(all_x[ok])))
    xa = _axis(all_x[ok].min(), all_x[ok].max(), box[0], box[2], integer=integer_x)
    ya = _axis(all_y[ok].min(), all_y[ok].max(), box[3], box[1], log=log_y)
    parts = [*_frame(xa, ya, box), '<g class="lines">']
    for k, (name, y) in enumerate(ys.items()):
        color, path, pen_down = SERIES[k % len(SERIES)], [], False
        dots = []
        for xv, yv in zip(xs[name].tolist(), y.tolist()):
            if not (math.isfinite(xv) and math.isfinite(yv)):
                pen_down = False
                continue
            px, py = xa.px(xv), ya.px(yv)
            path.append(f"{'L' if pen_down else 'M'}{_n(px)} {_n(py)}")
            pen_down = True
            if len(y) <= 100:
                tip = _tip(f"{name}: x={xv:.4g}, y={yv:.4g}")
                dots.append(f'<circle cx="{_n(px)}" cy="{_n(py)}" r="2.5" fill="{color}">{tip}</circle>')
        d = " ".join(path)
        parts.append(
            f'<g class="series"><path d="{d}" fill="none" stroke="{color}" stroke-width="1.8">'
            f"{_tip(name)}</path>"
        )
        parts += [*dots, "</g>"]
    parts.append('</g><g class="legend">')
    for k, name in enumerate(ys):
        y, color = box[1] + 8 + 18 * k, SERIES[k % len(SERIES)]
        parts += [
            _line(box[2] + 14, y, box[2] + 32, y, color, stroke_width="2.5"),
            _text(box[2] + 38, y, _short(name, 24), "start", dy="0.35em"),
        ]
    parts.append("</g>")
    parts += _axis_titles(box, xlabel, ylabel)
    return _figure(width, height, parts, title)


def scatter(
    x: object,
    y: object,
    labels: list | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    diagonal: bool = False,
) -> Figure:
    """Points at (x[i], y[i]); ``x``, ``y``: [n]; ``labels``: n names for the tooltips.

    ``diagonal=True`` draws the line y = x on equal axes, to compare an estimate with the exact value.
    """
    xv, yv = _as_array(x, "x", ndim=1), _as_array(y, "y", ndim=1)
    if len(xv) != len(yv):
        raise ValueError(f"x and y must have the same length; got {len(xv)} and {len(yv)}")
    names = None if labels is None else _labels(labels, len(xv), "labels")
    ok = np.isfinite(xv) & np.isfinite(yv)
    if not ok.any():
        raise ValueError("scatter got no finite (x, y) points")
    box, width, height = _xy_box(title)
    height += 24 if xlabel else 0
    (x_lo, x_hi), (y_lo, y_hi) = (xv[ok].min(), xv[ok].max()), (yv[ok].min(), yv[ok].max())
    if diagonal:  # the same range on both axes, so y = x is the 45-degree line through the box corners
        x_lo = y_lo = min(x_lo, y_lo)
        x_hi = y_hi = max(x_hi, y_hi)
    xa, ya = _axis(x_lo, x_hi, box[0], box[2]), _axis(y_lo, y_hi, box[3], box[1])
    parts = _frame(xa, ya, box)
    if diagonal:
        lo, hi = max(xa.lo, ya.lo), min(xa.hi, ya.hi)
        diag = _line(xa.px(lo), ya.px(lo), xa.px(hi), ya.px(hi), MUTED, stroke_dasharray="5 4")
        parts.append(diag.replace("<line ", '<line class="diagonal" ', 1))
    parts.append(f'<g class="points" fill="{SERIES[0]}" fill-opacity="0.7">')
    for i in np.flatnonzero(ok).tolist():
        name = f"{names[i]}: " if names else ""
        tip = _tip(f"{name}({xv[i]:.4g}, {yv[i]:.4g})")
        parts.append(f'<circle cx="{_n(xa.px(xv[i]))}" cy="{_n(ya.px(yv[i]))}" r="3.5">{tip}</circle>')
    parts.append("</g>")
    parts += _axis_titles(box, xlabel, ylabel)
    return _figure(width, height, parts, title)


def histogram(
    values: object,
    bins: int | list[float] = 30,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "count",
    log_y: bool = False,
) -> Figure:
    """Counts of ``values`` (any shape, flattened; NaN and inf dropped) in ``bins`` (a count or the edges)."""
    vals = _as_array(values, "values").ravel()
    finite = vals[np.isfinite(vals)]
    if finite.size == 0:
        raise ValueError(f"histogram got no finite values among {vals.size}")
    counts, edges = np.histogram(finite, bins=bins)
    if counts.max() == 0:
        raise ValueError(f"no values fall inside the bins [{edges[0]:.4g}, {edges[-1]:.4g}]")
    box, width, height = _xy_box(title)
    height += 24 if xlabel else 0
    xa = _axis(float(edges[0]), float(edges[-1]), box[0], box[2])
    ya = _axis(0.5 if log_y else 0.0, float(counts.max()), box[3], box[1], log=log_y)  # 0.5: count 1 shows
    parts = [*_frame(xa, ya, box), f'<g class="bars" fill="{SERIES[0]}" fill-opacity="0.85">']
    for k, c in enumerate(counts.tolist()):
        if c == 0:
            continue
        a, b = float(edges[k]), float(edges[k + 1])
        x0, x1, y = xa.px(a), xa.px(b), ya.px(c)
        tip = _tip(f"[{a:.4g}, {b:.4g}{']' if k == len(counts) - 1 else ')'}: {c}")
        w = max(x1 - x0 - 1, 0.5)
        parts.append(
            f'<rect x="{_n(x0 + 0.5)}" y="{_n(y)}" width="{_n(w)}" height="{_n(box[3] - y)}">{tip}</rect>'
        )
    parts.append("</g>")
    parts += _axis_titles(box, xlabel, ylabel)
    return _figure(width, height, parts, title)

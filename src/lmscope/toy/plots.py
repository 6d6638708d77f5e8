"""The toy-model pictures the generic charts of ``lmscope.report`` do not draw: the paper's feature-norm bars
coloured by superposition, the 2-d feature geometry (the pentagon), and the categorical phase diagram.
Each returns a ``lmscope.report.Figure`` (self-contained SVG, no external resource).
"""

from __future__ import annotations

import math

from torch import Tensor

from ..report import Figure, esc

INK, MUTED, GRID = "#333333", "#666666", "#d0d7de"
REGIME_COLORS = {"not learned": "#bdbdbd", "dedicated": "#0072b2", "antipodal": "#d55e00", "other": "#f0e442"}


def _t(x: float, y: float, s: object, anchor: str = "middle", size: float = 11, extra: str = "") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"{extra}>{esc(str(s))}</text>'
    )


def _svg(width: float, height: float, body: list[str], title: str) -> Figure:
    head = (
        f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{esc(title)}" font-family="system-ui, sans-serif" font-size="11" fill="{INK}" '
        'style="background:#ffffff">'
    )
    return Figure(
        "\n".join([head, _t(width / 2, 20, title, size=14, extra=' font-weight="600"'), *body, "</svg>"]),
        title=title,
    )


def _heat(t: float) -> str:
    """Black (no superposition) through red to yellow (t >= 1), like the paper's colour scale."""
    t = min(max(t, 0.0), 1.0)
    stops = [(0x22, 0x22, 0x22), (0xD5, 0x3E, 0x0F), (0xF5, 0xC2, 0x1B)]
    pos = t * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    f = pos - i
    rgb = (round(a + (b - a) * f) for a, b in zip(stops[i], stops[i + 1]))
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def feature_bars(norms: Tensor, interference: Tensor, column_titles: list[str], title: str) -> Figure:
    """One panel per column (e.g. sparsity): a bar of ‖W_i‖ per feature, coloured by Σ_{j≠i}(Ŵ_i·W_j)².

    norms, interference: [k, n]. Black bars: the feature has a dimension to itself; yellow: it shares.
    """
    k, n = norms.shape
    bar_h, panel_w, top, left = max(4.0, min(16.0, 320 / n)), 110.0, 64.0, 40.0
    scale = max(1.0, float(norms.max())) * 1.05
    height = top + n * bar_h + 50
    body = []
    for c in range(k):
        x0 = left + c * (panel_w + 16)
        body.append(_t(x0 + panel_w / 2, top - 10, column_titles[c]))
        body.append(
            f'<line x1="{x0:.1f}" y1="{top - 2:.1f}" x2="{x0:.1f}" y2="{top + n * bar_h:.1f}" stroke="{MUTED}"/>'
        )
        x_one = x0 + panel_w / scale
        body.append(
            f'<line x1="{x_one:.1f}" y1="{top - 2:.1f}" x2="{x_one:.1f}" y2="{top + n * bar_h:.1f}" '
            f'stroke="{GRID}" stroke-dasharray="3 3"/>'
        )
        for i in range(n):
            norm, inter = float(norms[c, i]), float(interference[c, i])
            tip = f"feature {i}: norm {norm:.3f}, interference {inter:.3f}"
            body.append(
                f'<rect x="{x0:.1f}" y="{top + i * bar_h + 1:.1f}" width="{panel_w * norm / scale:.1f}" '
                f'height="{bar_h - 2:.1f}" fill="{_heat(inter)}"><title>{esc(tip)}</title></rect>'
            )
    for i in range(0, n, max(1, math.ceil(12 / bar_h))):
        body.append(_t(left - 6, top + (i + 0.5) * bar_h, i, "end", extra=' dy="0.35em"'))
    width = left + k * (panel_w + 16) + 10
    body.append(
        _t(
            left,
            height - 14,
            "bar: ‖W_i‖ (dashed line = 1); colour: Σ_{j≠i}(Ŵ_i·W_j)², "
            "black 0 (own dimension) → yellow ≥ 1 (shared)",
            "start",
            size=10,
            extra=f' fill="{MUTED}"',
        )
    )
    return _svg(max(width, 420), height, body, title)


def feature_geometry(W: Tensor, column_titles: list[str], title: str) -> Figure:
    """For m = 2: per column, each feature W_i drawn as a line from the origin. W: [k, 2, n].

    Colour runs from dark (feature 0, the most important) to light; the grey circle has radius 1.
    """
    k, m, n = W.shape
    if m != 2:
        raise ValueError(f"feature geometry is drawn for m = 2 hidden dimensions; got m = {m}")
    size, top, left = 126.0, 44.0, 10.0
    scale = max(1.0, float(W.norm(dim=1).max())) * 1.1
    body = []
    for c in range(k):
        cx, cy, r = left + c * (size + 12) + size / 2, top + 16 + size / 2, size / 2
        body.append(_t(cx, top + 6, column_titles[c]))
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r / scale:.1f}" fill="none" stroke="{GRID}"/>')
        for i in range(n):
            x, y = float(W[c, 0, i]), float(W[c, 1, i])
            shade = round(40 + 170 * i / max(n - 1, 1))
            color = f"#{shade:02x}{shade // 2:02x}{255 - shade // 2:02x}"
            px, py = cx + r * x / scale, cy - r * y / scale
            tip = esc(f"feature {i}: ({x:.3f}, {y:.3f}), norm {math.hypot(x, y):.3f}")
            body.append(
                f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{px:.1f}" y2="{py:.1f}" stroke="{color}" '
                f'stroke-width="2.5"><title>{tip}</title></line>'
            )
            body.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"><title>{tip}</title></circle>'
            )
    height = top + size + 44
    caption = "line: W_i from the origin; dark = feature 0 (most important) → light = least; circle: radius 1"
    body.append(_t(left, height - 10, caption, "start", size=10, extra=f' fill="{MUTED}"'))
    return _svg(max(left + k * (size + 12), 480), height, body, title)


def regime_grid(
    regimes: list[list[str]],
    row_labels: list[str],
    col_labels: list[str],
    title: str,
    xlabel: str,
    ylabel: str,
) -> Figure:
    """A grid of named categories (the phase diagram): one coloured cell per (row, column), with a legend."""
    rows, cols = len(regimes), len(regimes[0])
    cell, top, left = 44.0, 40.0, 110.0
    body = []
    for i, row in enumerate(regimes):
        body.append(_t(left - 8, top + (i + 0.5) * cell, row_labels[i], "end", extra=' dy="0.35em"'))
        for j, name in enumerate(row):
            x, y = left + j * cell, top + i * cell
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell - 2:.1f}" height="{cell - 2:.1f}" '
                f'fill="{REGIME_COLORS.get(name, "#ffffff")}"><title>{esc(f"{ylabel} {row_labels[i]}, {xlabel} {col_labels[j]}: {name}")}</title></rect>'
            )
    for j, label in enumerate(col_labels):
        body.append(_t(left + (j + 0.5) * cell, top + rows * cell + 14, label))
    body.append(_t(left + cols * cell / 2, top + rows * cell + 34, xlabel, size=12))
    y_mid = top + rows * cell / 2
    body.append(_t(16, y_mid, ylabel, size=12, extra=f' transform="rotate(-90 16 {y_mid:.1f})"'))
    legend_x = left + cols * cell + 20
    for k, (name, color) in enumerate(REGIME_COLORS.items()):
        y = top + 8 + 20 * k
        body.append(f'<rect x="{legend_x:.1f}" y="{y:.1f}" width="14" height="14" fill="{color}"/>')
        body.append(_t(legend_x + 20, y + 7, name, "start", extra=' dy="0.35em"'))
    return _svg(legend_x + 120, top + rows * cell + 50, body, title)

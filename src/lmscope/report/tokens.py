"""Text examples with every token shaded by its activation: the one highlighter and the one colour ramp.

Reports and the explorer both draw examples with :func:`example_html`; the explorer's live box colours
tokens in the browser with the same ramp (:data:`RAMP`, handed to its script).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .markup import Markup, render

# Positive activations orange, negative blue; the alpha grows with |activation| / scale up to max_alpha.
RAMP = {"positive": (249, 115, 22), "negative": (37, 99, 235), "max_alpha": 0.85}


def act_color(value: float, scale: float) -> str:
    """The background of a token with activation ``value`` when ``scale`` is the largest one shown."""
    m = scale if scale and scale > 0 and math.isfinite(scale) else 1.0
    t = max(-1.0, min(1.0, value / m)) if math.isfinite(value) else 0.0
    r, g, b = RAMP["positive"] if t >= 0 else RAMP["negative"]
    return f"rgba({r}, {g}, {b}, {RAMP['max_alpha'] * abs(t):.3f})"


def shown_token(token: str) -> str:
    """A token as it reads in a line of text: newlines and tabs made visible."""
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5")


def token_spans(
    tokens: Sequence[str],
    acts: Sequence[float | None],
    scale: float,
    peak: int | None = None,
    cut_before: bool = False,
    cut_after: bool = False,
) -> Markup:
    """A line of tokens, each shaded by its activation (``acts``: one per token; None is NaN); hovering
    shows the value. ``peak`` is underlined; ``cut_before``/``cut_after`` add ellipses for a cut example."""
    spans = []
    for i, (tok, a) in enumerate(zip(tokens, acts)):
        a = math.nan if a is None else float(a)
        spans.append(
            {
                "text": shown_token(tok),
                "act": a,
                "color": act_color(a, scale),
                "peak": i == peak,
                "tip": f"{tok!r}  activation {a:.3f}",
            }
        )
    return Markup(render("tokens.html", spans=spans, cut_before=cut_before, cut_after=cut_after))


def peak_of(acts: Sequence[float | None]) -> int:
    """The index of the largest activation (None, a NaN JSON could not hold, never wins)."""
    return int(np.argmax(np.nan_to_num(np.asarray(acts, dtype=float), nan=-np.inf)))


def example_html(
    example: dict, scale: float, before: int | None = None, after: int | None = None, meta: str = ""
) -> Markup:
    """One saved text example ({"tokens", "acts", "peak", "label"}): ``before`` / ``after`` tokens around
    its peak (None: all of them), shaded relative to ``scale``, with ``meta`` (default: its label and peak
    activation) beside it."""
    tokens, acts = list(example.get("tokens", [])), list(example.get("acts", []))
    n = min(len(tokens), len(acts))
    if n == 0:
        return Markup("")
    peak = example.get("peak")
    if not isinstance(peak, int) or not 0 <= peak < n:
        peak = peak_of(acts[:n])
    lo = 0 if before is None else max(0, peak - before)
    hi = n if after is None else min(n, peak + after + 1)
    if not meta:
        label, value = example.get("label"), acts[peak]
        shown = "–" if value is None or not math.isfinite(value) else f"{value:.3g}"
        meta = f"{label} · {shown}" if label else shown
    spans = token_spans(tokens[lo:hi], acts[lo:hi], scale, peak - lo, lo > 0, hi < n)
    return Markup(render("example.html", meta=meta, tokens=spans))

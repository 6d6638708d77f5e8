"""Automatic feature labels without a language model, scored on held-out text.

    record = auto_labels(train_acts, test_acts, token_text)   # FeatureActivations of two disjoint samples

A label is a rule over the text that says where the feature should fire, fitted on the train sample:
    tokens    the token is one of up to `max_set` tokens                     e.g. 'def' | 'class'
    previous  the token before it is one of up to `max_set` tokens           e.g. after 'import'
    bigram    (previous token, token) is one pair                            e.g. 'self' '.'
    label     the token's document has one corpus label                      e.g. [python]
Of each kind the best set is a prefix of the candidates sorted by precision (for F1 the optimal set always
is); the kind with the highest train F1 wins. The label is then scored on the test sample: precision (of
the tokens the rule picks, the fraction where the feature fires), recall (of the tokens where it fires,
the fraction the rule picks) and F1. BOS and tokens the SAE did not encode are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ....report import Text, histogram, table
from ..features import FeatureActivations

KINDS = ("tokens", "previous", "bigram", "label")


class _Text:
    """Numpy views of a FeatureActivations sample: token, previous token (-1 at a context's start), bigram
    key (previous * base + token), label, and which rows count (encoded ones)."""

    def __init__(self, acts: FeatureActivations, base: int):
        self.acts = acts
        self.tokens = acts.tokens.numpy().astype(np.int64)
        seg = acts.segment.numpy()
        self.previous = np.full_like(self.tokens, -1)
        same = seg[1:] == seg[:-1]
        self.previous[1:][same] = self.tokens[:-1][same]
        self.base = base
        self.bigram = np.where(self.previous >= 0, self.previous * self.base + self.tokens, -1)
        self.labels = acts.labels.numpy().astype(np.int64)
        self.valid = ~acts.skip.numpy()
        self.n_valid = int(self.valid.sum())
        self.columns = {
            "tokens": self.tokens,
            "previous": self.previous,
            "bigram": self.bigram,
            "label": self.labels,
        }
        self.counts = {}
        for kind, column in self.columns.items():  # how often each key occurs among the valid rows
            keys, counts = np.unique(column[self.valid & (column >= 0)], return_counts=True)
            self.counts[kind] = (keys, counts)

    def count(self, kind: str, keys: np.ndarray) -> np.ndarray:
        all_keys, counts = self.counts[kind]
        where = np.searchsorted(all_keys, keys).clip(max=len(all_keys) - 1)
        return np.where(all_keys[where] == keys, counts[where], 0)

    def fired(self, feature: int) -> np.ndarray:
        rows, _ = self.acts.of(feature)
        rows = rows.numpy()
        return rows[self.valid[rows]]

    def predict(self, kind: str, keys: Sequence[int]) -> np.ndarray:
        """[N] bool: the rows the rule picks (valid rows only)."""
        return np.isin(self.columns[kind], np.asarray(keys, dtype=np.int64)) & self.valid


def prf(tp: float, predicted: float, actual: float) -> dict:
    """Precision, recall and F1 from counts (0 where undefined)."""
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * tp / (predicted + actual) if predicted + actual else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def fit_label(text: _Text, fired: np.ndarray, max_set: int = 3, candidates: int = 20) -> dict:
    """The best rule (by F1 on this sample) for a feature firing at rows `fired`:
    {"kind", "keys", "train": {precision, recall, f1}}."""
    best = {"kind": "tokens", "keys": [], "train": prf(0, 0, len(fired))}
    for kind, column in text.columns.items():
        values = column[fired]
        keys, tp = np.unique(values[values >= 0], return_counts=True)
        if not len(keys):
            continue
        top = np.argsort(-tp, kind="stable")[:candidates]
        keys, tp = keys[top], tp[top]
        total = text.count(kind, keys)
        order = np.argsort(-(tp / np.maximum(total, 1)), kind="stable")[: 1 if kind == "bigram" else max_set]
        tp_sum, pred_sum = np.cumsum(tp[order]), np.cumsum(total[order])
        f1 = 2 * tp_sum / (pred_sum + len(fired))
        size = int(np.argmax(f1)) + 1
        if f1[size - 1] > best["train"]["f1"]:
            chosen = keys[order[:size]].tolist()
            best = {
                "kind": kind,
                "keys": chosen,
                "train": prf(tp_sum[size - 1], pred_sum[size - 1], len(fired)),
            }
    return best


def describe(rule: dict, token_text: Callable[[int], str], label_names: Sequence[str], base: int) -> str:
    """The label's words: 'def' | 'class', after 'import', 'self' '.', [python]."""
    quote = lambda t: repr(token_text(int(t)))  # noqa: E731 (repr shows spaces and newlines)
    keys = rule["keys"]
    if rule["kind"] == "tokens":
        return " | ".join(quote(t) for t in keys)
    if rule["kind"] == "previous":
        return "after " + " | ".join(quote(t) for t in keys)
    if rule["kind"] == "bigram":
        return " ".join(quote(t) for t in divmod(keys[0], base)) if keys else ""
    return " | ".join(f"[{label_names[i]}]" for i in keys)


def auto_labels(
    train: FeatureActivations,
    test: FeatureActivations,
    token_text: Callable[[int], str] = str,
    features: Sequence[int] | None = None,
    min_count: int = 5,
    max_set: int = 3,
    top: int = 15,
) -> dict:
    """Label every feature that fires at least min_count times in `train`, score the labels on `test`.

    token_text: token id -> its text (for the label's words). -> {"features": [{feature, label, kind,
    n_train, n_test, train_f1, precision, recall, f1}], "median_f1", "mean_f1", "by_kind", "best", "worst",
    "n_labelled", "n_too_rare", ...}; precision / recall / f1 are on test."""
    base = 1 + max(int(a.tokens.max()) if len(a.tokens) else 0 for a in (train, test))  # one bigram key space
    tr, te = _Text(train, base), _Text(test, base)
    d_sae = len(train.starts) - 1
    features = range(d_sae) if features is None else features
    out, too_rare = [], 0
    for i in features:
        fired = tr.fired(int(i))
        if len(fired) < min_count:
            too_rare += 1
            continue
        rule = fit_label(tr, fired, max_set)
        actual = np.zeros(len(te.tokens), dtype=bool)
        actual[te.fired(int(i))] = True
        predicted = te.predict(rule["kind"], rule["keys"])
        scores = prf(float((predicted & actual).sum()), float(predicted.sum()), float(actual.sum()))
        out.append(
            {
                "feature": int(i),
                "label": describe(rule, token_text, train.label_names, tr.base),
                "kind": rule["kind"],
                "n_train": len(fired),
                "n_test": int(actual.sum()),
                "train_f1": rule["train"]["f1"],
                **scores,
            }
        )
    f1 = np.array([r["f1"] for r in out]) if out else np.zeros(0)
    ranked = sorted(out, key=lambda r: (-r["f1"], r["feature"]))
    return {
        "n_labelled": len(out),
        "n_too_rare": too_rare,
        "min_count": min_count,
        "n_train_tokens": tr.n_valid,
        "n_test_tokens": te.n_valid,
        "median_f1": float(np.median(f1)) if len(f1) else None,
        "mean_f1": float(f1.mean()) if len(f1) else None,
        "by_kind": {kind: sum(r["kind"] == kind for r in out) for kind in KINDS},
        "best": ranked[:top],
        "worst": ranked[::-1][:top],
        "features": out,
    }


def labels_sections(record: dict) -> list[tuple[str, object]]:
    """Report sections: the F1 distribution, the kinds of label, the best and worst features."""
    text = Text(
        f"{record['n_labelled']} features labelled from {record['n_train_tokens']} tokens "
        f"(fired at least {record['min_count']} times; {record['n_too_rare']} fired less), scored on "
        f"{record['n_test_tokens']} held-out tokens: median F1 {record['median_f1'] or 0:.3f}, mean "
        f"{record['mean_f1'] or 0:.3f}. Label kinds: "
        + ", ".join(f"{k} {v}" for k, v in record["by_kind"].items())
    )
    sections = [("Automatic labels (no language model)", text)]
    if record["features"]:
        f1 = [r["f1"] for r in record["features"]]
        sections.append(("", histogram(f1, bins=20, xlabel="held-out F1 of the label", ylabel="features")))
    columns = ["feature", "label", "kind", "n_train", "n_test", "precision", "recall", "f1"]
    sections.append(("Best-labelled features", table(record["best"], columns, float_format="{:.3f}")))
    sections.append(("Worst-labelled features", table(record["worst"], columns, float_format="{:.3f}")))
    return sections

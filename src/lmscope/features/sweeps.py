"""Sparse-probe sweeps over layers x k, with a randomly rotated baseline, and the best single neurons.

    rows = probe_sweep(train [n, L, d], {"french": y_train}, test [m, L, d], {"french": y_test}, layers=range(L))
    best = best_neurons(train, y_train, test, y_test, layers=range(L))

Every row is a plain dict (feature, layer, k, method, basis, f1, precision, recall, train_f1, neurons), so a
sweep saves as JSON and loads into a DataFrame as it is. F1, precision and recall are on the test split.
The rotated basis ("rotated") reruns the same probes on X @ Q for a Haar-random Q per layer: if the
neuron basis is privileged for a feature, sparse probes do clearly better in it than in a random basis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .basis import random_rotation
from .probing import SparseProbe, binary_metrics

DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64)


def _check_stack(X: Tensor, name: str) -> Tensor:
    X = torch.as_tensor(X)
    if X.dim() != 3:
        raise ValueError(f"{name} must be [n_samples, n_layers, d], got shape {tuple(X.shape)}")
    return X


def probe_sweep(
    train: Tensor,
    train_labels: Mapping[str, Tensor],
    test: Tensor,
    test_labels: Mapping[str, Tensor],
    layers: Sequence[int] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    method: str = "mean_diff",
    rotated: bool = True,
    seed: int = 0,
    progress: bool = False,
    **probe_kwargs,
) -> list[dict]:
    """Fit SparseProbe(k, method) for every feature x layer x k (x basis) and score it on the test split.

    train [n, n_layers, d], test [m, n_layers, d]; train_labels / test_labels: feature name -> y [n] / [m]
    (bool). layers: the layer number of each slot of axis 1 (default 0..n_layers-1), used in the rows.
    rotated: also probe in a random basis (one Haar rotation per layer, drawn from `seed` + layer).
    """
    train, test = _check_stack(train, "train"), _check_stack(test, "test")
    n_layers, d = train.shape[1], train.shape[2]
    layers = list(range(n_layers)) if layers is None else list(layers)
    if len(layers) != n_layers or test.shape[1:] != train.shape[1:]:
        raise ValueError(
            f"train {tuple(train.shape)}, test {tuple(test.shape)} and {len(layers)} layer numbers disagree"
        )
    if set(train_labels) != set(test_labels):
        raise ValueError(f"features differ: train {sorted(train_labels)}, test {sorted(test_labels)}")
    ks = [k for k in ks if k <= d]
    rows = []
    for slot, layer in enumerate(tqdm(layers, desc="probe sweep", disable=not progress)):
        bases = [("native", train[:, slot], test[:, slot])]
        if rotated:
            q = random_rotation(d, seed + layer)
            bases.append(("rotated", train[:, slot].float() @ q, test[:, slot].float() @ q))
        for basis, X_train, X_test in bases:
            for feature, y_train in train_labels.items():
                y_test = test_labels[feature]
                for k in ks:
                    probe = SparseProbe(k, method=method, seed=seed, **probe_kwargs).fit(X_train, y_train)
                    scores = probe.metrics(X_test, y_test)
                    rows.append(
                        {
                            "feature": feature,
                            "layer": layer,
                            "k": k,
                            "method": method,
                            "basis": basis,
                            **scores,
                            "train_f1": probe.f1_score(X_train, y_train),
                            "neurons": probe.neurons_.tolist(),
                        }
                    )
    return rows


def best_neurons(
    train: Tensor,
    y_train: Tensor,
    test: Tensor,
    y_test: Tensor,
    layers: Sequence[int] | None = None,
    n_candidates: int = 8,
    top: int = 10,
    l2: float = 1e-2,
) -> list[dict]:
    """The best single neurons for one feature: 1-sparse probes (SparseProbe(1, l2=l2)) on each layer's top
    `n_candidates` neurons by mean difference, chosen by train F1 (ties: the larger mean difference),
    scored on the test split.

    train [n, n_layers, d], test [m, n_layers, d], y_* [n] / [m] bool. Returns the `top` best rows
    {layer, neuron, train_f1, f1, precision, recall, mean_diff (in std units), sign (+1: higher on
    positives)}, best first.
    """
    train, test = _check_stack(train, "train"), _check_stack(test, "test")
    layers = list(range(train.shape[1])) if layers is None else list(layers)
    y_train_t, y_test_t = torch.as_tensor(y_train).bool(), torch.as_tensor(y_test).bool()
    X = train.double()  # [n, n_layers, d]
    # mean_diff_scores on standardised activations, all layers at once: standardising is affine per
    # neuron, so the difference of the standardised means is the difference of the means over the std.
    pos_mean, neg_mean = X[y_train_t].mean(0), X[~y_train_t].mean(0)  # [n_layers, d]
    scores = (pos_mean - neg_mean).abs() / X.std(0).clamp_min(1e-12)
    chosen = scores.argsort(dim=1, descending=True)[:, :n_candidates]  # [n_layers, n_candidates]
    slots = [slot for slot in range(len(layers)) for _ in range(chosen.shape[1])]
    neurons = chosen.flatten().tolist()
    diffs = scores.gather(1, chosen).flatten().tolist()
    rows = []
    for slot, neuron, diff in zip(slots, neurons, diffs):
        # One SparseProbe per candidate: a few ms each, next to minutes of model passes in `lmscope neurons`.
        x = X[:, slot, [neuron]]
        probe = SparseProbe(1, l2=l2).fit(x, y_train_t)
        rows.append(
            {
                "layer": layers[slot],
                "neuron": neuron,
                "train_f1": probe.f1_score(x, y_train_t),
                **binary_metrics(probe.predict(test[:, slot, [neuron]]), y_test_t),
                "mean_diff": diff,
                "sign": 1 if bool(pos_mean[slot, neuron] >= neg_mean[slot, neuron]) else -1,
            }
        )
    rows.sort(key=lambda r: (r["train_f1"], r["mean_diff"]), reverse=True)
    return rows[:top]


def summarize_sweep(rows: Sequence[dict]) -> dict[str, dict]:
    """feature -> the best 1-sparse native probe of the sweep: its layer chosen by train F1 (choosing by
    test F1 over many layers would overstate it), its neuron, its test F1, and the test F1 of the
    1-sparse probe at that layer in the rotated basis."""
    out: dict[str, dict] = {}
    for feature in dict.fromkeys(r["feature"] for r in rows):
        k1 = [r for r in rows if r["feature"] == feature and r["k"] == 1]
        native = [r for r in k1 if r["basis"] == "native"]
        if not native:
            continue
        best = max(native, key=lambda r: (r["train_f1"], -r["layer"]))
        rotated = [r["f1"] for r in k1 if r["basis"] == "rotated" and r["layer"] == best["layer"]]
        out[feature] = {
            "best_layer_k1": best["layer"],
            "best_neuron_k1": best["neurons"][0],
            "best_f1_k1": best["f1"],
            "train_f1_k1": best["train_f1"],
            "rotated_f1_k1": rotated[0] if rotated else None,
        }
    return out

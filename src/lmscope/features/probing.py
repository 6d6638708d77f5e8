"""Sparse probing (Gurnee et al. 2023, "Finding Neurons in a Haystack"): which k neurons carry a feature?

A :class:`SparseProbe` picks a support of k neurons with one of four methods, then fits an L2-regularised
logistic regression on that support only (as the paper does), on standardised activations:

    mean_diff  rank neurons by |mean(positives) - mean(negatives)| in units of each neuron's std
    l1         L1 logistic regression, its penalty searched until at least k weights are non-zero; keep the k
               largest |weights|
    adaptive   recursive elimination: fit on the current set, keep the half with the largest |weights|, refit,
               until k remain (the paper's "adaptive thresholding")
    mip        optimal sparse probing: the support with the lowest training loss of the final probe, found by
               outer approximation (a mixed-integer master problem solved with HiGHS) over the top
               `prefilter` neurons by mean difference, starting from the mean-difference support, under a
               time limit (the paper solves a hinge-loss version with Gurobi)

    probe = SparseProbe(k=1).fit(X_train, y_train)        # X [n, d], y [n] bool or 0/1
    probe.neurons_, probe.f1_score(X_test, y_test)        # selected neurons, F1 on the test split
    probe.score(X_test, y_test)                           # accuracy, as scikit-learn's classifiers

Labels are binary (1 = the feature is present); the class weights are balanced, so rare features are not
ignored. Inputs may be numpy arrays or torch tensors; outputs are torch tensors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

METHODS = ("mean_diff", "l1", "adaptive", "mip")


def _as_xy(X, y=None) -> tuple[Tensor, Tensor | None]:
    X = torch.as_tensor(X).detach().to(torch.float64)
    if X.dim() != 2:
        raise ValueError(f"X must be [n_samples, n_neurons], got shape {tuple(X.shape)}")
    if not torch.isfinite(X).all():
        raise ValueError("X holds NaN or infinite values; clean the activations first")
    if y is None:
        return X, None
    y = torch.as_tensor(y).detach().flatten()
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]} labels")
    values = set(torch.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(
            f"y must be binary (bool or 0/1, 1 = feature present), got values {sorted(values)[:6]}; "
            "for several classes probe one class against the rest: y == label"
        )
    if len(values) < 2:
        raise ValueError("y holds one class only; a probe needs positives and negatives")
    return X, y.to(torch.float64)


def binary_metrics(pred, y) -> dict[str, float]:
    """Precision, recall and F1 of the positive class (0 where undefined). pred, y: [n] bool or 0/1."""
    pred, y = torch.as_tensor(pred).bool().flatten(), torch.as_tensor(y).bool().flatten()
    tp = float((pred & y).sum())
    precision = tp / max(float(pred.sum()), 1.0)
    recall = tp / max(float(y.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


def _balanced_weights(y: Tensor) -> Tensor:
    """Per-sample weights n / (2 n_class): both classes count equally; the weights average to 1."""
    n_pos = y.sum()
    return torch.where(y > 0, y.numel() / (2 * n_pos), y.numel() / (2 * (y.numel() - n_pos)))


def _logloss(logits: Tensor, y: Tensor, weights: Tensor) -> Tensor:
    """mean_i weights_i * logloss(logits_i, y_i). Written out: torch's binary_cross_entropy_with_logits
    with a weight is orders of magnitude slower on small inputs, and probes fit thousands of them."""
    return (weights * (torch.nn.functional.softplus(logits) - y * logits)).mean()


def fit_logistic(Z: Tensor, y: Tensor, l2: float = 1e-2, max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Class-balanced L2 logistic regression by L-BFGS. Z [n, m] (standardised), y [n] 0/1 -> (w [m], b).

    Minimises mean_i c_i * logloss_i + l2/2 * |w|^2 (the intercept is not penalised).
    """
    weights = _balanced_weights(y)
    w = torch.zeros(Z.shape[1], dtype=Z.dtype, requires_grad=True)
    b = torch.zeros((), dtype=Z.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        loss = _logloss(Z @ w + b, y, weights) + 0.5 * l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def mean_diff_scores(Z: Tensor, y: Tensor) -> Tensor:
    """|mean(Z[y=1]) - mean(Z[y=0])| per column. Z [n, m] (standardised: units of each neuron's std) -> [m]."""
    pos = y > 0
    return (Z[pos].mean(0) - Z[~pos].mean(0)).abs()


def _l1_logistic(Z: Tensor, y: Tensor, lam: float, w0: Tensor, b0: Tensor, step: float, max_iter: int = 300):
    """FISTA for mean_i c_i * logloss_i + lam * |w|_1, from (w0, b0), with step size `step`. -> (w, b)."""
    weights = _balanced_weights(y)
    n = Z.shape[0]
    w, b = w0.clone(), b0.clone()
    v, c, t = w.clone(), b.clone(), 1.0
    for _ in range(max_iter):
        r = weights * (torch.sigmoid(Z @ v + c) - y) / n  # d loss / d logits
        w_next = v - step * (Z.T @ r)
        w_next = w_next.sign() * (w_next.abs() - step * lam).clamp_min(0)
        b_next = c - step * r.sum()
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        v = w_next + (t - 1) / t_next * (w_next - w)
        c = b_next + (t - 1) / t_next * (b_next - b)
        moved = float((w_next - w).abs().max())
        w, b, t = w_next, b_next, t_next
        if moved < 1e-6 * max(1.0, float(w.abs().max())):
            break
    return w, b


def l1_support(Z: Tensor, y: Tensor, k: int, shrink: float = 0.8, max_steps: int = 60) -> Tensor:
    """The k neurons an L1 logistic regression keeps. Walk the penalty down from the smallest one that
    zeroes every weight (warm starts) until at least k weights are non-zero, then keep the k largest
    |weights|. Z [n, m] (standardised), y [n] 0/1 -> LongTensor [k]."""
    n = Z.shape[0]
    weights = _balanced_weights(y)
    # Above lam_max every weight is zero (the gradient at w = 0, with the balanced intercept b = 0).
    lam = (Z.T @ (weights * (0.5 - y))).abs().max().item() / n
    # Step 1/L: the logistic loss's Hessian is at most 0.25 * Z^T C Z / n (with the intercept column).
    Zc = torch.cat([Z, torch.ones(n, 1, dtype=Z.dtype)], 1) * weights.sqrt()[:, None]
    step = 1.0 / (0.25 * torch.linalg.matrix_norm(Zc, ord=2).square().item() / n + 1e-12)
    w, b = torch.zeros(Z.shape[1], dtype=Z.dtype), torch.zeros((), dtype=Z.dtype)
    for _ in range(max_steps):
        lam *= shrink
        w, b = _l1_logistic(Z, y, lam, w, b, step)
        if int((w != 0).sum()) >= k:
            break
    # Ties among zero weights (too few non-zero after max_steps) fall back to the mean-difference order.
    order = torch.argsort(w.abs() + 1e-12 * mean_diff_scores(Z, y), descending=True)
    return order[:k]


def adaptive_support(Z: Tensor, y: Tensor, k: int, l2: float, keep: float = 0.5) -> Tensor:
    """Fit on the current neurons, keep the `keep` fraction with the largest |weights| (at least k), refit,
    until k remain. Z [n, m] -> LongTensor [k]."""
    support = torch.arange(Z.shape[1])
    while support.numel() > k:
        w, _ = fit_logistic(Z[:, support], y, l2=l2, max_iter=100)
        n_keep = max(k, int(support.numel() * keep))
        support = support[w.abs().argsort(descending=True)[:n_keep]]
    return support


def _support_objective(Z: Tensor, y: Tensor, support: Tensor, l2: float) -> tuple[float, Tensor]:
    """The probe's training objective on `support` and the per-sample gradient of the mean loss wrt the
    logits at its optimum (r [n]; Z[:, j] @ r is how much neuron j would lower the loss if added)."""
    w, b = fit_logistic(Z[:, support], y, l2=l2)
    weights = _balanced_weights(y)
    logits = Z[:, support] @ w + b
    loss = _logloss(logits, y, weights)
    residual = weights * (torch.sigmoid(logits) - y) / Z.shape[0]
    return float(loss + 0.5 * l2 * w.square().sum()), residual


def mip_support(
    Z: Tensor, y: Tensor, k: int, candidates: Tensor, l2: float, time_limit: float, rel_gap: float = 1e-4
) -> tuple[Tensor, str]:
    """Optimal k-sparse logistic probe over `candidates` (column indices of Z): outer approximation.

    P(s) = min_w,b mean_i c_i logloss_i + l2/2 |w|^2 with w restricted to the neurons where s = 1 is convex
    in s (perspective form), with dP/ds_j = -(Z_j . r)^2 / (2 l2), r the loss gradient wrt the logits
    (Bertsimas, Pauphilet & Van Parys 2021). A master MILP in HiGHS, min theta over s in {0,1}^m with
    sum(s) = k and one cut theta >= P(s_t) + grad_t . (s - s_t) per visited support, gives a lower bound;
    each visited support gives an upper bound. Stops when they meet (optimal) or at the time limit. The
    first support visited is the first k candidates (the mean-difference top k), so the result's training
    objective is never worse than mean difference's. Z [n, d], y [n] 0/1.
    Returns (support: LongTensor [k] of column indices of Z, status text).
    """
    import highspy
    import numpy as np

    t_start = time.monotonic()
    Zc = Z[:, candidates]
    m, inf = Zc.shape[1], highspy.kHighsInf
    master = highspy.Highs()
    master.setOptionValue("output_flag", False)
    master.setOptionValue("threads", 1)
    # Columns: s [m] binary, then theta >= 0 (the loss is non-negative); minimise theta.
    cols = np.arange(m + 1, dtype=np.int32)
    master.addCols(
        m + 1,
        np.r_[np.zeros(m), 1.0],
        np.zeros(m + 1),
        np.r_[np.ones(m), inf],
        0,
        np.zeros(m + 1, np.int32),
        np.zeros(0, np.int32),
        np.zeros(0),
    )
    master.changeColsIntegrality(m, cols[:m], np.ones(m, np.uint8))
    master.addRow(float(k), float(k), m, cols[:m], np.ones(m))  # exactly k neurons

    s = np.zeros(m)
    s[:k] = 1.0
    best, best_s, lower = math.inf, s, 0.0
    while True:
        loss, residual = _support_objective(Zc, y, torch.as_tensor(np.flatnonzero(s)), l2)
        if loss < best:
            best, best_s = loss, s
        grad = -((Zc.T @ residual).numpy() ** 2) / (2 * l2)
        master.addRow(loss - grad @ s, inf, m + 1, cols, np.r_[-grad, 1.0])  # theta - grad.s >= P - grad.s_t
        left = time_limit - (time.monotonic() - t_start)
        if left <= 0:
            break
        master.setOptionValue("time_limit", left)
        master.run()
        if not master.getInfo().primal_solution_status:
            break  # the time ran out before the master found any s
        lower = max(lower, master.getInfo().mip_dual_bound)
        s = np.round(np.array(master.getSolution().col_value)[:m])
        if best - lower <= rel_gap * max(best, 1e-12):
            break
    gap = max(0.0, best - lower) / max(best, 1e-12)
    status = "optimal" if gap <= rel_gap else f"time limit (gap {gap:.1%})"
    return candidates[torch.as_tensor(np.flatnonzero(best_s))], status


@dataclass
class SparseProbe:
    """A logistic-regression probe that may read only `k` neurons (scikit-learn style).

    k: neurons to use. method: "mean_diff" | "l1" | "adaptive" | "mip" (see the module docstring).
    l2: ridge penalty of the final fit on the support (mean loss on standardised activations).
    prefilter / time_limit / max_samples: the MIP's candidate count (top neurons by mean difference), its
    time limit in seconds, and the most samples it reads (a stratified subsample, drawn with `seed`).

    After fit: neurons_ (LongTensor [k], the support, most important first), coef_ [d] (zero off the
    support, in the units of X), intercept_, and status_ (the MIP's HiGHS status, else "").
    """

    k: int
    method: str = "mean_diff"
    l2: float = 1e-2
    prefilter: int = 50
    time_limit: float = 20.0
    max_samples: int = 2000
    seed: int = 0
    neurons_: Tensor = field(init=False, repr=False, default=None)
    coef_: Tensor = field(init=False, repr=False, default=None)
    intercept_: float = field(init=False, repr=False, default=0.0)
    status_: str = field(init=False, repr=False, default="")

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: choose one of {', '.join(METHODS)}")
        if int(self.k) < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")

    def fit(self, X, y) -> SparseProbe:
        """X [n, d] activations, y [n] bool or 0/1. Returns self."""
        X, y = _as_xy(X, y)
        d = X.shape[1]
        if self.k > d:
            raise ValueError(f"k={self.k} is more than the {d} neurons in X")
        mean, std = X.mean(0), X.std(0)
        scale = std.clamp_min(1e-6 * float(std.max()) + 1e-12)  # dead neurons: avoid dividing by zero
        Z = (X - mean) / scale
        support = self._support(Z, y)
        w, b = fit_logistic(Z[:, support], y, l2=self.l2)
        order = w.abs().argsort(descending=True)
        support, w = support[order], w[order]
        self.neurons_ = support
        self.coef_ = torch.zeros(d, dtype=torch.float64)
        self.coef_[support] = w / scale[support]
        self.intercept_ = float(b - (w * mean[support] / scale[support]).sum())
        return self

    def _support(self, Z: Tensor, y: Tensor) -> Tensor:
        if self.method == "mean_diff":
            return mean_diff_scores(Z, y).argsort(descending=True)[: self.k]
        if self.method == "l1":
            return l1_support(Z, y, self.k)
        if self.method == "adaptive":
            return adaptive_support(Z, y, self.k, self.l2)
        candidates = mean_diff_scores(Z, y).argsort(descending=True)[: max(self.prefilter, self.k)]
        rows = _stratified_subsample(y, self.max_samples, self.seed)
        support, self.status_ = mip_support(Z[rows], y[rows], self.k, candidates, self.l2, self.time_limit)
        return support

    def _check_fitted(self, X) -> Tensor:
        if self.coef_ is None:
            raise RuntimeError("this SparseProbe is not fitted yet: call fit(X, y) first")
        X, _ = _as_xy(X)
        if X.shape[1] != self.coef_.shape[0]:
            raise ValueError(f"X has {X.shape[1]} neurons; the probe was fitted on {self.coef_.shape[0]}")
        return X

    def decision_function(self, X) -> Tensor:
        """Logits [n]: X @ coef_ + intercept_."""
        return self._check_fitted(X) @ self.coef_ + self.intercept_

    def predict_proba(self, X) -> Tensor:
        """[n, 2]: probabilities of class 0 and class 1 (the feature present)."""
        p = torch.sigmoid(self.decision_function(X))
        return torch.stack([1 - p, p], 1)

    def predict(self, X) -> Tensor:
        """[n] bool: the feature is predicted present."""
        return self.decision_function(X) > 0

    def metrics(self, X, y) -> dict[str, float]:
        """F1, precision and recall of the positive class on (X, y)."""
        _, y = _as_xy(X, y)
        return binary_metrics(self.predict(X), y)

    def f1_score(self, X, y) -> float:
        """F1 of the positive class (the paper's headline metric)."""
        return self.metrics(X, y)["f1"]

    def score(self, X, y) -> float:
        """Accuracy: the share of samples predicted correctly (scikit-learn's `score` for classifiers)."""
        _, y = _as_xy(X, y)
        return float((self.predict(X) == y.bool()).double().mean())


def _stratified_subsample(y: Tensor, max_samples: int, seed: int) -> Tensor:
    """At most max_samples row indices, each class kept in proportion (all rows when there are few)."""
    n = y.numel()
    if n <= max_samples:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for cls in (0.0, 1.0):
        idx = (y == cls).nonzero().flatten()
        take = max(1, round(max_samples * idx.numel() / n))
        rows.append(idx[torch.randperm(idx.numel(), generator=gen)[:take]])
    return torch.cat(rows).sort().values

"""Metrics on a ContrastTask's prediction position (the last one: prompts are left-padded).

Each metric maps logits [n, pos, d_vocab] (or [n, d_vocab] at the last position) to one number per
example [n]. `normalised` puts a patched metric on the scale 0 = corrupt run, 1 = clean run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Metric = Callable[[Tensor, "object"], Tensor]


def last(logits: Tensor) -> Tensor:
    """[n, pos, d_vocab] -> [n, d_vocab] at the prediction position; [n, d_vocab] passes through."""
    return logits[:, -1] if logits.dim() == 3 else logits


def logit_diff(logits: Tensor, task) -> Tensor:
    """logit(answer) - logit(wrong) per example [n]."""
    final = last(logits)
    answer = task.answer.to(final.device)[:, None]
    wrong = task.wrong.to(final.device)[:, None]
    return (final.gather(-1, answer) - final.gather(-1, wrong)).squeeze(-1)


def answer_prob(logits: Tensor, task) -> Tensor:
    """P(answer) per example [n]."""
    return last(logits).float().softmax(-1).gather(-1, task.answer.to(logits.device)[:, None]).squeeze(-1)


def kl_divergence(logits: Tensor, reference_logits: Tensor) -> Tensor:
    """KL(reference || logits) per example [n], at the prediction position."""
    ref = last(reference_logits).float().log_softmax(-1)
    new = last(logits).float().log_softmax(-1)
    return (ref.exp() * (ref - new)).sum(-1)


def accuracy(logits: Tensor, task) -> Tensor:
    """1.0 where logit(answer) > logit(wrong), per example [n]."""
    return (logit_diff(logits, task) > 0).float()


METRICS: dict[str, Metric] = {"logit_diff": logit_diff, "prob": answer_prob}


def get_metric(metric: str | Metric) -> Metric:
    if callable(metric):
        return metric
    if metric not in METRICS:
        raise ValueError(
            f"unknown metric {metric!r}: use one of {', '.join(METRICS)} or a function(logits, task) -> [n]"
        )
    return METRICS[metric]


def normalised(value: Tensor, clean: Tensor | float, corrupt: Tensor | float) -> Tensor:
    """(value - corrupt) / (clean - corrupt): 0 = as corrupt, 1 = as clean."""
    return (value - corrupt) / (clean - corrupt)


def bootstrap_ci(
    statistic: Callable[..., Tensor],
    *per_example: Tensor,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Percentile interval of statistic(*resampled) where each tensor has the examples on its last axis
    and all are resampled with the same draws."""
    n = per_example[0].shape[-1]
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(n, (n_boot, n), generator=gen)
    stats = torch.stack([statistic(*(t[..., idx] for t in per_example)) for idx in draws])
    return stats.quantile(alpha / 2, dim=0), stats.quantile(1 - alpha / 2, dim=0)

"""Features across checkpoints: match SAE features of consecutive checkpoints, classify births, splits, merges.

    sim = similarity(decoder_cosine(sae_a.W_dec, sae_b.W_dec), activation_correlation(f_a, f_b))
    step = compare_features(sim)          # Transition: matches, births, deaths, splits, merges
    timeline = track([sim_01, sim_12, ...])   # per final feature: its chain back in time and its birth

Similarity of feature i (earlier, A) and j (later, B): the mean of the cosine of their decoder rows (the
same site of two checkpoints reads the same space) and the Pearson correlation of their activations over
the same tokens (each checkpoint's model and SAE run on one token set); either alone when only one is
given. Thresholds (defaults; compare.PERSIST and compare.NEW are the cross-layer equivalents):

    MATCH   0.7  greedy max-weight one-to-one matching (pairs taken in order of similarity, each feature at
                 most once) keeps pairs at least this similar: the same feature, moved a little. Greedy
                 equals the optimal (Hungarian) matching when every feature has one clear partner, the
                 case that matters here, and needs no scipy.
    SPLIT   0.4  A feature i splits when two or more B features have i as their most similar A feature with
                 similarity >= SPLIT (a feature cut in two evenly correlates ~0.7 with each half, its
                 decoder ~0.9); a merge is the same seen from B.
    RELATED 0.3  a B feature whose best A similarity is below this is born; an A feature with no B feature
                 this similar dies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..features.sae.compare import CorrelationSums

MATCH, SPLIT, RELATED = 0.7, 0.4, 0.3


def decoder_cosine(W_a: Tensor, W_b: Tensor) -> Tensor:
    """[n_a, n_b] cosine of decoder rows. W_a [n_a, d], W_b [n_b, d] (the same space)."""
    if W_a.shape[1] != W_b.shape[1]:
        raise ValueError(
            f"decoder cosines need one space; the decoders write {W_a.shape[1]} and {W_b.shape[1]} dims"
        )
    a = W_a.detach().float() / W_a.detach().float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = W_b.detach().float() / W_b.detach().float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def activation_correlation(f_a: Tensor, f_b: Tensor) -> Tensor:
    """[n_a, n_b] Pearson correlation of feature activations over the same tokens. f_a [n, n_a], f_b [n, n_b];
    0 for a feature that never varies."""
    if len(f_a) != len(f_b):
        raise ValueError(f"activations must cover the same tokens; got {len(f_a)} and {len(f_b)} rows")
    sums = CorrelationSums(f_a.shape[1], f_b.shape[1])
    sums.update(f_a.detach(), f_b.detach())
    return sums.correlation()


def similarity(cosine: Tensor | None = None, correlation: Tensor | None = None) -> Tensor:
    """The mean of the similarity matrices given (at least one)."""
    given = [m.float() for m in (cosine, correlation) if m is not None]
    if not given:
        raise ValueError("give a decoder cosine matrix, an activation correlation matrix, or both")
    if len(given) == 2 and given[0].shape != given[1].shape:
        raise ValueError(
            f"cosine {tuple(given[0].shape)} and correlation {tuple(given[1].shape)} differ in shape"
        )
    return sum(given) / len(given)


def greedy_match(sim: Tensor, threshold: float = MATCH) -> list[tuple[int, int, float]]:
    """One-to-one pairs (i, j, sim) taken in order of decreasing similarity while >= threshold."""
    order = torch.argsort(sim.flatten(), descending=True, stable=True)
    n_b = sim.shape[1]
    used_a, used_b, pairs = set(), set(), []
    for flat in order.tolist():
        value = float(sim.flatten()[flat])
        if value < threshold or len(pairs) == min(sim.shape):
            break
        i, j = divmod(flat, n_b)
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j, value))
    return pairs


@dataclass
class Transition:
    """What happened between two checkpoints (A earlier, B later); indices are feature numbers."""

    matches: list[tuple[int, int, float]]
    births: list[int]
    deaths: list[int]
    splits: dict[int, list[int]] = field(default_factory=dict)  # A feature -> its B children
    merges: dict[int, list[int]] = field(default_factory=dict)  # B feature -> its A parents

    def to_dict(self) -> dict:
        return {
            "matches": [list(m) for m in self.matches],
            "births": self.births,
            "deaths": self.deaths,
            "splits": {str(k): v for k, v in self.splits.items()},
            "merges": {str(k): v for k, v in self.merges.items()},
        }


def compare_features(
    sim: Tensor, match: float = MATCH, split: float = SPLIT, related: float = RELATED
) -> Transition:
    """Classify the features of two checkpoints from their similarity `sim` [n_a, n_b] (module docstring)."""
    if sim.ndim != 2 or 0 in sim.shape:
        raise ValueError(f"sim must be a non-empty [n_a, n_b] matrix, got shape {tuple(sim.shape)}")
    best_a_of_b = sim.argmax(0)  # [n_b]: each B feature's most similar A feature
    best_b_of_a = sim.argmax(1)  # [n_a]
    splits, merges = {}, {}
    for i in range(sim.shape[0]):
        children = [j for j in range(sim.shape[1]) if best_a_of_b[j] == i and sim[i, j] >= split]
        if len(children) >= 2:
            splits[i] = children
    for j in range(sim.shape[1]):
        parents = [i for i in range(sim.shape[0]) if best_b_of_a[i] == j and sim[i, j] >= split]
        if len(parents) >= 2:
            merges[j] = parents
    births = [j for j in range(sim.shape[1]) if float(sim[:, j].max()) < related]
    deaths = [i for i in range(sim.shape[0]) if float(sim[i].max()) < related]
    return Transition(greedy_match(sim, match), births, deaths, splits, merges)


@dataclass
class Timeline:
    """Features of the last checkpoint followed back: chains[j][t] is feature j's index at checkpoint t
    (None before it appears), born[j] the checkpoint where its chain starts (0: present from the first)."""

    transitions: list[Transition]
    chains: list[list[int | None]]
    born: list[int]

    def births_per_checkpoint(self) -> list[int]:
        """How many of the final features were born at each checkpoint (for a births timeline)."""
        counts = [0] * (len(self.transitions) + 1)
        for t in self.born:
            counts[t] += 1
        return counts

    def to_dict(self) -> dict:
        return {
            "transitions": [t.to_dict() for t in self.transitions],
            "chains": self.chains,
            "born": self.born,
            "births_per_checkpoint": self.births_per_checkpoint(),
        }


def track(
    sims: Sequence[Tensor], match: float = MATCH, split: float = SPLIT, related: float = RELATED
) -> Timeline:
    """Follow features through checkpoints 0..T from the similarity matrices of consecutive ones
    (sims[t] is [n_t, n_{t+1}]). A feature continues through a match, or through a split (a child
    continues its parent's chain); otherwise it is born at the checkpoint where it first appears."""
    if not sims:
        raise ValueError("need at least one similarity matrix (two checkpoints)")
    transitions = [compare_features(s, match, split, related) for s in sims]
    chains: list[list[int | None]] = [[i] for i in range(sims[0].shape[0])]
    born = [0] * sims[0].shape[0]
    for t, (s, step) in enumerate(zip(sims, transitions), start=1):
        parent = {j: i for i, j, _ in step.matches}
        for i, children in step.splits.items():
            for j in children:
                parent.setdefault(j, i)
        new_chains, new_born = [], []
        for j in range(s.shape[1]):
            i = parent.get(j)
            if i is None:
                new_chains.append([None] * t + [j])
                new_born.append(t)
            else:
                new_chains.append(chains[i] + [j])
                new_born.append(born[i])
        chains, born = new_chains, new_born
    return Timeline(transitions, chains, born)

"""The toy models of superposition (Elhage et al. 2022), many independent instances in one set of tensors.

Every tensor carries the instance as its first axis, so one optimizer step trains every instance at once
(one per sparsity, per importance, per seed ...) with batched matrix products:

    W [inst, m, n]    the embedding: column W[k, :, i] is feature i's direction in the m hidden dimensions
    x [inst, batch, n] features: each x_i is 0 with probability S (the sparsity), otherwise uniform
    importance [inst, n] the weight of each feature's squared error in the loss

``ToyModel``: x' = ReLU(WᵀWx + b) (or its linear baseline x' = WᵀWx + b), trained to reconstruct x.
``AbsModel``: the computation-in-superposition model, y' = ReLU(W₂ ReLU(W₁x) + b), trained on y = |x|
with x_i uniform in [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ACTIVATIONS = ("relu", "linear")


def _per_instance_feature(value: object, n_instances: int | None, n: int, name: str) -> Tensor:
    """``value`` (a number, [n_instances] or [n_instances, n]) as a float tensor [n_instances, n]."""
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.ndim == 0:
        if n_instances is None:
            raise ValueError(f"{name} is a single number: give n_instances too")
        return t.expand(n_instances, n).clone()
    if t.ndim == 1:
        return t[:, None].expand(len(t), n).clone()  # one value per instance
    if t.ndim == 2 and t.shape[1] == n:
        return t.clone()
    raise ValueError(
        f"{name} must be a number, [n_instances] or [n_instances, {n}]; got shape {tuple(t.shape)}"
    )


def _importance(value: object, n_instances: int, n: int) -> Tensor:
    """Importance as [n_instances, n]: a number, [n] (shared by every instance) or [n_instances, n]."""
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.ndim == 0:
        return t.expand(n_instances, n).clone()
    if t.ndim == 1 and len(t) == n:
        return t[None].expand(n_instances, n).clone()
    if t.ndim == 2 and t.shape == (n_instances, n):
        return t.clone()
    raise ValueError(
        f"importance must be a number, [{n}] (one per feature) or [{n_instances}, {n}]; got shape {tuple(t.shape)}"
    )


def importance_decay(n_features: int, decay: float) -> Tensor:
    """The paper's importance profile I_i = decay**i, [n_features] (decay 1 = all features equal)."""
    if not 0 < decay <= 1:
        raise ValueError(f"importance decay must be in (0, 1]; got {decay}")
    return decay ** torch.arange(n_features, dtype=torch.float32)


def _xavier(generator: torch.Generator, *shape: int) -> Tensor:
    """Xavier-normal init of each instance's [fan_out, fan_in] matrix (the last two axes).

    The official code applies ``xavier_normal_`` to the whole [inst, m, n] tensor, which makes the scale depend
    on the number of instances; here it does not.
    """
    fan_out, fan_in = shape[-2], shape[-1]
    return torch.randn(*shape, generator=generator) * math.sqrt(2.0 / (fan_in + fan_out))


class _Toy(nn.Module):
    """What both toy models share: sparse features, importance-weighted squared error, per instance."""

    feature_probability: Tensor  # [inst, n] the chance that a feature is non-zero: 1 - S
    importance: Tensor  # [inst, n]

    def __init__(
        self,
        n_features: int,
        n_hidden: int,
        feature_probability: object,
        importance: object,
        n_instances: int | None,
    ):
        super().__init__()
        if n_features < 1 or n_hidden < 1:
            raise ValueError(f"need n_features >= 1 and n_hidden >= 1; got {n_features} and {n_hidden}")
        p = _per_instance_feature(feature_probability, n_instances, n_features, "feature_probability")
        if n_instances is not None and len(p) != n_instances:
            raise ValueError(f"feature_probability has {len(p)} instances but n_instances is {n_instances}")
        if not ((p > 0) & (p <= 1)).all():
            raise ValueError(
                "feature_probability (1 - sparsity) must lie in (0, 1]; sparsity 1 gives no data"
            )
        self.n_features, self.n_hidden, self.n_instances = n_features, n_hidden, len(p)
        self.register_buffer("feature_probability", p)
        self.register_buffer("importance", _importance(importance, self.n_instances, n_features))

    @property
    def sparsity(self) -> Tensor:
        """S per instance and feature, [inst, n]."""
        return 1 - self.feature_probability

    def _magnitude(self, u: Tensor) -> Tensor:
        """A present feature's value from u uniform in [0, 1): uniform in [0, 1)."""
        return u

    def generate_batch(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Random features [inst, batch, n]: each is 0 with probability S, else uniform (see ``_magnitude``)."""
        p = self.feature_probability[:, None, :]
        u = torch.rand(self.n_instances, batch_size, self.n_features, generator=generator, device=p.device)
        # one draw serves both: u < p with probability p, and given that, u / p is uniform in [0, 1)
        return torch.where(u < p, self._magnitude(u / p), 0.0)

    def target(self, x: Tensor) -> Tensor:
        return x

    def loss(self, x: Tensor, out: Tensor) -> Tensor:
        """Per-instance loss [inst]: Σ_i I_i (target_i - out_i)², averaged over the batch and the features."""
        error = self.importance[:, None, :] * (self.target(x) - out) ** 2  # [inst, batch, n]
        return error.mean(dim=(1, 2))


class ToyModel(_Toy):
    """x' = ReLU(WᵀWx + b) (``activation="linear"``: no ReLU), ``n_instances`` independent copies.

    n_features: n; n_hidden: m; feature_probability: 1 - S, a number, [inst] or [inst, n];
    importance: a number, [n] or [inst, n]. ``seed`` fixes the initialisation.
    """

    def __init__(
        self,
        n_features: int,
        n_hidden: int,
        feature_probability: object = 1.0,
        importance: object = 1.0,
        n_instances: int | None = None,
        activation: str = "relu",
        seed: int = 0,
    ):
        super().__init__(n_features, n_hidden, feature_probability, importance, n_instances)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
        self.activation = activation
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(_xavier(g, self.n_instances, n_hidden, n_features))  # [inst, m, n]
        self.b = nn.Parameter(torch.zeros(self.n_instances, n_features))  # [inst, n]

    def hidden(self, x: Tensor) -> Tensor:
        """h = Wx: [inst, batch, n] -> [inst, batch, m]."""
        return torch.bmm(x, self.W.transpose(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        """x [inst, batch, n] -> x' [inst, batch, n]."""
        out = torch.baddbmm(self.b[:, None, :], self.hidden(x), self.W)  # WᵀWx + b
        return torch.relu(out) if self.activation == "relu" else out


class AbsModel(_Toy):
    """Computation in superposition: y' = ReLU(W₂ ReLU(W₁x) + b) trained to output |x|.

    x_i is 0 with probability S, else uniform in [-1, 1]. W1 [inst, m, n] reads the features into m ReLU
    neurons, W2 [inst, n, m] writes each feature's output. ``|x_i|`` needs two neurons (ReLU(x) + ReLU(-x)) to
    compute exactly; with sparse inputs the model computes more features than it has neurons.
    """

    def __init__(
        self,
        n_features: int,
        n_hidden: int,
        feature_probability: object = 1.0,
        importance: object = 1.0,
        n_instances: int | None = None,
        seed: int = 0,
    ):
        super().__init__(n_features, n_hidden, feature_probability, importance, n_instances)
        g = torch.Generator().manual_seed(seed)
        self.W1 = nn.Parameter(_xavier(g, self.n_instances, n_hidden, n_features))  # [inst, m, n]
        self.W2 = nn.Parameter(_xavier(g, self.n_instances, n_features, n_hidden))  # [inst, n, m]
        self.b = nn.Parameter(torch.zeros(self.n_instances, n_features))  # [inst, n]

    def _magnitude(self, u: Tensor) -> Tensor:
        return 2 * u - 1  # uniform in [-1, 1)

    def target(self, x: Tensor) -> Tensor:
        return x.abs()

    def hidden(self, x: Tensor) -> Tensor:
        """The neurons ReLU(W₁x): [inst, batch, n] -> [inst, batch, m]."""
        return torch.relu(torch.bmm(x, self.W1.transpose(1, 2)))

    def forward(self, x: Tensor) -> Tensor:
        """x [inst, batch, n] -> y' [inst, batch, n]."""
        return torch.relu(torch.baddbmm(self.b[:, None, :], self.hidden(x), self.W2.transpose(1, 2)))

"""SAE configurations: one dataclass per architecture, looked up by name.

    cfg = sae_config("topk", d_in=576, d_sae=4608, k=32, site="blocks.15.resid_post")
    cfg = CONFIGS["standard"](d_in=576, d_sae=4608, l1_coefficient=5.0)

Every config holds the SAE's shape, where it reads (site, model) and how to train it. Training works on
inputs scaled so that E||x||^2 = d_in (``normalize_activations``); the scale is recorded in ``norm_scale``
and folded into the weights on save, so a saved SAE reads raw activations. Tokens with massive activations
(norm above ``max_norm``) are left out of training and passed through by the splice, like BOS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar


@dataclass
class SAEConfig:
    d_in: int
    d_sae: int
    site: str = ""  # the lmscope site it reads, e.g. "blocks.15.resid_post"
    model: str = ""
    # ---- transcoders: a target different from the input --------------------------------------------------
    # target_site set = a transcoder: it reads `site` and reconstructs `target_site` (e.g. blocks.3.mlp.in ->
    # blocks.3.mlp.out). Its training rows are [x | y] of width d_in + d_out; b_dec lives in the output space
    # and is not subtracted from the input. skip adds a linear map x @ W_skip (Paulo et al. 2025).
    target_site: str = ""
    d_out: int | None = None  # the target's width; None = d_in
    skip: bool = False
    target_norm_scale: float = 1.0  # set by training (transcoders): E||y||^2 = d_out after scaling
    # ---- training -----------------------------------------------------------------------------------
    batch_size: int = 4096  # tokens per optimizer step, summed over processes
    total_tokens: int = 2_000_000
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup_steps: int = 0
    lr_decay_fraction: float = 0.2  # linear decay to 0 over this last fraction of the steps
    normalize_activations: bool = True  # scale inputs so E||x||^2 = d_in while training
    norm_scale: float = 1.0  # set by training; folded into the saved weights
    dead_tokens: int = 1_000_000  # a feature that has not fired for this many tokens counts as dead
    calibration_tokens: int = 16_384  # sample for the geometric median (b_dec) and the norm scale
    # Massive activations: tokens whose activation norm exceeds outlier_factor x the median norm (BOS-like
    # attention sinks, e.g. SmolLM2's residual stream on box-drawing tokens, ~100x the typical norm) are left
    # out of training, and the splice passes them through unchanged. None keeps every token.
    outlier_factor: float | None = 10.0
    max_norm: float | None = None  # set by training: outlier_factor x the median norm (raw units)
    checkpoint_every: int = 100  # steps
    log_every: int = 10  # steps
    seed: int = 0

    architecture: ClassVar[str] = ""

    def __post_init__(self):
        for name in ("d_in", "d_sae", "batch_size", "total_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive int, got {value!r}")
        if self.total_tokens < self.batch_size:
            raise ValueError(
                f"total_tokens ({self.total_tokens}) is less than one batch ({self.batch_size}); "
                "train on more tokens or use a smaller batch_size"
            )
        if not 0 <= self.lr_decay_fraction <= 1:
            raise ValueError(f"lr_decay_fraction must lie in [0, 1], got {self.lr_decay_fraction}")
        self.betas = tuple(self.betas)
        if self.d_out is not None and (not isinstance(self.d_out, int) or self.d_out <= 0):
            raise ValueError(
                f"{type(self).__name__}.d_out must be a positive int or None, got {self.d_out!r}"
            )
        if self.skip and not self.target_site:
            raise ValueError("skip=True is for transcoders: give target_site (the site it reconstructs) too")

    @property
    def is_transcoder(self) -> bool:
        return bool(self.target_site)

    @property
    def d_target(self) -> int:
        """The width of what the SAE reconstructs: d_out for a transcoder, d_in for an autoencoder."""
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    @property
    def inference_architecture(self) -> str:
        """The architecture name a saved SAE carries (SAELens's names)."""
        return self.architecture

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, **dataclasses.asdict(self)}


@dataclass
class StandardConfig(SAEConfig):
    """ReLU + L1, as in Towards Monosemanticity: f = ReLU(W_enc (x - b_dec) + b_enc), unit-norm decoder rows,
    loss = ||x - x_hat||^2 + l1_coefficient * ||f||_1, dead features resampled at the given fractions of
    training (inputs drawn with probability proportional to their loss squared)."""

    l1_coefficient: float = 5.0
    l1_warmup_fraction: float = 0.05  # the L1 coefficient ramps up linearly over this fraction of steps
    resample_at: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)  # fractions of the steps; () = never
    resample_window: float = 0.05  # dead = did not fire in this fraction of the steps before resampling
    resample_pool: int = 8  # recent batches per process to draw replacement inputs from
    architecture: ClassVar[str] = "standard"

    def __post_init__(self):
        super().__post_init__()
        self.resample_at = tuple(self.resample_at)
        if any(not 0 < f < 1 for f in self.resample_at):
            raise ValueError(f"resample_at holds fractions of training in (0, 1), got {self.resample_at}")


@dataclass
class TopKConfig(SAEConfig):
    """TopK (Gao et al. 2024): f = TopK(ReLU(W_enc (x - b_dec) + b_enc)), MSE only, plus the AuxK loss in
    which the top aux_k dead features reconstruct the residual x - x_hat."""

    k: int = 32
    aux_k: int | None = None  # None = d_in // 2 (SAELens's default)
    aux_coefficient: float = 1 / 32
    architecture: ClassVar[str] = "topk"

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must lie in 1..d_sae ({self.d_sae}), got {self.k}")
        if self.aux_k is None:
            self.aux_k = max(1, self.d_in // 2)


@dataclass
class BatchTopKConfig(TopKConfig):
    """BatchTopK (Bussmann et al. 2024): keep the k * batch largest activations over the whole batch, so L0
    averages k but varies per token. At inference a single threshold (a running mean of the smallest kept
    activation) replaces the batch: the saved SAE is a JumpReLU."""

    threshold_beta: float = 0.99  # EMA rate of the inference threshold
    architecture: ClassVar[str] = "batchtopk"

    @property
    def inference_architecture(self) -> str:
        return "jumprelu"


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    """Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK codes, and every nested prefix of the dictionary
    (the first m features, for each m in matryoshka_widths) reconstructs the input on its own; the loss is
    the sum of the prefixes' squared errors (the last prefix is the whole SAE) plus AuxK. Early features
    must stand alone, so they learn general directions that later ones cannot absorb. Saved like BatchTopK
    (a JumpReLU with the inference threshold)."""

    # SAELens's name; None = d_sae / 16, / 8, / 4, / 2 and d_sae. The last width is always d_sae.
    matryoshka_widths: tuple[int, ...] | None = None
    architecture: ClassVar[str] = "matryoshka_batchtopk"

    def __post_init__(self):
        super().__post_init__()
        widths = self.matryoshka_widths
        if widths is None:
            widths = [self.d_sae // 2**i for i in (4, 3, 2, 1) if self.d_sae // 2**i > 0]
        widths = [int(w) for w in widths]
        if widths and widths[-1] != self.d_sae:
            widths.append(self.d_sae)
        if (
            any(w <= 0 for w in widths)
            or any(a >= b for a, b in zip(widths, widths[1:]))
            or widths[-1] > self.d_sae
        ):
            raise ValueError(
                f"matryoshka_widths must increase strictly within 1..d_sae ({self.d_sae}), got {self.matryoshka_widths}"
            )
        self.matryoshka_widths = tuple(widths)


SPARSITY_LOSS_MODES = ("step", "quadratic")


@dataclass
class JumpReLUConfig(SAEConfig):
    """JumpReLU (Rajamanoharan et al. 2024): f = pre * H(pre - threshold) with a learned threshold per feature,
    pre = W_enc (x - b_dec) + b_enc; loss = ||x - x_hat||^2 + l0_coefficient * sparsity. The step H has no
    useful gradient, so a straight-through estimator with a rectangle kernel of width jumprelu_bandwidth
    gives the thresholds one: d f / d threshold = -(threshold / bandwidth) K((pre - threshold) / bandwidth) and
    d H / d threshold = -(1 / bandwidth) K(...), K(u) = 1 for |u| < 1/2. Sparsity: "step" is the L0 itself
    (DeepMind); "quadratic" is 2 / target_l0 * (L0 - target_l0)^2 per token (Gemma Scope 2), which holds
    the L0 near target_l0. Field names follow SAELens; the thresholds are trained directly (kept >= 0)."""

    l0_coefficient: float = 1.0
    l0_warmup_fraction: float = 0.0  # the coefficient ramps up linearly over this fraction of steps
    jumprelu_init_threshold: float = 0.01
    jumprelu_bandwidth: float = 0.05
    jumprelu_sparsity_loss_mode: str = "step"
    target_l0: float | None = None  # the quadratic mode's target
    jumprelu_ste_to_input: bool = False  # True: the estimator also reaches the pre-activations (Anthropic)
    architecture: ClassVar[str] = "jumprelu"

    def __post_init__(self):
        super().__post_init__()
        mode = self.jumprelu_sparsity_loss_mode
        if mode not in SPARSITY_LOSS_MODES:
            raise ValueError(
                f"jumprelu_sparsity_loss_mode must be one of {SPARSITY_LOSS_MODES}, got {mode!r}"
            )
        if mode == "quadratic" and not (self.target_l0 and 0 < self.target_l0 <= self.d_sae):
            raise ValueError(
                f"the quadratic sparsity loss needs target_l0 in (0, d_sae={self.d_sae}], got {self.target_l0}"
            )
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold < 0:
            raise ValueError(
                "jumprelu_bandwidth must be > 0 and jumprelu_init_threshold >= 0, got "
                f"{self.jumprelu_bandwidth} and {self.jumprelu_init_threshold}"
            )


CONFIGS: dict[str, type[SAEConfig]] = {
    "standard": StandardConfig,
    "topk": TopKConfig,
    "batchtopk": BatchTopKConfig,
    "jumprelu": JumpReLUConfig,
    "matryoshka_batchtopk": MatryoshkaConfig,
}
ALIASES = {"relu": "standard", "l1": "standard", "matryoshka": "matryoshka_batchtopk"}


def config_class(architecture: str) -> type[SAEConfig]:
    name = ALIASES.get(architecture, architecture)
    if name not in CONFIGS:
        raise ValueError(
            f"unknown SAE architecture {architecture!r}; choose one of {', '.join(CONFIGS)} "
            f"(aliases: {', '.join(ALIASES)})"
        )
    return CONFIGS[name]


def sae_config(architecture: str, **fields) -> SAEConfig:
    """Build the config of ``architecture`` (a key of CONFIGS or ALIASES); unknown fields are an error."""
    cls = config_class(architecture)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"{cls.__name__} has no field(s) {', '.join(unknown)}; it has {', '.join(sorted(known))}"
        )
    return cls(**fields)


def config_from_dict(data: dict) -> SAEConfig:
    """Inverse of ``cfg.to_dict()``; keys that are not fields (e.g. from newer versions) are ignored."""
    cls = config_class(data.get("architecture", "standard"))
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


__all__ = [
    "ALIASES",
    "CONFIGS",
    "BatchTopKConfig",
    "JumpReLUConfig",
    "MatryoshkaConfig",
    "SAEConfig",
    "StandardConfig",
    "TopKConfig",
    "config_class",
    "config_from_dict",
    "sae_config",
]

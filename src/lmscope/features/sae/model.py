"""The sparse autoencoder module, its sparse codes, and the sparse backward that makes training fast.

    sae = SAE(cfg)                 # W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]
    f = sae.encode(x)              # [..., d_in] -> [..., d_sae] (dense)
    x_hat = sae.decode(f)          # [..., d_sae] -> [..., d_in]

A transcoder (cfg.target_site set) is the same module reading one site and writing another: W_dec
[d_sae, d_out], b_dec [d_out] is not subtracted from the input (pre = x @ W_enc + b_enc), and with cfg.skip
the output gains x @ W_skip [d_in, d_out].

Inference architectures (SAELens's names): "standard" f = ReLU(pre); "topk" keeps each token's k largest
of ReLU(pre); "jumprelu" f = pre * (pre > threshold) (what a BatchTopK SAE becomes after training), where
pre = (x - b_dec) @ W_enc + b_enc.

Training never builds the dense code: each architecture selects the (token, feature) pairs that fire,
``SelectedPre`` makes their pre-activations differentiable with a backward that touches only those pairs,
and ``decode_codes`` decodes with ``embedding_bag``. Only the encoder's forward matmul stays dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SAEConfig

INFERENCE_ARCHITECTURES = ("standard", "topk", "jumprelu")


@dataclass
class Codes:
    """A batch of sparse codes: row r's active features are cols[offsets[r]:offsets[r+1]] with values vals.

    rows [nnz], cols [nnz] (int64, sorted by row), vals [nnz] (differentiable), offsets [n_rows].
    """

    rows: Tensor
    cols: Tensor
    vals: Tensor
    offsets: Tensor
    n_rows: int

    @classmethod
    def from_pairs(cls, rows: Tensor, cols: Tensor, vals: Tensor, n_rows: int) -> Codes:
        counts = torch.bincount(rows, minlength=n_rows)
        offsets = torch.zeros(n_rows, dtype=torch.long, device=rows.device)
        offsets[1:] = counts.cumsum(0)[:-1]
        return cls(rows, cols, vals, offsets, n_rows)


def decode_codes(codes: Codes, W_dec: Tensor) -> Tensor:
    """sum_j vals_j * W_dec[cols_j] per row: [n_rows, d_in] (no bias). embedding_bag's backward yields the
    decoder gradient of the active rows and d/dvals without forming the dense code."""
    return F.embedding_bag(codes.cols, W_dec, codes.offsets, per_sample_weights=codes.vals, mode="sum")


class SelectedPre(torch.autograd.Function):
    """pre[rows, cols] for pre = x_c @ W_enc + b_enc, already computed (without autograd) in `values`;
    the backward costs O(nnz * d_in) instead of three dense [batch, d_in] x [d_in, d_sae] products."""

    @staticmethod
    def forward(ctx, x_c, W_enc, b_enc, rows, cols, values):
        ctx.save_for_backward(x_c, W_enc, rows, cols)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x_c, W_enc, rows, cols = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_b = torch.bincount(cols, weights=grad, minlength=d_sae).to(grad.dtype)
        if ctx.needs_input_grad[1]:
            # grad W_enc[:, j] = sum over the tokens where j fired of grad * x_c: bags of tokens per feature
            by_feature = torch.argsort(cols, stable=True)
            counts = torch.bincount(cols, minlength=d_sae)
            starts = torch.zeros(d_sae, dtype=torch.long, device=cols.device)
            starts[1:] = counts.cumsum(0)[:-1]
            grad_W = F.embedding_bag(
                rows[by_feature], x_c, starts, per_sample_weights=grad[by_feature], mode="sum"
            ).T  # [d_in, d_sae]
        if ctx.needs_input_grad[0]:
            counts = torch.bincount(rows, minlength=x_c.shape[0])
            starts = torch.zeros(x_c.shape[0], dtype=torch.long, device=rows.device)
            starts[1:] = counts.cumsum(0)[:-1]
            grad_x = F.embedding_bag(cols, W_enc.T.contiguous(), starts, per_sample_weights=grad, mode="sum")
        return grad_x, grad_W, grad_b, None, None, None


def selected_pre(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, rows: Tensor, cols: Tensor):
    """Differentiable pre[rows, cols] (pre computed without grad)."""
    return SelectedPre.apply(x_c, W_enc, b_enc, rows, cols, pre[rows, cols])


def rectangle(u: Tensor) -> Tensor:
    """The kernel of JumpReLU's straight-through estimator: 1 where -1/2 < u < 1/2, else 0."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """pre * H(pre - threshold), elementwise (pre and threshold of one shape: [batch, d_sae] dense, or [nnz]
    pairs). Backward (Rajamanoharan et al. 2024, eq. 11): d/dpre = H(pre - threshold) exactly;
    d/dthreshold = -(threshold / bandwidth) * K((pre - threshold) / bandwidth), K = rectangle."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_threshold = -(threshold / bw) * rectangle((pre - threshold) / bw) * grad
        return (pre > threshold) * grad, grad_threshold, None


class StepFn(torch.autograd.Function):
    """H(pre - threshold), elementwise: the L0 count. Backward (eq. 12): d/dthreshold = -(1 / bandwidth) *
    K((pre - threshold) / bandwidth); d/dpre is its negation when to_input, else 0 (DeepMind's choice: the
    sparsity penalty then moves only the thresholds)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float, to_input: bool):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth, ctx.to_input = bandwidth, to_input
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        ste = rectangle((pre - threshold) / ctx.bandwidth) * grad / ctx.bandwidth
        return (ste if ctx.to_input else None), -ste, None, None


class SAE(nn.Module):
    """A sparse autoencoder over activations [..., d_in]. `cfg` says its shape, site and architecture."""

    def __init__(self, cfg: SAEConfig, architecture: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.architecture = architecture or cfg.inference_architecture
        if self.architecture not in INFERENCE_ARCHITECTURES:
            raise ValueError(
                f"unknown SAE architecture {self.architecture!r}; expected one of {INFERENCE_ARCHITECTURES}"
            )
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_target
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        # the skip connection starts at 0 (Paulo et al.): the features first learn what a linear map cannot
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out)) if cfg.skip else None
        # JumpReLU threshold per feature; for a BatchTopK SAE in training, a running estimate
        self.register_buffer("threshold", torch.zeros(d_sae))
        self.init_weights(cfg.seed)

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Unit-norm random decoder rows; the encoder starts as the decoder's transpose (Gao et al.)."""
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(self.cfg.d_sae, self.cfg.d_target, generator=gen)
        self.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        if self.cfg.is_transcoder:  # input and output are different spaces: an encoder of its own
            e = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=gen)
            self.W_enc.copy_((e / e.norm(dim=1, keepdim=True)).T)
        else:
            self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    def make_threshold_trainable(self, init: float) -> None:
        """Turn the threshold buffer into a parameter filled with `init` (JumpReLU training); the
        state_dict key stays "threshold"."""
        del self._buffers["threshold"]
        self.threshold = nn.Parameter(torch.full((self.cfg.d_sae,), float(init), device=self.W_enc.device))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def _check(self, x: Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"this SAE reads [..., {self.d_in}] activations ({self.cfg.site or 'its site'}), "
                f"got shape {tuple(x.shape)}"
            )

    def pre_acts(self, x: Tensor) -> Tensor:
        """[..., d_in] -> [..., d_sae]: (x - b_dec) @ W_enc + b_enc (transcoders: x @ W_enc + b_enc)."""
        self._check(x)
        x = x.to(self.W_enc.dtype)
        if self.cfg.is_transcoder:
            return x @ self.W_enc + self.b_enc
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activation(self, pre: Tensor) -> Tensor:
        if self.architecture == "standard":
            return F.relu(pre)
        if self.architecture == "jumprelu":
            return pre * (pre > self.threshold)
        k = getattr(self.cfg, "k", None)
        values, indices = F.relu(pre).topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations [..., d_sae] of activations x [..., d_in]."""
        return self.activation(self.pre_acts(x))

    @torch.no_grad()
    def encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The nonzero activations of x [n, d_in] as (rows [nnz], features [nnz], values [nnz]), by row."""
        pre = self.pre_acts(x)
        if self.architecture == "topk":
            values, cols = F.relu(pre).topk(self.cfg.k, dim=-1)  # [n, k]
            rows = torch.arange(len(x), device=x.device)[:, None].expand_as(cols)
            keep = values > 0
            return rows[keep], cols[keep], values[keep]
        rows, cols = (pre > (self.threshold if self.architecture == "jumprelu" else 0)).nonzero().unbind(1)
        return rows, cols, pre[rows, cols]

    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction [..., d_out] of feature activations f [..., d_sae] (without the skip term)."""
        if f.shape[-1] != self.d_sae:
            raise ValueError(f"decode expects [..., {self.d_sae}] feature activations, got {tuple(f.shape)}")
        return f @ self.W_dec + self.b_dec

    def skip_out(self, x: Tensor) -> Tensor | float:
        """The skip connection's part of the output, x @ W_skip [..., d_out] (0 without one)."""
        return 0.0 if self.W_skip is None else x.to(self.W_skip.dtype) @ self.W_skip

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction x_hat [..., d_out] (in x's dtype); for a transcoder, its estimate of the target."""
        return (self.decode(self.encode(x)) + self.skip_out(x)).to(x.dtype)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale the decoder rows to unit norm, in place."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of W_dec's gradient along each (unit) row, so a step only turns the row."""
        grad, w = self.W_dec.grad, self.W_dec
        if grad is not None:
            grad.sub_((grad * w).sum(1, keepdim=True) * w)

    @torch.no_grad()
    def fold_scale(self, scale: float, target_scale: float | None = None) -> None:
        """Make an SAE trained on scale * x (and, for a transcoder, target_scale * y) read x itself and
        write y's units: the same features, the reconstruction / target_scale (default: scale)."""
        target_scale = scale if target_scale is None else target_scale
        self.W_enc.mul_(scale)
        self.W_dec.div_(target_scale)
        self.b_dec.div_(target_scale)
        if self.W_skip is not None:
            self.W_skip.mul_(scale / target_scale)

    def extra_repr(self) -> str:
        target = (
            f", target_site={self.cfg.target_site!r}, skip={self.cfg.skip}" if self.cfg.is_transcoder else ""
        )
        return f"{self.architecture}, d_in={self.d_in}, d_sae={self.d_sae}, site={self.cfg.site!r}{target}"

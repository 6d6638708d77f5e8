"""Training: Adam on batches from a source, checkpoints, resume, and torchrun (DistributedDataParallel).

    sae = train_sae(TopKConfig(d_in=576, d_sae=4608, k=32), RowSource(acts, 4096), out_dir="runs/sae")

The same call runs unchanged under ``torchrun --nproc_per_node N``: every process draws its share of each
global batch from the source, gradients are averaged by DistributedDataParallel, and the quantities that
steer training (dead features, BatchTopK's threshold, resampling) are computed from all processes' data, so
N processes follow the one-process run with the same total batch.

A run is a pure function of (cfg, source, step): the checkpoint (``checkpoint.pt`` in out_dir, written every
cfg.checkpoint_every steps) holds the weights, Adam's state and the dead-feature counters, and a resumed run
continues exactly where the uninterrupted one would be.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ...runs import AtomicFile
from . import distributed as D
from .config import BatchTopKConfig, JumpReLUConfig, MatryoshkaConfig, SAEConfig, StandardConfig, TopKConfig
from .model import SAE, Codes, JumpReLUFn, StepFn, decode_codes, selected_pre
from .sources import _generator

CHECKPOINT = "checkpoint.pt"
SET_BY_TRAINING = ("norm_scale", "max_norm", "target_norm_scale")  # config fields that calibration fills in
# the standard SAE trains through dense matmuls while more than this fraction of features fire per token
DENSE_ABOVE = 0.05


@torch.no_grad()
def geometric_median(points: Tensor, iters: int = 200, tol: float = 1e-6) -> Tensor:
    """The point minimising the summed distance to `points` [n, d] (Weiszfeld's algorithm) -> [d]."""
    points = points.double()
    guess = points.mean(0)
    for _ in range(iters):
        weights = 1 / (points - guess).norm(dim=1).clamp_min(1e-8)
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - guess).norm() <= tol * (1 + guess.norm()):
            guess = new
            break
        guess = new
    return guess.float()


class Objective(nn.Module):
    """One batch's loss for the SAE's training architecture (the module DistributedDataParallel wraps).

    forward(x [batch, d_in], dead [d_sae] bool, l1) -> (loss, stats); stats (detached) holds "fired"
    [d_sae] (tokens each feature fired on), "sse", "nnz" and, for BatchTopK, "threshold". l1 is the
    sparsity coefficient of the step: the L1 coefficient (standard) or the L0 coefficient (JumpReLU).
    """

    def __init__(self, sae: SAE, cfg: SAEConfig):
        super().__init__()
        self.sae, self.cfg = sae, cfg
        self.threshold_guess = 0.0  # BatchTopK: where to start looking for this batch's threshold

    def forward(self, x: Tensor, dead: Tensor, l1: float = 0.0, dense: bool = False):
        sae, cfg = self.sae, self.cfg
        x, y = split_rows(x, cfg)  # a transcoder's rows are [x | y]; an autoencoder's target is x itself
        # [batch, d_in]; gradients reach b_dec through both ends (autoencoders only: a transcoder's b_dec
        # lives in the output space)
        x_c = x if cfg.is_transcoder else x - sae.b_dec
        skip = sae.skip_out(x)  # x @ W_skip, or 0
        if isinstance(cfg, JumpReLUConfig):
            return self._jumprelu(x_c, y, skip, l1, dense)
        stats = {}
        if dense:
            f = F.relu(x_c @ sae.W_enc + sae.b_enc)  # [batch, d_sae]
            x_hat = f @ sae.W_dec + sae.b_dec + skip
            penalty = f.sum(1).mean()
            stats["fired"] = (f > 0).sum(0).float()
            stats["nnz"] = stats["fired"].sum()
        else:
            with torch.no_grad():
                pre = x_c @ sae.W_enc + sae.b_enc  # [batch, d_sae], the one dense product
                rows, cols = self._select(pre, stats)
            vals = F.relu(selected_pre(x_c, sae.W_enc, sae.b_enc, pre, rows, cols))
            x_hat = decode_codes(Codes.from_pairs(rows, cols, vals, len(x)), sae.W_dec) + sae.b_dec + skip
            penalty = vals.sum() / len(x)
            stats["fired"] = torch.bincount(cols, minlength=cfg.d_sae).float()
            stats["nnz"] = torch.tensor(float(len(cols)))
        sse = (x_hat - y).pow(2).sum(-1)  # [batch]
        loss = sse.mean()
        if isinstance(cfg, MatryoshkaConfig):  # every inner prefix of the dictionary reconstructs alone
            for width in cfg.matryoshka_widths[:-1]:
                inner = cols < width
                codes = Codes.from_pairs(rows[inner], cols[inner], vals[inner], len(x))
                loss = loss + (decode_codes(codes, sae.W_dec) + sae.b_dec + skip - y).pow(2).sum(-1).mean()
        if isinstance(cfg, StandardConfig):
            loss = loss + l1 * penalty
        elif bool(dead.any()):
            loss = loss + cfg.aux_coefficient * self._aux_loss(y, x_hat, x_c, pre, dead)
        stats["sse"] = sse.sum().detach()
        return loss, stats

    def _jumprelu(self, x_c: Tensor, y: Tensor, skip, coefficient: float, dense: bool):
        """JumpReLU's loss: squared error + coefficient * sparsity, the thresholds trained through the
        straight-through estimator. The sparse path keeps the pairs with pre > threshold - bandwidth / 2:
        those that fire and those inside the estimator's window (whose gradient is not zero)."""
        sae, cfg = self.sae, self.cfg
        bw, to_input = cfg.jumprelu_bandwidth, cfg.jumprelu_ste_to_input
        if dense:
            pre = x_c @ sae.W_enc + sae.b_enc  # [batch, d_sae]
            threshold = sae.threshold.expand_as(pre)
            f = JumpReLUFn.apply(pre, threshold, bw)
            x_hat = f @ sae.W_dec + sae.b_dec + skip
            l0 = StepFn.apply(pre, threshold, bw, to_input).sum(1)  # [batch]
            fired = (pre > threshold).sum(0).float()
        else:
            with torch.no_grad():
                pre = x_c @ sae.W_enc + sae.b_enc  # [batch, d_sae], the one dense product
                rows, cols = (pre > sae.threshold - bw / 2).nonzero().unbind(1)
                firing = pre[rows, cols] > sae.threshold[cols]
            pre_pairs = selected_pre(x_c, sae.W_enc, sae.b_enc, pre, rows, cols)
            threshold = sae.threshold[cols]  # the gather sends each pair's gradient to its feature
            vals = JumpReLUFn.apply(pre_pairs, threshold, bw)
            x_hat = decode_codes(Codes.from_pairs(rows, cols, vals, len(y)), sae.W_dec) + sae.b_dec + skip
            steps = StepFn.apply(pre_pairs, threshold, bw, to_input)
            l0 = torch.zeros(len(y), dtype=steps.dtype, device=y.device).index_add(0, rows, steps)
            fired = torch.bincount(cols[firing], minlength=cfg.d_sae).float()
        sse = (x_hat - y).pow(2).sum(-1)  # [batch]
        if cfg.jumprelu_sparsity_loss_mode == "quadratic":
            penalty = (2 / cfg.target_l0 * (l0 - cfg.target_l0).pow(2)).mean()
        else:
            penalty = l0.mean()
        loss = sse.mean() + coefficient * penalty
        stats = {"fired": fired, "nnz": fired.sum(), "sse": sse.sum().detach()}
        return loss, stats

    @torch.no_grad()
    def _select(self, pre: Tensor, stats: dict) -> tuple[Tensor, Tensor]:
        """(rows, cols) of the active (token, feature) pairs, sorted by row."""
        cfg = self.cfg
        if isinstance(cfg, BatchTopKConfig):
            rows = int(D.all_reduce_sum(torch.tensor([len(pre)]))[0])  # the global batch, outliers left out
            threshold = self._batch_threshold(pre, cfg.k * rows)
            stats["threshold"] = torch.tensor(threshold)
            return (pre >= threshold).nonzero().unbind(1)
        if isinstance(cfg, TopKConfig):
            idx = pre.topk(cfg.k, dim=1).indices  # [batch, k]; ReLU zeroes the negative ones later
            rows = torch.arange(len(pre), device=pre.device).repeat_interleave(cfg.k)
            return rows, idx.flatten()
        return (pre > 0).nonzero().unbind(1)

    def _batch_threshold(self, pre: Tensor, n_keep: int) -> float:
        """The n_keep-th largest positive pre-activation over the global batch (all processes): the
        candidates above a guess are gathered and ranked, the guess lowered until there are enough."""
        guess = self.threshold_guess * 0.8
        while True:
            candidates = pre[pre > guess]
            total = int(D.all_reduce_sum(torch.tensor([len(candidates)]))[0])
            if total >= n_keep or guess <= 0:
                break
            guess = guess / 2 if guess > 1e-3 else 0.0
        everything = D.all_gather_ragged(candidates)
        if len(everything) <= n_keep:
            threshold = max(float(everything.min()), 1e-12) if len(everything) else 1e-12
        else:
            threshold = float(everything.topk(n_keep, sorted=False).values.min())
        self.threshold_guess = threshold
        return threshold

    def _aux_loss(self, x: Tensor, x_hat: Tensor, x_c: Tensor, pre: Tensor, dead: Tensor) -> Tensor:
        """AuxK: the top aux_k dead features reconstruct the residual x - x_hat (x: the target; scaled down when fewer
        than aux_k features are dead, as in SAELens)."""
        sae, cfg = self.sae, self.cfg
        dead_idx = dead.nonzero().squeeze(1)
        k_aux = min(cfg.aux_k, len(dead_idx))
        with torch.no_grad():
            top = pre[:, dead_idx].topk(k_aux, dim=1).indices  # [batch, k_aux]
            cols = dead_idx[top].flatten()
            rows = torch.arange(len(x), device=x.device).repeat_interleave(k_aux)
        vals = F.relu(selected_pre(x_c, sae.W_enc, sae.b_enc, pre, rows, cols))
        residual = (x - x_hat).detach()
        aux_hat = decode_codes(Codes.from_pairs(rows, cols, vals, len(x)), sae.W_dec)
        scale = min(len(dead_idx) / cfg.aux_k, 1.0)
        return scale * (aux_hat - residual).pow(2).sum(-1).mean()


@dataclass
class TrainState:
    step: int = 0
    since_fired: Tensor | None = None  # [d_sae] tokens since each feature last fired
    last_l0: float = math.inf
    threshold_guess: float = 0.0
    log: list[dict] = field(default_factory=list)


class Trainer:
    """Holds the SAE, Adam and the counters; `run()` trains to cfg.total_steps (or stop_after)."""

    def __init__(self, cfg: SAEConfig, source, out_dir: str | os.PathLike | None = None, resume: bool = True):
        D.init_from_env()
        self.rank, self.world = D.world()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must divide evenly among {self.world} processes")
        self.cfg, self.source = copy.deepcopy(cfg), source
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.sae = SAE(self.cfg)  # BatchTopK and Matryoshka infer as JumpReLU: SAE keeps the threshold
        if isinstance(cfg, JumpReLUConfig):
            self.sae.make_threshold_trainable(cfg.jumprelu_init_threshold)
        self.state = TrainState(since_fired=torch.zeros(cfg.d_sae, dtype=torch.long))
        self.objective = Objective(self.sae, self.cfg)
        self.optimizer = _adam(self.sae, cfg)
        ckpt = None if self.out_dir is None else self.out_dir / CHECKPOINT
        if resume and ckpt is not None and ckpt.exists():
            self._load(ckpt)
        else:
            self._calibrate()
        self.module = self.objective
        if D.active():
            self.module = nn.parallel.DistributedDataParallel(self.objective, broadcast_buffers=False)

    # ---- set-up ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _calibrate(self) -> None:
        """max_norm (outliers), the norm scale (E||x||^2 = d_in after scaling) and b_dec at the geometric
        median, from a sample."""
        cfg = self.cfg
        sample = self.source.calibration(cfg.calibration_tokens).float()
        width = cfg.d_in + cfg.d_target if cfg.is_transcoder else cfg.d_in
        if sample.shape[1] != width:
            what = (
                f"rows [x | y] of d_in + d_out = {width}" if cfg.is_transcoder else f"cfg.d_in is {cfg.d_in}"
            )
            raise ValueError(f"the source gives [*, {sample.shape[1]}] activations, {what}")
        x, y = split_rows(sample, cfg)
        if cfg.outlier_factor is not None:
            norms = x.norm(dim=1)
            cfg.max_norm = float(cfg.outlier_factor * norms.median())
            x, y = x[norms <= cfg.max_norm], y[norms <= cfg.max_norm]
        if cfg.normalize_activations:
            cfg.norm_scale = math.sqrt(cfg.d_in / float(x.pow(2).sum(1).mean()))
            if cfg.is_transcoder:
                cfg.target_norm_scale = math.sqrt(cfg.d_target / max(float(y.pow(2).sum(1).mean()), 1e-12))
        target_scale = cfg.target_norm_scale if cfg.is_transcoder else cfg.norm_scale
        self.sae.b_dec.copy_(geometric_median(y * target_scale))

    def _load(self, path: Path) -> None:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        saved = {k: v for k, v in ckpt["cfg"].items() if k not in (*SET_BY_TRAINING, "architecture")}
        mine = {k: v for k, v in self.cfg.to_dict().items() if k in saved}
        changed = sorted(
            k for k in saved if k in mine and _plain(saved[k]) != _plain(mine[k]) and k != "log_every"
        )
        if changed:
            raise ValueError(
                f"{path} was written with a different config ({', '.join(changed)} differ); "
                "delete it to start afresh or pass the same settings to resume"
            )
        for name in SET_BY_TRAINING:
            setattr(self.cfg, name, ckpt["cfg"][name])
        self.sae.load_state_dict(ckpt["sae"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["state"])
        self.objective.threshold_guess = self.state.threshold_guess

    def checkpoint(self) -> None:
        """Write checkpoint.pt (process 0; written to a temporary name, then renamed)."""
        if self.out_dir is None:
            return
        if self.rank == 0:
            self.state.threshold_guess = self.objective.threshold_guess
            payload = {
                "cfg": self.cfg.to_dict(),
                "sae": self.sae.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "state": vars(self.state),
            }
            with AtomicFile(self.out_dir / CHECKPOINT) as f:
                torch.save(payload, f)
        D.barrier()

    # ---- schedules ---------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        cfg, total = self.cfg, self.cfg.total_steps
        factor = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
        decay_steps = int(cfg.lr_decay_fraction * total)
        if decay_steps:
            factor *= min(1.0, (total - step) / decay_steps)
        return cfg.lr * factor

    def l1_at(self, step: int) -> float:
        """The sparsity coefficient at `step`: L1 (standard) or L0 (JumpReLU), after its linear warm-up."""
        cfg = self.cfg
        if isinstance(cfg, StandardConfig):
            coefficient, fraction = cfg.l1_coefficient, cfg.l1_warmup_fraction
        elif isinstance(cfg, JumpReLUConfig):
            coefficient, fraction = cfg.l0_coefficient, cfg.l0_warmup_fraction
        else:
            return 0.0
        warm = int(fraction * cfg.total_steps)
        return coefficient * (min(1.0, (step + 1) / warm) if warm else 1.0)

    # ---- training ----------------------------------------------------------------------------------------
    def dead_mask(self) -> Tensor:
        return self.state.since_fired >= self.cfg.dead_tokens

    def train_step(self, x: Tensor) -> dict:
        """One optimizer step on this process's batch x [batch_size // world, d_in] (raw activations)."""
        cfg, sae, step = self.cfg, self.sae, self.state.step
        x = x.float()
        if cfg.max_norm is not None:  # massive-activation tokens are left out, like BOS
            x = x[x[:, : cfg.d_in].norm(dim=1) <= cfg.max_norm]
        x = scale_rows(x, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        dense = (
            isinstance(cfg, (StandardConfig, JumpReLUConfig)) and self.state.last_l0 > DENSE_ABOVE * cfg.d_sae
        )
        loss, stats = self.module(x, self.dead_mask(), self.l1_at(step), dense)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DistributedDataParallel averages the gradients here
        sae.remove_parallel_grad()
        self.optimizer.step()
        sae.normalize_decoder()
        if isinstance(cfg, JumpReLUConfig):  # a negative threshold would let negative pre-activations through
            with torch.no_grad():
                sae.threshold.clamp_(min=0.0)
        # one all-reduce for everything the processes must agree on
        count = torch.tensor(float(len(x)))
        summary = torch.cat([stats["fired"], torch.stack([stats["nnz"], stats["sse"], loss.detach(), count])])
        D.all_reduce_sum(summary)
        fired, (nnz, sse, loss_sum, tokens) = summary[:-4], summary[-4:].tolist()
        self.state.since_fired += int(tokens)
        self.state.since_fired[fired > 0] = 0
        self.state.last_l0 = nnz / max(tokens, 1)
        if "threshold" in stats:  # BatchTopK: the inference threshold follows the batch thresholds
            t, beta = float(stats["threshold"]), cfg.threshold_beta
            with torch.no_grad():
                sae.threshold.fill_(t if step == 0 else beta * float(sae.threshold[0]) + (1 - beta) * t)
        self.state.step += 1
        if isinstance(cfg, StandardConfig) and self.state.step in self.resample_steps():
            self.resample()
        return {
            "step": self.state.step,
            "tokens": self.state.step * cfg.batch_size,
            "loss": loss_sum / self.world,
            "mse": sse / max(tokens, 1),
            "l0": self.state.last_l0,
            "dead": float(self.dead_mask().float().mean()),
            "lr": self.lr_at(step),
        }

    def resample_steps(self) -> set[int]:
        return {max(1, int(f * self.cfg.total_steps)) for f in self.cfg.resample_at}

    @torch.no_grad()
    def resample(self) -> int:
        """Towards Monosemanticity's resampling: each feature that has not fired in the last resample_window
        of training gets an input drawn with probability proportional to its squared loss as its decoder
        direction, an encoder row along it at 0.2 x the mean alive encoder norm, zero bias and fresh Adam
        moments. The candidate inputs are the last resample_pool batches of every process."""
        cfg, sae, step = self.cfg, self.sae, self.state.step
        window = max(1, int(cfg.resample_window * cfg.total_steps)) * cfg.batch_size
        dead = (self.state.since_fired >= min(window, step * cfg.batch_size)).nonzero().squeeze(1)
        if len(dead) == 0:
            return 0
        first = max(0, step - cfg.resample_pool)
        pool = torch.cat([self.source.batch(s).float() for s in range(first, step)])
        if cfg.max_norm is not None:
            pool = pool[pool[:, : cfg.d_in].norm(dim=1) <= cfg.max_norm]
        pool_x, pool_y = split_rows(scale_rows(pool, cfg), cfg)
        losses = (sae(pool_x) - pool_y).pow(2).sum(-1)
        pool_x, pool_y, losses = D.all_gather_cat(pool_x), D.all_gather_cat(pool_y), D.all_gather_cat(losses)
        pool = pool_y  # the decoder takes the direction of the target it failed on
        weights = losses.pow(2).double()
        weights = weights if float(weights.sum()) > 0 else torch.ones_like(weights)
        pick = torch.multinomial(
            weights, len(dead), replacement=len(dead) > len(pool), generator=_generator(cfg.seed, step)
        )
        directions = pool[pick] / pool[pick].norm(dim=1, keepdim=True).clamp_min(1e-8)  # [n_dead, d_out]
        enc_dirs = pool_x[pick] / pool_x[pick].norm(dim=1, keepdim=True).clamp_min(1e-8)  # [n_dead, d_in]
        alive = torch.ones(cfg.d_sae, dtype=torch.bool)
        alive[dead] = False
        enc_norm = float(sae.W_enc[:, alive].norm(dim=0).mean()) if bool(alive.any()) else 1.0
        sae.W_dec[dead] = directions
        sae.W_enc[:, dead] = enc_dirs.T * 0.2 * enc_norm
        sae.b_enc[dead] = 0
        for param, index in ((sae.W_dec, (dead,)), (sae.W_enc, (slice(None), dead)), (sae.b_enc, (dead,))):
            for moment in self.optimizer.state.get(param, {}).values():
                if isinstance(moment, Tensor) and moment.shape == param.shape:
                    moment[index] = 0
        self.state.since_fired[dead] = 0
        return len(dead)

    def run(self, stop_after: int | None = None, progress: bool = True) -> SAE:
        """Train to the end (or until step `stop_after`, then checkpoint and return)."""
        cfg = self.cfg
        end = cfg.total_steps if stop_after is None else min(stop_after, cfg.total_steps)
        bar = tqdm(
            total=cfg.total_steps,
            initial=self.state.step,
            disable=not progress or self.rank != 0,
            desc=f"SAE {cfg.architecture} {cfg.site}".strip(),
            unit="step",
        )
        with bar:
            while self.state.step < end:
                record = self.train_step(self.source.batch(self.state.step))
                bar.update(1)
                if record["step"] % cfg.log_every == 0 or record["step"] == cfg.total_steps:
                    self.state.log.append(record)
                    bar.set_postfix(
                        loss=f"{record['loss']:.4g}", l0=f"{record['l0']:.1f}", dead=f"{record['dead']:.1%}"
                    )
                if record["step"] % cfg.checkpoint_every == 0:
                    self.checkpoint()
        if self.state.step == end:
            self.checkpoint()
        return self.sae

    def final_sae(self) -> SAE:
        """A copy of the SAE that reads raw activations (the norm scale folded into its weights)."""
        sae = copy.deepcopy(self.sae)
        cfg = self.cfg
        sae.fold_scale(cfg.norm_scale, cfg.target_norm_scale if cfg.is_transcoder else None)
        return sae


def split_rows(rows: Tensor, cfg: SAEConfig) -> tuple[Tensor, Tensor]:
    """A batch as (input x [n, d_in], target y): a transcoder's rows are [x | y]; an autoencoder's are x = y."""
    if not cfg.is_transcoder:
        return rows, rows
    if rows.shape[1] != cfg.d_in + cfg.d_target:
        raise ValueError(
            f"a transcoder trains on rows [x | y] of width d_in + d_out = {cfg.d_in + cfg.d_target}, "
            f"got {rows.shape[1]}"
        )
    return rows[:, : cfg.d_in], rows[:, cfg.d_in :]


def scale_rows(rows: Tensor, cfg: SAEConfig) -> Tensor:
    """Rows in training units: x * norm_scale (and a transcoder's y * target_norm_scale)."""
    if not cfg.is_transcoder:
        return rows * cfg.norm_scale
    x, y = split_rows(rows, cfg)
    return torch.cat([x * cfg.norm_scale, y * cfg.target_norm_scale], dim=1)


def _adam(sae: SAE, cfg: SAEConfig) -> torch.optim.Adam:
    """Fused Adam (one kernel for all parameters) where this torch has it for the device, else the default."""
    try:
        return torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.betas, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.betas)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def train_sae(
    cfg: SAEConfig,
    source,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> SAE:
    """Train an SAE of `cfg` on `source` (see sources.py) and return it, reading raw activations.

    out_dir: where checkpoint.pt goes (and, at the end, cfg.json + sae_weights.safetensors +
        training_log.json); with resume=True an existing checkpoint is continued.
    stop_after: stop at this step (checkpointed), e.g. to continue later.
    """
    from .io import save_sae

    trainer = Trainer(cfg, source, out_dir, resume=resume)
    trainer.run(stop_after=stop_after, progress=progress)
    sae = trainer.final_sae()
    if out_dir is not None and trainer.state.step >= cfg.total_steps and trainer.rank == 0:
        save_sae(sae, out_dir, log=trainer.state.log)
    D.barrier()
    return sae

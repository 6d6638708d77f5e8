"""Logit lens and tuned lens: read a residual stream point as a next-token prediction.

Logit lens (nostalgebraist 2020): lens_l(h) = unembed(final_norm(h)) for h = blocks.l.resid_post (or any
residual site). At the last layer's resid_post this is exactly the model's own logits.

Tuned lens (Belrose et al. 2023, arXiv 2303.08112): lens_l(h) = unembed(final_norm(h A_l + b_l)), one affine
translator per site, written A_l = I + W_l so that W_l = 0, b_l = 0 (the initialisation) is the logit lens.
Translators are trained to minimise KL(final || lens_l) on text; the sites are independent, so one pass over
a cached batch trains them all. The final resid_post keeps the identity: the logit lens is exact there.

Statistics skip position 0 of every context (the BOS token, an attention sink with a huge norm, where the
lens says nothing about the text).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..runs import read_json, write_atomic, write_json

LENS_WEIGHTS, LENS_CONFIG = "tuned_lens.safetensors", "tuned_lens.json"


def unembed(model, resid: Tensor) -> Tensor:
    """Final norm + unembedding of residual vectors: [..., d_model] -> logits [..., d_vocab]."""
    parts = model.parts
    return parts.unembed(parts.final_norm(resid.to(model.dtype)))


def lens_sites(model, sites: str | list[str] | None = None) -> list[str]:
    """Residual sites to read (globs allowed); default every layer's resid_post, in execution order."""
    names = model.resolve_sites(sites or "blocks.*.resid_post")
    bad = [s for s in names if not s.endswith(("resid_pre", "resid_mid", "resid_post"))]
    if bad:
        raise ValueError(f"a lens reads residual stream sites (resid_pre/mid/post), not {bad}")
    return names


class TunedLens(nn.Module):
    """One affine translator per residual site: h -> h (I + delta[i]) + bias[i].

    delta [n_sites, d_model, d_model], bias [n_sites, d_model]; both start at zero (= the logit lens).
    """

    def __init__(self, sites: list[str], d_model: int, model_name: str = ""):
        super().__init__()
        self.sites, self.model_name = list(sites), model_name
        self.delta = nn.Parameter(torch.zeros(len(self.sites), d_model, d_model))
        self.bias = nn.Parameter(torch.zeros(len(self.sites), d_model))
        self.info: dict = {}  # how it was trained (saved with it)

    @classmethod
    def for_model(cls, model, sites: str | list[str] | None = None) -> TunedLens:
        return cls(lens_sites(model, sites), model.cfg.d_model, model.cfg.name)

    def index(self, site: str) -> int:
        if site not in self.sites:
            raise KeyError(f"this tuned lens has no translator for {site!r}; it covers {self.sites}")
        return self.sites.index(site)

    def translate(self, resid: Tensor, site: str) -> Tensor:
        """resid [..., d_model] at `site` -> translated residual [..., d_model]."""
        i = self.index(site)
        resid = resid.float()
        return resid + resid @ self.delta[i] + self.bias[i]

    def save(self, folder: str | Path) -> Path:
        """Write tuned_lens.safetensors + tuned_lens.json into `folder` (each via a temporary file)."""
        folder = Path(folder)
        tensors = {"delta": self.delta.detach().contiguous(), "bias": self.bias.detach().contiguous()}
        write_atomic(folder / LENS_WEIGHTS, save(tensors))
        config = {"sites": self.sites, "d_model": self.delta.shape[-1], "model": self.model_name, **self.info}
        write_json(folder / LENS_CONFIG, config)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TunedLens:
        folder = Path(folder)
        if not (folder / LENS_WEIGHTS).is_file():
            raise FileNotFoundError(
                f"{folder} holds no {LENS_WEIGHTS}; train one with `lmscope lens --train`"
            )
        config = read_json(folder / LENS_CONFIG)
        lens = cls(config["sites"], config["d_model"], config.get("model", ""))
        tensors = load_file(folder / LENS_WEIGHTS)
        with torch.no_grad():
            lens.delta.copy_(tensors["delta"])
            lens.bias.copy_(tensors["bias"])
        lens.info = {k: v for k, v in config.items() if k not in ("sites", "d_model", "model")}
        return lens


def lens_logits(model, resid: Tensor, site: str, lens: TunedLens | None = None) -> Tensor:
    """The lens's logits for residuals [..., d_model] read at `site`: logit lens if `lens` is None."""
    return unembed(model, resid if lens is None else lens.translate(resid, site))


# ------------------------------------------------------------------------------------------ cached residuals


@dataclass
class ResidualCache:
    """Residuals of real tokens (position 0 of each context skipped), for training and evaluating lenses.

    resid [n_sites, n_tokens, d_model] at `sites`; final [n_tokens, d_model] the last layer's resid_post,
    whose logit lens is the model's output (the target); tokens [n_tokens] the input token at each point.
    """

    sites: list[str]
    resid: Tensor
    final: Tensor
    tokens: Tensor

    @property
    def n_tokens(self) -> int:
        return self.final.shape[0]


@torch.no_grad()
def collect_residuals(
    model,
    contexts: Tensor,
    sites: str | list[str] | None = None,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> ResidualCache:
    """Run `contexts` [n_ctx, ctx_len] (full contexts, no padding) and keep the residuals at `sites`.

    Memory: (n_sites + 1) x n_ctx x (ctx_len - 1) x d_model values of `dtype` (float16 halves it).
    """
    names = lens_sites(model, sites)
    final_site = f"blocks.{model.cfg.n_layers - 1}.resid_post"
    if contexts.dim() != 2 or contexts.shape[1] < 2:
        raise ValueError(f"contexts must be token ids [n_ctx, ctx_len >= 2], got {tuple(contexts.shape)}")
    n = contexts.shape[0] * (contexts.shape[1] - 1)
    resid = torch.empty(len(names), n, model.cfg.d_model, dtype=dtype)
    final = torch.empty(n, model.cfg.d_model, dtype=dtype)
    start = 0
    for batch in tqdm(contexts.split(batch_size), desc="caching residuals", disable=not progress):
        _, cache = model.run_with_cache(batch, sites=sorted({*names, final_site}), stop_at=final_site)
        stop = start + batch.shape[0] * (batch.shape[1] - 1)
        for i, site in enumerate(names):
            resid[i, start:stop] = cache[site][:, 1:].flatten(0, 1).to(dtype)
        final[start:stop] = cache[final_site][:, 1:].flatten(0, 1).to(dtype)
        start = stop
    return ResidualCache(names, resid, final, contexts[:, 1:].flatten())


# ------------------------------------------------------------------------------------------------ statistics


@dataclass
class LensStats:
    """Per site, averaged over tokens: kl = KL(final || lens) in nats; mean_rank = rank of the model's top
    token in the lens's distribution (0 = also the lens's top); top1 = fraction of tokens where it is."""

    sites: list[str]
    kl: list[float]
    mean_rank: list[float]
    top1: list[float]
    n_tokens: int
    lens: str = "logit"

    def to_dict(self) -> dict:
        return asdict(self)


def _kl(final_logp: Tensor, lens_logp: Tensor) -> Tensor:
    """KL(final || lens) per row: [n, vocab] x 2 -> [n]."""
    return (final_logp.exp() * (final_logp - lens_logp)).sum(-1)


@torch.no_grad()
def lens_stats(
    model, cache: ResidualCache, lens: TunedLens | None = None, batch_size: int = 256, progress: bool = False
) -> LensStats:
    """KL, mean rank and top-1 agreement of a lens (logit lens if None) at every site of `cache`."""
    kl = torch.zeros(len(cache.sites), dtype=torch.float64)
    rank, top1 = torch.zeros_like(kl), torch.zeros_like(kl)
    for start in tqdm(range(0, cache.n_tokens, batch_size), desc="lens stats", disable=not progress):
        stop = min(start + batch_size, cache.n_tokens)
        final_logp = unembed(model, cache.final[start:stop]).float().log_softmax(-1)
        top = final_logp.argmax(-1, keepdim=True)  # [b, 1]
        for i, site in enumerate(cache.sites):
            logits = lens_logits(model, cache.resid[i, start:stop], site, lens).float()
            kl[i] += _kl(final_logp, logits.log_softmax(-1)).sum()
            above = (logits > logits.gather(-1, top)).sum(-1)
            rank[i] += above.sum()
            top1[i] += (above == 0).sum()
    n = cache.n_tokens
    return LensStats(
        cache.sites,
        (kl / n).tolist(),
        (rank / n).tolist(),
        (top1 / n).tolist(),
        n,
        "logit" if lens is None else "tuned",
    )


# --------------------------------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """steps x batch_size tokens are drawn (with replacement across steps) from the cache; lr decays
    linearly to 0. optimizer: "adam" or "sgd" (Nesterov, momentum 0.9, as in Belrose et al.)."""

    steps: int = 100
    batch_size: int = 128
    lr: float = 2e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 25


def _optimizer(lens: TunedLens, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(lens.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            lens.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")


def train_tuned_lens(
    model,
    cache: ResidualCache,
    cfg: TrainConfig | None = None,
    lens: TunedLens | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> TunedLens:
    """Train a tuned lens (a fresh one, or `lens`) on `cache`; returns it with lens.info["loss"] per step.

    Each step draws batch_size tokens (fixed by seed and step, so a resumed run draws what an uninterrupted
    one would) and takes one optimizer step on the sum over sites of KL(final || lens). With `checkpoint`
    (a file path) the state is saved every checkpoint_every steps and a run finding it there resumes.
    """
    cfg = cfg or TrainConfig()
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and lr > 0, got {cfg}")
    lens = lens or TunedLens(cache.sites, model.cfg.d_model, model.cfg.name)
    if lens.sites != cache.sites:
        raise ValueError(f"the lens covers {lens.sites} but the cache holds {cache.sites}")
    opt = _optimizer(lens, cfg)
    step, losses = 0, []
    if checkpoint is not None and Path(checkpoint).is_file():
        step, losses = _resume(Path(checkpoint), lens, opt, cfg)
    bar = tqdm(total=cfg.steps, initial=step, desc="tuned lens", disable=not progress)
    frozen = [(p, p.requires_grad) for p in model.hf.parameters()]
    for p, _ in frozen:  # the model stays fixed: no gradient for W_U saves a third of the work
        p.requires_grad_(False)
    try:
        step, losses = _train_steps(model, cache, cfg, lens, opt, step, losses, checkpoint, bar)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        bar.close()
    lens.info = {"train": asdict(cfg), "train_tokens": cache.n_tokens, "loss": losses}
    return lens


def _train_steps(model, cache, cfg, lens, opt, step, losses, checkpoint, bar):
    final_site = f"blocks.{model.cfg.n_layers - 1}.resid_post"
    trained = [i for i, s in enumerate(cache.sites) if s != final_site]
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (1 - step / cfg.steps)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(cache.n_tokens, (cfg.batch_size,), generator=gen)
        with torch.no_grad():
            final_logp = unembed(model, cache.final[idx]).float().log_softmax(-1)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in trained:  # backward per site frees each graph before the next ([batch, vocab] each)
            logp = lens_logits(model, cache.resid[i, idx], cache.sites[i], lens).float().log_softmax(-1)
            loss = _kl(final_logp, logp).mean()
            loss.backward()
            total += loss.item()
        opt.step()
        step += 1
        losses.append(total / max(len(trained), 1))
        bar.update(1)
        bar.set_postfix(kl=f"{losses[-1]:.3f}")
        if checkpoint is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            _save_checkpoint(Path(checkpoint), lens, opt, cfg, step, losses)
    return step, losses


def _save_checkpoint(path: Path, lens, opt, cfg: TrainConfig, step: int, losses: list[float]) -> None:
    buffer = io.BytesIO()
    torch.save({"lens": lens.state_dict(), "opt": opt.state_dict()}, buffer)
    write_atomic(path, buffer.getvalue())
    meta = {"step": step, "losses": losses, "cfg": asdict(cfg), "sites": lens.sites}
    write_json(path.with_suffix(".json"), meta)


def _resume(path: Path, lens, opt, cfg: TrainConfig) -> tuple[int, list[float]]:
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta["cfg"] != asdict(cfg) or meta["sites"] != lens.sites:
        raise ValueError(
            f"the checkpoint {path} was made with other settings ({meta['cfg']}); delete it or use the same ones"
        )
    state = torch.load(path, weights_only=True)
    lens.load_state_dict(state["lens"])
    opt.load_state_dict(state["opt"])
    return meta["step"], list(meta["losses"])


# ------------------------------------------------------------------------------------------- one prompt


@dataclass
class PromptLens:
    """A prompt's predictions at every site. tokens: the input tokens (str); per [site][pos]: top_tokens
    (the lens's top prediction), top_probs, kl to the final distribution, final_rank (rank of the model's
    own top token); topk[site][pos] = [(token, prob), ...]."""

    tokens: list[str]
    sites: list[str]
    top_tokens: list[list[str]]
    top_probs: list[list[float]]
    kl: list[list[float]]
    final_rank: list[list[int]]
    topk: list[list[list[tuple[str, float]]]] = field(repr=False)
    lens: str = "logit"

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def prompt_lens(
    model, prompt: str | Tensor, lens: TunedLens | None = None, sites=None, k: int = 5
) -> PromptLens:
    """Top predictions of the lens at every site and position of one prompt (text or ids [pos])."""
    names = lens.sites if lens is not None else lens_sites(model, sites)
    ids = model.to_tokens(prompt) if isinstance(prompt, str) else torch.as_tensor(prompt).view(1, -1)
    logits, cache = model.run_with_cache(ids, sites=names)
    final_logp = logits[0].float().log_softmax(-1)  # [pos, vocab]
    top = final_logp.argmax(-1, keepdim=True)
    decode = model.tokenizer.decode
    out = {"top_tokens": [], "top_probs": [], "kl": [], "final_rank": [], "topk": []}
    for site in names:
        logp = lens_logits(model, cache[site][0], site, lens).float().log_softmax(-1)
        probs, idx = logp.exp().topk(k, dim=-1)  # [pos, k]
        out["top_tokens"].append([decode([int(i)]) for i in idx[:, 0]])
        out["top_probs"].append(probs[:, 0].tolist())
        out["kl"].append(_kl(final_logp, logp).tolist())
        out["final_rank"].append((logp > logp.gather(-1, top)).sum(-1).tolist())
        out["topk"].append(
            [[(decode([int(t)]), float(p)) for t, p in zip(ti, pi)] for ti, pi in zip(idx, probs)]
        )
    return PromptLens(model.to_str_tokens(ids[0]), names, **out, lens="logit" if lens is None else "tuned")

"""Train a small transformer from scratch: log-spaced Hugging Face checkpoints, resumable, held-out loss.

    result = train_model(LabConfig(n_layers=1, steps=300), "runs/lab1", corpus="corpus/")
    ls.load(result.checkpoints[-1])        # any checkpoint is a plain HF folder (GPT-2 class + tokenizer)

The run folder holds ``tokenizer/`` and ``vocab_map.json`` (the lab vocabulary; new id -> base id),
``checkpoints/step_NNNNNN/`` (model + tokenizer, each written under a temporary name and renamed),
``state.pt`` (weights, optimiser state, step, history, RNG state: what a resume needs), ``metrics.json``
and, last, ``run.json`` (kind "lab"). An interrupted run (Ctrl-C, a crash) resumes from its last saved
state when the same command runs again, and reproduces the uninterrupted run exactly: batches are a
function of (seed, step), there is no dropout, and the optimiser's state is restored.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..data.tokens import TokenDataset, tokenizer_hash
from ..runs import AtomicFile, read_json, read_run, write_atomic, write_json, write_run
from .config import LabConfig
from .data import (
    base_tokenizer,
    batch_indices,
    build_tokenizer,
    check_dataset,
    corpus_datasets,
    corpus_docs,
    target_mask,
    unigram_loss,
)
from .model import build_model

STATE_FILE = "state.pt"
EVAL_BATCH = 32


@dataclass
class LabResult:
    """A finished (or resumed-to-the-end) lab run: its folder, checkpoint folders (by step), metrics, and
    the trained model and tokenizer in memory."""

    out: Path
    checkpoints: list[Path]
    metrics: dict
    model: object
    tokenizer: object

    @property
    def heldout_loss(self) -> float:
        return self.metrics["heldout_loss"]

    @property
    def unigram_loss(self) -> float:
        return self.metrics["unigram_loss"]


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """Step 0 and up to n-1 log-spaced steps in [1, steps], `steps` always included."""
    if n <= 1:
        return [steps]
    logs = torch.logspace(0, math.log10(steps), n - 1, dtype=torch.float64)
    return sorted({0, steps, *(int(round(float(s))) for s in logs)})


def lr_at(cfg: LabConfig, step: int) -> float:
    """The learning rate of update `step` (0-based) under cfg.schedule."""
    peak = cfg.peak_lr
    if cfg.schedule == "constant":
        return peak
    warm = min(cfg.warmup_steps, cfg.steps)
    if step < warm:
        return peak * (step + 1) / warm
    if cfg.schedule == "warmup":
        return peak
    progress = (step - warm) / max(1, cfg.steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine down to 10% of peak


def lm_loss(model, tokens: Tensor, mask: Tensor) -> tuple[Tensor, int]:
    """(summed next-token cross-entropy over the targets in `mask`, their count). tokens [b, ctx], mask
    [b, ctx - 1] bool."""
    logits = model(input_ids=tokens).logits[:, :-1]  # [b, ctx-1, vocab]
    # flat [b * (ctx-1), vocab] rows: cross_entropy on the [b, vocab, ctx-1] layout is ~2x slower on CPU
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    )
    return (losses * mask.reshape(-1)).sum(), int(mask.sum())


@torch.no_grad()
def heldout_loss(model, ds: TokenDataset, device: str = "cpu") -> float:
    """Mean next-token loss (nats) over the targets of `ds`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    mask = target_mask(ds)
    for i in range(0, len(ds), EVAL_BATCH):
        s, c = lm_loss(model, ds.tokens[i : i + EVAL_BATCH].to(device), mask[i : i + EVAL_BATCH].to(device))
        total, count = total + float(s), count + c
    model.train(was_training)
    return total / count


def make_optimizer(cfg: LabConfig, model) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(params, lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.peak_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_model(
    cfg: LabConfig | None = None,
    out: str | Path = "lab-run",
    *,
    corpus: str | Path | None = None,
    tokenizer=None,
    train: TokenDataset | None = None,
    test: TokenDataset | None = None,
    resume: bool = True,
    progress: bool = True,
    save_every: int = 100,
    on_step: Callable[[int, float], None] | None = None,
    **overrides,
) -> LabResult:
    """Train a model of `cfg` (fields may also be given as keyword overrides) into the run folder `out`.

    Data: `corpus` (a folder from `lmscope corpus build`; None = the default corpus), tokenised with
    `tokenizer` (an HF tokenizer or a folder; None = SmolLM2's) trimmed to cfg.vocab tokens; or ready
    TokenDatasets `train` and `test` made with `tokenizer` (then cfg.vocab must be 0).
    resume: continue the unfinished run in `out` (its config must match); False starts over.
    on_step(step, loss): called after each update (step counts updates done); an exception from it
    interrupts the run like Ctrl-C (the state is saved first).
    """
    cfg = dataclasses.replace(cfg or LabConfig(), **overrides)
    out = _writable(Path(out))
    state = _previous_state(out, cfg, resume)
    tok, id_map, train, test = _data(cfg, out, corpus, tokenizer, train, test, state)
    vocab_size = len(tok)
    baseline = unigram_loss(train, test, vocab_size)
    model = build_model(cfg, tok)
    opt = make_optimizer(cfg, model)
    history = {"train_loss": [], "evals": {}}
    start = 0
    if state is not None:
        _check_same_data(state, train, tok)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        history, start = state["history"], state["step"]
    data_id = {"train_fingerprint": train.fingerprint(), "tokenizer_hash": tokenizer_hash(tok)}

    def save_state(done: int) -> None:
        payload = {
            "step": done,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": torch.get_rng_state(),
            "history": history,
            "config": cfg.to_dict(),
            **data_id,
        }
        with AtomicFile(out / STATE_FILE) as f:
            torch.save(payload, f)

    def checkpoint(done: int) -> None:
        _save_checkpoint(model, tok, out / "checkpoints" / f"step_{done:06d}")
        history["evals"][done] = heldout_loss(model, test, cfg.device)
        save_state(done)

    ckpts = checkpoint_steps(cfg.steps, cfg.n_checkpoints)
    train_tokens, train_mask = train.tokens.to(cfg.device), target_mask(train).to(cfg.device)
    began, done, consistent = time.time(), start, True
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, desc="lab train", disable=not progress)
    try:
        for step in range(start, cfg.steps):
            if step in ckpts and step not in history["evals"]:
                checkpoint(step)
            idx = batch_indices(len(train), cfg.batch_size, step, cfg.seed).to(cfg.device)
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step)
            consistent = False  # an interrupt from here until the update is done leaves half-updated weights
            total, count = lm_loss(model, train_tokens[idx], train_mask[idx])
            loss = total / max(count, 1)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done, consistent = step + 1, True
            loss = float(loss.detach())
            history["train_loss"].append(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss} at step {done}; lower --lr")
            bar.update(1)
            bar.set_postfix(loss=f"{sum(history['train_loss'][-20:]) / len(history['train_loss'][-20:]):.3f}")
            if save_every and done % save_every == 0:
                save_state(done)
            if on_step is not None:
                on_step(done, loss)
        if cfg.steps not in history["evals"]:
            checkpoint(cfg.steps)
    except BaseException:
        if consistent and done > start:
            save_state(done)
            if progress:
                print(f"\nlab: stopped after step {done}; run the same command again to resume")
        raise
    finally:
        bar.close()
    model.eval()
    metrics = _metrics(cfg, history, baseline, train, test, vocab_size, model, time.time() - began, ckpts)
    write_json(out / "metrics.json", metrics)
    folders = [out / "checkpoints" / f"step_{s:06d}" for s in ckpts]
    write_run(
        out,
        "lab",
        f"lab: {cfg.n_layers}-layer d{cfg.d_model} "
        f"{'attn-only' if cfg.attn_only else cfg.activation} {cfg.optimizer} seed {cfg.seed}",
        model=str(folders[-1]),
        config=cfg.to_dict(),
        heldout_loss=metrics["heldout_loss"],
        unigram_loss=baseline,
        vocab_size=vocab_size,
        corpus=None if corpus is None else str(Path(corpus).resolve()),
    )
    return LabResult(out, folders, metrics, model, tok)


def _writable(out: Path) -> Path:
    """`out`, created; a clear error before any training when it cannot be written."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out} is a file; give a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / ".write-test", b"")
        (out / ".write-test").unlink()
    except OSError as err:
        raise OSError(
            f"cannot write the run folder {out} ({err.strerror or err}); choose another --out"
        ) from err
    return out


def _previous_state(out: Path, cfg: LabConfig, resume: bool) -> dict | None:
    """The saved state to resume from (None: start fresh); refuses another kind of run or another config."""
    if (out / "run.json").exists() and read_run(out).get("kind") != "lab":
        raise ValueError(
            f"{out} holds a {read_run(out).get('kind')!r} run; give a new folder for the lab run"
        )
    path = out / STATE_FILE
    if not resume:
        for name in (STATE_FILE, "run.json", "metrics.json", "vocab_map.json"):
            (out / name).unlink(missing_ok=True)
        for name in ("checkpoints", "tokenizer"):
            shutil.rmtree(out / name, ignore_errors=True)
        return None
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    saved = state["config"]
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in cfg.to_dict().items() if saved.get(k) != v]
    if changed:
        raise ValueError(
            f"{out} has an unfinished run with another config ({'; '.join(changed)}); "
            "rerun with the same settings to resume, or pass --restart (resume=False) to start over"
        )
    return state


def _data(cfg, out: Path, corpus, tokenizer, train, test, state):
    """(tokenizer, id_map, train, test): the lab tokenizer is built once and kept in out/tokenizer/."""
    if (train is None) != (test is None):
        raise ValueError("give both train and test datasets, or neither (and a corpus)")
    if train is not None:
        if tokenizer is None or isinstance(tokenizer, str | Path):
            tokenizer = base_tokenizer(tokenizer)
        if cfg.vocab:
            raise ValueError("ready datasets keep their tokenizer's vocabulary: set vocab=0")
        for name, ds in (("train", train), ("test", test)):
            check_dataset(ds, tokenizer, name)
        tokenizer.save_pretrained(str(out / "tokenizer"))
        return tokenizer, None, train, test
    saved = out / "tokenizer"
    if state is not None and saved.is_dir():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(saved))
        id_map = read_json(out / "vocab_map.json") if (out / "vocab_map.json").exists() else None
    else:
        base = base_tokenizer(tokenizer)
        budget = None if cfg.train_tokens is None else 2 * cfg.train_tokens
        tok, id_map = build_tokenizer(cfg, base, corpus_docs(corpus, "train", budget, base))
        _save_tokenizer(tok, saved)
        if id_map is not None:
            write_json(out / "vocab_map.json", id_map)
    train, test = corpus_datasets(cfg, corpus, tok)
    for name, ds in (("train", train), ("test", test)):
        check_dataset(ds, tok, name)
    return tok, id_map, train, test


def _check_same_data(state: dict, train: TokenDataset, tok) -> None:
    if (
        state.get("tokenizer_hash") != tokenizer_hash(tok)
        or state.get("train_fingerprint") != train.fingerprint()
    ):
        raise ValueError(
            "the training data differs from the run being resumed (the corpus or tokenizer changed); "
            "restore it, or pass --restart (resume=False) to start over"
        )


def _save_tokenizer(tok, folder: Path) -> None:
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _save_checkpoint(model, tok, folder: Path) -> None:
    """An HF folder (model + tokenizer) written under a temporary name and renamed into place."""
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _metrics(cfg, history, baseline, train, test, vocab_size, model, seconds, ckpts) -> dict:
    evals = {int(k): v for k, v in history["evals"].items()}
    tail = history["train_loss"][-20:]
    return {
        "heldout_loss": evals[cfg.steps],
        "unigram_loss": baseline,
        "heldout_below_unigram": baseline - evals[cfg.steps],
        "train_loss_last20": sum(tail) / len(tail) if tail else None,
        "checkpoints": [
            {"step": s, "heldout_loss": evals.get(s), "folder": f"checkpoints/step_{s:06d}"} for s in ckpts
        ],
        "train_loss": history["train_loss"],
        "train_tokens": train.n_tokens,
        "eval_tokens": int(target_mask(test).sum()),
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.ctx_len,
        "vocab_size": vocab_size,
        "n_params": sum(p.numel() for p in model.parameters()),
        "seconds_this_session": seconds,
        "unigram_smoothing": "add-1/2 over the vocabulary",
    }

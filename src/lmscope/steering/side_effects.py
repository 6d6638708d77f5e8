"""Side effects of steering on held-out reference text: KL, next-token loss, and other SAE features.

For every label's reference contexts the unsteered model runs once per batch, then once per condition
(scale or ablation). Per condition and label:

    kl          mean over next-token predictions of KL(unsteered || steered) (nats)
    loss_delta  mean next-token loss steered minus unsteered (nats/token)

Interference, per SAE given (its own site, e.g. the steering site and one layer later): the mean change of
every feature's activation over the reference tokens (BOS and tokens above the SAE's max_norm left out),
against two predictions from the mean vector dx the intervention adds at the steering site (scale * v for
steering; minus the mean projection for ablation), assuming dx reaches the SAE's site unchanged (exact at
the steering site itself and downstream along the residual stream's skip path, ignoring what the layers in
between do with it):

    predicted          rate_i * dx . W_dec[i] / |W_dec[i]|^2  = rate_i * scale * |v| cos(v, d_i) / |d_i|
    predicted_encoder  rate_i * dx . W_enc[:, i]               (the exact change of the pre-activation)

rate_i is the share of tokens where feature i fires without steering: a feature that stays active moves
with its pre-activation, an inactive one not at all. The decoder-cosine prediction is what "interference
from an overcomplete basis" means: a direction overlapping d_i moves feature i as far as an encoder that
reads along d_i would. Both predictions are exact when the encoder reads the site linearly (W_enc = W_dec^T
with unit rows for the decoder one) and no feature crosses its threshold; the report shows how far the real
SAE departs from that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def reference_contexts(
    model, reference_text: str | Mapping[str, str | Sequence[str]], ctx_len: int, n_contexts: int
) -> dict[str, Tensor]:
    """label -> token ids [n, ctx_len] (BOS first, full contexts only; at most n_contexts per label)."""
    from ..data.document import Document
    from ..data.tokens import tokenize_corpus

    if isinstance(reference_text, str):
        reference_text = {"text": reference_text}
    if not isinstance(reference_text, Mapping) or not reference_text:
        raise ValueError(
            "reference_text must be a text or a dict label -> text(s), e.g. {'english': ..., 'python': ...}"
        )
    if not isinstance(ctx_len, int) or ctx_len < 2:
        raise ValueError(f"ctx_len must be a whole number >= 2 (BOS and one token), got {ctx_len!r}")
    out = {}
    for label, texts in reference_text.items():
        texts = [texts] if isinstance(texts, str) else list(texts)
        docs = [Document(t, str(label), "", str(i)) for i, t in enumerate(texts) if t and t.strip()]
        if not docs:
            raise ValueError(f"the reference text of {label!r} is empty")
        ds = tokenize_corpus(model, docs, ctx_len=ctx_len, pack=True, max_contexts=n_contexts)
        full = ds.attention_mask.bool().all(1)
        if not full.any():
            n = int(ds.attention_mask.sum())
            raise ValueError(
                f"the reference text of {label!r} is {n} tokens (BOS included), shorter than one context of "
                f"ctx_len={ctx_len}: give more text for {label!r} or a smaller ctx_len"
            )
        out[str(label)] = ds.tokens[full]
    return out


def _flat(act: Tensor) -> Tensor:
    return act.reshape(*act.shape[:2], -1)


class SAEMeter:
    """Accumulates one SAE's feature changes over reference batches, per condition."""

    def __init__(self, sae, site: str, n_conditions: int):
        self.sae, self.site = sae, site
        d = sae.d_sae
        self.delta = torch.zeros(n_conditions, d, dtype=torch.float64)  # sum over tokens of f - f_clean
        self.fired = torch.zeros(d, dtype=torch.float64)  # tokens where f_clean > 0
        self.clean_sum = torch.zeros(d, dtype=torch.float64)
        self.n = 0

    def tokens(self, clean_act: Tensor) -> Tensor:
        """[b, p] bool: the tokens measured (not BOS, not above max_norm)."""
        keep = torch.ones(clean_act.shape[:2], dtype=torch.bool, device=clean_act.device)
        keep[:, 0] = False
        if self.sae.cfg.max_norm is not None:
            keep &= _flat(clean_act).float().norm(dim=-1) <= self.sae.cfg.max_norm
        return keep

    def encode(self, act: Tensor, keep: Tensor) -> Tensor:
        return self.sae.encode(_flat(act)[keep].float().to(self.sae.W_enc.device)).double().cpu()

    def add_clean(self, act: Tensor, keep: Tensor) -> Tensor:
        f = self.encode(act, keep)  # [n_tok, d_sae]
        self.fired += (f > 0).sum(0)
        self.clean_sum += f.sum(0)
        self.n += len(f)
        return f

    def add(self, condition: int, act: Tensor, keep: Tensor, f_clean: Tensor) -> None:
        self.delta[condition] += (self.encode(act, keep) - f_clean).sum(0)

    def summary(self, mean_dx: Tensor | None, target: int | None, top: int = 10) -> tuple[dict, dict]:
        """(JSON-able per-SAE record with per-condition stats, {name: tensor} of the full arrays).
        mean_dx: [n_conditions, d_in] the mean added vector per condition (None: no prediction)."""
        n = max(self.n, 1)
        measured = (self.delta / n).float()  # [n_cond, d_sae]
        rate = self.fired / n
        W_dec = self.sae.W_dec.detach().double().cpu()
        others = torch.ones(self.sae.d_sae, dtype=torch.bool)
        if target is not None:
            others[target] = False
        arrays = {"measured": measured, "clean_mean": (self.clean_sum / n).float(), "fire_rate": rate.float()}
        predicted = predicted_enc = None
        if mean_dx is not None:
            dx = mean_dx.double()
            predicted = (rate * (dx @ W_dec.T) / W_dec.pow(2).sum(1)).float()
            predicted_enc = (rate * (dx @ self.sae.W_enc.detach().double().cpu())).float()
            arrays.update(predicted=predicted, predicted_encoder=predicted_enc)
        per_condition = []
        for c in range(len(measured)):
            m = measured[c]
            row = {
                "off_target_l1": float(m[others].abs().sum()),
                "target_delta": None if target is None else float(m[target]),
                "r_decoder": None if predicted is None else _pearson(predicted[c][others], m[others]),
                "r_encoder": None if predicted_enc is None else _pearson(predicted_enc[c][others], m[others]),
            }
            cos = None
            if mean_dx is not None and float(mean_dx[c].norm()) > 0:
                unit = mean_dx[c].double() / mean_dx[c].double().norm()
                cos = (W_dec @ unit) / W_dec.norm(dim=1).clamp_min(1e-12)
            order = [i for i in m.abs().argsort(descending=True).tolist() if others[i]][:top]
            row["top"] = [
                {
                    "feature": i,
                    "measured": float(m[i]),
                    "predicted": None if predicted is None else float(predicted[c, i]),
                    "cos": None if cos is None else float(cos[i]),
                    "clean_mean": float(arrays["clean_mean"][i]),
                }
                for i in order
            ]
            per_condition.append(row)
        record = {
            "site": self.site,
            "d_sae": self.sae.d_sae,
            "n_tokens": self.n,
            "target_feature": target,
            "prediction": mean_dx is not None,
            "conditions": per_condition,
        }
        return record, arrays


def _pearson(a: Tensor, b: Tensor) -> float | None:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float(a.norm() * b.norm())
    return None if den == 0 else float((a @ b) / den)


def next_token_stats(clean_lp: Tensor, logits: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """(KL(clean || steered) [b, p-1], loss steered - clean [b, p-1]) over next-token predictions.
    clean_lp: the unsteered log-probabilities [b, p-1, d_vocab] (float32); logits: steered [b, p, d_vocab]."""
    lp = logits[:, :-1].float().log_softmax(-1)
    kl = (clean_lp.exp() * (clean_lp - lp)).sum(-1)
    target = ids[:, 1:, None].to(lp.device)
    loss_delta = (clean_lp.gather(-1, target) - lp.gather(-1, target)).squeeze(-1)
    return kl, loss_delta


def target_feature(sae, direction) -> int | None:
    """The SAE's feature whose decoder row is the direction itself (None if none is)."""
    meta = direction.meta.get("feature")
    if direction.kind != "sae" or meta is None or meta >= sae.d_sae or direction.width != sae.d_in:
        return None
    same = torch.allclose(sae.W_dec[meta].detach().float().cpu(), direction.vector, atol=1e-6)
    return int(meta) if same else None

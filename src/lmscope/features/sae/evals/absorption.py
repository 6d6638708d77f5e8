"""Feature absorption on a first-letter task (Chanin et al. 2024, "A is for Absorption").

    words = first_letter_vocab(model.tokenizer)                   # (token ids, words, letters) from the vocab
    acts = word_activations(model, sae.cfg.site, words.token_ids)   # [n_words, d_in] at the word's position
    record = absorption(sae, acts, words.letters, words.words)

For each letter L: a logistic-regression probe on the site's activations (the ground truth direction of
"starts with L"), and the SAE's main "starts with L" latents: the support of a k-sparse probe on the
latents, k grown from 1 while the train F1 rises by more than f1_jump (feature splitting). On the held-out
words where the probe is right that the word starts with L, a false negative is a word on which no main
latent fires. It is absorbed when the latent with the largest effect on the probe (its activation times
its decoder direction's projection on the probe: the exact effect of ablating it, the probe being
linear) is not a main latent, pushes the probe towards L, and has decoder cosine >= min_cos with the probe
(0.025, as in the paper): a more specific latent (e.g. one for " short") took the letter's direction.
The absorption rate is absorbed / probe-correct words; the false-negative rate counts every miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ....report import Text, table
from ...probing import SparseProbe, binary_metrics
from ..model import SAE

# in-context examples before the word, so that the model is thinking about spelling (the paper's prompt)
ICL_PREFIX = " tartan has the first letter: T\n mirth has the first letter: M\n"


@dataclass
class Words:
    token_ids: list[int]
    words: list[str]  # the token's text without its leading space
    letters: list[str]  # lower-case first letters


def first_letter_vocab(tokenizer, min_len: int = 2, max_words: int | None = 4000, seed: int = 0) -> Words:
    """The tokenizer's own whole-word tokens: decoded alone, an optional single leading space then ASCII
    letters only (at least min_len). When some tokens carry a leading space (word-initial tokens in BPE
    vocabularies) only those are kept. At most max_words, drawn with `seed`."""
    found = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        word = text[1:] if text.startswith(" ") else text
        if len(word) >= min_len and word.isascii() and word.isalpha():
            found.append((token_id, word, text.startswith(" ")))
    if any(spaced for *_, spaced in found):
        found = [f for f in found if f[2]]
    if not found:
        raise ValueError(
            "the tokenizer has no whole-word tokens of ASCII letters; the first-letter task needs them"
        )
    if max_words is not None and len(found) > max_words:
        pick = torch.randperm(len(found), generator=torch.Generator().manual_seed(seed))[:max_words]
        found = [found[i] for i in sorted(pick.tolist())]
    return Words([f[0] for f in found], [f[1] for f in found], [f[1][0].lower() for f in found])


@torch.no_grad()
def word_activations(
    model, site: str, token_ids: Sequence[int], prefix: str = ICL_PREFIX, batch_size: int = 64
) -> Tensor:
    """Activations [n, d] (flattened per token) at each word token, placed after BOS (if the tokenizer has
    one) and `prefix`."""
    tok = model.tokenizer
    head = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok(
        prefix, add_special_tokens=False
    )["input_ids"]
    [site] = model.resolve_sites([site])
    out = []
    for i in range(0, len(token_ids), batch_size):
        words = torch.tensor(token_ids[i : i + batch_size])[:, None]
        ids = torch.cat([torch.tensor(head).expand(len(words), -1), words], 1)
        _, cache = model.run_with_cache(ids, sites=[site], stop_at=site)
        act = cache[site]
        out.append(act.reshape(*act.shape[:2], -1)[:, -1].float())
    return torch.cat(out)


def _main_latents(
    F_train: Tensor, y: Tensor, max_main: int, f1_jump: float, seed: int
) -> tuple[list[int], float]:
    """The k-sparse probe's support on the latents, k grown while the train F1 rises by more than f1_jump;
    only latents that push towards the letter count. -> (latents, train F1)."""
    best, best_f1 = None, -1.0
    for k in range(1, max_main + 1):
        probe = SparseProbe(k=k, seed=seed).fit(F_train, y)
        f1 = binary_metrics(probe.predict(F_train), y)["f1"]
        if best is not None and f1 <= best_f1 + f1_jump:
            break
        best, best_f1 = probe, f1
    latents = [int(j) for j in best.neurons_ if best.coef_[j] > 0]
    return latents, best_f1


@torch.no_grad()
def absorption(
    sae: SAE,
    acts: Tensor,
    letters: Sequence[str],
    words: Sequence[str] | None = None,
    test: Tensor | None = None,
    test_fraction: float = 0.5,
    min_words: int = 4,
    max_main: int = 3,
    f1_jump: float = 0.03,
    min_cos: float = 0.025,
    seed: int = 0,
) -> dict:
    """Absorption per letter. acts [n, d_in] (the SAE's site, e.g. from word_activations), letters [n];
    test: bool [n] marking the held-out words (default: a random test_fraction, drawn with `seed`). Letters
    with fewer than min_words words in either split are skipped.
    -> {"letters": [{letter, n_test, main_latents, main_f1, probe_f1, false_negative_rate,
    absorption_rate, examples}], "mean_absorption_rate", "absorption_rate" (pooled), ...}"""
    acts = torch.as_tensor(acts).float()
    n = len(acts)
    if len(letters) != n:
        raise ValueError(f"{n} activation rows but {len(letters)} letters")
    words = list(words) if words is not None else [str(i) for i in range(n)]
    if test is None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        test = torch.zeros(n, dtype=torch.bool)
        test[order[: int(round(test_fraction * n))]] = True
    test = torch.as_tensor(test).bool()
    F = sae.encode(acts).float()  # [n, d_sae]
    W_dec = sae.W_dec.detach().float()
    dec_unit = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    letter_of = list(letters)
    out, totals = [], [0, 0, 0]
    for letter in sorted(set(letter_of)):
        y = torch.tensor([c == letter for c in letter_of])
        if min(int((y & ~test).sum()), int((y & test).sum()), int((~y & ~test).sum())) < min_words:
            continue
        probe = SparseProbe(k=acts.shape[1], seed=seed).fit(acts[~test], y[~test])
        direction = probe.coef_.float()
        direction = direction / direction.norm().clamp_min(1e-12)
        probe_pred = probe.predict(acts[test])
        main, main_f1 = _main_latents(F[~test], y[~test], max_main, f1_jump, seed)
        cos = dec_unit @ direction  # [d_sae]
        rows = torch.nonzero(test).squeeze(1)[probe_pred & y[test]]  # held-out words the probe gets right
        missed, absorbed, examples = 0, 0, []
        for r in rows.tolist():
            if main and bool((F[r, main] > 0).any()):
                continue
            missed += 1
            effect = F[r] * (W_dec @ direction)  # each latent's push on the probe's logit direction
            j = int(effect.argmax())
            if effect[j] > 0 and j not in main and cos[j] >= min_cos:
                absorbed += 1
                examples.append({"word": words[r], "latent": j, "cos": round(float(cos[j]), 4)})
        n_rows = len(rows)
        totals = [totals[0] + n_rows, totals[1] + missed, totals[2] + absorbed]
        out.append(
            {
                "letter": letter,
                "n_test": n_rows,
                "main_latents": main,
                "main_f1": main_f1,
                "probe_f1": binary_metrics(probe_pred, y[test])["f1"],
                "false_negative_rate": missed / n_rows if n_rows else None,
                "absorption_rate": absorbed / n_rows if n_rows else None,
                "examples": examples[:10],
            }
        )
    rates = [r["absorption_rate"] for r in out if r["absorption_rate"] is not None]
    return {
        "site": sae.cfg.site,
        "n_words": n,
        "n_test_words": int(test.sum()),
        "min_cos": min_cos,
        "mean_absorption_rate": sum(rates) / len(rates) if rates else None,
        "absorption_rate": totals[2] / totals[0] if totals[0] else None,
        "false_negative_rate": totals[1] / totals[0] if totals[0] else None,
        "letters": out,
    }


def absorption_sections(record: dict) -> list[tuple[str, object]]:
    """Report sections: the pooled rates and the per-letter table with absorbed examples."""

    def pct(v):
        return "n/a" if v is None else f"{v:.1%}"

    text = Text(
        f"First-letter task on {record['n_words']} vocabulary words ({record['n_test_words']} held out), "
        f"{len(record['letters'])} letters. Of the held-out words a letter probe gets right, the main "
        f"'starts with L' latents miss {pct(record['false_negative_rate'])}; "
        f"{pct(record['absorption_rate'])} are absorbed by a more specific latent (mean over letters "
        f"{pct(record['mean_absorption_rate'])})."
    )
    rows = [
        {
            "letter": r["letter"],
            "main latents": " ".join(map(str, r["main_latents"])),
            "main F1": r["main_f1"],
            "probe F1": r["probe_f1"],
            "words": r["n_test"],
            "false negatives": r["false_negative_rate"],
            "absorbed": r["absorption_rate"],
            "absorbed e.g.": ", ".join(f"{e['word']}→{e['latent']}" for e in r["examples"][:4]),
        }
        for r in record["letters"]
    ]
    return [("Feature absorption (first letter)", text), ("", table(rows, float_format="{:.3f}"))]

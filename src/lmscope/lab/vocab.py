"""A smaller vocabulary cut from a BPE tokenizer (SmolLM2's by default), so a tiny model's unembedding is small.

    tok = trim_tokenizer(base, counts, size=4096)     # counts: Counter of base token ids in the train split

Kept: the special tokens, the base alphabet (for a byte-level BPE, the 256 bytes, so no text is ever
unknown and no UNK is needed), then the most frequent tokens of the train split, each with every token
its merges are built from (so BPE can still reach it), until `size` tokens are kept. Merges are kept when
both parts and the result are. The trimmed tokenizer gives exactly the base tokenizer's tokens wherever
those are kept; a dropped (rare) token comes out as the smaller kept pieces BPE would have merged into it.
Ids are renumbered: the special tokens first, then the kept tokens in base-id order. `id_map` gives each
new id's base id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence


def count_tokens(tokenizer, texts: Sequence[str], batch: int = 256) -> Counter:
    """How often each token id occurs when `texts` are tokenised (no special tokens added)."""
    counts: Counter = Counter()
    for i in range(0, len(texts), batch):
        for ids in tokenizer(list(texts[i : i + batch]), add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    return counts


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    # tokenizer.json stores merges as ["a", "b"] (new) or "a b" (old)
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def trim_tokenizer(tokenizer, counts: Counter, size: int):
    """A PreTrainedTokenizerFast with at most `size` tokens (see the module docstring) and its id_map:
    (tokenizer, id_map) where id_map[new_id] = the base tokenizer's id."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            "vocabulary trimming needs a fast (Rust) tokenizer; pass vocab=0 to keep the full one"
        )
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"vocabulary trimming needs a BPE tokenizer, got {model.get('type')}; pass vocab=0")
    vocab: dict[str, int] = model["vocab"]
    token_of = {i: t for t, i in vocab.items()}
    pairs = _merge_pairs(model["merges"])
    parents: dict[str, list[tuple[str, str]]] = {}
    for a, b in pairs:
        parents.setdefault(a + b, []).append((a, b))
    specials = sorted((t["id"], t["content"]) for t in spec.get("added_tokens", []))
    special_names = {name for _, name in specials}
    alphabet = [t for t in vocab if t not in parents and t not in special_names]
    kept = set(alphabet) | {name for _, name in specials if name in vocab}
    floor = len(kept | special_names)
    if size < floor:
        raise ValueError(
            f"vocab {size} is below this tokenizer's alphabet and special tokens ({floor}); give at least {floor}"
        )
    extra = size - len(kept | special_names)
    for token_id, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        token = token_of.get(token_id)
        if token is None or token in kept:
            continue
        needed = _closure(token, parents, kept)
        if len(needed) <= extra:
            kept |= needed
            extra -= len(needed)
        if extra == 0:
            break
    order = [name for _, name in specials] + sorted(kept - special_names, key=vocab.__getitem__)
    new_id = {t: i for i, t in enumerate(order)}
    model["vocab"] = {t: new_id[t] for t in order if t in vocab or t not in special_names}
    model["vocab"].update({name: new_id[name] for name in special_names if name in vocab})
    model["merges"] = [[a, b] for a, b in pairs if a in kept and b in kept and a + b in kept]
    for t in spec.get("added_tokens", []):
        t["id"] = new_id[t["content"]]
    _remap_post_processor(spec.get("post_processor"), new_id)
    id_map = [vocab[t] if t in vocab else next(i for i, n in specials if n == t) for t in order]
    fast = Tokenizer.from_str(json.dumps(spec))
    named = {k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    out = PreTrainedTokenizerFast(tokenizer_object=fast, **{k: v for k, v in named.items() if v is not None})
    return out, id_map


def _closure(token: str, parents: dict, kept: set) -> set[str]:
    """`token` and every token its merges are built from, minus what is already kept."""
    needed, todo = set(), [token]
    while todo:
        t = todo.pop()
        if t in kept or t in needed:
            continue
        needed.add(t)
        for a, b in parents.get(t, ()):
            todo += [a, b]
    return needed


def _remap_post_processor(proc: dict | None, new_id: dict[str, int]) -> None:
    """TemplateProcessing stores special token ids; renumber them (in place)."""
    if not proc:
        return
    for entry in (proc.get("special_tokens") or {}).values():
        entry["ids"] = [new_id[t] for t in entry.get("tokens", [])]
    for sub in proc.get("processors", []) or []:
        _remap_post_processor(sub, new_id)


def tokens_in(tokenizer, ids: Iterable[int]) -> list[str]:
    """The token strings of `ids` (for reports)."""
    return tokenizer.convert_ids_to_tokens(list(ids))

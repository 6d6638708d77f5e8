"""Indirect Object Identification (IOI), after Wang et al. 2022, "Interpretability in the Wild".

"When Mary and John went to the store, John gave a drink to" -> " Mary" (the indirect object, IO), not
" John" (the subject, S). `ioi(model)` builds a ContrastTask of such prompts with a corrupted twin each:

- "flip": the second S mention (S2) becomes IO, so the correct answer flips ("..., Mary gave a drink to").
- "abc":  the three names become three other names C, D, E, removing the IO/S information altogether.
- "pattern": the same names with the order swapped (ABB <-> BAB): only the position of the first S
  mention changes, the answer does not. Patching the position signal from it flips the answer to S
  (Makelov et al. 2023's DAS setting).

Every name, place and object is kept only if it is one token (with a leading space) for the model's
tokenizer, so a corrupt prompt always has its clean prompt's token length.
"""

from __future__ import annotations

import random

import torch

from .contrast import ContrastTask, single_token_id

# Slots [N1] [N2] [N3] are the three name mentions. ABB fills them IO, S, S; BAB fills them S, IO, S.
# Each template ends right before the answer name. Train uses the first TRAIN_TEMPLATES, test the rest.
TEMPLATES = [
    "When [N1] and [N2] went to the [PLACE], [N3] gave a [OBJECT] to",
    "Then, [N1] and [N2] went to the [PLACE]. [N3] gave a [OBJECT] to",
    "After [N1] and [N2] went to the [PLACE], [N3] gave a [OBJECT] to",
    "When [N1] and [N2] got a [OBJECT] at the [PLACE], [N3] decided to give it to",
    "While [N1] and [N2] were working at the [PLACE], [N3] gave a [OBJECT] to",
    "Then, [N1] and [N2] had a lot of fun at the [PLACE]. [N3] gave a [OBJECT] to",
    "After lunch, [N1] and [N2] went to the [PLACE]. [N3] handed a [OBJECT] to",
    "While [N1] and [N2] were walking to the [PLACE], [N3] gave a [OBJECT] to",
]
TRAIN_TEMPLATES = 5  # ~60% of the templates

NAMES = [
    "Mary", "John", "Alice", "Bob", "Sarah", "David", "Emma", "James", "Anna", "Michael",
    "Lisa", "Robert", "Laura", "Thomas", "Kate", "Daniel", "Rachel", "Paul", "Susan", "Mark",
    "Jessica", "Peter", "Emily", "Richard", "Linda", "Steven", "Karen", "Kevin", "Amy", "Brian",
    "Helen", "Jason", "Julia", "Eric", "Nancy", "Adam", "Sophie", "Chris", "Grace", "Andrew",
    "Lucy", "Ryan", "Claire", "George", "Diana", "Frank", "Rose", "Tom", "Alex", "Jack",
    "Jane", "Sam", "Anne", "Henry", "Kelly", "Luke", "Victoria", "Simon", "Maria", "Patrick",
    "Monica", "Matt", "Olivia", "Tim", "Martha", "Scott", "Joan", "Carl", "Ruth", "Gary",
]  # fmt: skip
PLACES = [
    "store", "park", "school", "hospital", "restaurant", "station", "office", "garden", "beach",
    "library", "market", "museum", "airport", "church", "house", "hotel", "kitchen", "bank",
    "gym", "zoo", "cafe", "farm", "river", "theater", "shop",
]  # fmt: skip
OBJECTS = [
    "drink", "book", "ring", "gift", "letter", "snack", "pen", "cake", "ball", "bag", "hat", "key",
    "flower", "card", "phone", "bottle", "box", "toy", "watch", "basket", "shirt", "cookie", "map",
    "ticket", "camera",
]  # fmt: skip

SPLITS = ("train", "test", "all")
CORRUPTIONS = ("flip", "abc", "pattern")


def ioi(
    model,
    n: int = 200,
    split: str = "train",
    seed: int = 0,
    corruption: str = "flip",
    templates: list[int] | None = None,
) -> ContrastTask:
    """n IOI prompt pairs for `model`: answer = " IO", wrong = " S", positions IO/S1/S2/END.

    split: "train" (first templates, first half of the names), "test" (held-out templates and names) or
    "all". templates: indices into TEMPLATES, overriding the split's templates (names still follow split).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, not {corruption!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")

    names, places, objects = (_single_tokens(model, words) for words in (NAMES, PLACES, OBJECTS))
    if len(names) < 8:
        raise ValueError(
            f"only {len(names)} of the {len(NAMES)} names are one token for this tokenizer; IOI needs at "
            f"least 8 (kept: {names})"
        )
    if not places or not objects:
        raise ValueError("no place or no object word is a single token for this tokenizer")
    half = len(names) // 2
    names = {"train": names[:half], "test": names[half:], "all": names}[split]
    if corruption == "abc" and len(names) < 5:
        raise ValueError(f"corruption='abc' needs 5 distinct names, but split {split!r} has {len(names)}")

    ids = range(len(TEMPLATES))
    split_ids = {"train": ids[:TRAIN_TEMPLATES], "test": ids[TRAIN_TEMPLATES:], "all": ids}[split]
    templates = list(split_ids if templates is None else templates)
    if not templates or any(not 0 <= t < len(TEMPLATES) for t in templates):
        raise ValueError(f"templates must be a non-empty list of indices in 0..{len(TEMPLATES) - 1}")

    rng = random.Random(seed)
    orders = ["ABB"] * (n // 2) + ["BAB"] * (n - n // 2)
    rng.shuffle(orders)
    clean, corrupt, io_names, s_names, template_ids = [], [], [], [], []
    for order in orders:
        t = rng.choice(templates)
        io, s = rng.sample(names, 2)
        place, obj = rng.choice(places), rng.choice(objects)
        slots = (io, s, s) if order == "ABB" else (s, io, s)
        if corruption == "flip":
            # S2 -> IO: IO is now the repeated name, so S becomes the one to give to (the answer flips)
            bad = (slots[0], slots[1], io)
        elif corruption == "pattern":
            bad = (slots[1], slots[0], s)  # ABB <-> BAB, same names
        else:
            bad = tuple(rng.sample([x for x in names if x not in (io, s)], 3))
        clean.append(_fill(TEMPLATES[t], slots, place, obj))
        corrupt.append(_fill(TEMPLATES[t], bad, place, obj))
        io_names.append(io)
        s_names.append(s)
        template_ids.append(t)

    task = ContrastTask.from_prompts(
        model,
        clean,
        corrupt,
        answers=[" " + x for x in io_names],
        wrong=[" " + x for x in s_names],
        name=f"ioi-{split}-{corruption}",
    )
    task.positions.update(_name_positions(task, model))
    task.meta = {
        "templates": template_ids,
        "order": orders,
        "io_names": io_names,
        "s_names": s_names,
        "split": split,
        "corruption": corruption,
        "seed": seed,
    }
    return task


def _single_tokens(model, words: list[str]) -> list[str]:
    """The words that are exactly one token with a leading space, as they appear mid-sentence."""
    kept = []
    for word in words:
        try:
            single_token_id(model, " " + word)
        except ValueError:
            continue
        kept.append(word)
    return kept


def _fill(template: str, names: tuple[str, str, str], place: str, obj: str) -> str:
    for slot, word in zip(("[N1]", "[N2]", "[N3]", "[PLACE]", "[OBJECT]"), (*names, place, obj)):
        template = template.replace(slot, word)
    return template


def _name_positions(task: ContrastTask, model) -> dict[str, torch.Tensor]:
    """IO, S1, S2 positions in the left-padded clean rows, found by locating the name token ids.

    Located rather than computed from the template, so a tokenizer that merges a name with its
    neighbours fails loudly here instead of giving wrong positions.
    """
    width = task.clean.shape[1]
    lengths = [width] * len(task) if task.attention_mask is None else task.attention_mask.sum(1).tolist()
    pos = {"IO": [], "S1": [], "S2": []}
    for i, (io, s) in enumerate(zip(task.answer.tolist(), task.wrong.tolist())):
        start = width - lengths[i]  # left padding: the prompt's own tokens start here
        row = task.clean[i, start:]
        io_at = [start + j for j in (row == io).nonzero().flatten().tolist()]
        s_at = [start + j for j in (row == s).nonzero().flatten().tolist()]
        if len(io_at) != 1 or len(s_at) != 2:
            raise ValueError(
                f"could not find IO once and S twice as single tokens in {task.clean_prompts[i]!r} "
                f"({model.to_str_tokens(row)})"
            )
        pos["IO"].append(io_at[0])
        pos["S1"].append(s_at[0])
        pos["S2"].append(s_at[1])
    return {k: torch.tensor(v, dtype=torch.long) for k, v in pos.items()}

"""ContrastTask: clean/corrupt prompt pairs of equal token length, with the answers a metric compares."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class ContrastTask:
    """n prompt pairs. The model predicts at the last position (prompts are left-padded to a common length).

    clean, corrupt:  [n, pos] token ids; a pair differs only in the tokens the task changes
    answer:          [n] the token the model should predict on the clean prompt (e.g. IO for IOI)
    wrong:           [n] the competing token (e.g. S); logit difference = logit(answer) - logit(wrong)
    attention_mask:  [n, pos] or None; shared by clean and corrupt (same token lengths per pair)
    positions:       named token positions per example, e.g. {"IO": [n], "S1": [n], "S2": [n], "END": [n]}
    """

    clean: Tensor
    corrupt: Tensor
    answer: Tensor
    wrong: Tensor
    attention_mask: Tensor | None = None
    positions: dict[str, Tensor] = field(default_factory=dict)
    clean_prompts: list[str] = field(default_factory=list)
    corrupt_prompts: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    name: str = "task"

    def __post_init__(self):
        n = self.clean.shape[0]
        if self.clean.shape != self.corrupt.shape:
            raise ValueError(
                f"clean {tuple(self.clean.shape)} and corrupt {tuple(self.corrupt.shape)} must have one shape"
            )
        if self.answer.shape != (n,) or self.wrong.shape != (n,):
            raise ValueError(f"answer and wrong must be [n] = [{n}] token ids")
        if self.attention_mask is not None and self.attention_mask.shape != self.clean.shape:
            raise ValueError("attention_mask must have the shape of the token ids")

    def __len__(self) -> int:
        return self.clean.shape[0]

    def subset(self, index: Sequence[int] | Tensor | slice) -> ContrastTask:
        idx = (
            torch.arange(len(self))[index]
            if isinstance(index, slice)
            else torch.as_tensor(index, dtype=torch.long)
        )
        pick = lambda xs: [xs[i] for i in idx.tolist()] if xs else xs  # noqa: E731
        return replace(
            self,
            clean=self.clean[idx],
            corrupt=self.corrupt[idx],
            answer=self.answer[idx],
            wrong=self.wrong[idx],
            attention_mask=None if self.attention_mask is None else self.attention_mask[idx],
            positions={k: v[idx] for k, v in self.positions.items()},
            clean_prompts=pick(self.clean_prompts),
            corrupt_prompts=pick(self.corrupt_prompts),
        )

    def batches(self, size: int) -> Iterator[ContrastTask]:
        for start in range(0, len(self), size):
            yield self.subset(slice(start, start + size))

    def inputs(self, which: str = "clean") -> dict:
        """What a Model call takes: {'input_ids', 'attention_mask'} for the clean or the corrupt prompts."""
        ids = {"clean": self.clean, "corrupt": self.corrupt}[which]
        return (
            {"input_ids": ids}
            if self.attention_mask is None
            else {"input_ids": ids, "attention_mask": self.attention_mask}
        )

    @classmethod
    def from_prompts(
        cls,
        model,
        clean: Sequence[str],
        corrupt: Sequence[str],
        answers: Sequence[str],
        wrong: Sequence[str],
        name: str = "task",
    ) -> ContrastTask:
        """Build a task from text. answers/wrong are single tokens (e.g. " Mary"), checked with the tokenizer."""
        if not (len(clean) == len(corrupt) == len(answers) == len(wrong)) or not clean:
            raise ValueError(
                "clean, corrupt, answers and wrong need one entry per example (and at least one)"
            )
        enc_clean = model.tokenize(list(clean), padding_side="left")
        enc_corrupt = model.tokenize(list(corrupt), padding_side="left")
        if not torch.equal(enc_clean["attention_mask"], enc_corrupt["attention_mask"]):
            bad = [
                i
                for i in range(len(clean))
                if not torch.equal(enc_clean["attention_mask"][i], enc_corrupt["attention_mask"][i])
            ]
            raise ValueError(
                f"clean and corrupt prompts must have equal token lengths; pairs {bad[:5]} differ"
            )
        n, width = enc_clean["input_ids"].shape
        return cls(
            clean=enc_clean["input_ids"],
            corrupt=enc_corrupt["input_ids"],
            answer=torch.tensor([single_token_id(model, a) for a in answers]),
            wrong=torch.tensor([single_token_id(model, w) for w in wrong]),
            attention_mask=None if bool(enc_clean["attention_mask"].all()) else enc_clean["attention_mask"],
            positions={"END": torch.full((n,), width - 1)},
            clean_prompts=list(clean),
            corrupt_prompts=list(corrupt),
            name=name,
        )


def single_token_id(model, text: str) -> int:
    """The id of `text` if the tokenizer makes it exactly one token (without BOS), else a clear error."""
    ids = model.to_tokens(text, prepend_bos=False)[0]
    if len(ids) != 1:
        pieces = model.to_str_tokens(text, prepend_bos=False)
        raise ValueError(
            f"{text!r} is {len(ids)} tokens for this tokenizer ({pieces}); answers must be one token"
        )
    return int(ids[0])

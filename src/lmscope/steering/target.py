"""Target: what a steering direction is meant to do, measured the same way for every direction compared.

    Target.next_tokens([" le", " la", " les"])        # log P(any of these next) at the prompts' last token
    Target.logit_difference(answers, wrong)            # per prompt: logit(answer) - logit(wrong) (e.g. IOI)
    Target.corpus_label("french")                      # minus the loss change on that label's reference text
    Target.probe_score(probe, "blocks.12.mlp.post")    # a probe's logit on the generated continuation

The intended effect of a scale is the mean over prompts (or tokens) of the measure with steering minus
without. A probe reads the continuation with the unsteered model, so steering at the probe's own site does
not move its score by construction: only the text the steered model wrote counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

KINDS = ("tokens", "logit_diff", "label", "probe")
UNITS = {
    "tokens": "change in log P(target tokens) at the last prompt token (nats)",
    "logit_diff": "change in logit(answer) - logit(wrong) at the last prompt token",
    "label": "minus the change in next-token loss on the label's reference text (nats/token; > 0 = better)",
    "probe": "change in the probe's logit on the generated continuation (read by the unsteered model)",
}


@dataclass
class Target:
    kind: str
    # "tokens": strings or ids; "logit_diff": one answer per prompt
    tokens: list = field(default_factory=list)
    wrong: list = field(default_factory=list)  # "logit_diff": one competing token per prompt
    label: str = ""
    probe: object = None
    site: str = ""
    name: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Target kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.kind == "probe" and (getattr(self.probe, "coef_", None) is None or not self.site):
            raise ValueError("Target.probe_score needs a fitted probe (with coef_) and the site it reads")
        if self.kind == "label" and not self.label:
            raise ValueError("Target.corpus_label needs a label of the reference text, e.g. 'french'")
        if self.kind == "logit_diff" and (not self.tokens or len(self.tokens) != len(self.wrong)):
            raise ValueError("Target.logit_difference needs one answer and one wrong token per prompt")
        if self.kind == "tokens" and not self.tokens:
            raise ValueError("Target.next_tokens needs at least one token")
        self.name = (
            self.name
            or {
                "tokens": f"P({', '.join(map(repr, self.tokens[:4]))})",
                "logit_diff": "logit difference",
                "label": f"{self.label} loss",
                "probe": f"probe at {self.site}",
            }[self.kind]
        )

    @classmethod
    def next_tokens(cls, tokens: Sequence[str | int], name: str = "") -> Target:
        return cls("tokens", tokens=list(tokens), name=name)

    @classmethod
    def logit_difference(
        cls, answers: Sequence[str | int], wrong: Sequence[str | int], name: str = ""
    ) -> Target:
        return cls("logit_diff", tokens=list(answers), wrong=list(wrong), name=name)

    @classmethod
    def corpus_label(cls, label: str) -> Target:
        return cls("label", label=label)

    @classmethod
    def probe_score(cls, probe, site: str, name: str = "") -> Target:
        return cls("probe", probe=probe, site=site, name=name)

    @property
    def units(self) -> str:
        return UNITS[self.kind]

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "name": self.name, "units": self.units}
        if self.kind in ("tokens", "logit_diff"):
            out["tokens"] = [str(t) for t in self.tokens[:20]]
        if self.kind == "logit_diff":
            out["wrong"] = [str(t) for t in self.wrong[:20]]
        if self.label:
            out["label"] = self.label
        if self.site:
            out["site"] = self.site
        return out

    # ---- measures ------------------------------------------------------------------------------------------
    def token_ids(self, model, n_prompts: int) -> tuple[Tensor, Tensor | None]:
        """("tokens": [n_targets]; "logit_diff": answers [n_prompts]), and wrong [n_prompts] or None."""
        from ..data.tasks import single_token_id

        def ids(items) -> Tensor:
            return torch.tensor([t if isinstance(t, int) else single_token_id(model, t) for t in items])

        if self.kind == "tokens":
            return ids(self.tokens), None
        if len(self.tokens) != n_prompts:
            raise ValueError(
                f"Target.logit_difference has {len(self.tokens)} answers for {n_prompts} prompts; give one each"
            )
        return ids(self.tokens), ids(self.wrong)

    def prompt_measure(self, last_logits: Tensor, ids: Tensor, wrong: Tensor | None) -> Tensor:
        """[n_prompts] the measure on next-token logits [n_prompts, d_vocab] (float32)."""
        if self.kind == "tokens":
            logp = last_logits.float().log_softmax(-1)
            return logp[:, ids.to(logp.device)].logsumexp(-1)
        rows = torch.arange(len(last_logits))
        return (last_logits[rows, ids] - last_logits[rows, wrong]).float()

    def probe_measure(self, site_acts: Tensor) -> float:
        """The probe's logit on the mean of site_acts [n_tokens, d] (the continuation's tokens)."""
        return float(self.probe.decision_function(site_acts.double().mean(0, keepdim=True))[0])

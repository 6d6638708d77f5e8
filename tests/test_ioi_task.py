"""The IOI task generator on the real SmolLM2: token structure, splits, seeding, and that the model solves it."""

from __future__ import annotations

import pytest
import torch

from lmscope.data.tasks import ContrastTask, ioi, single_token_id
from lmscope.data.tasks.ioi import NAMES, TEMPLATES, TRAIN_TEMPLATES

pytestmark = pytest.mark.integration


def logit_diff(model, task: ContrastTask, which: str = "clean") -> torch.Tensor:
    """[n] logit(answer) - logit(wrong) at the last position."""
    with torch.no_grad():
        logits = model(task.inputs(which))[:, -1]
    rows = torch.arange(len(task))
    return logits[rows, task.answer] - logits[rows, task.wrong]


@pytest.fixture(scope="module")
def flip(smollm2) -> ContrastTask:
    return ioi(smollm2, n=60, split="all", seed=1)


@pytest.fixture(scope="module")
def abc(smollm2) -> ContrastTask:
    return ioi(smollm2, n=60, split="all", seed=1, corruption="abc")


def test_every_name_answer_and_wrong_is_one_token(smollm2, flip):
    assert isinstance(flip, ContrastTask) and len(flip) == 60 and flip.name == "ioi-all-flip"
    for io, s, a, w in zip(flip.meta["io_names"], flip.meta["s_names"], flip.answer, flip.wrong):
        assert io != s
        assert single_token_id(smollm2, " " + io) == int(a)
        assert single_token_id(smollm2, " " + s) == int(w)
    # prompts follow the tokenizer's default, which for SmolLM2 adds no BOS
    assert smollm2.tokenizer.bos_token_id not in flip.clean[flip.attention_mask.bool()].tolist()


def test_positions_point_at_the_names(flip, abc):
    for task in (flip, abc):
        n, width = task.clean.shape
        rows = torch.arange(n)
        assert set(task.positions) == {"IO", "S1", "S2", "END"}
        assert all(p.dtype == torch.long and p.shape == (n,) for p in task.positions.values())
        assert torch.equal(task.clean[rows, task.positions["IO"]], task.answer)
        assert torch.equal(task.clean[rows, task.positions["S1"]], task.wrong)
        assert torch.equal(task.clean[rows, task.positions["S2"]], task.wrong)
        assert torch.equal(task.positions["END"], torch.full((n,), width - 1))
        assert (task.positions["S1"] < task.positions["S2"]).all()
        assert (task.positions["IO"] < task.positions["S2"]).all()
        # ABB puts IO first, BAB puts S first
        abb = torch.tensor([o == "ABB" for o in task.meta["order"]])
        assert (task.positions["IO"][abb] < task.positions["S1"][abb]).all()
        assert (task.positions["IO"][~abb] > task.positions["S1"][~abb]).all()
        # positions are in the padded coordinates: all inside the real (unpadded) tokens
        if task.attention_mask is not None:
            for key in ("IO", "S1", "S2"):
                assert task.attention_mask[rows, task.positions[key]].all()


def test_flip_changes_only_s2_to_io(flip):
    assert flip.clean.shape == flip.corrupt.shape
    rows = torch.arange(len(flip))
    differ = flip.clean != flip.corrupt
    assert differ.sum(1).eq(1).all()
    assert differ[rows, flip.positions["S2"]].all()
    assert torch.equal(flip.corrupt[rows, flip.positions["S2"]], flip.answer)
    first = flip.clean_prompts[0]
    io, s = flip.meta["io_names"][0], flip.meta["s_names"][0]
    assert first.count(s) == 2 and flip.corrupt_prompts[0].count(io) == 2


def test_abc_changes_exactly_the_three_names(smollm2, abc):
    assert abc.clean.shape == abc.corrupt.shape
    rows = torch.arange(len(abc))
    name_cols = torch.zeros_like(abc.clean, dtype=torch.bool)
    for key in ("IO", "S1", "S2"):
        name_cols[rows, abc.positions[key]] = True
    differ = abc.clean != abc.corrupt
    assert torch.equal(differ, name_cols)
    for i in range(len(abc)):
        new = {int(abc.corrupt[i, abc.positions[k][i]]) for k in ("IO", "S1", "S2")}
        assert len(new) == 3 and not new & {int(abc.answer[i]), int(abc.wrong[i])}
        assert all(smollm2.to_string([t]).strip() in NAMES for t in new)


def test_meta_and_both_orders(flip):
    meta = flip.meta
    assert meta["split"] == "all" and meta["corruption"] == "flip" and meta["seed"] == 1
    assert len(meta["templates"]) == len(meta["order"]) == len(meta["io_names"]) == len(flip)
    assert meta["order"].count("ABB") == meta["order"].count("BAB") == 30
    assert all(0 <= t < len(TEMPLATES) for t in meta["templates"])


def test_train_and_test_share_no_names_and_no_templates(smollm2):
    train = ioi(smollm2, n=200, split="train")
    test = ioi(smollm2, n=200, split="test")
    names = lambda t: set(t.meta["io_names"]) | set(t.meta["s_names"])  # noqa: E731
    assert not names(train) & names(test)
    assert not set(train.meta["templates"]) & set(test.meta["templates"])
    assert set(train.meta["templates"]) == set(range(TRAIN_TEMPLATES))
    assert set(test.meta["templates"]) == set(range(TRAIN_TEMPLATES, len(TEMPLATES)))
    # the abc corruption also draws its replacement names from the split's own names
    test_abc = ioi(smollm2, n=50, split="test", corruption="abc")
    used = {w for p in test_abc.corrupt_prompts for w in p.replace(",", " ").replace(".", " ").split()}
    assert not used & names(train)
    # templates= overrides the template choice but keeps the split's names
    only = ioi(smollm2, n=20, split="test", templates=[0])
    assert set(only.meta["templates"]) == {0} and not names(only) & names(train)


def test_seed_reproduces_and_a_different_seed_differs(smollm2):
    a, b, c = (ioi(smollm2, n=30, seed=s, corruption="abc") for s in (5, 5, 6))
    assert a.clean_prompts == b.clean_prompts and a.corrupt_prompts == b.corrupt_prompts
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupt, b.corrupt)
    assert a.meta == b.meta
    assert all(torch.equal(a.positions[k], b.positions[k]) for k in a.positions)
    assert a.clean_prompts != c.clean_prompts


def test_bad_arguments_raise_helpful_errors(smollm2):
    with pytest.raises(ValueError, match=r"split must be one of .*'train'.*'valid'"):
        ioi(smollm2, split="valid")
    with pytest.raises(ValueError, match=r"corruption must be one of .*'flip'.*'abc'.*'swap'"):
        ioi(smollm2, corruption="swap")
    with pytest.raises(ValueError, match="templates must be"):
        ioi(smollm2, templates=[len(TEMPLATES)])


def test_the_model_solves_ioi_and_flip_reverses_it(smollm2):
    task = ioi(smollm2, n=40, split="test")
    clean = logit_diff(smollm2, task, "clean")
    corrupt = logit_diff(smollm2, task, "corrupt")
    assert clean.mean() > 2, f"mean clean logit diff {clean.mean():.2f}"
    assert (clean > 0).float().mean() > 0.9, f"accuracy {(clean > 0).float().mean():.2f}"
    assert corrupt.mean() < 0, f"mean flip-corrupt logit diff {corrupt.mean():.2f}"

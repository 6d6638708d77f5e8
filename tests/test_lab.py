"""The training lab on tiny sizes: a synthetic corpus with bigram structure, a tiny byte-level BPE tokenizer."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import lmscope as ls
from lmscope.data.corpus import build_corpus, load_corpus
from lmscope.data.sources import jsonl_file
from lmscope.lab import LabConfig, checkpoint_steps, heldout_loss, train_model, trim_tokenizer
from lmscope.lab.data import batch_indices, target_mask, unigram_loss
from lmscope.lab.train import lr_at
from lmscope.lab.vocab import count_tokens

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# A tiny grammar: each word fixes the next word's class, so context beats the unigram distribution.
NEXT = {
    "the": ["cat", "dog", "bird"],
    "cat": ["sat", "ran"],
    "dog": ["sat", "ran"],
    "bird": ["flew"],
    "sat": ["on"],
    "ran": ["to"],
    "flew": ["over"],
    "on": ["the"],
    "to": ["the"],
    "over": ["the"],
}


def sentence_text(rng: random.Random, n_words: int) -> str:
    word, words = "the", []
    for _ in range(n_words):
        words.append(word)
        word = rng.choice(NEXT[word])
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("labcorpus")
    rng = random.Random(0)
    with (root / "docs.jsonl").open("w") as f:
        for i in range(120):
            f.write(json.dumps({"text": sentence_text(rng, 80), "label": ["a", "b"][i % 2]}) + "\n")
    return build_corpus(root / "corpus", sources=[jsonl_file(root / "docs.jsonl")], progress=False)


@pytest.fixture(scope="module")
def bpe(corpus):
    """A byte-level BPE tokenizer (like SmolLM2's, only small) trained on the corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    rng = random.Random(1)  # made-up words too, so there are more merges than the grammar's words need
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 6))) for _ in range(3000)]
    tok.train_from_iterator([d.text for d in load_corpus(corpus)] + [" ".join(words)], trainer)
    assert tok.get_vocab_size() == 400
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )


TINY = dict(
    d_model=32, n_heads=2, d_mlp=64, batch_size=8, ctx_len=32, vocab=0, eval_tokens=2000, n_checkpoints=4
)


def tiny_cfg(**kw) -> LabConfig:
    return LabConfig(**{**TINY, "steps": 12, "schedule": "constant", **kw})


def test_training_beats_unigram_and_checkpoints_load(corpus, bpe, tmp_path):
    cfg = tiny_cfg(steps=60, lr=3e-3)
    result = train_model(cfg, tmp_path / "run", corpus=corpus, tokenizer=bpe, progress=False)
    m = result.metrics
    # the grammar's next word depends on the last one; a context-free model cannot do better than unigram
    assert m["heldout_loss"] < m["unigram_loss"] - 0.3
    assert m["checkpoints"][0]["heldout_loss"] > m["unigram_loss"]  # untrained: near uniform, worse
    assert [c.name for c in result.checkpoints] == [f"step_{s:06d}" for s in checkpoint_steps(60, 4)]
    assert ls.lab.train_model is train_model
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["kind"] == "lab" and record["heldout_loss"] == pytest.approx(m["heldout_loss"])
    # the final checkpoint is a plain HF folder: ls.load gives the trainer's logits
    loaded = ls.load(result.checkpoints[-1])
    tokens = torch.tensor([bpe("the cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        expected = result.model(input_ids=tokens).logits
    torch.testing.assert_close(loaded(tokens), expected, rtol=0, atol=1e-5)
    assert loaded.cfg.d_mlp == 64 and loaded.cfg.n_layers == 1
    # held-out loss recomputed by hand from the loaded model's logits
    _, test = _datasets(cfg, corpus, loaded.tokenizer)
    assert heldout_loss(loaded.hf, test) == pytest.approx(m["heldout_loss"], abs=1e-5)


def _datasets(cfg, corpus, tok):
    from lmscope.lab.data import corpus_datasets

    return corpus_datasets(cfg, corpus, tok)


def test_unigram_loss_by_hand(corpus, bpe):
    train, test = _datasets(tiny_cfg(), corpus, bpe)
    counts = {}
    for t in train.tokens[:, 1:][target_mask(train)].tolist():
        counts[t] = counts.get(t, 0) + 1
    n, v = sum(counts.values()), len(bpe)
    targets = test.tokens[:, 1:][target_mask(test)].tolist()
    expected = -sum(math.log((counts.get(t, 0) + 0.5) / (n + 0.5 * v)) for t in targets) / len(targets)
    assert unigram_loss(train, test, v) == pytest.approx(expected, rel=1e-9)


def test_resume_after_interrupt_is_exact(corpus, bpe, tmp_path):
    cfg = tiny_cfg(steps=14, schedule="cosine", warmup_steps=3)
    whole = train_model(cfg, tmp_path / "whole", corpus=corpus, tokenizer=bpe, progress=False)

    def interrupt(step, loss):
        if step == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(
            cfg,
            tmp_path / "cut",
            corpus=corpus,
            tokenizer=bpe,
            progress=False,
            on_step=interrupt,
            save_every=0,
        )
    assert not (tmp_path / "cut" / "run.json").exists()  # unfinished: no run record yet
    resumed = train_model(cfg, tmp_path / "cut", corpus=corpus, tokenizer=bpe, progress=False)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.metrics["train_loss"] == whole.metrics["train_loss"]
    # a resume with another config is refused, naming the field
    with pytest.raises(ValueError, match="lr"):
        train_model(
            tiny_cfg(steps=14, lr=0.5), tmp_path / "cut", corpus=corpus, tokenizer=bpe, progress=False
        )


def test_same_seed_same_weights_other_seed_differs(corpus, bpe, tmp_path):
    runs = [
        train_model(
            tiny_cfg(seed=s, steps=5), tmp_path / f"r{i}", corpus=corpus, tokenizer=bpe, progress=False
        )
        for i, s in enumerate([3, 3, 4])
    ]
    a, b, c = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.wte.weight"], c["transformer.wte.weight"])


@pytest.mark.parametrize(
    "kw",
    [
        dict(activation="gelu", optimizer="sgd"),
        dict(activation="none"),
        dict(activation="solu", n_layers=2),
        dict(attn_only=True),
    ],
)
def test_architectures_load_and_match(corpus, bpe, tmp_path, kw):
    result = train_model(
        tiny_cfg(steps=3, **kw), tmp_path / "run", corpus=corpus, tokenizer=bpe, progress=False
    )
    loaded = ls.load(result.checkpoints[-1])
    tokens = torch.tensor([bpe("the dog ran to the cat")["input_ids"]])
    logits, cache = loaded.run_with_cache(tokens, sites=["blocks.0.mlp.post", "blocks.0.mlp.pre"])
    with torch.no_grad():
        torch.testing.assert_close(logits, result.model(input_ids=tokens).logits, rtol=0, atol=1e-5)
    post, pre = cache["blocks.0.mlp.post"], cache["blocks.0.mlp.pre"]
    if kw.get("attn_only"):
        assert loaded.hf.config.attn_only and torch.count_nonzero(post) == 0
        mlp = loaded.hf.transformer.h[0].mlp
        assert torch.count_nonzero(mlp(torch.randn(1, 2, 32))) == 0  # the block adds attention only
        return
    by_hand = {
        "gelu": torch.nn.functional.gelu(pre),
        None: torch.relu(pre),
        "none": pre,
        "solu": torch.nn.functional.layer_norm(pre * pre.softmax(-1), pre.shape[-1:], eps=1e-5),
    }[kw.get("activation")]
    torch.testing.assert_close(post, by_hand, rtol=0, atol=1e-5)


def test_trimmed_vocabulary(corpus, bpe):
    texts = [d.text for d in load_corpus(corpus, split="train")]
    counts = count_tokens(bpe, texts)
    fewer, few_map = trim_tokenizer(bpe, counts, 300)  # the texts use fewer tokens: all kept, no others
    assert set(counts) <= set(few_map) and len(fewer) < 300  # (plus the pieces their merges need)
    rng = random.Random(2)
    texts.append(" ".join("".join(rng.choice("abcdefghijklmnop") for _ in range(4)) for _ in range(2000)))
    counts = count_tokens(bpe, texts)
    small, id_map = trim_tokenizer(bpe, counts, 300)
    assert len(small) == 300 and len(set(id_map)) == 300
    assert small.convert_ids_to_tokens(small.bos_token_id) == "<|im_start|>"
    exact = 0
    for text in ["the cat sat on the mat", "über straße 42!", texts[0][:200], texts[-1][:300]]:
        ids = small(text, add_special_tokens=False)["input_ids"]
        assert small.decode(ids) == text  # byte-level: nothing is ever unknown
        base = bpe(text, add_special_tokens=False)["input_ids"]
        if all(i in set(id_map) for i in base):  # every base token kept: exactly the base tokenization
            assert [id_map[i] for i in ids] == base
            exact += 1
    assert exact >= 2
    # the most frequent base tokens are kept
    top = [i for i, _ in counts.most_common(10)]
    assert set(top) <= set(id_map)
    with pytest.raises(ValueError, match="alphabet"):
        trim_tokenizer(bpe, counts, 100)


def test_trimmed_vocab_run(corpus, bpe, tmp_path):
    result = train_model(
        tiny_cfg(vocab=280, steps=3), tmp_path / "run", corpus=corpus, tokenizer=bpe, progress=False
    )
    loaded = ls.load(result.checkpoints[-1])
    assert loaded.cfg.d_vocab == 280 == len(loaded.tokenizer)
    assert len(json.loads((tmp_path / "run" / "vocab_map.json").read_text())) == 280


def test_checkpoint_steps_and_schedule():
    assert checkpoint_steps(1000, 5) == [0, 1, 10, 100, 1000]
    cfg = tiny_cfg(steps=100, schedule="cosine", warmup_steps=10, lr=1.0)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 99) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 89 / 90)).item())
    )
    # every context once per epoch
    seen = torch.cat([batch_indices(10, 4, s, seed=0) for s in range(5)])
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:20].tolist()) == list(range(10))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(n_layers=5), "n_layers"),
        (dict(activation="tanh"), "activation"),
        (dict(n_heads=3), "divide"),
        (dict(optimizer="lion"), "optimizer"),
        (dict(lr=-1.0), "lr"),
        (dict(ctx_len=1), "ctx_len"),
    ],
)
def test_bad_config(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny_cfg(**kw)


def test_bad_input_before_training(corpus, bpe, tmp_path):
    with pytest.raises(ValueError, match="fewer than train_tokens"):
        train_model(
            tiny_cfg(train_tokens=10_000_000), tmp_path / "a", corpus=corpus, tokenizer=bpe, progress=False
        )
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        train_model(tiny_cfg(), tmp_path / "file", corpus=corpus, tokenizer=bpe, progress=False)
    train, test = _datasets(tiny_cfg(), corpus, bpe)
    other, _ = trim_tokenizer(bpe, count_tokens(bpe, ["the cat"]), 280)
    with pytest.raises(ValueError, match="another tokenizer"):
        train_model(tiny_cfg(), tmp_path / "b", train=train, test=test, tokenizer=other, progress=False)


# ---- features across checkpoints (lab/track.py): planted answers ----
from lmscope.lab.track import (  # noqa: E402
    activation_correlation,
    compare_features,
    decoder_cosine,
    greedy_match,
    similarity,
    track,
)


def planted_features(n_feat=12, d=16, n_tok=4000, seed=0):
    """Orthonormal decoder rows [n_feat, d] and sparse non-negative activations [n_tok, n_feat]."""
    g = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:n_feat]
    fires = torch.rand(n_tok, n_feat, generator=g) < 0.1
    return W, fires * torch.rand(n_tok, n_feat, generator=g)


def test_permuted_sae_matches_perfectly():
    W, f = planted_features()
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(5))
    sim = similarity(decoder_cosine(W, W[perm]), activation_correlation(f, f[:, perm]))
    step = compare_features(sim)
    assert sorted((i, j) for i, j, _ in step.matches) == sorted((int(perm[j]), j) for j in range(12))
    assert all(s == pytest.approx(1.0, abs=1e-5) for *_, s in step.matches)
    assert step.births == step.deaths == [] and step.splits == step.merges == {}


def test_split_merge_birth_detected():
    W, f = planted_features()
    # B: feature 0 split in two (directions either side of it, each firing on half its tokens), feature 11
    # replaced by a new one (a direction outside A's span, firing independently), the others kept
    extra = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(9)))[0]
    e = extra[:, 0] - W.T @ (W @ extra[:, 0])
    e = e / e.norm()
    half = torch.arange(len(f)) % 2 == 0
    new_dir = extra[:, 1] - W.T @ (W @ extra[:, 1]) - (extra[:, 1] @ e) * e
    W_b = torch.cat(
        [W[1:11], (W[0] + 0.5 * e)[None], (W[0] - 0.5 * e)[None], (new_dir / new_dir.norm())[None]]
    )
    g = torch.Generator().manual_seed(3)
    f_new = (torch.rand(len(f), generator=g) < 0.1) * torch.rand(len(f), generator=g)
    f_b = torch.cat([f[:, 1:11], (f[:, 0] * half)[:, None], (f[:, 0] * ~half)[:, None], f_new[:, None]], 1)
    sim = similarity(decoder_cosine(W, W_b), activation_correlation(f, f_b))
    step = compare_features(sim)
    assert step.splits == {0: [10, 11]}
    assert step.births == [12] and step.deaths == [11]
    # the kept features match their copies; the split parent also matches one of its halves (sim ~0.8)
    matched = sorted((i, j) for i, j, _ in step.matches)
    assert matched[1:] == [(i, i - 1) for i in range(1, 11)] and matched[0] in [(0, 10), (0, 11)]
    back = compare_features(sim.T)  # seen backwards, the split is a merge and the birth a death
    assert back.merges == {0: [10, 11]} and back.deaths == [12] and back.births == [11]
    # three checkpoints: A -> A permuted -> B; the born feature's chain starts at checkpoint 2
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    sims = [
        similarity(decoder_cosine(W, W[perm]), activation_correlation(f, f[:, perm])),
        similarity(decoder_cosine(W[perm], W_b), activation_correlation(f[:, perm], f_b)),
    ]
    timeline = track(sims)
    inv = torch.argsort(perm)
    assert timeline.born == [0] * 12 + [2]
    assert timeline.chains[12] == [None, None, 12]
    assert timeline.chains[10] == [0, int(inv[0]), 10] and timeline.chains[11] == [0, int(inv[0]), 11]
    assert timeline.chains[0] == [1, int(inv[1]), 0]
    assert timeline.births_per_checkpoint() == [12, 0, 1]


def test_greedy_match_by_hand():
    sim = torch.tensor([[0.9, 0.8, 0.0], [0.85, 0.2, 0.0], [0.0, 0.0, 0.5]])
    # greedy: (0,0) first, then row 1's only free partner above 0.7 is none; (2,2) is below 0.7
    assert greedy_match(sim) == [(0, 0, pytest.approx(0.9))]
    # pairs by decreasing similarity: (0,0) .9, then (1,0) and (0,1) are taken, (2,2) .5, (1,1) .2 (the
    # optimal assignment would pair (0,1)+(1,0) = 1.65 > 1.1: greedy is exact only with clear partners)
    assert [(i, j) for i, j, _ in greedy_match(sim, 0.1)] == [(0, 0), (2, 2), (1, 1)]
    with pytest.raises(ValueError, match="same tokens"):
        activation_correlation(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="one space"):
        decoder_cosine(torch.zeros(3, 2), torch.zeros(3, 4))


# ---- privileged basis over a grid (lab/basis.py) ----
def test_direction_sparsity_by_hand_and_native_vs_rotated():
    from lmscope.lab.basis import basis_sparsity, direction_sparsity

    X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [3.0, 0.0]])
    # column 0: E|x| = 1, E x^2 = 2.5 -> 0.4; column 1: 0.5^2 / 1 = 0.25
    assert direction_sparsity(X) == pytest.approx((0.4 + 0.25) / 2)
    # one-hot-ish data (each token uses one basis direction) is sparse natively, not after rotations
    g = torch.Generator().manual_seed(0)
    hot = torch.nn.functional.one_hot(torch.randint(0, 16, (2000,), generator=g), 16).float()
    hot = hot * torch.rand(2000, 1, generator=g)
    from lmscope.features.basis import random_rotation

    result = basis_sparsity(hot, [random_rotation(16, s) for s in range(10)])
    assert result["sparsity"] < result["rotated_sparsity_mean"] and result["z_sparsity"] < -3


def test_basis_grid_on_lab_runs(corpus, bpe, tmp_path):
    from lmscope.lab.basis import basis_grid

    dirs = []
    for act in ("relu", "none"):
        train_model(
            tiny_cfg(activation=act, steps=3, n_layers=2),
            tmp_path / act,
            corpus=corpus,
            tokenizer=bpe,
            progress=False,
        )
        dirs.append(tmp_path / act)
    grid = basis_grid(dirs, n_tokens=300, n_rotations=3)
    sites = [(r["activation"], r["site"]) for r in grid.rows]
    assert (
        ("relu", "blocks.1.mlp.post") in sites
        and ("none", "blocks.0.resid_post") in sites
        and len(sites) == 8
    )
    relu_mlp = [r for r in grid.rows if r["activation"] == "relu" and r["family"] == "mlp"]
    # ReLU neurons are exactly 0 on many tokens: sparser in their own basis than in any rotation of it
    assert all(r["sparsity"] < r["rotated_sparsity_mean"] for r in relu_mlp)
    table = grid.table()
    assert {(t["activation"], t["family"]) for t in table} == {
        ("relu", "mlp"),
        ("relu", "resid"),
        ("none", "mlp"),
        ("none", "resid"),
    }
    assert all(t["n"] == 2 and t["runs"] == 1 for t in table)


def test_cli_lab_train(corpus, bpe, tmp_path, capsys):
    from lmscope.cli import main

    bpe.save_pretrained(str(tmp_path / "tok"))
    args = [
        "lab",
        "train",
        "--out",
        str(tmp_path / "run"),
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(tmp_path / "tok"),
    ]
    small = [
        "--vocab",
        "0",
        "--d-model",
        "32",
        "--n-heads",
        "2",
        "--d-mlp",
        "32",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--ctx-len",
        "32",
        "--eval-tokens",
        "500",
        "--n-checkpoints",
        "3",
    ]
    assert main(args + small) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert f"held-out loss {metrics['heldout_loss']:.3f}" in out
    assert main(args + small + ["--n-layers", "7"]) == 2
    assert "n_layers must be 1-4" in capsys.readouterr().err

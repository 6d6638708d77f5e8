"""Logit lens and tuned lens on tiny models: exact at the last layer, hand-computed norms, identity init,
training that lowers held-out KL, saving/loading, resuming, the run folder and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import lmscope as ls
from lmscope.circuits import lens as lens_module
from lmscope.circuits.lens import (
    TrainConfig,
    TunedLens,
    collect_residuals,
    lens_logits,
    lens_sites,
    lens_stats,
    prompt_lens,
    train_tuned_lens,
    unembed,
)
from lmscope.circuits.lens_report import write_lens_run
from lmscope.cli import main
from lmscope.runs import read_run

from .conftest import VOCAB, WORDS, tiny_hf, word_tokenizer


def contexts(n: int, seed: int, ctx_len: int = 12) -> torch.Tensor:
    ids = torch.randint(2, VOCAB, (n, ctx_len), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 1  # BOS
    return ids


@torch.no_grad()
def test_logit_lens_at_the_last_layer_is_the_models_output(tiny, tokens):
    last = f"blocks.{tiny.cfg.n_layers - 1}.resid_post"
    logits, cache = tiny.run_with_cache(tokens, sites=[last])
    torch.testing.assert_close(unembed(tiny, cache[last]), logits, atol=1e-5, rtol=1e-5)
    stats = lens_stats(tiny, collect_residuals(tiny, tokens))
    assert stats.kl[-1] == pytest.approx(0.0, abs=1e-6)
    assert stats.mean_rank[-1] == 0 and stats.top1[-1] == 1.0
    assert stats.n_tokens == tokens.shape[0] * (tokens.shape[1] - 1)  # position 0 left out


@torch.no_grad()
def test_logit_lens_matches_hand_written_norms(tokens):
    for arch in ("llama", "gpt2"):
        model = ls.Model(tiny_hf(arch), word_tokenizer())
        _, cache = model.run_with_cache(tokens, sites=["blocks.0.resid_post"])
        h = cache["blocks.0.resid_post"]
        if arch == "llama":
            norm = model.hf.model.norm
            x = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight
        else:
            norm = model.hf.transformer.ln_f
            centred = h - h.mean(-1, keepdim=True)
            x = (
                centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
                + norm.bias
            )
        expected = x @ model.hf.lm_head.weight.T
        torch.testing.assert_close(
            lens_logits(model, h, "blocks.0.resid_post"), expected, atol=1e-5, rtol=1e-4
        )


@torch.no_grad()
def test_untrained_tuned_lens_is_the_logit_lens(tiny_llama):
    cache = collect_residuals(tiny_llama, contexts(4, 0))
    lens = TunedLens.for_model(tiny_llama)
    for i, site in enumerate(cache.sites):
        assert torch.equal(
            lens_logits(tiny_llama, cache.resid[i], site, lens), lens_logits(tiny_llama, cache.resid[i], site)
        )
    tuned, logit = lens_stats(tiny_llama, cache, lens), lens_stats(tiny_llama, cache)
    assert (tuned.kl, tuned.mean_rank, tuned.lens) == (logit.kl, logit.mean_rank, "tuned")


def test_training_lowers_held_out_kl_and_round_trips(tiny_llama, tmp_path):
    train = collect_residuals(tiny_llama, contexts(40, 1))
    held_out = collect_residuals(tiny_llama, contexts(12, 2))
    lens = train_tuned_lens(tiny_llama, train, TrainConfig(steps=40, batch_size=64, lr=1e-2), progress=False)
    before, after = lens_stats(tiny_llama, held_out), lens_stats(tiny_llama, held_out, lens)
    for site, kl_logit, kl_tuned in list(zip(before.sites, before.kl, after.kl))[:-1]:
        assert kl_tuned < 0.6 * kl_logit, site
    assert after.kl[-1] == pytest.approx(0.0, abs=1e-6)  # the last layer keeps the identity
    assert torch.equal(lens.delta[-1], torch.zeros_like(lens.delta[-1]))
    assert lens.info["loss"][-1] < lens.info["loss"][0]
    assert all(p.requires_grad for p in tiny_llama.hf.parameters())  # the model is left as it was

    loaded = TunedLens.load(lens.save(tmp_path))
    assert torch.equal(loaded.delta, lens.delta) and torch.equal(loaded.bias, lens.bias)
    assert loaded.sites == lens.sites and loaded.info["loss"] == lens.info["loss"]
    with pytest.raises(FileNotFoundError, match="lmscope lens --train"):
        TunedLens.load(tmp_path / "nothing")


def test_interrupted_training_resumes_to_the_same_lens(tiny_llama, tmp_path, monkeypatch):
    cache = collect_residuals(tiny_llama, contexts(8, 3))
    cfg = TrainConfig(steps=6, batch_size=16, lr=1e-2, checkpoint_every=3)
    straight = train_tuned_lens(tiny_llama, cache, cfg, checkpoint=tmp_path / "a.pt", progress=False)

    save = lens_module._save_checkpoint

    def save_then_stop(path, lens, opt, cfg, step, losses):
        save(path, lens, opt, cfg, step, losses)
        raise KeyboardInterrupt

    monkeypatch.setattr(lens_module, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_tuned_lens(tiny_llama, cache, cfg, checkpoint=tmp_path / "b.pt", progress=False)
    monkeypatch.setattr(lens_module, "_save_checkpoint", save)
    resumed = train_tuned_lens(tiny_llama, cache, cfg, checkpoint=tmp_path / "b.pt", progress=False)
    assert torch.equal(resumed.delta, straight.delta) and torch.equal(resumed.bias, straight.bias)
    assert resumed.info["loss"] == straight.info["loss"]
    with pytest.raises(ValueError, match="other settings"):
        train_tuned_lens(
            tiny_llama, cache, TrainConfig(steps=7), checkpoint=tmp_path / "b.pt", progress=False
        )


@torch.no_grad()
def test_prompt_lens_picture(tiny_llama):
    picture = prompt_lens(tiny_llama, "the cat sat on the mat", k=3)
    assert picture.tokens == tiny_llama.to_str_tokens("the cat sat on the mat")
    n_pos = len(picture.tokens)
    assert len(picture.top_tokens) == 3 and all(len(row) == n_pos for row in picture.top_tokens)
    final = tiny_llama("the cat sat on the mat")[0].argmax(-1)
    assert picture.top_tokens[-1] == [tiny_llama.tokenizer.decode([int(i)]) for i in final]
    assert picture.final_rank[-1] == [0] * n_pos and max(picture.kl[-1]) < 1e-5
    assert [len(cell) for cell in picture.topk[0]] == [3] * n_pos


def test_bad_inputs_say_what_is_wrong(tiny_llama):
    with pytest.raises(ValueError, match="residual stream"):
        lens_sites(tiny_llama, "blocks.*.mlp.post")
    with pytest.raises(ValueError, match="n_ctx, ctx_len"):
        collect_residuals(tiny_llama, torch.tensor([1, 2, 3]))
    with pytest.raises(KeyError, match="no translator"):
        TunedLens.for_model(tiny_llama, "blocks.0.resid_post").translate(
            torch.zeros(32), "blocks.1.resid_post"
        )
    with pytest.raises(ValueError, match="optimizer"):
        train_tuned_lens(
            tiny_llama, collect_residuals(tiny_llama, contexts(2, 0)), TrainConfig(optimizer="lbfgs")
        )


@pytest.fixture
def corpus(tmp_path):
    """A corpus folder in the data contract's format, written by hand."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = torch.Generator().manual_seed(0)
    lines = []
    for i in range(30):
        words = [WORDS[int(j)] for j in torch.randint(2, len(WORDS), (40,), generator=rng)]
        doc = {
            "text": " ".join(words),
            "label": "words",
            "source": "test",
            "id": f"w/{i}",
            "split": "test" if i % 3 == 0 else "train",
        }
        lines.append(json.dumps(doc))
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_lens_run_folder(tiny_llama, corpus, tmp_path):
    cfg = TrainConfig(steps=5, batch_size=32, lr=1e-2)
    out = write_lens_run(tiny_llama, tmp_path / "run", prompt="the cat sat", train=True, train_tokens=600,
                         eval_tokens=200, corpus=corpus, cfg=cfg, ctx_len=16, progress=False)  # fmt: skip
    assert read_run(out)["kind"] == "lens"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["logit"]["kl"][-1] == pytest.approx(0.0, abs=1e-6) and len(stats["tuned"]["kl"]) == 3
    assert set(json.loads((out / "prompt.json").read_text())) == {"logit", "tuned"}
    assert not (out / "checkpoint.pt").exists()
    html = (out / "report.html").read_text()
    assert "KL to the final distribution per layer" in html and "http" not in html.split("<body>")[1]
    again = write_lens_run(
        tiny_llama,
        tmp_path / "eval",
        lens_dir=out,
        eval_tokens=200,
        corpus=corpus,
        ctx_len=16,
        progress=False,
    )
    assert json.loads((again / "stats.json").read_text())["tuned"] == stats["tuned"]


def test_cli_lens(tmp_path, corpus, capsys):
    folder = tmp_path / "tiny-llama"
    tiny_hf("llama").save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    args = [
        "lens",
        "--model",
        str(folder),
        "--corpus",
        str(corpus),
        "--eval-tokens",
        "300",
        "--ctx-len",
        "16",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(args) == 0
    assert (tmp_path / "r" / "report.html").is_file() and "wrote" in capsys.readouterr().out
    assert main([*args[:-2], "--lens", str(tmp_path / "missing"), "--out", str(tmp_path / "s")]) == 2
    assert "lmscope lens --train" in capsys.readouterr().err

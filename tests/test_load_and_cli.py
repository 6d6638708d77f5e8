"""Loading from local folders and GGUF conversion bookkeeping, and the CLI, on tiny models."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import lmscope as ls
from lmscope.cli import main
from lmscope.model import loading as load_module

from .conftest import tiny_hf, word_tokenizer


@pytest.fixture
def llama_folder(tmp_path):
    hf = tiny_hf("llama")
    folder = tmp_path / "tiny-llama"
    hf.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder, hf


@torch.no_grad()
def test_load_local_folder(llama_folder):
    folder, hf = llama_folder
    model = ls.load(folder)
    tokens = torch.tensor([[2, 3, 4, 5]])
    assert torch.equal(model(tokens), hf(tokens).logits)
    assert model.to_str_tokens("the cat") == ["the", "cat"]
    assert model.cfg.name == "tiny-llama" and model.cfg.n_kv_heads == 2
    half = ls.load(str(folder), dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'float8' not understood"):
        ls.load(folder, dtype="float8")


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model at"):
        ls.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        ls.load(tmp_path / "model.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ls.load(tmp_path / "empty")


def test_hub_id_without_network_says_what_to_do(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = (
        "import lmscope as ls\ntry:\n    ls.load('someone/not-a-model')\nexcept OSError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "could not load 'someone/not-a-model'" in out.stdout and "ls.load()" in out.stdout


def test_interrupted_conversion_leaves_no_cache(tmp_path, monkeypatch):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(os.urandom(3 << 20))

    def interrupted(path, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")  # looks complete, but the conversion dies before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(load_module, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_module.converted_folder(gguf, tmp_path / "cache")
    models = tmp_path / "cache" / "models"
    assert list(models.iterdir()) == []  # neither a final folder nor a temporary one

    calls = []

    def completes(path, out):
        calls.append(path)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(load_module, "_convert", completes)
    folder = load_module.converted_folder(gguf, tmp_path / "cache")
    assert (folder / "config.json").exists() and folder.parent == models
    assert load_module.converted_folder(gguf, tmp_path / "cache") == folder  # cached: converted only once
    assert len(calls) == 1
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "env-cache"))
    assert load_module.cache_root() == tmp_path / "env-cache"


def test_cli_sites_run_and_errors(llama_folder, capsys):
    folder, _ = llama_folder
    assert main(["sites", "--model", str(folder), "--filter", "blocks.1.attn.*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [
        f"blocks.1.attn.{s}" for s in ("q", "k", "v", "pattern", "z", "out")
    ]
    assert "[batch, pos, 2, 8]" in lines[1]  # k: 2 kv heads of 8
    assert main(["run", "the cat sat", "--model", str(folder), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "tokens: the | cat | sat" in out and len(out.strip().splitlines()) == 4
    assert main(["info", "--model", str(folder)]) == 0
    assert "layers       3" in capsys.readouterr().out
    assert main(["sites", "--model", str(folder), "--filter", "blocks.1.mlp.psot"]) == 2
    assert "Closest valid names: blocks.1.mlp.post" in capsys.readouterr().err
    assert main(["run", "  ", "--model", str(folder)]) == 2
    assert "empty prompt" in capsys.readouterr().err
    assert main(["run", "x", "--model", str(folder / "nope")]) == 2
    assert "no model at" in capsys.readouterr().err


def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare with single spaces


def test_cli_defaults_live_in_the_dataclasses(capsys):
    """The one-place rule: --help shows the config's default, and a bare command line builds exactly the
    dataclass's defaults (so no flag carries a default of its own)."""
    from lmscope.cli import COMMANDS, build_parser
    from lmscope.cli.flags import build
    from lmscope.features.sae.config import SAEConfig, TopKConfig
    from lmscope.features.sae.run import SAECommand

    text = _help(capsys, "sae")
    assert f"--k K TopK architectures: active features per token (default: {TopKConfig.k})" in text
    assert f"--batch-size BATCH_SIZE tokens per optimizer step (default: {SAEConfig.batch_size})" in text
    parser = build_parser()
    args = parser.parse_args(["sae", "train", "run"])
    assert build(SAECommand, args) == SAECommand(action="train", run_dir="run")
    assert SAECommand(action="train").k == TopKConfig.k and SAECommand(action="x").tokens == SAEConfig.total_tokens
    args = parser.parse_args(["sae", "train", "run", "--tokens", "500k", "--k", "8", "--dead-tokens", "2M"])
    assert (build(SAECommand, args).tokens, build(SAECommand, args).k) == (500_000, 8)
    assert build(SAECommand, args).dead_tokens == 2_000_000
    for command in COMMANDS:  # every command's --help renders (its dataclass's types are understood)
        assert command in _help(capsys, command)


def test_cli_flags_from_a_dataclass():
    import argparse
    from dataclasses import dataclass, field

    from lmscope.cli.flags import add_flags, build

    @dataclass
    class Options:
        name: str = field(metadata={"positional": True})
        size: int = 3
        rate: float | None = None
        names: list[str] | None = field(default=None, metadata={"sep": ","})
        values: tuple[float, ...] = (0.5,)
        check: bool = True
        verbose: bool = False
        resume: bool = field(default=True, metadata={"flag": "--restart"})
        count: int = field(default=2_000, metadata={"parse": lambda text: int(text.rstrip("k")) * 1000})

    parser = argparse.ArgumentParser()
    add_flags(parser, Options)
    assert build(Options, parser.parse_args(["a"])) == Options("a")
    got = build(
        Options,
        parser.parse_args(
            ["b", "--size", "4", "--rate", "0.1", "--names", "x,,y", "--values", "1", "2"]
            + ["--no-check", "--verbose", "--restart", "--count", "5k"]
        ),
    )
    assert got == Options("b", 4, 0.1, ["x", "y"], [1.0, 2.0], False, True, False, 5000)
    with pytest.raises(SystemExit):
        parser.parse_args(["c", "--size", "many"])


def test_audit_refuses_training_flags_with_a_subspace(llama_folder, tmp_path, capsys, monkeypatch):
    """An audited subspace is not trained: --k/--epochs/--lr with it are an error naming them (they used to
    be silently ignored); without a subspace (lmscope das) they reach DAS training."""
    from lmscope.causal import das_report

    folder, _ = llama_folder
    base = ["--model", str(folder), "--site", "blocks.1.resid_post", "--out", str(tmp_path / "a")]
    for flags in (["--k", "2"], ["--epochs", "3", "--lr", "0.1"]):
        assert main(["audit", *base, "--subspace", "mean_difference", *flags]) == 2
        err = capsys.readouterr().err
        given = [flag.lstrip("-") for flag in flags[::2]]
        assert "lmscope audit: error:" in err and "configure DAS training" in err
        assert all(f"{name}=" in err for name in given) and "--" + "/--".join(given) in err
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="epochs=3 configure DAS training"):
        das_report.run_das_audit(None, "blocks.1.resid_post", tmp_path / "b", subspace="probe", epochs=3)

    class Trained(Exception):
        pass

    seen = {}

    def fake_das(model, task, site, **kwargs):
        seen.update(kwargs)
        raise Trained

    monkeypatch.setattr(das_report, "ioi_position_tasks", lambda model, n, n_test, seed: ("train", "test"))
    monkeypatch.setattr(das_report, "das", fake_das)
    with pytest.raises(Trained):
        main(["das", *base, "--k", "2", "--epochs", "3", "--lr", "0.1"])
    assert (seen["k"], seen["epochs"], seen["lr"]) == (2, 3, 0.1)
    with pytest.raises(Trained):
        main(["das", *base])
    defaults = das_report.DASOptions(site="x")
    assert (seen["k"], seen["epochs"], seen["lr"]) == (defaults.k, defaults.epochs, defaults.lr)

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

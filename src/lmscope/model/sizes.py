"""How big a model is, read from file headers alone, and whether it fits: checked before anything loads.

    info = read_gguf_header(path)     # GGUFHeader(architecture="qwen2", n_params=630_167_424, ...)
    n = count_safetensors_params(folder)
    check_memory(n, 4, "cpu", "loading qwen2.5-coder-0.5b-instruct in float32")   # ModelTooLargeError

Only headers are read (a GGUF file's key/value section and tensor table, a safetensors file's JSON
header), so an estimate takes milliseconds where gguf's own GGUFReader, which builds an array per
vocabulary entry, takes seconds, and instantiating the model on the meta device seconds more.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

# GGUF value types (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): fixed sizes and structs.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class ModelTooLargeError(MemoryError, ValueError):
    """The model's estimated size exceeds the memory available (a ValueError too, so the CLI reports it)."""


@dataclass(frozen=True)
class GGUFHeader:
    architecture: str  # general.architecture, GGUF's name (e.g. "gemma3" for HF's gemma3_text)
    n_params: int  # sum of every tensor's element count
    n_layers: int | None  # {architecture}.block_count
    d_model: int | None  # {architecture}.embedding_length
    name: str  # general.name, or ""


def read_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """Parse a GGUF file's header: the metadata we need and every tensor's shape, not the data."""
    path = Path(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"{path} is GGUF version {version}; transformers reads versions 2 and 3")
        pos, meta = 24, {}
        try:
            for _ in range(n_kv):
                key, pos = _string(buf, pos)
                (kind,), pos = struct.unpack_from("<I", buf, pos), pos + 4
                value, pos = _value(buf, pos, kind)
                meta[key] = value
            n_params = 0
            for _ in range(n_tensors):
                _, pos = _string(buf, pos)
                (n_dims,) = struct.unpack_from("<I", buf, pos)
                dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
                pos += 4 + 8 * n_dims + 4 + 8  # dims, then the tensor's type and data offset
                n_elements = 1
                for d in dims:
                    n_elements *= d
                n_params += n_elements
        except (struct.error, UnicodeDecodeError, KeyError) as err:
            raise ValueError(f"{path}: the GGUF header is damaged or truncated ({err})") from err
    arch = str(meta.get("general.architecture", ""))
    return GGUFHeader(
        architecture=arch,
        n_params=n_params,
        n_layers=meta.get(f"{arch}.block_count"),
        d_model=meta.get(f"{arch}.embedding_length"),
        name=str(meta.get("general.name", "")),
    )


def _string(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    return bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8"), pos + 8 + n


def _value(buf, pos: int, kind: int):
    """One value at `pos` and the position after it. Arrays are skipped (returned as None): the header's
    only arrays are the tokenizer's, which we do not need."""
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
    if kind == _STRING:
        return _string(buf, pos)
    if kind == _ARRAY:
        item, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item in _SCALARS:
            return None, pos + count * struct.calcsize("<" + _SCALARS[item])
        if item == _STRING:  # a vocabulary: hop over each string by its length, without decoding it
            length = struct.Struct("<Q").unpack_from
            for _ in range(count):
                pos += 8 + length(buf, pos)[0]
            return None, pos
        for _ in range(count):  # nested arrays
            _, pos = _value(buf, pos, item)
        return None, pos
    raise KeyError(f"unknown GGUF value type {kind}")


def count_safetensors_params(folder: str | os.PathLike) -> int | None:
    """Parameters stored in a folder's *.safetensors files (from their JSON headers); None without any."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for key, entry in header.items():
            if key != "__metadata__":
                count = 1
                for d in entry["shape"]:
                    count *= d
                total += count
    return total


def available_memory(device: str | torch.device = "cpu") -> tuple[int | None, str]:
    """Bytes free for a model on `device` and where that number comes from; (None, why) when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free memory on {device}"
    if device.type != "cpu":
        return None, f"no memory estimate for {device.type}"
    try:
        import psutil

        return psutil.virtual_memory().available, "available RAM"
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available RAM (MemAvailable)"
    except OSError:
        pass
    return None, "available RAM unknown"


def gib(n_bytes: float) -> str:
    """Bytes as GiB, or MiB below one GiB (a tiny test model still shows a number that is not 0.00)."""
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.2f} MiB"


def check_memory(n_params: int, bytes_per_param: float, device, what: str, how: str = "") -> None:
    """Raise ModelTooLargeError when n_params * bytes_per_param exceeds the memory available on `device`.

    what: the action, for the message ("loading gemma-3-270m in float32"); how: how the estimate was made.
    $LMSCOPE_NO_MEMORY_CHECK=1 skips the check (for an estimate that is wrong on an unusual system).
    """
    if os.environ.get("LMSCOPE_NO_MEMORY_CHECK") == "1":
        return
    need = n_params * bytes_per_param
    have, where = available_memory(device)
    if have is None or need <= have:
        return
    raise ModelTooLargeError(
        f"{what} needs about {gib(need)} ({n_params:,} parameters x {bytes_per_param:g} bytes"
        f"{', ' + how if how else ''}), but only {gib(have)} of {where} is left. Free memory, load in a "
        "smaller dtype (dtype='bfloat16' halves the weights), or choose a smaller model (`lmscope models` "
        "lists the bundled ones). Set LMSCOPE_NO_MEMORY_CHECK=1 to try anyway."
    )

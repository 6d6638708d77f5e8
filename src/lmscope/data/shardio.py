"""Single-tensor safetensors files written row by row and read back memory-mapped.

The activation store writes shards far larger than it wants to hold in memory, so a shard's header (its
shape is known in advance) goes first and rows are appended as they are computed. The file is written under
a temporary name and renamed when complete: a file at the final name is always whole. The result is an
ordinary safetensors file (any safetensors reader opens it); the reader here maps it instead of loading it.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..runs import AtomicFile

# torch dtype -> (safetensors name, numpy dtype holding the same bytes)
DTYPES = {
    torch.float32: ("F32", np.float32),
    torch.float16: ("F16", np.float16),
    torch.bfloat16: ("BF16", np.uint16),  # numpy has no bfloat16; the bits are viewed back in torch
    torch.int64: ("I64", np.int64),
}
_BY_NAME = {name: dtype for dtype, (name, _) in DTYPES.items()}
KEY = "acts"  # the tensor's name inside each file


class RowWriter:
    """Streams `n_rows` rows of shape `row_shape` into a safetensors file at `path`.

    write(rows [k, *row_shape]) appends; close() checks that every row came and renames the file into place;
    abort() removes the partial file.
    """

    def __init__(self, path: str | os.PathLike, n_rows: int, row_shape: tuple[int, ...], dtype: torch.dtype):
        if dtype not in DTYPES:
            raise ValueError(f"cannot store {dtype}; use one of {', '.join(map(str, DTYPES))}")
        self.path, self.dtype = Path(path), dtype
        self.n_rows, self.row_shape, self.written = n_rows, tuple(row_shape), 0
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * torch.tensor([], dtype=dtype).element_size()
        header = {
            KEY: {
                "dtype": DTYPES[dtype][0],
                "shape": [n_rows, *row_shape],
                "data_offsets": [0, n_rows * row_bytes],
            }
        }
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # safetensors wants the data 8-byte aligned
        self._out = AtomicFile(self.path)  # renamed into place by close(), removed by abort()
        self._out.file.write(struct.pack("<Q", len(text)) + text)

    def write(self, rows: Tensor) -> None:
        if rows.dtype != self.dtype or tuple(rows.shape[1:]) != self.row_shape:
            raise ValueError(
                f"rows {rows.dtype} {tuple(rows.shape)} do not fit {self.dtype} [*, {self.row_shape}]"
            )
        if self.written + rows.shape[0] > self.n_rows:
            raise ValueError(
                f"{self.path.name}: {self.written + rows.shape[0]} rows for a file of {self.n_rows}"
            )
        rows = rows.detach().contiguous().cpu()
        if rows.dtype == torch.bfloat16:
            rows = rows.view(torch.int16)
        self._out.file.write(memoryview(rows.numpy()).cast("B"))  # the tensor's own bytes, no copy
        self.written += rows.shape[0]

    def close(self) -> Path:
        if self.written != self.n_rows:
            self.abort()
            raise ValueError(f"{self.path.name}: got {self.written} rows, expected {self.n_rows}")
        return self._out.commit()

    def abort(self) -> None:
        self._out.discard()


def map_rows(path: str | os.PathLike) -> Tensor:
    """The tensor of a single-tensor safetensors file, memory-mapped (pages are read when touched).

    The map is copy-on-write: writing into the returned tensor never changes the file.
    """
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) != 1:
        raise ValueError(f"{path}: expected one tensor, found {sorted(entries)}")
    (entry,) = entries.values()
    dtype = _BY_NAME.get(entry["dtype"])
    if dtype is None:
        raise ValueError(f"{path}: unsupported dtype {entry['dtype']}")
    shape = tuple(entry["shape"])
    if 0 in shape:
        return torch.empty(shape, dtype=dtype)
    start = 8 + size + entry["data_offsets"][0]
    array = np.memmap(path, dtype=DTYPES[dtype][1], mode="c", offset=start, shape=shape)
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor

"""Run folders: what every saving command writes, and what the explorer reads.

A run folder holds ``run.json`` (its kind, a title, the model, when it was made, free metadata) beside the
kind's own files. Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import tempfile
from pathlib import Path

RUN_FILE = "run.json"
KINDS = ("sae", "neurons", "probe", "patching", "audit", "das", "lens", "circuits", "toy", "corpus", "store")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` beside ``path`` under a temporary name, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _finite(obj: object) -> object:
    """NaN and infinities (not valid JSON) become None, in nested dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: object) -> Path:
    """Atomically write ``obj`` as indented JSON; NaN and infinities are written as null."""
    return write_bytes_atomic(path, json.dumps(_finite(obj), indent=1, allow_nan=False).encode("utf-8"))


def read_json(path: str | os.PathLike) -> object:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_run(run_dir: str | os.PathLike, kind: str, title: str, model: str = "", **meta: object) -> Path:
    """Mark ``run_dir`` as a run of ``kind`` (write its ``run.json`` last, once its files are in place)."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; expected one of {', '.join(KINDS)}")
    record = {
        "kind": kind,
        "title": title,
        "model": model,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    return write_json(Path(run_dir) / RUN_FILE, record)


def read_run(run_dir: str | os.PathLike) -> dict:
    """The ``run.json`` of ``run_dir``; a clear error when the folder is not a run."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not an lmscope run folder (no {RUN_FILE} in it)")
    record = read_json(path)
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        raise ValueError(f"{path} is not a valid run record (missing or unknown 'kind')")
    return record


def find_runs(root: str | os.PathLike) -> list[tuple[Path, dict]]:
    """Every run folder under ``root`` (``root`` itself included), sorted by path."""
    root = Path(root)
    found = []
    for path in sorted(root.rglob(RUN_FILE)):
        with contextlib.suppress(ValueError, OSError, json.JSONDecodeError):
            found.append((path.parent, read_run(path.parent)))
    return found

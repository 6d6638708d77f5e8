"""Run folders and atomic writes: what every saving command writes, and what the explorer reads back.

A run folder holds ``run.json`` (its kind, a title, the model, when it was made, free metadata) beside the
kind's own files; ``run.json`` is written last, so a folder with one is complete. Every file lmscope writes
goes through :class:`AtomicFile` (or :func:`write_atomic` / :func:`write_json` on top of it): it is written
under a temporary name and renamed, so a reader never sees half a file and a crash leaves the old one.

    write_json(out / "stats.json", stats)          # NaN and infinities become null
    write_run(out, "lens", "Logit lens", model=name)
    runs, unreadable = scan_runs("runs/")          # [(folder, record)], [(folder, why it cannot be read)]
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

RUN_FILE = "run.json"
KINDS = ("sae", "neurons", "probe", "patching", "audit", "das", "lens", "circuits", "toy", "corpus", "store", "lab", "steering", "graph")


class AtomicFile:
    """A temporary file beside ``path``: :meth:`commit` renames it over ``path``, :meth:`discard` removes it.

    As a context manager it gives the open binary file and commits on success, discards on an error:

        with AtomicFile(out / "checkpoint.pt") as f:
            torch.save(payload, f)

    For a file written over many calls (a shard streamed row by row) keep the object and write to ``.file``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> Path:
        try:
            self.file.close()
            os.chmod(self.temp, 0o644)  # mkstemp makes it 0600; a saved file should read like any other
            os.replace(self.temp, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)

    def __enter__(self) -> BinaryIO:
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is written as UTF-8) to ``path`` atomically; parent folders are created."""
    with AtomicFile(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


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
    return write_atomic(path, json.dumps(_finite(obj), indent=1, allow_nan=False))


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
    """The ``run.json`` of ``run_dir``; a clear error when the folder is not a run or its record is broken."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not an lmscope run folder (no {RUN_FILE} in it)")
    try:
        record = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rerun the command that wrote it") from err
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds a {type(record).__name__}, not a run record (a JSON object)")
    if record.get("kind") not in KINDS:
        raise ValueError(
            f"{path} has kind {record.get('kind')!r}; a run record's kind is one of {', '.join(KINDS)}"
        )
    return record


def scan_runs(root: str | os.PathLike) -> tuple[list[tuple[Path, dict]], list[tuple[Path, str]]]:
    """Every folder under ``root`` (``root`` itself included) with a ``run.json``, sorted by path:
    ([(folder, record)] of the readable runs, [(folder, why it cannot be read)] of the others)."""
    runs, unreadable = [], []
    for path in sorted(Path(root).rglob(RUN_FILE)):
        try:
            runs.append((path.parent, read_run(path.parent)))
        except (ValueError, OSError) as err:
            unreadable.append((path.parent, str(err)))
    return runs, unreadable


def find_runs(root: str | os.PathLike) -> list[tuple[Path, dict]]:
    """The readable run folders under ``root``, sorted by path (see :func:`scan_runs` for the others)."""
    return scan_runs(root)[0]

"""lmscope.runs: atomic writes (NaN as null), run records, and scanning folders that may be broken."""

from __future__ import annotations

import pytest

from lmscope.runs import (
    AtomicFile,
    find_runs,
    read_json,
    read_run,
    scan_runs,
    write_atomic,
    write_json,
    write_run,
)


def test_run_json_writes_nan_as_null_and_marks_runs(tmp_path):
    write_json(tmp_path / "r" / "x.json", {"a": float("nan"), "b": [1.0, float("inf"), (2, float("-inf"))]})
    assert read_json(tmp_path / "r" / "x.json") == {"a": None, "b": [1.0, None, [2, None]]}
    with pytest.raises(FileNotFoundError, match="not an lmscope run"):
        read_run(tmp_path / "r")
    write_run(tmp_path / "r", "audit", "t", model="m", site="s")
    assert read_run(tmp_path / "r")["site"] == "s" and [p.name for p, _ in find_runs(tmp_path)] == ["r"]
    with pytest.raises(ValueError, match="unknown run kind"):
        write_run(tmp_path / "q", "nope", "t")


def test_atomic_file_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "ckpt.bin"
    write_atomic(path, b"old")
    with pytest.raises(RuntimeError, match="crashed"), AtomicFile(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("crashed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.bin"]  # no temporary file left behind
    write_atomic(path, "text é")
    assert path.read_bytes() == "text é".encode()
    assert path.stat().st_mode & 0o777 == 0o644


def test_scan_runs_reports_unreadable_folders_with_the_reason(tmp_path):
    write_run(tmp_path / "good", "probe", "fine")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "run.json").write_text("[1, 2]")
    write_json(tmp_path / "kindless" / "run.json", {"title": "no kind"})
    runs, unreadable = scan_runs(tmp_path)
    assert [p.name for p, _ in runs] == ["good"]
    reasons = {p.name: why for p, why in unreadable}
    assert sorted(reasons) == ["broken", "kindless", "list"]
    assert "not valid JSON" in reasons["broken"]
    assert "holds a list" in reasons["list"]
    assert "kind None" in reasons["kindless"]

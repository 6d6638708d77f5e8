"""`lmscope tour` end to end on the bundled model, shrunk: every stage writes its run folder, a second run
reuses them, and the explorer lists them all."""

from __future__ import annotations

import pytest

from lmscope.runs import find_runs
from lmscope.tour import run_tour

pytestmark = pytest.mark.integration


def test_tour_stages_and_cache(smollm2, smollm2_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCOPE_CACHE", str(smollm2_cache))  # the tour loads the model by name
    lines = []
    first = run_tour(root=tmp_path / "tour", serve=False, scale=0.1, out=lines.append)
    assert first["logit_diff"] > 0
    kinds = sorted(record["kind"] for _, record in find_runs(tmp_path / "tour"))
    assert kinds == ["corpus", "das", "neurons", "patching", "sae"]
    assert all(t > 0 for t in first["timings"].values())
    again = run_tour(root=tmp_path / "tour", serve=False, scale=0.1, out=lines.append)
    assert all(t == 0 for t in again["timings"].values())  # every stage cached
    assert sum("cached" in line for line in lines) == 5

    from fastapi.testclient import TestClient

    from lmscope.explorer import create_app

    index = TestClient(create_app(tmp_path / "tour")).get("/")
    assert index.status_code == 200
    for kind in ("das", "neurons", "sae", "patching"):
        assert kind in index.text

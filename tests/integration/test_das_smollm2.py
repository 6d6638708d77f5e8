"""DAS and the audit on the bundled model, small: IOI's name-order signal in the residual stream."""

from __future__ import annotations

import json

import pytest

from lmscope.causal.das_report import run_das_audit
from lmscope.cli import main
from lmscope.runs import read_run

pytestmark = pytest.mark.integration


def test_das_and_audit_on_smollm2(smollm2, tmp_path):
    res = run_das_audit(
        smollm2,
        "blocks.21.resid_post",
        tmp_path / "das",
        n=24,
        n_test=16,
        epochs=3,
        lr=0.02,
        readers=["23.0.q", "23.1.q", "23.2.q"],
        controls=False,
        progress=False,
    )
    held = res.das.held_out
    # the subspace generalises to held-out names and templates, far beyond random directions
    assert held.fldd > 0.5 and held.fldd > res.das.random_baseline()["fldd"] + 0.4
    rows = {row["patch"]: row for row in res.audit.table()}
    assert {"full component", "v", "v_row", "v_kernel", "mean difference"} <= set(rows)
    assert rows["full component"]["fldd"] > 0.8  # the residual stream carries the whole signal
    assert res.audit.verdict in ("consistent", "suspicious", "illusory")
    saved = json.loads((res.run_dir / "audit.json").read_text())
    assert saved["verdict"] == res.audit.verdict and read_run(res.run_dir)["kind"] == "das"
    html = (res.run_dir / "report.html").read_text()
    assert "Projection on v" in html and "http://" not in html


def test_audit_cli_on_a_candidate_direction(smollm2, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lmscope.model.load", lambda *a, **k: smollm2)
    out = tmp_path / "audit"
    code = main(
        [
            "audit",
            "--site",
            "blocks.21.mlp.post",
            "--subspace",
            "mean_difference",
            "--n",
            "16",
            "--n-test",
            "12",
            "--no-controls",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and read_run(out)["kind"] == "audit"
    saved = json.loads((out / "audit.json").read_text())
    # MLP neurons have a privileged basis: the correlation / effect attribution is there
    assert saved["attribution"]["correlation_top"] and 0 <= saved["attribution"]["overlap"] <= 1

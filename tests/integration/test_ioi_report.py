"""`lmscope ioi` end to end on the bundled model, small: the report's numbers and its self-contained page."""

from __future__ import annotations

import pytest

from lmscope.causal.ioi_report import write_ioi_report

pytestmark = pytest.mark.integration


def test_ioi_report_on_smollm2(smollm2, tmp_path):
    report, path = write_ioi_report(
        smollm2, tmp_path / "ioi_report.html", n=4, n_eval=24, progress=False, log=lambda *a: None
    )
    perf = report.performance
    assert perf["logit_diff"] > 2 and perf["accuracy"] > 0.9 and perf["corrupt_logit_diff"] < 0
    assert report.head_sweep.shape == (30, 9) and report.position_sweep.axes == ["layer", "position"]
    # at layer 0 only the one token that differs (S2) matters, and patching it restores the clean run
    layer0 = report.position_sweep.values[0].sort(descending=True).values
    assert layer0[0] == pytest.approx(1.0, abs=1e-3) and layer0[1:].abs().max() < 1e-3
    assert -1 <= report.atp_agreement["attn.z per head"]["spearman"] <= 1
    assert any(row["role"] == "name mover" for row in report.roles)
    html = path.read_text()
    assert "Heads and their IOI roles" in html and "<svg" in html
    assert "http://" not in html and "https://" not in html and "<script src" not in html

"""`lmscope ioi` end to end on the bundled model, small: the report's numbers and its self-contained page."""

from __future__ import annotations

import pytest

from lmscope.causal.attribution import attribution_patch
from lmscope.causal.ioi_report import write_ioi_report
from lmscope.data.tasks.ioi import ioi

pytestmark = pytest.mark.integration


def _ranks(xs: list[float]) -> list[float]:
    """1-based ranks, ties at their average rank (written out, independent of the library)."""
    order = sorted(range(len(xs)), key=xs.__getitem__)
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


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
    # the reported agreement is the Spearman correlation (ties at their average rank) of the attribution
    # estimate with the exact head sweep, recomputed here from the same prompts
    atp = attribution_patch(smollm2, ioi(smollm2, n=4, split="test", seed=0), ["blocks.*.attn.z"])["attn.z"]
    expected = _spearman(atp.values.flatten().tolist(), report.head_sweep.values.flatten().tolist())
    assert report.atp_agreement["attn.z per head"]["spearman"] == pytest.approx(expected, abs=1e-6)
    assert any(row["role"] == "name mover" for row in report.roles)
    html = path.read_text()
    assert "Heads and their IOI roles" in html and "<svg" in html
    assert "http://" not in html and "https://" not in html and "<script src" not in html

"""DAS and the audit on the bundled model, small: IOI's name-order signal in the residual stream."""

from __future__ import annotations

import json

import pytest
import torch

import lmscope as ls
from lmscope.causal.audit import COMPONENT_MARGIN, MIN_EFFECT, audit
from lmscope.causal.das_report import ioi_position_tasks, run_das_audit
from lmscope.cli import main
from lmscope.runs import read_run

pytestmark = pytest.mark.integration


def _verdict_from(checks: list[dict]) -> str:
    """The verdict rule of lmscope.causal.audit's docstring, applied to the saved checks."""
    status = {c["name"]: c["status"] for c in checks}
    if status["effect"] != "pass":
        return "no effect" if status["effect"] == "no effect" else "untested"
    failed = {name for name, s in status.items() if s in ("suspicious", "illusory")}
    if "illusory" in status.values() or {"component", "row_space"} <= failed:
        return "illusory"
    if failed:
        return "suspicious"
    return "consistent" if any(s == "pass" for n, s in status.items() if n != "effect") else "untested"


def _last_position(model, task, site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The site's activation at the prediction position on clean and corrupt prompts, [n, d] each."""
    with torch.no_grad():
        _, clean = model.run_with_cache(task.inputs("clean"), sites=[site])
        _, corrupt = model.run_with_cache(task.inputs("corrupt"), sites=[site])
    return clean[site][:, -1].float(), corrupt[site][:, -1].float()


def test_random_direction_at_resid_post_has_no_effect(smollm2):
    """A random direction of the residual stream carries almost none of the name-order signal: the audit
    must say "no effect", not approve it. The effect is recomputed with a whole-model SubspacePatch."""
    site = "blocks.21.resid_post"
    task = ls.tasks.ioi(smollm2, n=12, split="train", corruption="pattern")
    direction = torch.randn(smollm2.cfg.d_model, generator=torch.Generator().manual_seed(0))
    result = audit(smollm2, task, site, subspace=direction, n_random=2)

    _, corrupt = smollm2.run_with_cache(task.inputs("corrupt"), sites=[site])
    patch = ls.SubspacePatch(site, basis=direction, source=corrupt, positions=[-1])
    with torch.no_grad():
        clean_logits = smollm2.run(task.inputs("clean"))[:, -1].float()
        patched_logits = smollm2.run(task.inputs("clean"), interventions=[patch])[:, -1].float()

    def ld(logits):
        return (logits.gather(1, task.answer[:, None]) - logits.gather(1, task.wrong[:, None])).mean()

    fldd = float(1 - ld(patched_logits) / ld(clean_logits))
    assert float(ld(clean_logits)) > 1.0  # the model does the task, so a fraction of it is meaningful
    assert abs(fldd) < MIN_EFFECT
    assert result.check("effect").values["fldd"] == pytest.approx(fldd, abs=1e-3)
    assert result.verdict == "no effect" and result.reasons[0].startswith("effect:")
    assert all(c.status == "n/a" for c in result.checks if c.name not in ("effect", "agreement"))


def test_das_and_audit_on_smollm2(smollm2, tmp_path):
    res = run_das_audit(
        smollm2,
        "blocks.21.resid_post",
        tmp_path / "das",
        n=24,
        n_test=16,
        epochs=3,
        lr=0.02,
        readers=["blocks.23.attn.q[0]", "blocks.23.attn.q[1]", "blocks.23.attn.q[2]"],
        controls=False,
        progress=False,
    )
    held = res.das.held_out
    # the subspace generalises to held-out names and templates, far beyond random directions
    assert held.fldd > 0.5 and held.fldd > res.das.random_baseline()["fldd"] + 0.4
    rows = {row["patch"]: row for row in res.audit.table()}
    assert {"full component", "v", "v_row", "v_kernel", "mean difference"} <= set(rows)
    assert rows["full component"]["fldd"] > 0.8  # the residual stream carries the whole signal
    # the audit patches the DAS subspace on the same held-out task: its effect is DAS's held-out effect
    assert res.audit.check("effect").values["fldd"] == pytest.approx(held.fldd, abs=1e-4)
    component = res.audit.check("component").status
    assert component == (
        "suspicious" if rows["v"]["fldd"] - rows["full component"]["fldd"] > COMPONENT_MARGIN else "pass"
    )
    assert res.audit.verdict == _verdict_from(res.audit.to_dict()["checks"]) != "no effect"
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
    # the direction is the train split's mean difference m, patched and judged on the test split: each neuron's
    # correlation share is |dmu_i (m m^T dmu)_i| / sum = |dmu_i m_i| / sum, dmu the test split's class-mean gap
    train, test = ioi_position_tasks(smollm2, 16, 12, seed=0)

    def class_gap(task) -> torch.Tensor:
        clean, corrupt = _last_position(smollm2, task, "blocks.21.mlp.post")
        abb = torch.tensor([o == "ABB" for o in task.meta["order"]])
        acts, is_abb = torch.cat([clean, corrupt]), torch.cat([abb, ~abb])  # corrupt swaps the order
        return acts[is_abb].mean(0) - acts[~is_abb].mean(0)

    share = (class_gap(test) * class_gap(train)).abs()
    share = share / share.sum()
    saved_top = saved["attribution"]["correlation_top"]
    assert [s for _, s in saved_top] == pytest.approx([float(share[i]) for i, _ in saved_top], abs=1e-4)
    assert min(s for _, s in saved_top) >= float(share.sort(descending=True).values[4]) - 1e-4  # the top 5

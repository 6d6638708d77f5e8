"""The illusion audit on the seeds' abstract example, where every number has a closed form.

Input x in {-1, +1}; hidden neurons h = (x, x, 0); output y = h1 + 2 h3. Neuron 2 is read by nothing,
neuron 3 is never active. Patching e1 from x = -1 into x = 1 gives y = -1, and so does patching
v = (e2 + e3)/sqrt(2) (h becomes (1, 0, -1)). Only the neuron attribution can tell them apart: the row
space of the read-out (1, 0, 2) contains e1's and v's read parts alike.
"""

import math

import pytest
import torch

from lmscope.causal.audit import MIN_EFFECT, audit
from lmscope.causal.das import das
from lmscope.causal.subspace import SiteProblem, evaluate, interchange, split_direction

W_OUT = torch.tensor([1.0, 0.0, 2.0])


def toy_problem() -> SiteProblem:
    x_base = torch.tensor([1.0, -1.0])
    hidden = lambda x: torch.stack([x, x, torch.zeros_like(x)], dim=1)  # noqa: E731

    def run(h, idx):
        y = h @ W_OUT
        return torch.stack([y, -y], dim=1)  # token 0 means "+1", token 1 means "-1"

    answer = (x_base < 0).long()  # the base's own sign
    return SiteProblem(
        site="toy.hidden",
        base=hidden(x_base),
        source=hidden(-x_base),
        answer=answer,
        wrong=1 - answer,
        target=1 - answer,
        base_class=(x_base > 0).long(),
        run=run,
        read_out=W_OUT[:, None],
        privileged=True,
        read_out_note="W_out = (1, 0, 2)",
    )


E1 = torch.tensor([1.0, 0.0, 0.0])
V = torch.tensor([0.0, 1.0, 1.0]) / math.sqrt(2)


def test_patching_the_example_by_hand():
    problem = toy_problem()
    for direction, expected_h in ((E1, [-1.0, 1.0, 0.0]), (V, [1.0, 0.0, -1.0])):
        h = interchange(problem.base[:1], problem.source[:1], direction[:, None])
        assert torch.allclose(h[0], torch.tensor(expected_h), atol=1e-6)
        assert float(h[0] @ W_OUT) == pytest.approx(-1.0)
        outcome = evaluate(problem, direction)
        assert outcome.fldd == pytest.approx(2.0)  # LD goes from +2 to -2 on both examples
        assert outcome.flipped == 1.0 and outcome.iia == 1.0


def test_kernel_row_split_is_the_orthogonal_projection():
    row, kernel = split_direction(V, W_OUT[:, None])
    unit = W_OUT / W_OUT.norm()
    assert torch.allclose(row, (V @ unit) * unit, atol=1e-6)
    assert float(kernel @ W_OUT) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(row + kernel, V)


def test_audit_calls_e1_consistent():
    result = audit(toy_problem(), subspace=E1)
    assert result.verdict == "consistent", result.reasons
    assert result.check("neurons").values["overlap"] == pytest.approx(1.0)
    assert result.attribution["correlation_top"][0][0] == 0
    assert result.attribution["effect_top"][0][0] == 0


def test_audit_calls_v_illusory_and_names_the_neurons():
    result = audit(toy_problem(), subspace=V)
    assert result.verdict == "illusory"
    neurons = result.check("neurons")
    assert neurons.status == "illusory" and neurons.values["overlap"] == pytest.approx(0.0, abs=1e-6)
    # correlation from neuron 2 (index 1, read by nothing), effect from neuron 3 (index 2, never active)
    assert result.attribution["correlation_top"][0] == (1, pytest.approx(1.0))
    assert result.attribution["effect_top"][0] == (2, pytest.approx(1.0))
    assert neurons.values["correlation_from_unread"] == pytest.approx(1.0)
    assert neurons.values["effect_from_silent"] == pytest.approx(1.0)
    assert any(reason.startswith("neurons:") for reason in result.reasons)


def test_split_alone_cannot_separate_e1_from_v():
    """Both directions' read parts lie along (1, 0, 2) and keep the whole effect: the split passes both."""
    for direction in (E1, V):
        result = audit(toy_problem(), subspace=direction)
        assert result.check("row_space").status == "pass"
        assert result.check("component").status == "pass"
        table = {row["patch"]: row for row in result.table()}
        assert table["v_row"]["fldd"] == pytest.approx(2.0)
        assert table["v_kernel"]["fldd"] == pytest.approx(0.0, abs=1e-6)


def test_das_on_the_example_finds_a_working_direction():
    result = das(toy_problem(), k=1, epochs=60, lr=0.05, batch_size=2, n_random=0, progress=False)
    assert result.train.iia == 1.0 and result.train.fldd > 1.0
    assert abs(float(result.basis.norm()) - 1.0) < 1e-5


E2 = torch.tensor([0.0, 1.0, 0.0])  # neuron 2: active (h2 = x) but W_out reads nothing of it


def test_audit_calls_an_unread_neuron_no_effect():
    """Patching e2 changes nothing downstream (y = h1 + 2 h3 ignores h2): the audit must not approve it."""
    problem = toy_problem()
    patched = interchange(problem.base, problem.source, E2[:, None])
    assert torch.equal(patched @ W_OUT, problem.base @ W_OUT)  # by hand: the output is untouched
    result = audit(problem, subspace=E2)
    v = {row["patch"]: row for row in result.table()}["v"]
    assert v["fldd"] == pytest.approx(0.0, abs=1e-6) and v["flipped"] == 0.0
    assert result.verdict == "no effect"
    assert result.reasons and result.reasons[0].startswith("effect:")
    effect = result.check("effect")
    assert effect.status == "no effect" and effect.values["fldd"] == pytest.approx(0.0, abs=1e-6)
    # the checks that explain an effect cannot run without one: n/a, never pass
    for name in ("component", "row_space", "dormancy", "neurons", "random_directions"):
        assert result.check(name).status == "n/a", name
    assert "pass" not in {c.status for c in result.checks if c.name != "agreement"}


def _nan_values(check) -> bool:
    return any(isinstance(x, float) and math.isnan(x) for x in check.values.values())


@pytest.mark.parametrize("direction", [E1, V, E2], ids=["e1", "v", "e2"])
def test_no_check_passes_on_numbers_it_could_not_compute(direction):
    for check in audit(toy_problem(), subspace=direction).checks:
        assert not (check.status == "pass" and _nan_values(check)), (check.name, check.values)


def test_the_minimum_effect_is_the_documented_threshold():
    """v = (eps, 1, 0) / |.|: patching moves y by -2x eps (1 + eps) / (1 + eps^2), so the fraction of the
    logit difference lost is f(eps) = 2 eps (1 + eps) / (1 + eps^2). Just below MIN_EFFECT: no effect;
    just above: the audit judges it."""
    fldd = lambda eps: 2 * eps * (1 + eps) / (1 + eps**2)  # noqa: E731
    for eps, expect_effect in ((0.045, False), (0.06, True)):
        assert (fldd(eps) >= MIN_EFFECT) == expect_effect  # the two cases straddle the threshold
        result = audit(toy_problem(), subspace=torch.tensor([eps, 1.0, 0.0]))
        assert result.check("effect").values["fldd"] == pytest.approx(fldd(eps), rel=1e-4)
        assert (result.verdict != "no effect") == expect_effect, result.reasons
        assert result.check("effect").status == ("pass" if expect_effect else "no effect")


def test_audit_docstring_documents_the_minimum_effect():
    import lmscope.causal.audit as audit_module

    assert "MIN_EFFECT" in audit_module.__doc__ and "no effect" in audit_module.__doc__

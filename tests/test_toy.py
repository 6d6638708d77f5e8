"""Toy models of superposition: measures against hand computations, the paper's results as tests, the CLI.

The trained tests use a short recipe (2,000 steps, batch 512, lr 1e-2 with cosine decay) and batch every
sparsity and replicate of an experiment into one model, so each runs in a few CPU seconds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmscope.cli import main
from lmscope.toy import (
    AbsModel,
    ToyModel,
    abs_gains,
    abs_sweep,
    classify,
    dimensions_per_feature,
    feature_dimensionality,
    feature_norms,
    gram,
    interference,
    n_represented,
    phase_diagram,
    sparsity_sweep,
    train,
)
from lmscope.toy.measures import angle_gaps

FAST = {"steps": 2000, "batch_size": 512, "lr": 1e-2, "schedule": "cosine"}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared CPU
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ measures, by hand


def test_dimensionality_and_interference_match_a_hand_computation():
    # features (1, 0), (0, 2), (1, 1) and a zero feature
    W = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 2.0, 1.0, 0.0]])
    # (Ŵ_i·W_j)² by hand: feature 0: 1, 0, 1;  feature 1: 0, 4, 1;  feature 2: 1/2, 2, 2
    assert feature_dimensionality(W).tolist() == pytest.approx([1 / 2, 4 / 5, 2 / 4.5, 0.0])
    assert interference(W).tolist() == pytest.approx([1.0, 1.0, 2.5, 0.0])
    assert feature_norms(W).tolist() == pytest.approx([1.0, 2.0, math.sqrt(2), 0.0])
    expected_gram = torch.tensor([[1.0, 0, 1, 0], [0, 4, 2, 0], [1, 2, 2, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(gram(W), expected_gram)
    assert int(n_represented(W)) == 3


def test_dimensionality_of_the_papers_geometries():
    angles = torch.arange(5) * 2 * math.pi / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])  # [2, 5]
    antipodal = torch.tensor([[1.0, -1.0]])
    assert feature_dimensionality(pentagon).tolist() == pytest.approx([2 / 5] * 5, abs=1e-5)
    assert feature_dimensionality(antipodal).tolist() == pytest.approx([1 / 2, 1 / 2])
    assert angle_gaps(pentagon[None])[0] == pytest.approx([72.0] * 5, abs=1e-3)
    assert float(dimensions_per_feature(pentagon)) == pytest.approx(2 / 5)


def test_dimensions_per_feature_of_an_orthogonal_embedding():
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    W = torch.cat([q, torch.zeros(3, 2)], dim=1)  # 3 orthonormal features, 2 dropped: [m=3, n=5]
    assert float(dimensions_per_feature(W)) == pytest.approx(1.0, abs=1e-5)
    assert float(dimensions_per_feature(2 * W)) == pytest.approx(1 / 4, abs=1e-5)
    assert feature_dimensionality(W).tolist() == pytest.approx([1, 1, 1, 0, 0], abs=1e-5)
    assert interference(W).abs().max() < 1e-6
    batched = torch.stack([W, 2 * W])  # leading instance axis
    assert dimensions_per_feature(batched).tolist() == pytest.approx([1.0, 0.25], abs=1e-5)


def test_classify_names_the_three_regimes():
    W = torch.tensor([[[1.0, 0.1]], [[0.0, 1.0]], [[0.9, -1.0]], [[0.8, 0.9]], [[0.1, 0.0]], [[0.72, -0.69]]])
    # the last: one unit direction mixing both features (‖W‖² = 1), not a pair of stored features
    assert classify(W) == ["not learned", "dedicated", "antipodal", "other", "other", "other"]


# ------------------------------------------------------------------------------------ models and data


def test_toy_model_matches_the_formula_per_instance():
    model = ToyModel(5, 2, feature_probability=[1.0, 0.3], importance=0.9 ** torch.arange(5.0), seed=3)
    with torch.no_grad():
        model.b.normal_()
    x = model.generate_batch(16, torch.Generator().manual_seed(0))  # [2, 16, 5]
    out = model(x)
    for k in range(2):
        W, b = model.W[k], model.b[k]
        expected = torch.relu(x[k] @ (W.T @ W).T + b)  # x' = ReLU(WᵀWx + b), row vectors
        torch.testing.assert_close(out[k], expected)
    linear = ToyModel(5, 2, 1.0, n_instances=1, activation="linear", seed=3)
    x1 = x[:1]
    torch.testing.assert_close(linear(x1)[0], x1[0] @ (linear.W[0].T @ linear.W[0]) + linear.b[0])


def test_generated_features_have_the_requested_sparsity_and_range():
    model = ToyModel(4, 2, feature_probability=[1.0, 0.1], seed=0)
    x = model.generate_batch(20000, torch.Generator().manual_seed(1))
    assert (x[0] > 0).float().mean() == pytest.approx(1.0, abs=1e-3)
    assert (x[1] != 0).float().mean() == pytest.approx(0.1, abs=0.01)
    present = x[1][x[1] != 0]
    assert present.min() >= 0 and present.max() < 1
    assert float(present.mean()) == pytest.approx(0.5, abs=0.02)  # uniform in [0, 1]
    signed = AbsModel(4, 2, feature_probability=0.5, n_instances=1).generate_batch(20000)
    assert signed.min() < -0.99 and signed.max() > 0.99 and abs(float(signed.mean())) < 0.02


def test_same_seed_same_model_and_training():
    def trained(seed):
        model = ToyModel(5, 2, [1.0, 0.1], seed=seed)
        train(model, steps=20, batch_size=32, seed=seed)
        return model.W.detach()

    torch.testing.assert_close(trained(0), trained(0), rtol=0, atol=0)
    assert not torch.equal(trained(0), trained(1))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="feature_probability"):
        ToyModel(5, 2, feature_probability=[1.0, 0.0])
    with pytest.raises(ValueError, match="importance"):
        ToyModel(5, 2, 1.0, importance=[1.0, 2.0], n_instances=3)
    with pytest.raises(ValueError, match="activation"):
        ToyModel(5, 2, 1.0, n_instances=1, activation="gelu")
    with pytest.raises(ValueError, match="sparsities"):
        sparsity_sweep(sparsities=[0.5, 1.0], steps=1)
    with pytest.raises(ValueError, match="schedule"):
        train(ToyModel(5, 2, 1.0, n_instances=1), steps=1, schedule="linear")


# ------------------------------------------------------------------------------------ the paper's results


def test_five_features_in_two_dimensions_dense_orthogonal_sparse_pentagon():
    sweep = sparsity_sweep(5, 2, sparsities=[0.0, 0.97, 0.99], importance=0.9, n_seeds=2, **FAST)
    rows = sweep.measures()
    dense = rows[0]
    assert dense["n_represented"] == 2
    off_diagonal = torch.tensor(dense["WtW"]) - torch.diag(torch.diag(torch.tensor(dense["WtW"])))
    assert off_diagonal.abs().max() < 0.05  # the two kept features are orthogonal
    assert dense["norms"][0] > 0.9 and dense["norms"][1] > 0.9  # ... and they are the two most important
    for sparse in rows[1:]:  # 1 - S <= 0.05
        assert sparse["n_represented"] == 5
        assert sparse["angle_gaps"] == pytest.approx([72.0] * 5, abs=6.0)  # a pentagon
        assert max(sparse["bias"]) < 0  # negative biases filter the interference
        assert sparse["dimensionality"] == pytest.approx([0.4] * 5, abs=0.05)


def test_represented_features_grow_with_sparsity_but_never_beyond_m_when_linear():
    sparsities = [0.0, 0.7, 0.999]
    relu = sparsity_sweep(20, 5, sparsities, importance=0.7, n_seeds=2, **FAST).n_represented().tolist()
    assert relu[0] == 5
    assert relu[0] < relu[1] < relu[2]
    assert relu[2] > 10
    quick = {**FAST, "steps": 1000, "batch_size": 256}  # the linear model has no local minima to escape
    linear = sparsity_sweep(20, 5, sparsities, importance=0.7, activation="linear", n_seeds=1, **quick)
    assert linear.n_represented().tolist() == [5, 5, 5]
    assert float(dimensions_per_feature(linear.W).min()) == pytest.approx(1.0, abs=0.02)


def test_phase_diagram_shows_the_three_regimes_in_the_right_corners():
    ph = phase_diagram(densities=[1.0, 0.03], importances=[0.1, 1.0, 10.0], n_seeds=4, **FAST)
    dense, sparse = ph.regimes
    assert dense[0] == "not learned"  # an unimportant extra feature is dropped
    assert dense[2] == "dedicated"  # an important one takes the dimension from feature 1
    assert "antipodal" not in dense  # no superposition without sparsity
    assert sparse[1] == "antipodal"  # sparse, comparable importance: both share it as [w, -w]
    w1, w2 = ph.W[1, 1].tolist()
    assert w1 * w2 < 0 and abs(abs(w1) - abs(w2)) < 0.2


# ------------------------------------------------------------------------------------ computation: |x|


def test_abs_gains_of_hand_built_models():
    exact = AbsModel(1, 2, feature_probability=1.0, n_instances=2)
    with torch.no_grad():
        exact.W1.copy_(torch.tensor([[[1.0], [-1.0]], [[1.0], [0.0]]]))  # instance 1: only ReLU(x)
        exact.W2.copy_(torch.tensor([[[1.0, 1.0]], [[1.0, 0.0]]]))
        exact.b.zero_()
    gains = abs_gains(exact)  # [inst, n, (negative side, positive side)]
    assert gains[0, 0].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert gains[1, 0].tolist() == pytest.approx([0.0, 1.0], abs=1e-5)


def test_abs_model_computes_more_features_than_neurons_when_sparse():
    sweep = abs_sweep(10, 4, sparsities=[0.0, 0.99], importance=0.9, n_seeds=2, **FAST)
    used, per_neuron = sweep.n_used().tolist(), sweep.features_per_neuron()
    assert used[0] <= 4 and int(sweep.sides()[0].sum()) <= 4  # dense: at most a neuron per feature-sign
    assert int(per_neuron[0].max()) <= 1  # ... and monosemantic neurons
    assert used[1] > 4  # sparse: more features than neurons
    assert int(per_neuron[1].max()) >= 2  # ... through polysemantic neurons


# ------------------------------------------------------------------------------------ CLI and run folder


def test_cli_writes_a_toy_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["toy", "--n", "5", "--m", "2", "--sparsity", "0", "0.99", "--steps", "30", "--batch-size", "64"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "toy" and run["sparsities"] == [0.0, 0.99]
    saved = json.loads((out / "toy.json").read_text())
    assert set(saved) == {"relu", "linear", "phase", "compute"}
    assert len(saved["relu"]["instances"]) == 2 and saved["relu"]["instances"][0]["sparsity"] == 0.0
    assert len(saved["phase"]["regimes"]) == 7
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 8 and "Phase diagram" in html and "http" not in html.split("</style>")[1]


def test_cli_reports_bad_sparsity(tmp_path, capsys):
    assert main(["toy", "--sparsity", "1.0", "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert "sparsities must lie in [0, 1)" in capsys.readouterr().err

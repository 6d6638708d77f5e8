"""Subspace patching and DAS on tiny models, checked against full forwards with the core's interventions."""

import pytest
import torch

import lmscope as ls
from lmscope.causal.controls import random_mlp
from lmscope.causal.das import das, load_subspace, random_subspaces, train_subspace
from lmscope.causal.subspace import (
    evaluate,
    interchange,
    mean_difference,
    orthonormal,
    probe_direction,
    read_out_matrix,
    site_problem,
)
from tests.test_sweep import toy_task

SITES = ["blocks.1.resid_post", "blocks.1.mlp.post", "blocks.2.resid_pre", "blocks.0.attn.out"]


def full_forward_patch(model, task, site, basis):
    """Independent computation: whole-model forwards with SubspacePatch at the last position only."""
    _, corrupt = model.run_with_cache(task.inputs("corrupt"), sites=[site])
    patch = ls.SubspacePatch(site, basis=basis, source=corrupt, positions=[-1])
    with torch.no_grad():
        return model.run(task.inputs("clean"), interventions=[patch])[:, -1]


def test_site_problem_run_equals_full_forward(tiny):
    task = toy_task(tiny, n=4, pos=7, padded=True, changed=(2, 5))
    for site in SITES:
        problem = site_problem(tiny, task, site)
        idx = torch.arange(len(task))
        with torch.no_grad():
            clean = problem.run(problem.base, idx)
            assert torch.allclose(clean, tiny.run(task.inputs("clean"))[:, -1], atol=1e-5)
            basis = orthonormal(torch.randn(problem.d, 2, generator=torch.Generator().manual_seed(0)))
            patched = problem.run(interchange(problem.base, problem.source, basis), idx)
        assert torch.allclose(patched, full_forward_patch(tiny, task, site, basis), atol=1e-5), site
        assert not torch.allclose(patched, clean, atol=1e-4)  # the patch does something


def test_das_gradient_equals_full_forward_gradient(tiny_llama):
    """The fast path (start at the layer, cached prefix) gives the rotation the same gradient."""
    task = toy_task(tiny_llama, n=3, pos=6, changed=(1, 3))
    site = "blocks.1.mlp.post"
    problem = site_problem(tiny_llama, task, site)
    v = torch.randn(problem.d, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    unit = lambda: (v / v.norm())[:, None]  # noqa: E731
    idx = torch.arange(3)
    fast = torch.nn.functional.cross_entropy(
        problem.run(interchange(problem.base, problem.source, unit()), idx), problem.target
    )
    (g_fast,) = torch.autograd.grad(fast, v)
    _, corrupt = tiny_llama.run_with_cache(task.inputs("corrupt"), sites=[site])
    patch = ls.SubspacePatch(site, basis=unit, source=corrupt, positions=[-1])
    slow = torch.nn.functional.cross_entropy(
        tiny_llama.run(task.inputs("clean"), interventions=[patch])[:, -1], task.wrong
    )
    (g_slow,) = torch.autograd.grad(slow, v)
    assert float(fast.detach()) == pytest.approx(float(slow.detach()), abs=1e-5)
    assert torch.allclose(g_fast, g_slow, atol=1e-5)
    assert all(p.grad is None for p in tiny_llama.hf.parameters())


def test_train_subspace_lowers_the_loss_and_is_reproducible(tiny_llama):
    task = toy_task(tiny_llama, n=8, pos=6, changed=(1, 2, 3))
    problem = site_problem(tiny_llama, task, "blocks.1.resid_post")
    basis, history = train_subspace(problem, k=2, epochs=15, lr=0.05, batch_size=4, progress=False)
    assert history[-1] < history[0]
    assert torch.allclose(basis.T @ basis, torch.eye(2), atol=1e-5)
    again, _ = train_subspace(problem, k=2, epochs=15, lr=0.05, batch_size=4, progress=False)
    assert torch.allclose(basis, again)


def test_das_result_beats_random_and_saves(tiny_llama, tmp_path):
    task = toy_task(tiny_llama, n=8, pos=6, changed=(1, 2, 3))
    result = das(
        tiny_llama,
        task,
        "blocks.1.resid_post",
        k=4,
        epochs=20,
        lr=0.05,
        batch_size=4,
        n_random=3,
        progress=False,
    )
    # the toy task's answers are arbitrary tokens: compare what DAS optimises, the target over the answer
    assert result.train.mean_logit_diff < min(r.mean_logit_diff for r in result.random)
    run = result.save(tmp_path / "run", model_name="tiny")
    assert torch.equal(load_subspace(run), result.basis)
    assert ls.runs.read_run(run)["kind"] == "das"
    assert "DAS patching" in (run / "report.html").read_text()


def test_random_subspaces_are_orthonormal_and_seeded():
    a, b = random_subspaces(10, 3, 2, seed=1), random_subspaces(10, 3, 2, seed=1)
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[0], a[1])
    assert torch.allclose(a[0].T @ a[0], torch.eye(3), atol=1e-6)


def test_full_component_patch_equals_whole_site_patch(tiny):
    task = toy_task(tiny, n=3, pos=6, changed=(2,))
    site = "blocks.1.mlp.post"
    problem = site_problem(tiny, task, site)
    outcome = evaluate(problem, None)
    _, corrupt = tiny.run_with_cache(task.inputs("corrupt"), sites=[site])
    with torch.no_grad():
        ref = tiny.run(task.inputs("clean"), interventions=[ls.Patch(site, source=corrupt, positions=[-1])])
    ld = ref[:, -1].gather(1, task.answer[:, None]) - ref[:, -1].gather(1, task.wrong[:, None])
    assert torch.allclose(outcome.logit_diff, ld.squeeze(1), atol=1e-5)


def test_mean_difference_and_probe_find_a_planted_direction(tiny_llama):
    task = toy_task(tiny_llama, n=6, pos=6, changed=(2,))
    problem = site_problem(tiny_llama, task, "blocks.1.resid_post")
    planted = torch.zeros(problem.d)
    planted[3] = 1.0
    g = torch.Generator().manual_seed(0)
    problem.base_class = torch.arange(40) % 2
    problem.base = torch.randn(40, problem.d, generator=g) * 0.3 + planted * problem.base_class[:, None]
    problem.source = (
        torch.randn(40, problem.d, generator=g) * 0.3 + planted * (1 - problem.base_class)[:, None]
    )
    acts, labels = problem.acts_by_class()
    expected = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
    assert torch.allclose(mean_difference(problem), expected / expected.norm())
    assert float(mean_difference(problem) @ planted) > 0.9
    assert float(probe_direction(problem) @ planted) > 0.8


def test_read_out_kernel_is_invisible_to_the_readers(tiny_llama):
    w = tiny_llama.weights
    read, _ = read_out_matrix(tiny_llama, "blocks.0.resid_post", readers=["1.2.q", "2.0.k"])
    q, _ = torch.linalg.qr(read)
    kernel = torch.randn(read.shape[0])
    kernel = kernel - q @ (q.T @ kernel)
    with torch.no_grad():
        seen_by_q = (w.ln1_w(1) * kernel) @ w.W_Q(1)[2]
        seen_by_k = (w.ln1_w(2) * kernel) @ w.W_K(2, expand_kv=True)[0]
    assert float(kernel.norm()) > 0.1
    assert seen_by_q.abs().max() < 1e-5 and seen_by_k.abs().max() < 1e-5
    mlp, note = read_out_matrix(tiny_llama, "blocks.1.mlp.post")
    assert "W_out" in note and mlp.shape == (tiny_llama.cfg.d_mlp, tiny_llama.cfg.d_model)
    q, _ = torch.linalg.qr(mlp)
    silent = torch.randn(mlp.shape[0])
    silent = silent - q @ (q.T @ silent)  # a neuron pattern W_out maps to nothing
    with torch.no_grad():
        assert (silent @ w.W_out(1)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="L.H"):
        read_out_matrix(tiny_llama, "blocks.0.resid_post", readers=["nonsense"])
    with pytest.raises(ValueError, match="vector site"):
        site_problem(tiny_llama, toy_task(tiny_llama), "blocks.1.attn.z")


def test_random_mlp_keeps_norms_and_restores(tiny_llama):
    w = tiny_llama.weights
    before = [m.detach().clone() for m in (w.W_in(1), w.W_gate(1), w.W_out(1))]
    with random_mlp(tiny_llama, 1, seed=0):
        inside = [w.W_in(1), w.W_gate(1), w.W_out(1)]
        for b, m in zip(before, inside):
            assert float(m.norm()) == pytest.approx(float(b.norm()), rel=1e-4)
            assert not torch.allclose(b, m)
    for b, m in zip(before, (w.W_in(1), w.W_gate(1), w.W_out(1))):
        assert torch.equal(b, m)

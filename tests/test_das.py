"""Subspace patching and DAS on tiny models, checked against full forwards with the core's interventions."""

import copy

import pytest
import torch

import lmscope as ls
from lmscope.causal.audit import audit
from lmscope.causal.controls import RANDOM_WEIGHT_SHARE, random_mlp
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
from lmscope.data.tasks.contrast import ContrastTask
from tests.conftest import tiny_hf, word_tokenizer
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


def whole_model_training(model, task, site, k, epochs, lr, batch_size, seed):
    """Independent DAS loop: every step runs the whole model on the whole prompts (source run included) and
    patches with SubspacePatch at the last position; same init, optimiser, schedule and batch order as
    train_subspace. -> (basis [d, k], mean loss per epoch)."""
    torch.manual_seed(seed)
    rotation = torch.nn.Linear(tiny_d(model, site), k, bias=False)
    torch.nn.init.orthogonal_(rotation.weight)
    torch.nn.utils.parametrizations.orthogonal(rotation)
    params = list(rotation.parameters())
    steps = epochs * -(-len(task) // batch_size)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=steps)
    gen = torch.Generator().manual_seed(seed)
    clean, corrupt, history = task.inputs("clean"), task.inputs("corrupt"), []
    for _ in range(epochs):
        order, total = torch.randperm(len(task), generator=gen), 0.0
        for i in range(0, len(task), batch_size):
            idx = order[i : i + batch_size]
            with torch.no_grad():
                _, source = model.run_with_cache({n: t[idx] for n, t in corrupt.items()}, sites=[site])
            patch = ls.SubspacePatch(site, basis=rotation.weight.T, source=source, positions=[-1])
            logits = model.run({n: t[idx] for n, t in clean.items()}, interventions=[patch])[:, -1]
            loss = torch.nn.functional.cross_entropy(logits, task.wrong[idx])
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(task))
    return orthonormal(rotation.weight.T.detach()), history


def tiny_d(model, site):
    _, cache = model.run_with_cache(torch.zeros(1, 1, dtype=torch.long), sites=[site])
    return cache[site].shape[-1]


@pytest.mark.parametrize("site", ["blocks.1.resid_post", "blocks.0.mlp.post"])
def test_train_subspace_equals_whole_model_training(tiny_llama, site):
    """The fast path (cached prefix, only the layers from the site's on, last position only) trains the
    same subspace as whole-model forwards with a patch: equal loss curve and basis from the same init."""
    task = toy_task(tiny_llama, n=6, pos=6, padded=True, changed=(1, 3))
    args = dict(k=2, epochs=3, lr=0.05, batch_size=4, seed=3)
    fast_basis, fast_history = train_subspace(site_problem(tiny_llama, task, site), progress=False, **args)
    slow_basis, slow_history = whole_model_training(tiny_llama, task, site, **args)
    assert fast_history == pytest.approx(slow_history, abs=1e-5)
    assert fast_history[-1] != pytest.approx(fast_history[0], abs=1e-4)  # it trained
    assert torch.allclose(fast_basis, slow_basis, atol=1e-5)
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
    read, _ = read_out_matrix(
        tiny_llama, "blocks.0.resid_post", readers=["blocks.1.attn.q[2]", "blocks.2.attn.k[0]"]
    )
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
    with pytest.raises(ValueError, match="unknown component 'nonsense'"):
        read_out_matrix(tiny_llama, "blocks.0.resid_post", readers=["nonsense"])
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.q\[1\] read the residual stream before"):
        read_out_matrix(tiny_llama, "blocks.0.resid_post", readers=["blocks.0.attn.q[1]"])
    with pytest.warns(FutureWarning):  # the old short form names the same head (query head 3 -> kv head 1)
        old, _ = read_out_matrix(tiny_llama, "blocks.0.resid_post", readers=["2.3.k"])
    new, _ = read_out_matrix(tiny_llama, "blocks.0.resid_post", readers=["blocks.2.attn.k[1]"])
    assert torch.equal(old, new)
    with pytest.raises(ValueError, match="vector site"):
        site_problem(tiny_llama, toy_task(tiny_llama), "blocks.1.attn.z")


def _state(model) -> dict:
    return {name: t.detach().clone() for name, t in model.hf.state_dict().items()}


def _same_state(model, state) -> bool:
    now = model.hf.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[name], t) for name, t in state.items())


def test_random_mlp_keeps_norms_and_restores(tiny):
    """On every architecture: inside, the Hugging Face MLP parameters themselves are random with their norms
    kept (the views write through); after, every parameter is bit-exact, also when the block raises."""
    w, before = tiny.weights, _state(tiny)
    mats = lambda: [m for m in (w.W_in(1), w.W_gate(1), w.W_out(1)) if m is not None]  # noqa: E731
    norms = [float(m.detach().norm()) for m in mats()]
    with random_mlp(tiny, 1, seed=0):
        changed = [name for name, t in tiny.hf.state_dict().items() if not torch.equal(t, before[name])]
        assert changed and all(".1." in name for name in changed)  # layer 1's MLP only
        assert len(changed) >= len(norms)
        for norm, m in zip(norms, mats()):
            assert float(m.norm()) == pytest.approx(norm, rel=1e-4)
    assert _same_state(tiny, before)
    with pytest.raises(RuntimeError, match="inside"):
        with random_mlp(tiny, 1, seed=0):
            raise RuntimeError("failure inside the block")
    assert _same_state(tiny, before)


# ------------------------------------------------------------------ the audit's random-weight control, end to end

SITE = "blocks.1.mlp.post"


def _mlp_model() -> ls.Model:
    """tiny-llama with layer 1's MLP scaled up: at the default init it barely moves the logits, and a
    subspace of it must have an effect for the audit to run its controls."""
    hf = tiny_hf("llama")
    with torch.no_grad():
        mlp = hf.model.layers[1].mlp
        for lin in (mlp.up_proj, mlp.gate_proj, mlp.down_proj):
            lin.weight.mul_(10.0)
    return ls.Model(hf, word_tokenizer(), name="tiny-llama-mlp")


def _model_answers_task(model, n=12, seed=0) -> ContrastTask:
    """toy_task with the model's own top tokens as answer (clean) and wrong (corrupt)."""
    task = toy_task(model, n=n, pos=6, seed=seed, changed=(1, 2, 3))
    with torch.no_grad():
        answer = model.run(task.inputs("clean"))[:, -1].argmax(-1)
        wrong = model.run(task.inputs("corrupt"))[:, -1].argmax(-1)
    return ContrastTask(task.clean, task.corrupt, answer, wrong, name="toy")


def _randomise_by_hand(hf, layer: int, seed: int) -> None:
    """The control's documented random MLP, built on the Hugging Face modules: Gaussian draws for W_in (up),
    W_gate (gate), W_out (down) in that order, each [in, out], rescaled to the matrix's Frobenius norm."""
    mlp = hf.model.layers[layer].mlp
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in (mlp.up_proj, mlp.gate_proj, mlp.down_proj):
            noise = torch.randn(lin.weight.T.shape, generator=gen)
            lin.weight.copy_((noise * (lin.weight.norm() / noise.norm())).T)


def test_random_weight_control_end_to_end():
    model = _mlp_model()
    task = _model_answers_task(model)
    found = das(model, task, SITE, k=1, epochs=5, lr=0.05, batch_size=4, n_random=0, progress=False)
    before = _state(model)
    result = audit(model, task, SITE, subspace=found.basis, n_random=3, control_epochs=4, seed=0)
    assert _same_state(model, before)  # the original weights are back, bit for bit
    assert result.check("effect").status == "pass"
    check = result.check("random_weights")
    assert check.status in ("pass", "suspicious")  # it ran

    # independently: the same search on a copy whose MLP is randomised by hand
    twin = ls.Model(copy.deepcopy(model.hf), model.tokenizer, name="twin")
    _randomise_by_hand(twin.hf, 1, seed=0)
    control = das(twin, task, SITE, k=1, epochs=4, n_random=0, seed=0, progress=False).held_out.fldd
    original = das(model, task, SITE, k=1, epochs=4, n_random=0, seed=0, progress=False).held_out.fldd
    assert abs(control - original) > 1e-3  # the control searched another MLP than the model's
    assert check.values["fldd_random_weights"] == pytest.approx(control, abs=1e-5)
    share = control / result.check("effect").values["fldd"]
    assert check.values["share"] == pytest.approx(share, rel=1e-4)
    assert check.status == ("suspicious" if share >= RANDOM_WEIGHT_SHARE else "pass")


def test_random_weight_control_restores_the_weights_when_the_search_raises(monkeypatch):
    model = _mlp_model()
    task = _model_answers_task(model)
    found = das(model, task, SITE, k=1, epochs=5, lr=0.05, batch_size=4, n_random=0, progress=False)
    before = _state(model)
    seen = []

    def failing_search(problem, *args, **kwargs):
        seen.append(_same_state(model, before))  # the search runs inside the control: weights are random
        raise RuntimeError("injected failure in the search")

    monkeypatch.setattr("lmscope.causal.das.train_subspace", failing_search)
    with pytest.raises(RuntimeError, match="injected failure"):  # the control runs: found has an effect
        audit(model, task, SITE, subspace=found.basis, n_random=0, control_epochs=1, seed=0)
    assert seen == [False]
    assert _same_state(model, before)

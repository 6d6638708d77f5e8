"""Transcoders, the frozen replacement model and attribution graphs, on tiny random models (float64)."""

from __future__ import annotations

import json

import pytest
import torch

import lmscope as ls
from lmscope.cli import main
from lmscope.data.tokens import TokenDataset
from lmscope.features.sae import SAE, TopKConfig
from lmscope.graphs import (
    TranscoderSet,
    attribute,
    build_replacement,
    evaluate_transcoders,
    train_transcoders,
)
from lmscope.graphs.attribution import FEATURE
from lmscope.graphs.run import GraphOptions, target_id, trace
from lmscope.graphs.transcoders import model_identity, tokenizer_identity

from .conftest import tiny_hf, word_tokenizer

PROMPT = "the cat sat on the mat and the dog"


def tiny(arch: str = "llama", seed: int = 0) -> ls.Model:
    return ls.Model(tiny_hf(arch, seed=seed).double(), word_tokenizer(), name=f"tiny-{arch}")


def random_transcoders(model, skip: bool = True, input: str = "mlp.in") -> TranscoderSet:
    d = model.cfg.d_model
    tcs = {}
    for layer in range(model.cfg.n_layers):
        cfg = TopKConfig(
            d_in=d, d_sae=64, k=6, site=f"blocks.{layer}.{input}", target_site=f"blocks.{layer}.mlp.out",
            skip=skip, seed=layer,
        )  # fmt: skip
        tc = SAE(cfg)
        gen = torch.Generator().manual_seed(100 + layer)
        with torch.no_grad():
            tc.b_enc.copy_(0.1 * torch.randn(64, generator=gen))
            tc.b_dec.copy_(0.02 * torch.randn(d, generator=gen))
            tc.W_dec.mul_(0.3)
            if skip:
                tc.W_skip.copy_(0.05 * torch.randn(d, d, generator=gen))
        tcs[layer] = tc.double()
    return TranscoderSet(tcs, input, model_identity(model), tokenizer_identity(model))


def dataset(n_ctx: int = 24, ctx_len: int = 10) -> TokenDataset:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, 14, (n_ctx, ctx_len), generator=gen)
    tokens[:, 0] = 1
    doc_ids = torch.arange(n_ctx)[:, None].expand(n_ctx, ctx_len).clone()
    positions = torch.arange(ctx_len).expand(n_ctx, ctx_len).clone()
    labels = torch.zeros_like(tokens)
    labels[:, 0], doc_ids[:, 0], positions[:, 0] = -1, -1, -1
    return TokenDataset(tokens, labels, doc_ids, positions, torch.ones_like(tokens), ["text"])


# ---- the mlp.in site and transcoders -------------------------------------------------------------------------
def test_transcoder_reconstructs_its_target_and_saves(tmp_path):
    model = tiny()
    tcs = random_transcoders(model)
    tokens = model.to_tokens(PROMPT, prepend_bos=True)
    _, cache = model.run_with_cache(tokens, sites=["blocks.1.mlp.in"])
    tc, x = tcs[1], cache["blocks.1.mlp.in"][0]
    pre = x @ tc.W_enc + tc.b_enc  # no b_dec subtracted: it lives in the output space
    top = pre.relu().topk(6, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    torch.testing.assert_close(tc(x), f @ tc.W_dec + tc.b_dec + x @ tc.W_skip)
    tcs.save(tmp_path / "tc")
    back = TranscoderSet.load(tmp_path / "tc", model=model)
    torch.testing.assert_close(back[1](x.float()), tc(x).float(), atol=1e-5, rtol=1e-5)
    manifest = json.loads((tmp_path / "tc" / "transcoders.json").read_text())
    assert manifest["layers"]["1"]["target_site"] == "blocks.1.mlp.out" and manifest["input"] == "mlp.in"


def test_transcoders_of_another_model_or_tokenizer_are_refused(tmp_path):
    model = tiny()
    random_transcoders(model).save(tmp_path / "tc")
    with pytest.raises(ValueError, match="trained on model"):
        TranscoderSet.load(tmp_path / "tc", model=tiny(seed=1))
    other_tok = word_tokenizer()
    other_tok.add_tokens(["zebra"])
    with pytest.raises(ValueError, match="tokenizer"):
        TranscoderSet.load(tmp_path / "tc", model=ls.Model(model.hf, other_tok, name="tiny-llama"))


def test_train_all_layers_in_one_pass_learns_the_mlps(tmp_path):
    model = ls.Model(tiny_hf("llama"), word_tokenizer(), name="tiny-llama")
    template = TopKConfig(d_in=1, d_sae=128, k=8, batch_size=64, total_tokens=64 * 150, lr=3e-3, log_every=50)
    calls = []
    original = model.run_with_cache

    def counting(*args, **kwargs):
        calls.append(kwargs.get("sites"))
        return original(*args, **kwargs)

    model.run_with_cache = counting
    tcs = train_transcoders(model, dataset(), template, tmp_path / "tc", skip=True, progress=False)
    # every forward recorded every layer's input and output: one pass feeds all transcoders
    assert calls and all(len(s) == 2 * model.cfg.n_layers for s in calls)
    model.run_with_cache = original
    result = evaluate_transcoders(tcs, model, dataset(), n_contexts=8, progress=False)
    for row in result.layers:
        assert row["explained_variance"] > 0.5, row  # an untrained transcoder explains ~0 (or less)
        assert 0 < row["l0"] <= 8
    untrained = evaluate_transcoders(
        TranscoderSet({ly: SAE(tcs[ly].cfg) for ly in tcs.layers}, "mlp.in", tcs.model, tcs.tokenizer),
        model, dataset(), n_contexts=8, progress=False,
    )  # fmt: skip
    # (a random tiny model barely needs its MLPs, so compare the CE itself rather than the loss recovered)
    gap = lambda m: abs(m["ce_replaced"] - m["ce_clean"])  # noqa: E731
    assert gap(result.metrics) < gap(untrained.metrics)
    assert TranscoderSet.load(tmp_path / "tc", model=model).layers == [0, 1, 2]


# ---- the frozen replacement model and edges -----------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_frozen_replacement_reproduces_the_real_model(arch):
    model = tiny(arch)
    tcs = random_transcoders(model)
    rep = build_replacement(model, tcs, model.to_tokens(PROMPT, prepend_bos=True)[0])
    xs, final = rep.forward(rep.embed[None], rep.clean_writes()[:, None])
    tol = 1e-10 if arch == "gpt2" else 1e-4  # HF's RMSNorms compute in float32 even in a float64 model
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(xs[layer][0], rep.x[layer], atol=tol, rtol=tol)
    logits = final[0] @ model.weights.W_U.double() + (0 if model.weights.b_U is None else model.weights.b_U)
    if model.cfg.logit_softcap:
        logits = torch.tanh(logits / model.cfg.logit_softcap) * model.cfg.logit_softcap
    torch.testing.assert_close(logits, rep.logits, atol=tol, rtol=tol)  # HF norms compute in float32


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_incoming_edges_sum_to_the_pre_activation(arch):
    """sum over a target's sources (features, errors, tokens) of A[t, s] + bias_t = its pre-activation, where
    the pre-activation is the transcoder's on the REAL model's cached input and bias_t (b_enc, b_dec's,
    attention and norm biases) is the frozen model's value with every node at 0."""
    model = tiny(arch)
    tcs = random_transcoders(model)
    tokens = model.to_tokens(PROMPT, prepend_bos=True)[0]
    rep = build_replacement(model, tcs, tokens)
    token = target_id(model, "mat")
    graph = attribute(rep, token, batch_size=16)
    _, cache = model.run_with_cache(tokens[None], sites=[tcs.input_site(ly) for ly in tcs.layers])
    real = []
    for t in graph.targets.tolist():
        n = graph.nodes
        if n.kind[t] == FEATURE:
            layer, pos, feat = int(n.layer[t]), int(n.pos[t]), int(n.feature[t])
            real.append(float(tcs[layer].pre_acts(cache[tcs.input_site(layer)][0, pos])[feat]))
        else:
            real.append(float(rep.logits[-1, token]))
    assert len(real) == 1 + len(n.index(FEATURE))  # every feature got its row
    torch.testing.assert_close(
        graph.rows.sum(1) + graph.bias, torch.tensor(real, dtype=torch.float64), atol=1e-5, rtol=1e-5
    )


def test_edges_equal_finite_differences_of_the_frozen_model():
    model = tiny("llama")
    tcs = random_transcoders(model)
    rep = build_replacement(model, tcs, model.to_tokens(PROMPT, prepend_bos=True)[0])
    token = target_id(model, "mat")
    graph = attribute(rep, token, batch_size=32)
    n = graph.nodes
    writes, eps = rep.clean_writes(), 1e-3
    feats = n.index(FEATURE)
    gen = torch.Generator().manual_seed(0)
    for s in feats[torch.randperm(len(feats), generator=gen)[:8]].tolist():
        layer, pos, feat = int(n.layer[s]), int(n.pos[s]), int(n.feature[s])
        bumped = writes.clone()  # the source's activation scaled by (1 + eps): its write grows by eps a_s d_s
        bumped[layer, pos] += eps * float(n.activation[s]) * tcs[layer].W_dec[feat].double()
        xs0, f0 = rep.forward(rep.embed[None], writes[:, None])
        xs1, f1 = rep.forward(rep.embed[None], bumped[:, None])
        d_logit = (rep.logit(f1[0, -1:], token) - rep.logit(f0[0, -1:], token)) / eps
        torch.testing.assert_close(d_logit[0], graph.rows[0, s], atol=1e-7, rtol=1e-5)
        for r, t in enumerate(graph.targets.tolist()[1:], start=1):
            lt, pt, ft = int(n.layer[t]), int(n.pos[t]), int(n.feature[t])
            idx = torch.tensor([ft])
            diff = (
                rep.pre_activation(lt, xs1[lt][0, pt : pt + 1], idx)
                - rep.pre_activation(lt, xs0[lt][0, pt : pt + 1], idx)
            ) / eps
            torch.testing.assert_close(diff[0], graph.rows[r, s], atol=1e-7, rtol=1e-5)
    # and the error node of layer 0 at the last position: the same in its own units
    err = n.index("error")[model.cfg.n_layers * 0 + rep.n_pos - 1]
    bumped = writes.clone()
    bumped[0, -1] += eps * rep.errors[0][-1]
    _, f1 = rep.forward(rep.embed[None], bumped[:, None])
    _, f0 = rep.forward(rep.embed[None], writes[:, None])
    d = (rep.logit(f1[0, -1:], token) - rep.logit(f0[0, -1:], token)) / eps
    torch.testing.assert_close(d[0], graph.rows[0, err], atol=1e-7, rtol=1e-5)


# ---- verification, run folder and bad input -----------------------------------------------------------------
def test_verification_measures_what_an_independent_patch_measures():
    """measured_direct (feature ablated, every other feature held) equals the real model with each layer's
    mlp.out Patched to its clean value, minus a_s d_s at the source's layer and position; predicted_direct is
    -A[logit, s]. (The two need not agree exactly: the graph freezes attention and norms, the model not.)
    Without a skip connection, holding the features holds each MLP output (with one, x @ W_skip would move)."""
    model = tiny("gpt2")
    tcs = random_transcoders(model, skip=False)
    result = trace(model, tcs, PROMPT, "mat", GraphOptions(nodes=20, verify_top=4))
    ver, graph = result["verification"], result["attribution"]
    assert ver.rows and ver.correlations["n_checked"] == len(ver.rows)
    tokens = result["replacement"].tokens[None]
    sites = [tcs.output_site(ly) for ly in tcs.layers]
    clean_logits, cache = model.run_with_cache(tokens, sites=sites)
    n = graph.nodes
    for row in ver.rows:
        s = row["node"]
        assert row["predicted_direct"] == pytest.approx(-float(graph.rows[0, s]))
        layer, pos, feat = int(n.layer[s]), int(n.pos[s]), int(n.feature[s])
        ablated = cache[tcs.output_site(layer)].clone()
        ablated[0, pos] -= float(n.activation[s]) * tcs[layer].W_dec[feat]
        patches = [ls.Patch(site, source=cache) for site in sites if site != tcs.output_site(layer)]
        patches.append(ls.Patch(tcs.output_site(layer), source=ablated))
        logit = model(tokens, interventions=patches)[0, -1, graph.target_token]
        expected = float((logit - clean_logits[0, -1, graph.target_token]).detach())
        assert row["measured_direct"] == pytest.approx(expected, abs=1e-6)


def test_graph_command_writes_a_run_and_refuses_bad_input(tmp_path, monkeypatch):
    model = tiny("llama")
    random_transcoders(model).save(tmp_path / "tc")
    import lmscope.model as lm

    monkeypatch.setattr(lm, "load", lambda name=None, **kw: model)
    out = tmp_path / "g"
    argv = ["graph", PROMPT, "--target", "mat", "--transcoders", str(tmp_path / "tc"), "--out", str(out)]
    assert main(argv + ["--nodes", "15", "--verify-top", "4"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "graph"
    g = json.loads((out / "graph.json").read_text())
    kinds = {n["kind"] for n in g["nodes"]}
    assert {"token", "logit"} <= kinds and sum(n["kind"] in ("feature", "error") for n in g["nodes"]) <= 15
    ids = {n["id"] for n in g["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in g["edges"])
    html = (out / "report.html").read_text()
    assert "Verification" in html and "<svg" in html
    with pytest.raises(ValueError, match="not one"):
        target_id(model, "cat sat")
    assert main(argv[:3] + ["cat sat"] + argv[4:]) == 2
    assert main(argv + ["--max-prompt-tokens", "4"]) == 2
    other = tiny(seed=3)
    monkeypatch.setattr(lm, "load", lambda name=None, **kw: other)
    assert main(argv) == 2

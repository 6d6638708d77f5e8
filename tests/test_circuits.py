"""QK/OV circuits, copying scores, composition scores, virtual weights and key-value memories, each checked
against an independent computation: hand-written GPT-2 algebra, HF's own attention pattern, dense products,
planted weights with a known answer, a run of the model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import lmscope as ls
from lmscope.circuits import circuits_report
from lmscope.circuits.circuits_report import write_circuits_run
from lmscope.circuits.composition import (
    composition_score,
    composition_scores,
    head_factors,
    random_baseline,
    virtual_weights,
)
from lmscope.circuits.memories import key_value_memories
from lmscope.circuits.qkov import (
    copying_score_of,
    copying_scores,
    ov_circuit,
    ov_factored,
    qk_circuit,
    token_residuals,
)
from lmscope.cli import main
from lmscope.data.store import harvest
from lmscope.data.tokens import tokenize_corpus
from lmscope.features.neurons import vocab_projection
from lmscope.runs import read_run

from .conftest import tiny_hf, word_tokenizer

# ------------------------------------------------------------------------------------------------ OV / QK


@torch.no_grad()
def test_ov_circuit_equals_hand_computation_on_gpt2():
    model = ls.Model(tiny_hf("gpt2"), word_tokenizer())
    hf, layer, head, d, dh = model.hf.transformer, 1, 2, 32, 8
    src, dst = [3, 5, 9, 20], [4, 5, 6, 7, 40]
    e = hf.wte.weight[src]
    ln = hf.h[layer].ln_1
    centred = e - e.mean(-1, keepdim=True)
    x = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + ln.eps) * ln.weight + ln.bias
    w_v = hf.h[layer].attn.c_attn.weight[:, 2 * d + head * dh : 2 * d + (head + 1) * dh]  # Conv1D: [in, out]
    w_o = hf.h[layer].attn.c_proj.weight[head * dh : (head + 1) * dh]
    out = x @ w_v @ w_o
    out = (out - out.mean(-1, keepdim=True)) * hf.ln_f.weight
    expected = out @ model.hf.lm_head.weight[dst].T
    torch.testing.assert_close(ov_circuit(model, layer, head, src, dst), expected)


@pytest.mark.parametrize("arch", ["llama", "neox"])
@torch.no_grad()
def test_layer0_qk_circuit_reproduces_the_attention_pattern(arch):
    """Layer 0 reads the embedding alone (rotary models have no position embedding): softmax over keys of
    QK(query, key, offset = query pos - key pos) / sqrt(d_head) is the model's attention pattern."""
    model = ls.Model(tiny_hf(arch), word_tokenizer())
    ids = torch.tensor([[5, 9, 9, 30, 2, 17, 5]])
    _, cache = model.run_with_cache(ids, sites=["blocks.0.attn.pattern"])
    pattern = cache["blocks.0.attn.pattern"][0]  # [head, q, k]
    n, scale = ids.shape[1], model.cfg.d_head**-0.5
    for head in range(model.cfg.n_heads):
        scores = torch.full((n, n), float("-inf"))
        for q in range(n):
            for k in range(q + 1):
                scores[q, k] = qk_circuit(model, 0, head, ids[0, q : q + 1], ids[0, k : k + 1], offset=q - k)[
                    0, 0
                ]
        torch.testing.assert_close((scores * scale).softmax(-1), pattern[head], atol=1e-5, rtol=1e-4)
    no_rotation = qk_circuit(model, 0, 1, [5, 9], [30, 2])
    assert torch.equal(no_rotation, qk_circuit(model, 0, 1, [5, 9], [30, 2], offset=0))
    assert not torch.allclose(no_rotation, qk_circuit(model, 0, 1, [5, 9], [30, 2], offset=3))


def test_learned_positions_have_no_offset():
    model = ls.Model(tiny_hf("gpt2"), word_tokenizer())
    with pytest.raises(ValueError, match="rotary"):
        qk_circuit(model, 0, 0, [3], [4], offset=2)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "neox"])
@torch.no_grad()
def test_factored_copying_score_equals_full_vocabulary_eigenvalues(arch):
    model = ls.Model(tiny_hf(arch), word_tokenizer())
    scores = copying_scores(model)
    for layer, head in [(0, 0), (1, 3), (2, 1)]:
        full = ov_circuit(model, layer, head, None, None)  # [vocab, vocab]: small enough here
        assert scores[layer, head] == pytest.approx(copying_score_of(full), abs=1e-4)
    subset = [3, 4, 10, 11, 12, 40]
    sub = copying_scores(model, subset, layers=[1])
    assert sub[0, 2] == pytest.approx(copying_score_of(ov_circuit(model, 1, 2, subset, subset)), abs=1e-4)
    eig = torch.linalg.eigvals(ov_factored(model, 1)[2].double())
    assert scores[1, 2] == pytest.approx(float(eig.sum().real / eig.abs().sum()), abs=1e-6)


@torch.no_grad()
def test_circuits_on_residuals_in_context(tiny_llama):
    ids = torch.tensor([[1, 5, 9, 5, 30, 9, 12], [1, 30, 30, 5, 2, 12, 9]])
    tokens = [5, 9, 30]
    resid = token_residuals(tiny_llama, ids, tokens)  # [layer, token, d]
    _, cache = tiny_llama.run_with_cache(ids, sites=["blocks.2.resid_pre"])
    torch.testing.assert_close(resid[2, 1], cache["blocks.2.resid_pre"][ids == 9].mean(0))
    # Layer 0 reads the embedding itself: in context = direct path.
    torch.testing.assert_close(ov_circuit(tiny_llama, 0, 1, src_resid=resid[0], dst_tokens=tokens),
                               ov_circuit(tiny_llama, 0, 1, tokens, tokens), atol=1e-5, rtol=1e-4)  # fmt: skip
    in_context = copying_scores(tiny_llama, tokens, resid=resid)
    full = ov_circuit(tiny_llama, 2, 3, src_resid=resid[2], dst_tokens=tokens)
    assert in_context[2, 3] == pytest.approx(copying_score_of(full), abs=1e-4)
    assert not torch.allclose(in_context[2], copying_scores(tiny_llama, tokens)[2])
    qk = qk_circuit(tiny_llama, 2, 0, query_resid=resid[2, :2], key_resid=resid[2])
    assert qk.shape == (2, 3)
    with pytest.raises(ValueError, match="do not occur"):
        token_residuals(tiny_llama, ids, [5, 40])


def planted_copier(sign: float) -> ls.Model:
    """Tied embeddings, unit norms; head 1 of layer 1 (GQA: kv head 0) gets W_O = sign * W_V^T, so its OV
    circuit is sign * D E V V^T E^T with D > 0 diagonal: eigenvalues all of one sign."""
    model = ls.Model(tiny_hf("llama", seed=3), word_tokenizer())
    hf, d_head = model.hf, model.cfg.d_head
    with torch.no_grad():
        hf.lm_head.weight.copy_(hf.model.embed_tokens.weight)
        o_proj = hf.model.layers[1].self_attn.o_proj.weight  # [d_model, n_heads * d_head]
        w_v = model.weights.W_V(1, expand_kv=True)[1]  # [d_model, d_head]
        o_proj[:, d_head : 2 * d_head] = sign * w_v
    return model


def test_copying_score_of_planted_copying_and_anti_copying_heads():
    """Sign convention: +1 = attending to a token raises that token's logit, -1 = lowers it."""
    for sign in (1.0, -1.0):
        model = planted_copier(sign)
        assert copying_scores(model)[1, 1] == pytest.approx(sign, abs=1e-3)
        assert copying_scores(model, [2, 3, 4, 8, 9])[1, 1] == pytest.approx(sign, abs=1e-3)
        ov = ov_circuit(model, 1, 1, [2, 3, 4, 8], [2, 3, 4, 8])
        assert bool(((sign * ov).argmax(1) == torch.arange(4)).all())  # each token promotes itself most
    assert abs(float(copying_scores(model)[0].mean())) < 0.5  # random heads: no strong sign


# ------------------------------------------------------------------------------------------- composition


def test_random_matrices_compose_at_one_over_sqrt_d():
    gen = torch.Generator().manual_seed(0)
    d = 256
    scores = [
        composition_score(torch.randn(d, d, generator=gen), torch.randn(d, d, generator=gen))
        for _ in range(20)
    ]
    assert sum(scores) / len(scores) == pytest.approx(d**-0.5, rel=0.05)
    mean, std = random_baseline(64, 16, n=400)
    assert mean == pytest.approx(64**-0.5, rel=0.1) and 0 < std < mean / 2
    assert random_baseline(64, 16, n=400) == (mean, std)  # same seed, same numbers


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_composition_of_a_random_model_sits_at_the_baseline_and_matches_dense_products(arch):
    model = ls.Model(tiny_hf(arch), word_tokenizer())
    comp = composition_scores(model)
    assert comp.baseline == pytest.approx(model.cfg.d_model**-0.5, rel=0.1)
    for kind in ("q", "k", "v"):
        grid = comp.get(kind)
        assert grid[1:, :, 0].isnan().all() and grid[:1, :, 1].isfinite().all()  # earlier writers only
        assert float(grid.nanmean()) == pytest.approx(comp.baseline, rel=0.25)
    f = head_factors(model)
    n_h = model.cfg.n_heads
    writer, reader = 0 * n_h + 2, 2 * n_h + 1  # head 0.2 -> head 2.1
    w_ov = f.v[writer] @ f.o[writer]
    w_qk, r_ov = f.q[reader] @ f.k[reader].T, f.v[reader] @ f.o[reader]
    assert float(comp.q[0, 2, 2, 1]) == pytest.approx(composition_score(w_ov, w_qk), rel=1e-4)
    assert float(comp.k[0, 2, 2, 1]) == pytest.approx(composition_score(w_ov, w_qk.T), rel=1e-4)
    assert float(comp.v[0, 2, 2, 1]) == pytest.approx(composition_score(w_ov, r_ov), rel=1e-4)


def planted_induction_model() -> ls.Model:
    """Two layers, d_model 64, d_head 16. Head 0.0 (previous-token head) moves a 4-dimensional token
    subspace T (dims 0-3) into a previous-token subspace P (dims 4-7): W_V reads T, W_O writes P. Head 1.2
    (induction head) keys on P and queries with T, so K-composition 0.0 -> 1.2 is built in. A perfect
    rank-4 composition scores 1/sqrt(4) = 0.5; random heads score about 1/sqrt(64) = 0.125."""
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    eye, head0, head2 = torch.eye(4), slice(0, 16), slice(32, 48)
    with torch.no_grad():
        attn0, attn1 = hf.model.layers[0].self_attn, hf.model.layers[1].self_attn
        for weight in (attn0.v_proj.weight[head0], attn0.o_proj.weight[:, head0]):
            weight.zero_()
        attn0.v_proj.weight[0:4, 0:4] = eye  # head 0's value: T
        attn0.o_proj.weight[4:8, 0:4] = eye  # head 0's output: into P
        for weight in (attn1.k_proj.weight[head2], attn1.q_proj.weight[head2]):
            weight.zero_()
        attn1.k_proj.weight[32:36, 4:8] = eye  # head 2's keys read P
        attn1.q_proj.weight[32:36, 0:4] = eye  # head 2's queries read T
    return ls.Model(hf, word_tokenizer())


def test_planted_previous_token_to_induction_k_composition_stands_out():
    comp = composition_scores(planted_induction_model())
    k = comp.k[0, :, 1, :]  # [writer head, reader head]
    planted = float(k[0, 2])
    others = k.flatten()[torch.arange(16) != 2]
    assert planted == pytest.approx(0.5, abs=1e-4)
    assert planted > 2 * float(others.max()) and planted > 3.5 * comp.baseline
    assert float(comp.q[0, 0, 1, 2]) < 0.05  # queries read T, the writer writes P: no Q-composition
    assert comp.top("k", 1)[0][:2] == ("blocks.0.attn.z[0]", "blocks.1.attn.z[2]")
    assert comp.score("blocks.0.attn.z[0]", "blocks.1.attn.z[2]", "k") == planted
    assert comp.score("L0H0", "blocks.1.attn.hook_z[2]", "k") == planted  # aliases name the same heads
    assert math.isnan(comp.score("blocks.1.attn.z[2]", "blocks.0.attn.z[0]", "k"))  # no later -> earlier
    with pytest.raises(ValueError, match=r"attn\.z has 4 heads"):
        comp.score("blocks.0.attn.z[4]", "blocks.1.attn.z[2]", "k")


# --------------------------------------------------------------------------------------- virtual weights


@torch.no_grad()
def test_virtual_weights_embed_to_value_match_a_run(tiny_llama):
    """Layer 0's value of token t is ln1(E[t]) W_V = (E[t] / rms(E[t])) w W_V: the virtual weight row of
    t divided by the norm's scale, which virtual weights leave out."""
    ids = torch.tensor([[3, 7, 11, 20]])
    _, cache = tiny_llama.run_with_cache(ids, sites=["blocks.0.attn.v"])
    e = tiny_llama.weights.W_E[ids[0]]
    rms = torch.sqrt(e.pow(2).mean(-1, keepdim=True) + tiny_llama.parts.layers[0].ln1.variance_epsilon)
    for kv in (0, 1):  # GQA: blocks.0.attn.v[kv] is key/value head kv, as in the site's tensor
        vw = virtual_weights(tiny_llama, "embed", f"blocks.0.attn.v[{kv}]")[ids[0]]
        torch.testing.assert_close(vw / rms, cache["blocks.0.attn.v"][0, :, kv])
    with pytest.warns(FutureWarning, match=r"write 'blocks\.0\.attn\.v\[1\]'"):  # old form: query head 3
        old = virtual_weights(tiny_llama, "embed", "0.3.v")
    assert torch.equal(old, virtual_weights(tiny_llama, "embed", "blocks.0.attn.v[1]"))


@torch.no_grad()
def test_virtual_weights_between_neurons_and_heads(tiny):
    hf_w = tiny.weights
    ln2 = hf_w.ln2_w(1)
    expected = hf_w.W_out(0) @ torch.diag(ln2) @ hf_w.W_in(1)
    if tiny.cfg.normalization == "layer":
        expected = hf_w.W_out(0) @ (torch.eye(32) - 1 / 32) @ torch.diag(ln2) @ hf_w.W_in(1)
    whole = virtual_weights(tiny, "blocks.0.mlp", "blocks.1.mlp")
    torch.testing.assert_close(whole, expected, atol=1e-5, rtol=1e-4)
    # one neuron of each: that entry of the whole matrix; blocks.0.mlp.post is the same writer as blocks.0.mlp
    one = virtual_weights(tiny, "blocks.0.mlp.post[5]", "blocks.1.mlp.pre_linear[7]" if tiny.cfg.gated_mlp
                          else "blocks.1.mlp.pre[7]")  # fmt: skip
    torch.testing.assert_close(one, whole[5:6, 7:8])
    assert torch.equal(virtual_weights(tiny, "blocks.0.mlp.post", "blocks.1.mlp"), whole)
    with pytest.warns(FutureWarning):  # the old short forms still name the same components
        assert torch.equal(virtual_weights(tiny, "mlp.0", "mlp.1"), whole)
    assert virtual_weights(tiny, "blocks.1.attn.z[2]", "blocks.2.attn.k[0]").shape == (8, 8)
    assert virtual_weights(tiny, "blocks.2.attn.hook_z[3]", "unembed").shape == (8, 64)
    assert torch.equal(
        virtual_weights(tiny, "L2H3", "logits"), virtual_weights(tiny, "blocks.2.attn.z[3]", "logits")
    )
    with pytest.raises(ValueError, match="reads the residual stream before"):
        virtual_weights(tiny, "blocks.1.mlp", "blocks.1.attn.q[0]")
    if tiny.cfg.parallel_residual:  # the MLP reads resid_pre, beside the attention, not after it
        with pytest.raises(ValueError, match="before"):
            virtual_weights(tiny, "blocks.1.attn.z[0]", "blocks.1.mlp")
    else:
        assert virtual_weights(tiny, "blocks.1.attn.z[0]", "blocks.1.mlp").shape[0] == 8
    bad = {
        "mlp": "unknown component",
        "blocks.1.attn.z[x]": "whole number",
        "blocks.5.attn.q[0]": r"layers 0\.\.2",
        "blocks.1.attn.z[9]": r"indexed 0\.\.3",
        "blocks.1.attn.q[0]": "is not a writer",  # a head's input does not write
        "blocks.1.attn.z": "name one head",
        "blocks.1.resid_post": "is not a writer",
    }
    for name, message in bad.items():
        with pytest.raises(ValueError, match=message):
            virtual_weights(tiny, name, "logits")


# ---------------------------------------------------------------------------------------- memories


@pytest.fixture
def dataset(tiny_llama):
    texts = [
        "the cat sat on the mat and then the dog ran home",
        "a dog sat on a mat",
        "the cat ran to a dog",
    ] * 3
    return tokenize_corpus(tiny_llama, texts, ctx_len=16)


@torch.no_grad()
def test_memories_triggers_are_the_neurons_peaks(tiny_llama, dataset):
    neurons = [3, 7]
    mems = key_value_memories(tiny_llama, 1, neurons, dataset=dataset, k=3)
    _, cache = tiny_llama.run_with_cache(
        dataset.tokens, sites=["blocks.1.mlp.post"], attention_mask=dataset.attention_mask
    )
    acts = cache["blocks.1.mlp.post"]
    real = dataset.doc_ids >= 0
    for mem, neuron, value in zip(mems, neurons, vocab_projection(tiny_llama, 1, neurons)):
        a = acts[..., neuron].masked_fill(~real, float("-inf"))
        row, pos = divmod(int(a.argmax()), dataset.ctx_len)
        top = mem.triggers[0]
        assert top["acts"][top["peak"]] == pytest.approx(float(a[row, pos]), abs=1e-4)
        assert top["tokens"][top["peak"]] == tiny_llama.tokenizer.decode([int(dataset.tokens[row, pos])])
        follows = (
            dataset.doc_ids[row, pos + 1] == dataset.doc_ids[row, pos] if pos + 1 < dataset.ctx_len else False
        )
        assert mem.next_tokens[0] == (
            tiny_llama.tokenizer.decode([int(dataset.tokens[row, pos + 1])]) if follows else ""
        )
        assert mem.promoted == value["promoted"] and mem.suppressed == value["suppressed"]
        promoted = {t for t, _ in mem.promoted}
        assert mem.agreement == sum(t in promoted for t in mem.next_tokens if t) / len(mem.triggers)
        ordered = [t["acts"][t["peak"]] for t in mem.triggers]
        assert (
            ordered == sorted(ordered, reverse=True) and len(mem.triggers) == 3
        )  # one per document, best first
    negative = key_value_memories(tiny_llama, 1, [3], dataset=dataset, k=2, sign=-1)[0]
    assert negative.triggers[0]["acts"][negative.triggers[0]["peak"]] < 0
    assert negative.promoted[0][0] == mems[0].suppressed[0][0]
    assert negative.promoted[0][1] == pytest.approx(-mems[0].suppressed[0][1])


def test_memories_from_a_store_equal_memories_from_a_run(tiny_llama, dataset, tmp_path):
    store = harvest(tiny_llama, dataset, ["blocks.1.mlp.post"], tmp_path / "store")
    from_store = key_value_memories(tiny_llama, 1, [3, 7], store=store.path, k=3)
    from_run = key_value_memories(tiny_llama, 1, [3, 7], dataset=dataset, k=3)
    by_name = key_value_memories(
        tiny_llama, "blocks.1.mlp", ["blocks.1.mlp.post[3]", "L1N7"], dataset=dataset, k=3
    )
    assert [m.to_dict() for m in by_name] == [m.to_dict() for m in from_run]
    assert [m.to_dict()["name"] for m in from_run] == ["blocks.1.mlp.post[3]", "blocks.1.mlp.post[7]"]
    with pytest.raises(ValueError, match="not in layer 1"):
        key_value_memories(tiny_llama, 1, ["blocks.2.mlp.post[3]"], dataset=dataset)
    for a, b in zip(from_store, from_run):
        assert a.next_tokens == b.next_tokens and a.promoted == b.promoted
        assert [t["tokens"] for t in a.triggers] == [t["tokens"] for t in b.triggers]
        for x, y in zip(a.triggers, b.triggers):
            assert x["acts"] == pytest.approx(y["acts"], abs=1e-4) and x["peak"] == y["peak"]
    with pytest.raises(ValueError, match="harvest that site"):
        key_value_memories(tiny_llama, 2, [3], store=store.path)


# --------------------------------------------------------------------------------------------- the run


def test_circuits_run_folder_and_cli(tmp_path, capsys, monkeypatch):
    model = ls.Model(tiny_hf("llama"), word_tokenizer(), name="tiny")
    words = ["cat", "dog", "mat", "home"]
    ids = [model.tokenizer.convert_tokens_to_ids(w) for w in words]
    text = torch.tensor([[1, ids[0], 5, ids[1], ids[2], 7], [1, ids[2], ids[0], 9, ids[1], 2]])  # no "home"
    monkeypatch.setattr(
        circuits_report, "context_inputs", lambda model, ids, names: (text, None, "two lines")
    )
    out = write_circuits_run(
        model, tmp_path / "run", heads=["blocks.2.attn.z[1]", "L0H3"], tokens=words, offset=1
    )
    heads = json.loads((out / "heads.json").read_text())
    scores = copying_scores(model)
    assert [h["head"] for h in heads] == ["blocks.2.attn.z[1]", "blocks.0.attn.z[3]"]
    assert heads[0]["inputs"]["k"] == "blocks.2.attn.k[0]"  # GQA: query head 1 reads key/value head 0
    assert heads[0]["copying_vocab"] == pytest.approx(float(scores[2, 1]))
    assert torch.tensor(heads[0]["ov"]) == pytest.approx(ov_circuit(model, 2, 1, ids, ids), abs=1e-6)
    assert torch.tensor(heads[0]["qk"]) == pytest.approx(
        qk_circuit(model, 2, 1, ids, ids, offset=1), abs=1e-6
    )
    resid = token_residuals(model, text, ids[:3])
    in_context = ov_circuit(model, 2, 1, src_resid=resid[2], dst_tokens=ids[:3])
    assert torch.tensor(heads[0]["ov_context"]) == pytest.approx(in_context, abs=1e-5)
    assert heads[1]["writers"]["k"] == []  # nothing writes before layer 0
    copying = json.loads((out / "copying.json").read_text())
    assert torch.tensor(copying["vocab"]) == pytest.approx(scores)
    assert copying["context_tokens"] == words[:3]
    assert torch.tensor(copying["context_scores"]) == pytest.approx(
        copying_scores(model, ids[:3], resid=resid)
    )
    comp = json.loads((out / "composition.json").read_text())
    assert math.isfinite(comp["baseline"]) and len(comp["top"]["v"]) == 20
    assert read_run(out)["heads"] == ["blocks.2.attn.z[1]", "blocks.0.attn.z[3]"]
    # the neurons writing most into head 2.1's key input: largest |W_out[n] N W_K^kv| over layers 0 and 1
    w = model.weights
    norms = torch.stack(
        [(w.W_out(layer) @ torch.diag(w.ln1_w(2)) @ w.W_K(2)[0]).norm(dim=-1) for layer in (0, 1)]
    ).detach()  # [layer, d_mlp]
    best = heads[0]["neurons"]["k"][0]
    layer, neuron = divmod(int(norms.argmax()), norms.shape[1])
    assert best["neuron"] == f"blocks.{layer}.mlp.post[{neuron}]"
    assert best["norm"] == pytest.approx(float(norms.max()), rel=1e-5)

    folder = tmp_path / "tiny-llama"
    model.hf.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    cli = [
        "circuits",
        "--model",
        str(folder),
        "--heads",
        "blocks.1.attn.z[0]",
        "--tokens",
        "cat,dog",
        "--out",
        str(tmp_path / "c"),
    ]
    assert main(cli) == 0 and (tmp_path / "c" / "report.html").is_file()
    assert main([*cli[:3], "--heads", "blocks.9.attn.z[0]", "--out", str(tmp_path / "d")]) == 2
    assert "this model has layers 0..2" in capsys.readouterr().err

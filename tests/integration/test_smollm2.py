"""The bundled SmolLM2-135M-Instruct, converted from its GGUF file into a fresh temporary cache (first-run path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import lmscope as ls
from lmscope.model import loading
from lmscope.tour import IOI_PROMPT, single_token

pytestmark = pytest.mark.integration
LMSCOPE = Path(sys.executable).parent / "lmscope"


@pytest.fixture
def cache_dir(smollm2_cache) -> Path:
    return smollm2_cache


@pytest.fixture
def model(smollm2) -> ls.Model:
    return smollm2


def test_first_load_converts_once_into_the_cache(model, cache_dir, monkeypatch):
    [folder] = (cache_dir / "models").iterdir()  # one converted folder, no temporary leftovers
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    assert "quantization_config" not in (folder / "config.json").read_text()
    c = model.cfg
    assert (c.n_layers, c.d_model, c.d_mlp, c.n_heads, c.n_kv_heads, c.d_head) == (30, 576, 1536, 9, 3, 64)
    assert c.rotary_base == 100000.0

    def no_second_conversion(*args):
        raise AssertionError("converted again although the cache holds the model")

    monkeypatch.setattr(loading, "_convert", no_second_conversion)
    again = ls.load(cache_dir=cache_dir)
    tokens = model.to_tokens(IOI_PROMPT)
    with torch.no_grad():
        assert torch.equal(again(tokens), model(tokens))


@torch.no_grad()
def test_converted_model_matches_the_gguf_model(model):
    gguf = loading.bundled_gguf()
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    tokens = model.to_tokens(IOI_PROMPT)
    assert (model(tokens) - direct(tokens).logits).abs().max() < 1e-5


@torch.no_grad()
def test_logits_equal_plain_hf(model, cache_dir):
    [folder] = (cache_dir / "models").iterdir()
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    enc = model.tokenize(
        [IOI_PROMPT, "The capital of France is", "def main():\n    return"], padding_side="left"
    )
    tokens = model.to_tokens(IOI_PROMPT)
    reference = plain(tokens).logits
    assert (model(tokens) - reference).abs().max() < 1e-5
    logits, cache = model.run_with_cache(
        tokens, sites=["blocks.*.resid_post", "blocks.8.mlp.post", "blocks.8.attn.z"]
    )
    assert (logits - reference).abs().max() < 1e-5
    assert tuple(cache.stack("resid_post").shape) == (30, 1, tokens.shape[1], 576)
    assert tuple(cache["blocks.8.attn.z"].shape) == (1, tokens.shape[1], 9, 64)
    # a left-padded batch: every example's logits equal its own unpadded run
    padded = model(enc)
    for i, mask in enumerate(enc["attention_mask"]):
        alone = plain(enc["input_ids"][i][mask.bool()][None]).logits[0]
        assert (padded[i][mask.bool()] - alone).abs().max() < 1e-4


@torch.no_grad()
def test_ioi_logit_difference_is_positive(model):
    logits = model(IOI_PROMPT)
    logit_diff = logits[0, -1, single_token(model, " Mary")] - logits[0, -1, single_token(model, " John")]
    assert logit_diff > 0


@torch.no_grad()
def test_attention_sites_consistent_with_gqa(model):
    tokens = model.to_tokens(IOI_PROMPT)
    ref, cache = model.run_with_cache(tokens, sites=["blocks.8.attn.*"])
    v = cache["blocks.8.attn.v"].repeat_interleave(3, dim=2)  # 3 kv heads serve 9 query heads
    z = torch.einsum("bhqk,bkhe->bqhe", cache["blocks.8.attn.pattern"], v)
    torch.testing.assert_close(cache["blocks.8.attn.z"], z, atol=1e-5, rtol=1e-4)
    out = torch.einsum("bphe,hed->bpd", cache["blocks.8.attn.z"], model.weights.W_O(8))
    torch.testing.assert_close(cache["blocks.8.attn.out"], out, atol=1e-4, rtol=1e-4)
    with model.intervene(ls.Patch("blocks.8.attn.z", source=cache, heads=[3], positions=[-1])):
        assert (model(tokens) - ref).abs().max() < 1e-4


def _cli(*args, cache_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMSCOPE_CACHE": str(cache_dir)}
    return subprocess.run([str(LMSCOPE), *args], env=env, capture_output=True, text=True, timeout=300)


def test_cli_on_the_bundled_model(model, cache_dir):
    info = _cli("info", cache_dir=cache_dir)
    assert info.returncode == 0, info.stderr
    assert "30, d_model 576" in info.stdout
    sites = _cli("sites", "--filter", "blocks.8.mlp.*", cache_dir=cache_dir)
    assert [line.split()[0] for line in sites.stdout.splitlines()] == [
        "blocks.8.mlp.in",
        "blocks.8.mlp.pre",
        "blocks.8.mlp.pre_linear",
        "blocks.8.mlp.post",
        "blocks.8.mlp.out",
    ]
    run = _cli("run", "The capital of France is", "--top-k", "5", cache_dir=cache_dir)
    assert run.returncode == 0 and "' Paris'" in run.stdout
    bad = _cli("sites", "--filter", "blocks.40.resid_post", cache_dir=cache_dir)
    assert bad.returncode == 2 and "layers 0..29" in bad.stderr

"""Tiny randomly initialised models of each supported architecture, plus a small word-level tokenizer."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import lmscope as ls

VOCAB = 64
WORDS = ["<pad>", "<bos>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "home", "and", "then"]


def tiny_hf(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=1,
            pad_token_id=0,
            eos_token_id=1,
        )
        return LlamaForCausalLM(cfg).eval()
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=3,
            n_head=4,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=0,
        )
        return GPT2LMHeadModel(cfg).eval()
    if arch in ("neox", "neox_serial"):
        cfg = GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=64,
            rotary_pct=0.5,
            use_parallel_residual=(arch == "neox"),
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=0,
        )
        return GPTNeoXForCausalLM(cfg).eval()
    raise ValueError(arch)


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>")


ARCHS = ["llama", "gpt2", "neox", "neox_serial"]


@pytest.fixture(params=ARCHS)
def tiny(request) -> ls.Model:
    return ls.Model(tiny_hf(request.param), word_tokenizer(), name=f"tiny-{request.param}")


@pytest.fixture
def tiny_llama() -> ls.Model:
    return ls.Model(tiny_hf("llama"), word_tokenizer(), name="tiny-llama")


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(2, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """A fresh cache folder: the first load converts the bundled GGUF into it (the first-run path)."""
    return tmp_path_factory.mktemp("lmscope-cache")


@pytest.fixture(scope="session")
def smollm2(smollm2_cache) -> ls.Model:
    """The bundled SmolLM2-135M-Instruct, converted once per test session into a temporary cache."""
    return ls.load(cache_dir=smollm2_cache)


@pytest.fixture(autouse=True)
def _threads(request):
    """One thread for tiny models (more only adds scheduling overhead, badly so on a busy machine); the
    machine's threads for the integration tests on SmolLM2."""
    before = torch.get_num_threads()
    integration = request.node.get_closest_marker("integration") is not None
    torch.set_num_threads(before if integration else 1)
    yield
    torch.set_num_threads(before)

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
    if arch in FAMILY_CONFIGS:
        return family_hf(arch)
    raise ValueError(arch)


# Tiny configs of the other families (tests/test_families.py). Small enough to run in milliseconds; each
# switches on what makes its family differ from Llama: sliding windows shorter than the test sequences,
# soft-capping low enough to bend the logits, q/k norms, biases, fused projections, 4 experts with top-2.
_COMMON = dict(
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
_LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]
FAMILY_CONFIGS = {
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=4)),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(use_sliding_window=True, sliding_window=4, layer_types=_LAYER_TYPES),
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=8)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=8)),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            head_dim=8,
            query_pre_attn_scalar=16,
            sliding_window=4,
            layer_types=_LAYER_TYPES,
            attn_logit_softcapping=0.05,
            final_logit_softcapping=0.2,
        ),
    ),
    "gemma3_text": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            head_dim=8,
            query_pre_attn_scalar=16,
            sliding_window=4,
            layer_types=_LAYER_TYPES,
            final_logit_softcapping=0.2,
            rope_local_base_freq=100.0,
        ),
    ),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(partial_rotary_factor=0.5)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2)),
}


def family_hf(arch: str, seed: int = 0):
    """A tiny randomly initialised model of `arch`, built offline from its config class. Norm weights get
    noise too (Gemma's start at 0 = scale 1), so a mistaken norm offset or norm placement shows."""
    import transformers

    config_name, model_name, extra = FAMILY_CONFIGS[arch]
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_name)(**_COMMON, **extra)
    hf = getattr(transformers, model_name)(cfg).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    return hf


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

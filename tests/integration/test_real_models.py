"""The bundled real models beside SmolLM2: Gemma 3 270M and Qwen2.5-Coder-0.5B-Instruct.

They load through the user's cache (the first run rebuilds each GGUF file from its packages, checks its
SHA-256 and converts it: about a minute each on an idle machine); a model whose packages are missing is
skipped, saying which. The first-run path itself is tested on a fake model in tests/test_bundled_models.py.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import lmscope as ls
from lmscope.model.bundled import BUNDLED
from lmscope.model.loading import bundled_cache_folder, cache_root
from lmscope.model.sizes import count_safetensors_params
from lmscope.tour import IOI_PROMPT

pytestmark = pytest.mark.integration

# (layers, d_model) as the models' own cards give them, independent of the registry
EXPECTED = {"gemma-3-270m": (18, 640), "qwen2.5-coder-0.5b-instruct": (24, 896)}


@pytest.fixture(scope="module", params=list(EXPECTED))
def real(request) -> tuple:
    entry = BUNDLED[request.param]
    missing = entry.missing_packages()
    if missing:
        pytest.skip(f"{entry.name} is not installed (missing {', '.join(missing)}): {entry.install_command}")
    return entry, ls.load(entry.name)


def test_config_matches_the_model_card_and_the_registry(real):
    entry, model = real
    assert (model.cfg.n_layers, model.cfg.d_model) == EXPECTED[entry.name] == (entry.n_layers, entry.d_model)
    assert model.hf.config.model_type == entry.architecture and model.cfg.name == entry.name
    n_params = sum(p.numel() for p in model.hf.parameters())  # tied weights count once
    folder = bundled_cache_folder(entry)
    assert n_params == entry.n_params == count_safetensors_params(folder)


@torch.no_grad()
def test_top_next_token_of_the_ioi_prompt_is_mary(real):
    entry, model = real
    tokens = model.to_tokens(IOI_PROMPT)
    logits = model(tokens)
    assert model.tokenizer.decode(int(logits[0, -1].argmax())) == " Mary"
    plain = AutoModelForCausalLM.from_pretrained(bundled_cache_folder(entry), dtype=torch.float32).eval()
    assert torch.equal(logits, plain(tokens).logits)  # lmscope's logits are the HF model's own


def test_licence_terms_recorded_as_shown(real):
    entry, _ = real
    marker = cache_root() / "licences" / f"{entry.name}.shown"
    assert marker.exists() == (
        entry.licence_file is not None
    )  # Gemma's terms; Qwen's Apache-2.0 has none to show
    if entry.licence_file is not None:
        assert entry.licence_file[1].split("/")[-1] in marker.read_text()

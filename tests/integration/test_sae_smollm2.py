"""SAEs on the bundled SmolLM2, small: train on the fly from real text, splice, evaluate, load back."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from lmscope.data.tokens import tokenize_corpus
from lmscope.features.sae import ModelSource, TopKConfig, load_sae, train_sae
from lmscope.features.sae.evaluate import evaluate_sae
from lmscope.features.sae.io import save_sae
from tests.test_sae import identity_sae

pytestmark = pytest.mark.integration
SITE = "blocks.12.resid_post"


def real_text() -> list[str]:
    import argparse
    import json as json_module

    return [inspect.getsource(m)[:3000] for m in (argparse, json_module.decoder, json_module.encoder)]


def test_sae_on_smollm2(smollm2, tmp_path):
    torch.set_num_threads(1)
    ds = tokenize_corpus(smollm2, real_text(), ctx_len=64)[:14]
    cfg = TopKConfig(
        d_in=576,
        d_sae=1152,
        k=16,
        site=SITE,
        model=smollm2.cfg.name,
        batch_size=256,
        total_tokens=2 * 256,
        lr=1e-3,
        calibration_tokens=256,
    )
    source = ModelSource(smollm2, ds[:12], SITE, cfg.batch_size, chunk_batches=3)
    sae = train_sae(cfg, source, tmp_path / "run", progress=False)
    assert sae.cfg.norm_scale < 0.5  # residual norms at layer 12 are far above sqrt(d_model)
    held_out = ds[12:]
    result = evaluate_sae(load_sae(tmp_path / "run"), smollm2, held_out, progress=False)
    m = result.metrics
    assert m["ce_zero"] > m["ce_clean"] + 1  # zeroing the residual stream wrecks the model
    assert 0 < m["explained_variance"] < 1 and m["l0"] <= 16 and m["ce_sae"] < m["ce_zero"]
    assert json.loads((tmp_path / "run" / "cfg.json").read_text())["hook_name"] == "blocks.12.hook_resid_post"
    # an exact 'SAE' (features +e_i and -e_i) spliced into the real model changes nothing
    exact = load_sae(save_sae(identity_sae(576, SITE), tmp_path / "identity"))
    m = evaluate_sae(exact, smollm2, held_out, progress=False).metrics
    assert m["ce_sae"] == pytest.approx(m["ce_clean"], abs=1e-4) and m["loss_recovered"] == pytest.approx(
        1, abs=1e-4
    )

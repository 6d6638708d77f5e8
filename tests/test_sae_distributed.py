"""SAE training under torchrun: 2 processes on CPU (gloo), each reading its own half of every batch, end
where 1 process with the same total batch ends."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from lmscope.features.sae import RowSource, sae_config, train_sae

SETTINGS = {
    # dead_tokens is small so that AuxK and the resampling of dead features both take part
    "topk": dict(k=3, dead_tokens=1024),
    "batchtopk": dict(k=3, dead_tokens=1024),
    "standard": dict(resample_at=(0.5,), resample_window=0.2, resample_pool=2),
}
COMMON = dict(d_in=12, d_sae=40, batch_size=128, total_tokens=16 * 128, lr=3e-3)


def data() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    directions = torch.randn(30, 12, generator=gen)
    active = (torch.rand(4096, 30, generator=gen) < 0.08).float()
    return (active * (torch.rand(4096, 30, generator=gen) + 0.5)) @ directions


SCRIPT = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_sae_distributed import COMMON, SETTINGS, data
from lmscope.features.sae import RowSource, sae_config, train_sae
from lmscope.features.sae.distributed import world
assert len(RowSource(data(), COMMON["batch_size"]).batch(0)) == COMMON["batch_size"] // 2  # its own half
for arch, extra in SETTINGS.items():
    sae = train_sae(sae_config(arch, **COMMON, **extra), RowSource(data(), COMMON["batch_size"]),
                    {out!r} + "/" + arch, progress=False)
assert world() == (int(__import__("os").environ["RANK"]), 2)
"""


def test_torchrun_two_processes_match_one(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for arch, extra in SETTINGS.items():
        single = train_sae(
            sae_config(arch, **COMMON, **extra), RowSource(data(), COMMON["batch_size"]), progress=False
        )
        saved = load_file(tmp_path / arch / "sae_weights.safetensors")
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(
                saved[name], getattr(single, name).detach(), rtol=1e-4, atol=1e-5, msg=f"{arch} {name}"
            )
        if arch == "batchtopk":
            torch.testing.assert_close(saved["threshold"], single.threshold, rtol=1e-4, atol=1e-6)


def test_each_process_reads_its_own_rows():
    x = torch.arange(64.0)[:, None]
    whole = RowSource(x, 16).batch(5)
    halves = []
    for rank in range(2):
        src = RowSource(x, 16)
        src.rank, src.world = rank, 2  # as torchrun would set them
        halves.append(src.batch(5))
    assert torch.equal(torch.cat(halves), whole) and not set(halves[0].flatten().tolist()) & set(
        halves[1].flatten().tolist()
    )


def test_batch_must_divide_among_processes(monkeypatch):
    import lmscope.features.sae.sources as sources

    monkeypatch.setattr(sources, "world", lambda: (0, 2))
    with pytest.raises(ValueError, match="divide evenly"):
        RowSource(torch.zeros(64, 1), 3)

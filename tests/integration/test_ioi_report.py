"""`lmscope ioi` end to end on the bundled model, small: the report's numbers and its self-contained page;
then the heads its roles finder calls name movers, checked against a plain Hugging Face forward (eager
attention, hooks on the modules, the direct logit attribution written out by hand) on the finder's own
prompts and on prompts it never saw. No head is assumed: a regression in the finder fails here."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.causal.attribution import attribution_patch
from lmscope.causal.ioi_report import write_ioi_report
from lmscope.circuits.qkov import copying_scores, token_residuals
from lmscope.data.tasks.ioi import ioi

pytestmark = pytest.mark.integration

N, SEED = 4, 0  # the report's patching prompts: ioi(model, n=N, split="test", seed=SEED)


@pytest.fixture(scope="module")
def smollm2():
    """The bundled SmolLM2 from the user's cache (the first-run conversion is tested in test_smollm2.py)."""
    return ls.load()


@pytest.fixture(scope="module")
def report_and_path(smollm2, tmp_path_factory):
    path = tmp_path_factory.mktemp("ioi") / "ioi_report.html"
    return write_ioi_report(smollm2, path, n=N, n_eval=24, seed=SEED, progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def plain_hf(smollm2):
    """The same weights as a plain Hugging Face model with eager attention (it returns the probabilities)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        smollm2.hf.name_or_path, dtype=smollm2.hf.dtype, attn_implementation="eager"
    ).eval()


def _head(row: dict) -> tuple[int, int]:
    """(layer, head) of a role row, which names its head blocks.L.attn.z[H]."""
    site, head = row["head"].rstrip("]").split("[")
    assert site.startswith("blocks.") and site.endswith(".attn.z"), row["head"]
    return int(site.split(".")[1]), int(head)


def _heads(role: str, report) -> list[tuple[int, int]]:
    return [_head(row) for row in report.roles if row["role"] == role]


@torch.no_grad()
def _by_hand(hf, task) -> dict[str, torch.Tensor]:
    """Each prompt alone, unpadded, through plain HF: attention from the last position to the IO, S1 and
    S2 tokens (located by their ids) [n, layer, head], and each head's direct logit attribution [n, layer,
    head]: its output z_h W_O^h at the last position through the final RMSNorm with this run's scale
    frozen, dotted with W_U[IO] - W_U[S]. Also the logit difference [n]."""
    layers = hf.model.layers
    n_heads = hf.config.num_attention_heads
    d_head = hf.config.hidden_size // n_heads
    norm_w, eps, w_u = hf.model.norm.weight, hf.config.rms_norm_eps, hf.lm_head.weight  # w_u [vocab, d]
    grabbed = {}
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(
            lambda m, args, i=i: grabbed.__setitem__(i, args[0][0, -1])  # z of every head [n_heads * d_head]
        )
        for i, layer in enumerate(layers)
    ]
    hooks.append(
        hf.model.norm.register_forward_pre_hook(lambda m, args: grabbed.__setitem__("resid", args[0][0, -1]))
    )
    out = {"IO": [], "S1": [], "S2": [], "dla": [], "logit_diff": []}
    try:
        for i in range(len(task)):
            ids = (
                task.clean[i] if task.attention_mask is None else task.clean[i][task.attention_mask[i].bool()]
            )
            io, s = int(task.answer[i]), int(task.wrong[i])
            io_pos, s_pos = (ids == io).nonzero().flatten().tolist(), (ids == s).nonzero().flatten().tolist()
            assert len(io_pos) == 1 and len(s_pos) == 2, (io_pos, s_pos)
            res = hf(ids[None], output_attentions=True)
            pattern = torch.stack(res.attentions)[:, 0, :, -1]  # [layer, head, key]
            for key, pos in (("IO", io_pos[0]), ("S1", s_pos[0]), ("S2", s_pos[1])):
                out[key].append(pattern[..., pos])
            scale = torch.rsqrt(grabbed["resid"].pow(2).mean() + eps)
            direction = (w_u[io] - w_u[s]) * norm_w * scale  # [d]: the frozen final norm, then W_U
            dla = []
            for layer, attn in enumerate(layers):
                z = grabbed[layer].view(n_heads, d_head)
                w_o = attn.self_attn.o_proj.weight.view(-1, n_heads, d_head)  # [d, head, d_head]
                dla.append(torch.einsum("he,dhe,d->h", z, w_o, direction))
            out["dla"].append(torch.stack(dla))
            out["logit_diff"].append(res.logits[0, -1, io] - res.logits[0, -1, s])
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.stack(v) for k, v in out.items()}


def _ranks(xs: list[float]) -> list[float]:
    """1-based ranks, ties at their average rank (written out, independent of the library)."""
    order = sorted(range(len(xs)), key=xs.__getitem__)
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def test_ioi_report_on_smollm2(smollm2, report_and_path):
    report, path = report_and_path
    perf = report.performance
    assert perf["logit_diff"] > 2 and perf["accuracy"] > 0.9 and perf["corrupt_logit_diff"] < 0
    assert report.head_sweep.shape == (30, 9) and report.position_sweep.axes == ["layer", "position"]
    # at layer 0 only the one token that differs (S2) matters, and patching it restores the clean run
    layer0 = report.position_sweep.values[0].sort(descending=True).values
    assert layer0[0] == pytest.approx(1.0, abs=1e-3) and layer0[1:].abs().max() < 1e-3
    # the reported agreement is the Spearman correlation (ties at their average rank) of the attribution
    # estimate with the exact head sweep, recomputed here from the same prompts
    task = ioi(smollm2, n=N, split="test", seed=SEED)
    atp = attribution_patch(smollm2, task, ["blocks.*.attn.z"])["attn.z"]
    expected = _spearman(atp.values.flatten().tolist(), report.head_sweep.values.flatten().tolist())
    assert report.atp_agreement["attn.z per head"]["spearman"] == pytest.approx(expected, abs=1e-6)
    html = path.read_text()
    assert "Heads and their IOI roles" in html and "<svg" in html
    assert "http://" not in html and "https://" not in html and "<script src" not in html


def test_name_movers_are_what_the_documented_rule_picks(smollm2, report_and_path, plain_hf):
    """On the finder's own prompts: each role row's attention and DLA equal the plain-HF values, and the
    name movers are the (up to) 3 heads of largest DLA among those attending END->IO above 0.2."""
    report, _ = report_and_path
    movers = _heads("name mover", report)
    assert 1 <= len(movers) <= 3
    hand = _by_hand(plain_hf, ioi(smollm2, n=N, split="test", seed=SEED))
    attn_io, dla = hand["IO"].mean(0), hand["dla"].mean(0)  # [layer, head]
    for row in report.roles:
        if row["role"] in ("name mover", "negative name mover"):
            layer, head = _head(row)
            assert row["DLA"] == pytest.approx(float(dla[layer, head]), abs=2e-3), row
            assert row["attn END->IO"] == pytest.approx(float(attn_io[layer, head]), abs=1e-3), row
            assert row["attn END->S2"] == pytest.approx(float(hand["S2"].mean(0)[layer, head]), abs=1e-3), row
    eligible = dla.masked_fill(attn_io <= 0.2, float("-inf")).flatten()
    top = [divmod(int(i), dla.shape[1]) for i in eligible.argsort(descending=True)[:3] if eligible[i] > -1e9]
    assert set(movers) == set(top)


def test_found_name_movers_attend_to_io_and_write_it_on_new_prompts(smollm2, report_and_path, plain_hf):
    """On prompts the finder never saw (the other names and templates): from the last position each name
    mover attends to the IO token more than to both subject tokens together, and its direct logit
    attribution favours IO over S on average and on most prompts; together they carry a real share of the logit
    difference. Their OV circuits copy names (in context) and a negative name mover's suppresses them."""
    report, _ = report_and_path
    movers = _heads("name mover", report)
    assert movers
    task = ioi(smollm2, n=24, split="train", seed=1)
    hand = _by_hand(plain_hf, task)
    assert float(hand["logit_diff"].mean()) > 1
    total = torch.zeros(len(task))
    for layer, head in movers:
        to = {k: float(hand[k][:, layer, head].mean()) for k in ("IO", "S1", "S2")}
        assert to["IO"] > to["S1"] + to["S2"], (layer, head, to)
        dla = hand["dla"][:, layer, head]  # [n]
        assert float(dla.mean()) > 0.1 and float((dla > 0).float().mean()) > 0.5, (layer, head, dla)
        total += dla
    assert float(total.mean()) > 0.1 * float(hand["logit_diff"].mean())

    names = torch.unique(task.clean.gather(1, task.positions["IO"][:, None]))
    resid = token_residuals(smollm2, task.clean, names, task.attention_mask)
    negative = _heads("negative name mover", report)
    layers = sorted({layer for layer, _ in movers + negative})
    scores = copying_scores(smollm2, names, resid=resid, layers=layers)  # [len(layers), n_heads]
    for layer, head in movers:
        assert float(scores[layers.index(layer), head]) > 0.5, (layer, head)
    if negative:  # the most negative one: it pushes towards S on new prompts and its OV suppresses names
        layer, head = negative[0]
        assert float(hand["dla"][:, layer, head].mean()) < 0 and float(scores[layers.index(layer), head]) < 0

"""The activation store: bit-exact round trips, resume after a kill, shuffled epochs, early-stopping forwards."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from lmscope.data.corpus import Document
from lmscope.data.store import ActivationStore, harvest, harvest_corpus
from lmscope.data.tokens import tokenize_corpus

from .conftest import WORDS

SITES = ["blocks.0.resid_post", "blocks.1.mlp.post", "blocks.1.attn.z"]


def _docs(n: int = 30, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    words = WORDS[2:]
    return [
        Document(
            " ".join(rng.choice(words) for _ in range(rng.randint(2, 25))), rng.choice("ab"), "", f"d{i}"
        )
        for i in range(n)
    ]


@pytest.fixture
def dataset(tiny_llama):
    return tokenize_corpus(tiny_llama, _docs(), ctx_len=12)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that equality is bit-exact (NaN payloads and the sign of zero included)."""
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _expected(model, dataset, site, dtype, batch_size):
    """Plain run_with_cache over the same batches (no stop_at, no store): the rows a store must hold."""
    rows = []
    for batch in dataset.batches(batch_size):
        _, cache = model.run_with_cache(batch["input_ids"], [site], attention_mask=batch["attention_mask"])
        rows.append(cache[site][batch["attention_mask"].bool()].flatten(1).to(dtype))
    return torch.cat(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_bit_exact(tiny_llama, dataset, tmp_path, dtype):
    store = harvest(
        tiny_llama, dataset, SITES, tmp_path, dtype=dtype, batch_size=3, shard_tokens=37, progress=False
    )
    assert store.n_tokens == int(dataset.attention_mask.sum())
    assert store.n_shards == -(-store.n_tokens // 37) > 3
    for site in SITES:
        want = _expected(tiny_llama, dataset, site, dtype, batch_size=3)
        got = store.read(site)
        assert got.dtype == dtype and got.shape == want.shape == (store.n_tokens, store.d(site))
        assert torch.equal(_bits(got), _bits(want))
        # Every shard is an ordinary safetensors file that the reference reader opens.
        first = load_file(tmp_path / site / "shard_00000.safetensors")["acts"]
        assert torch.equal(first, want[:37])
        assert torch.equal(store.read(site, 30, 80), want[30:80])  # a slice across a shard edge
    assert store.d("blocks.1.attn.z") == 4 * 8  # heads x d_head, flattened
    assert store.manifest["row_shape"]["blocks.1.attn.z"] == [4, 8]


def test_token_info_follows_dataset_order(tiny_llama, dataset, tmp_path):
    store = harvest(tiny_llama, dataset, ["blocks.2.resid_post"], tmp_path, shard_tokens=50, progress=False)
    info = store.token_info()
    real = dataset.attention_mask.bool()
    for field in ("tokens", "labels", "doc_ids", "positions"):
        assert torch.equal(info[field], getattr(dataset, field)[real])
    assert store.label_names == dataset.label_names
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["total_tokens"] == store.n_tokens
    assert manifest["dataset_hash"] == dataset.fingerprint()
    assert json.loads((tmp_path / "run.json").read_text())["kind"] == "store"
    assert "blocks.2.resid_post" in (tmp_path / "report.html").read_text()


def test_padded_contexts_store_only_real_tokens(tiny_llama, tmp_path):
    ds = tokenize_corpus(tiny_llama, _docs(8), ctx_len=10, pack=False)
    assert not bool(ds.attention_mask.all())
    store = harvest(
        tiny_llama, ds, ["blocks.1.mlp.post"], tmp_path, batch_size=3, shard_tokens=16, progress=False
    )
    assert store.n_tokens == int(ds.attention_mask.sum())
    want = _expected(tiny_llama, ds, "blocks.1.mlp.post", torch.float32, batch_size=3)
    assert torch.equal(store.read("blocks.1.mlp.post"), want)


class Killed(Exception):
    pass


def test_resume_after_kill_matches_uninterrupted_run(tiny_llama, dataset, tmp_path):
    settings = dict(dtype="float16", batch_size=4, shard_tokens=23, progress=False)
    whole = harvest(tiny_llama, dataset, SITES, tmp_path / "whole", **settings)

    def kill_after_shard_2(i):
        if i == 2:
            raise Killed

    with pytest.raises(Killed):
        harvest(tiny_llama, dataset, SITES, tmp_path / "cut", on_shard=kill_after_shard_2, **settings)
    cut = ActivationStore(tmp_path / "cut")
    assert cut.n_shards == 3 and not cut.complete and cut.n_tokens == 3 * 23
    assert not (tmp_path / "cut" / SITES[0] / "shard_00003.safetensors").exists()
    assert not list((tmp_path / "cut").rglob("*.tmp"))  # the interrupted shard's partial files are gone
    # What a SIGKILL can leave: a partial temp file, and a shard renamed before the manifest recorded it.
    (tmp_path / "cut" / SITES[1] / ".shard_00003.safetensors.tmp").write_bytes(b"partial")
    (tmp_path / "cut" / SITES[1] / "shard_00003.safetensors").write_bytes(b"not a shard")

    calls = []
    resumed = harvest(tiny_llama, dataset, SITES, tmp_path / "cut", on_shard=calls.append, **settings)
    assert calls[0] == 3  # shards 0..2 were not recomputed
    assert resumed.n_shards == whole.n_shards and resumed.n_tokens == whole.n_tokens
    for site in SITES:
        assert torch.equal(_bits(resumed.read(site)), _bits(whole.read(site)))
    info, ref = resumed.token_info(), whole.token_info()
    assert all(torch.equal(info[k], ref[k]) for k in ref)  # no token lost or duplicated
    assert not list((tmp_path / "cut").rglob("*.tmp"))


def test_resume_refuses_other_settings_and_restart_overwrites(tiny_llama, dataset, tmp_path):
    harvest(tiny_llama, dataset, ["blocks.1.mlp.post"], tmp_path, shard_tokens=40, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        harvest(
            tiny_llama,
            dataset,
            ["blocks.1.mlp.post"],
            tmp_path,
            dtype="bf16",
            shard_tokens=40,
            progress=False,
        )
    other = harvest(
        tiny_llama,
        dataset[:3],
        ["blocks.1.mlp.post"],
        tmp_path,
        resume=False,
        shard_tokens=40,
        progress=False,
    )
    assert other.n_tokens == int(dataset[:3].attention_mask.sum())
    assert sorted(p.name for p in (tmp_path / "blocks.1.mlp.post").iterdir()) == [
        f"shard_{i:05d}.safetensors" for i in range(other.n_shards)
    ]


def test_shuffled_batches_cover_every_row_once(tiny_llama, dataset, tmp_path):
    store = harvest(tiny_llama, dataset, ["blocks.1.mlp.post"], tmp_path, shard_tokens=20, progress=False)
    site, n = "blocks.1.mlp.post", store.n_tokens
    everything = store.read(site)
    got = list(store.batches(site, 7, seed=3, drop_last=False, window_shards=3, return_ids=True))
    ids = torch.cat([i for _, i in got])
    assert sorted(ids.tolist()) == list(range(n))
    assert all(torch.equal(x, everything[i]) for x, i in got)
    assert all(len(x) == 7 for x, _ in got[:-1]) and len(got[-1][0]) == (n % 7 or 7)
    assert ids.tolist() != list(range(n))
    shards_in_first = {int(i) // 20 for i in got[0][1]}
    assert len(shards_in_first) > 1  # rows are mixed across shards, not read one shard at a time
    again = torch.cat(
        [i for _, i in store.batches(site, 7, seed=3, drop_last=False, window_shards=3, return_ids=True)]
    )
    other = torch.cat(
        [i for _, i in store.batches(site, 7, seed=4, drop_last=False, window_shards=3, return_ids=True)]
    )
    assert torch.equal(ids, again) and not torch.equal(ids, other)
    dropped = list(store.batches(site, 7, seed=3))
    assert len(dropped) == n // 7 and all(b.shape == (7, store.d(site)) for b in dropped)
    plain = torch.cat(list(store.batches(site, 7, shuffle=False, drop_last=False)))
    assert torch.equal(plain, everything)
    assert next(store.batches(site, 4, dtype=torch.float64)).dtype == torch.float64


def test_forward_stops_at_the_last_site(tiny_llama, dataset, tmp_path, monkeypatch):
    calls = {"lm_head": 0, "last_block": 0}
    lm_head, last_block = tiny_llama.hf.lm_head, tiny_llama.hf.model.layers[2]

    def counting(module, key):
        forward = module.forward

        def wrapped(*args, **kwargs):
            calls[key] += 1
            return forward(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(lm_head, "forward", counting(lm_head, "lm_head"))
    monkeypatch.setattr(last_block, "forward", counting(last_block, "last_block"))
    harvest(tiny_llama, dataset, ["blocks.1.mlp.post"], tmp_path, progress=False)
    assert calls == {"lm_head": 0, "last_block": 0}  # layer 2 and the unembedding never ran
    tiny_llama(dataset.tokens[:1])
    assert calls == {"lm_head": 1, "last_block": 1}  # the counters do see a normal forward


def test_bad_input_says_what_is_wrong(tiny_llama, dataset, tmp_path):
    with pytest.raises(ValueError, match="attn.pattern"):
        harvest(tiny_llama, dataset, ["blocks.0.attn.pattern"], tmp_path, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        harvest(tiny_llama, dataset, ["blocks.0.mlp.post"], tmp_path, dtype="int8", progress=False)
    with pytest.raises(FileNotFoundError, match="no activation store"):
        ActivationStore(tmp_path / "nothing")
    store = harvest(tiny_llama, dataset, ["blocks.0.mlp.post"], tmp_path, progress=False)
    with pytest.raises(KeyError, match="blocks.0.mlp.post"):
        store.read("blocks.1.mlp.post")


def test_harvest_corpus_keeps_the_corpus_label_order(tiny_llama, tmp_path):
    from lmscope.data.corpus import build_corpus
    from lmscope.data.sources import jsonl_file

    records = [{"text": d.text, "label": d.label} for d in _docs(20)]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    corpus = build_corpus(
        tmp_path / "corpus", sources=[jsonl_file(tmp_path / "docs.jsonl")], min_chars=1, progress=False
    )
    store = harvest_corpus(
        tiny_llama,
        "blocks.0.mlp.post",
        tmp_path / "s",
        corpus=corpus,
        split="test",
        labels=["b"],
        ctx_len=8,
        progress=False,
    )
    assert store.label_names == ["a", "b"]  # the corpus's labels, though only "b" was harvested
    labels = store.token_info()["labels"]
    assert set(labels.tolist()) == {-1, 1}

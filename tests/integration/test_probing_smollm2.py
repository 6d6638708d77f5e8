"""SmolLM2: the French neuron, found here by the library (a probing sweep over every layer: 1-sparse probes
on per-document mean mlp.post of English, French and German man pages, best_neurons; then rank_by_ablation
among its top candidates, on training documents), then checked on the sweep's held-out documents with a
plain Hugging Face forward and a torch hook on the down projection's input: its activation separates French
from English, and zeroing it raises the loss on French text much more than on English text. No neuron is
assumed: a regression in the finder fails here."""

from __future__ import annotations

import pytest
import torch

import lmscope as ls
from lmscope.data.corpus import build_corpus
from lmscope.features.collect import document_means
from lmscope.features.documents import corpus_splits, features_of, targets
from lmscope.features.neurons import rank_by_ablation
from lmscope.features.sweeps import best_neurons

pytestmark = pytest.mark.integration

LABELS = ["english", "french", "german"]
CTX = 64


@pytest.fixture(scope="module")
def smollm2():
    """The bundled SmolLM2 from the user's cache (the first-run conversion is tested in test_smollm2.py)."""
    return ls.load()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """A corpus of the three labels built here, so a fresh checkout runs this test too (scripts/setup.sh
    installs the man pages it reads); only a machine without them skips, saying why."""
    try:
        return build_corpus(tmp_path_factory.mktemp("corpus"), labels=LABELS, progress=False)
    except ValueError as err:
        pytest.skip(f"cannot build a {'/'.join(LABELS)} corpus here: {err}")


@pytest.fixture(scope="module")
def splits(smollm2, corpus_dir):
    """Train and held-out test documents of that corpus: 24 / 8 per label, first 64 tokens."""
    train, test, _ = corpus_splits(smollm2, corpus_dir, LABELS, n_train=24, n_test=8, ctx_len=CTX)
    return train, test


@pytest.fixture(scope="module")
def french_neuron(smollm2, splits, corpus_dir) -> dict:
    """The finder's French neuron: best_neurons on the sweep, its top 8 re-ranked by zeroing each on the
    first 4 training documents of each label. The row: layer, neuron, sign, test f1, selectivity..."""
    train_ds, test_ds = splits
    sites = "blocks.*.mlp.post"
    train, test = document_means(smollm2, train_ds, sites), document_means(smollm2, test_ds, sites)
    features = features_of(train.label_names)
    y_train, y_test = targets(train, features)["french"], targets(test, features)["french"]
    rows = best_neurons(train.means, y_train, test.means, y_test, top=8)
    first_docs, _, _ = corpus_splits(smollm2, corpus_dir, LABELS, n_train=4, n_test=1, ctx_len=CTX)
    return rank_by_ablation(smollm2, first_docs, rows, ["french"], n_candidates=8)[0]


@torch.no_grad()
def _plain_forward(hf, ds, layer: int, neuron: int, zero: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain HF forward of a one-document-per-row dataset with a hook on layers[layer]'s down_proj input
    (the neuron activations): returns that neuron's mean activation per document [n_rows] and the next-token
    loss at each position whose next token is in the same document [n_rows, ctx-1] (NaN elsewhere), with the
    neuron zeroed at every position when `zero`."""
    seen = []

    def hook(module, args):
        x = args[0]
        seen.append(x[..., neuron].clone())  # [b, pos]
        if zero:
            x = x.clone()
            x[..., neuron] = 0.0
            return (x,)
        return None

    handle = hf.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hook)
    try:
        logits = hf(input_ids=ds.tokens, attention_mask=ds.attention_mask).logits.float()
    finally:
        handle.remove()
    real = ds.doc_ids >= 0  # BOS and padding are no document's tokens
    act = seen[0]
    mean_act = (act * real).sum(1) / real.sum(1)
    loss = -torch.log_softmax(logits[:, :-1], -1).gather(-1, ds.tokens[:, 1:, None])[..., 0]
    same_doc = real[:, :-1] & (ds.doc_ids[:, :-1] == ds.doc_ids[:, 1:])
    return mean_act, loss.masked_fill(~same_doc, float("nan"))


def _rows_of(ds, label: str):
    """The rows (documents) of `label` in a one-document-per-row dataset."""
    index = ds.label_names.index(label)
    return [i for i in range(len(ds)) if int(ds.labels[i, 1]) == index]  # position 0 is BOS


def test_found_french_neuron_separates_held_out_french_from_english(smollm2, splits, french_neuron):
    layer, neuron, sign = french_neuron["layer"], french_neuron["neuron"], french_neuron["sign"]
    assert french_neuron["f1"] >= 0.8 and french_neuron["selectivity"] > 0  # the sweep's own numbers
    _, test_ds = splits
    mean_act, _ = _plain_forward(smollm2.hf, test_ds, layer, neuron, zero=False)
    fr, en = sign * mean_act[_rows_of(test_ds, "french")], sign * mean_act[_rows_of(test_ds, "english")]
    assert len(fr) == len(en) == 8
    # Some French man pages open with a list of C identifiers (getspnam, getspnam_r, ...): their first 64
    # tokens hold little French, so one French document out of order is allowed, not two.
    auc = float((fr[:, None] > en[None, :]).float().mean())  # share of (French, English) pairs in order
    assert auc >= 0.85 and fr.median() > en.max(), (layer, neuron, fr, en)


def test_zeroing_the_found_french_neuron_hurts_held_out_french_more(smollm2, splits, french_neuron):
    layer, neuron = french_neuron["layer"], french_neuron["neuron"]
    _, test_ds = splits
    _, clean = _plain_forward(smollm2.hf, test_ds, layer, neuron, zero=False)
    _, ablated = _plain_forward(smollm2.hf, test_ds, layer, neuron, zero=True)
    delta = {
        label: float((ablated[rows] - clean[rows]).nanmean())
        for label in LABELS
        for rows in [_rows_of(test_ds, label)]
    }
    assert delta["french"] > 0.01 and delta["french"] > 3 * abs(delta["english"]), (layer, neuron, delta)

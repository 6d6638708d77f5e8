"""Sparse probing on SAE latents vs MLP neurons vs a randomly rotated basis (SAEBench's comparison).

    record = sparse_probing(sae, model, train_dataset, test_dataset, ks=(1, 2, 5))

Each document of a labelled TokenDataset (corpus labels: languages, programming languages) becomes the mean
over its tokens of one basis: the SAE's latents, the MLP neurons of the SAE's layer (blocks.L.mlp.post),
the SAE's input site in a Haar-random rotation, and the input site as it is. For every label with enough
documents, one-vs-rest SparseProbe(k) fits on the train documents and is scored on the test documents
(F1, precision, recall, accuracy). If the SAE found the corpus's concepts as single latents, k = 1 on the
latents beats k = 1 on the neurons and far beats the rotated basis. BOS and tokens above the SAE's
max_norm are left out of every basis (they are not encoded). Returns a JSON-ready dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ....model.sites import split_site
from ....report import Text, table
from ...basis import random_rotation
from ...collect import iter_batches
from ...probing import SparseProbe, binary_metrics
from ..model import SAE

KS = (1, 2, 5)


@torch.no_grad()
def document_bases(sae: SAE, model, dataset, seed: int = 0, batch_size: int = 8, progress: bool = False):
    """Per-document means in each basis. -> ({basis: [n_docs, d_basis]}, labels [n_docs], neuron site).

    Bases: "sae" [d_sae], "neurons" [d_mlp] (when the site has a layer), "rotated" and "input" [d_in]."""
    site = model.resolve_sites([sae.cfg.site])[0]
    layer, _ = split_site(site)
    neurons = f"blocks.{layer}.mlp.post" if layer is not None else None
    sites = [site] + ([neurons] if neurons and neurons != site else [])
    real = dataset.doc_ids >= 0
    docs = torch.unique(dataset.doc_ids[real])
    slot = torch.full((int(docs.max()) + 1,), -1, dtype=torch.long)
    slot[docs] = torch.arange(len(docs))
    sums: dict[str, Tensor] = {}
    counts = torch.zeros(len(docs), dtype=torch.float64)
    labels = torch.full((len(docs),), -1, dtype=torch.long)
    for batch, acts in iter_batches(model, dataset, sites, batch_size, progress, "probing activations"):
        x = acts[site].reshape(*acts[site].shape[:2], -1)  # [batch, pos, d_in]
        keep = batch["doc_ids"] >= 0
        if sae.cfg.max_norm is not None:
            keep &= x.norm(dim=-1) <= sae.cfg.max_norm
        target = slot[batch["doc_ids"][keep]]
        rows = {"input": x[keep], "sae": sae.encode(x[keep])}
        if neurons:
            rows["neurons"] = acts[neurons][keep]
        for name, values in rows.items():
            sums.setdefault(name, torch.zeros(len(docs), values.shape[-1], dtype=torch.float64))
            sums[name].index_add_(0, target, values.double())
        counts.index_add_(0, target, torch.ones(len(target), dtype=torch.float64))
        labels[target] = batch["labels"][keep]
    seen = counts > 0  # documents whose every token was left out have no mean
    bases = {name: (total[seen] / counts[seen, None]).float() for name, total in sums.items()}
    bases["rotated"] = bases["input"] @ random_rotation(bases["input"].shape[1], seed)
    return bases, labels[seen], neurons


def sparse_probing(
    sae: SAE,
    model,
    train,
    test,
    ks: Sequence[int] = KS,
    method: str = "mean_diff",
    min_docs: int = 3,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """One-vs-rest k-sparse probes for each corpus label, in each basis; train / test are TokenDatasets
    with the same label_names. Labels with fewer than min_docs positive (or negative) documents in either
    split are skipped. -> {"rows": [{label, basis, k, f1, precision, recall, accuracy, features}], "summary":
    [{basis, k, f1, accuracy}] (means over labels), "labels", "n_train_docs", "n_test_docs", ...}"""
    if list(train.label_names) != list(test.label_names):
        raise ValueError(
            f"train and test label names differ ({train.label_names} vs {test.label_names}); "
            "tokenise both splits with the same label_names"
        )
    Xtr, ytr, neurons = document_bases(sae, model, train, seed, progress=progress)
    Xte, yte, _ = document_bases(sae, model, test, seed, progress=progress)
    rows, used = [], []
    for index, name in enumerate(train.label_names):
        pos_tr, pos_te = ytr == index, yte == index
        counts = [int(pos_tr.sum()), int((~pos_tr).sum()), int(pos_te.sum()), int((~pos_te).sum())]
        if min(counts) < min_docs:
            continue
        used.append(name)
        for basis, X in Xtr.items():
            for k in ks:
                if k > X.shape[1]:
                    continue
                probe = SparseProbe(k=k, method=method, seed=seed).fit(X, pos_tr)
                pred = probe.predict(Xte[basis])
                metrics = binary_metrics(pred, pos_te)
                accuracy = float((pred == pos_te).float().mean())
                rows.append(
                    {"label": name, "basis": basis, "k": k, **metrics, "accuracy": accuracy}
                    | {"features": probe.neurons_.tolist()}
                )
    summary = []
    for basis in Xtr:
        for k in ks:
            sel = [r for r in rows if r["basis"] == basis and r["k"] == k]
            if sel:
                summary.append(
                    {
                        "basis": basis,
                        "k": k,
                        "f1": sum(r["f1"] for r in sel) / len(sel),
                        "accuracy": sum(r["accuracy"] for r in sel) / len(sel),
                    }
                )
    return {
        "site": sae.cfg.site,
        "neuron_site": neurons,
        "method": method,
        "ks": list(ks),
        "labels": used,
        "n_train_docs": len(ytr),
        "n_test_docs": len(yte),
        "rows": rows,
        "summary": summary,
    }


def probing_sections(record: dict) -> list[tuple[str, object]]:
    """Report sections: mean test F1 / accuracy per basis and k, then the per-label rows."""
    text = Text(
        f"One-vs-rest {record['method']} sparse probes on document means, {len(record['labels'])} labels "
        f"({', '.join(record['labels'])}), {record['n_train_docs']} train / {record['n_test_docs']} test "
        f"documents. Bases: sae (the SAE's latents), neurons ({record['neuron_site']}), input (the SAE's "
        "site as it is) and rotated (the site in a random orthonormal basis)."
    )
    sections = [("Sparse probing (SAEBench)", text), ("", table(record["summary"], float_format="{:.3f}"))]
    rows = [
        {k: v for k, v in r.items() if k != "features"} | {"features": str(r["features"])}
        for r in record["rows"]
    ]
    sections.append(("Sparse probing: every label", table(rows, float_format="{:.3f}")))
    return sections

"""Pick the unit that marks a label: the SAE feature or the MLP neuron most active on its texts.

    feature = label_feature(model, sae, french_texts, other_texts)          # an index into the SAE
    neuron = label_neuron(model, french_texts, other_texts, layer=5)        # "blocks.5.mlp.post[N]"

Both rank by the difference of per-text mean activations (positive minus negative texts) in units of the
per-text standard deviation, and keep only units more active on the positive texts, so steering along the
unit's output pushes towards the label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .direction import text_means


def _best(pos: Tensor, neg: Tensor) -> int:
    """The column with the largest (mean(pos) - mean(neg)) / std(all) ([n, d] per-text means)."""
    both = torch.cat([pos, neg])
    score = (pos.mean(0) - neg.mean(0)) / both.std(0).clamp_min(1e-6 * float(both.std(0).max()) + 1e-12)
    return int(score.argmax())


@torch.no_grad()
def sae_text_means(model, sae, texts: Sequence[str], ctx_len: int = 64, batch_size: int = 8) -> Tensor:
    """Each text's mean feature activation [n_texts, d_sae] (BOS left out; texts cut to ctx_len tokens)."""
    [site] = model.resolve_sites([sae.cfg.site])
    out = []
    for i in range(0, len(texts), batch_size):
        enc = model.tokenize(list(texts[i : i + batch_size]), prepend_bos=True)
        ids, mask = enc["input_ids"][:, :ctx_len], enc["attention_mask"][:, :ctx_len].clone()
        _, cache = model.run_with_cache(ids, sites=[site], attention_mask=mask, stop_at=site)
        f = sae.encode(cache[site].flatten(2).float().to(sae.W_enc.device)).cpu()  # [b, p, d_sae]
        mask[:, 0] = 0
        mask[mask.sum(1) == 0, 0] = 1
        keep = mask.float()[..., None]
        out.append((f * keep).sum(1) / keep.sum(1))
    return torch.cat(out)


def label_feature(model, sae, positive: Sequence[str], negative: Sequence[str], ctx_len: int = 64) -> int:
    """The SAE feature most active on the positive texts relative to the negative ones."""
    return _best(sae_text_means(model, sae, positive, ctx_len), sae_text_means(model, sae, negative, ctx_len))


def label_neuron(
    model, positive: Sequence[str], negative: Sequence[str], layer: int, ctx_len: int = 64
) -> str:
    """The neuron of layer `layer` most active on the positive texts: its name, blocks.L.mlp.post[N]."""
    site = f"blocks.{int(layer)}.mlp.post"
    index = _best(text_means(model, positive, site, ctx_len), text_means(model, negative, site, ctx_len))
    return f"{site}[{index}]"

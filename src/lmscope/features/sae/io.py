"""Save and load SAEs as ``cfg.json`` + ``sae_weights.safetensors``, the layout SAELens reads and writes.

Weights use SAELens's names and orientation: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in],
b_dec [d_in], and ``threshold`` [d_sae] for JumpReLU. cfg.json carries the keys SAELens reads (d_in, d_sae,
architecture, hook_name, model_name, dtype, device, normalize_activations, apply_b_dec_to_input, k, ...) and
lmscope's own (site, model, and the whole training config under "lmscope_config"). Saved SAEs read raw
activations: the training norm scale is folded into the weights, so normalize_activations is "none".

`load_sae` also reads SAEs saved by SAELens (standard, topk, jumprelu); a hook name is mapped to an lmscope
site with TransformerLens's aliases.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ...model.sites import canonical
from ...runs import write_atomic, write_json
from .config import BatchTopKConfig, JumpReLUConfig, StandardConfig, TopKConfig, config_from_dict
from .model import SAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
LOG_FILE = "training_log.json"

# lmscope site suffix -> TransformerLens hook name suffix (what SAELens's hook_name holds)
_TL_NAMES = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "mlp.in": "ln2.hook_normalized",
    "resid_post": "hook_resid_post",
    "attn.z": "attn.hook_z",
    "attn.out": "hook_attn_out",
    "mlp.pre": "mlp.hook_pre",
    "mlp.post": "mlp.hook_post",
    "mlp.out": "hook_mlp_out",
}


def hook_name(site: str) -> str:
    """'blocks.15.resid_post' -> 'blocks.15.hook_resid_post' (TransformerLens's name, used by SAELens)."""
    parts = site.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] in _TL_NAMES:
        return f"blocks.{parts[1]}.{_TL_NAMES[parts[2]]}"
    return {"embed": "hook_embed", "final.norm": "ln_final.hook_normalized"}.get(site, site)


def save_sae(sae: SAE, path: str | os.PathLike, log: list[dict] | None = None) -> Path:
    """Write cfg.json and sae_weights.safetensors (and training_log.json if `log`) into folder `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    tensors = {
        "W_enc": sae.W_enc.detach().contiguous(),
        "b_enc": sae.b_enc.detach().contiguous(),
        "W_dec": sae.W_dec.detach().contiguous(),
        "b_dec": sae.b_dec.detach().contiguous(),
    }
    if sae.architecture == "jumprelu":
        tensors["threshold"] = sae.threshold.detach().contiguous()
    if sae.W_skip is not None:
        tensors["W_skip"] = sae.W_skip.detach().contiguous()
    record = {
        # what SAELens reads
        "architecture": sae.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": str(sae.W_enc.device),
        "model_name": cfg.model,
        "hook_name": hook_name(cfg.site),
        "hook_head_index": None,
        "apply_b_dec_to_input": not cfg.is_transcoder,
        "normalize_activations": "none",
        "finetuning_scaling_factor": False,
        "context_size": None,
        "prepend_bos": True,
        "metadata": {"model_name": cfg.model, "hook_name": hook_name(cfg.site), "prepend_bos": True},
        # lmscope's own
        "site": cfg.site,
        "model": cfg.model,
        "norm_scaling_factor_folded": cfg.norm_scale,
        "lmscope_config": cfg.to_dict(),
    }
    if isinstance(cfg, TopKConfig):  # BatchTopK too: the mean L0 it was trained for
        record["k"] = cfg.k
    if cfg.is_transcoder:  # SAELens's transcoder keys
        record.update(
            d_out=cfg.d_target, hook_name_out=hook_name(cfg.target_site), target_site=cfg.target_site
        )
    write_atomic(path / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    write_json(path / CFG_FILE, record)
    if log is not None:
        write_json(path / LOG_FILE, log)
    return path


def _config_from_saelens(record: dict):
    """An lmscope config for an SAE saved by SAELens (no lmscope_config in its cfg.json)."""
    meta = record.get("metadata") or {}
    hook = record.get("hook_name") or meta.get("hook_name") or ""
    common = {
        "d_in": int(record["d_in"]),
        "d_sae": int(record["d_sae"]),
        "site": canonical(hook) if hook else "",
        "model": record.get("model_name") or meta.get("model_name") or "",
    }
    arch = record.get("architecture", "standard")
    if arch == "standard":
        return StandardConfig(**common), arch
    if arch == "topk":
        return TopKConfig(**common, k=int(record["k"])), arch
    if arch == "jumprelu":  # with k: a BatchTopK SAE saved for inference; without: trained as JumpReLU
        if "k" in record:
            return BatchTopKConfig(**common, k=int(record["k"])), arch
        return JumpReLUConfig(**common), arch
    raise ValueError(
        f"cannot load an SAE of architecture {arch!r}; lmscope reads standard, topk and jumprelu"
    )


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE folder (cfg.json + sae_weights.safetensors), saved by lmscope or SAELens."""
    path = Path(path)
    cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{path} is not an SAE folder: it needs {CFG_FILE} and {WEIGHTS_FILE} "
            "(train one with `lmscope sae train`, or point at a SAELens SAE folder)"
        )
    record = json.loads(cfg_path.read_text())
    if "lmscope_config" in record:
        cfg, arch = config_from_dict(record["lmscope_config"]), record["architecture"]
    else:
        cfg, arch = _config_from_saelens(record)
    norm = record.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise ValueError(
            f"{cfg_path} has normalize_activations={norm!r}, whose scale lives outside the weights; fold it "
            "into the SAE first (SAELens: sae.fold_activation_norm_scaling_factor(scale)) and save again"
        )
    tensors = load_file(str(weights_path))
    missing = sorted({"W_enc", "b_enc", "W_dec", "b_dec"} - set(tensors))
    if missing:
        raise ValueError(f"{weights_path} lacks {', '.join(missing)}")
    if tuple(tensors["W_dec"].shape) != (cfg.d_sae, cfg.d_target):
        raise ValueError(
            f"{weights_path}: W_dec is {tuple(tensors['W_dec'].shape)}, cfg.json says [{cfg.d_sae}, {cfg.d_target}]"
        )
    if ("W_skip" in tensors) != bool(cfg.skip):
        raise ValueError(
            f"{weights_path}: W_skip {'missing' if cfg.skip else 'present'}, cfg.json says skip={cfg.skip}"
        )
    sae = SAE(cfg, architecture=arch)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(tensors[name].float())
        if "threshold" in tensors:
            sae.threshold.copy_(tensors["threshold"].float())
        if sae.W_skip is not None:
            sae.W_skip.copy_(tensors["W_skip"].float())
        if not record.get("apply_b_dec_to_input", True) and not cfg.is_transcoder:
            # f = act(x W_enc + b_enc) == act((x - b_dec) W_enc + b_enc + b_dec W_enc)
            sae.b_enc.add_(sae.b_dec @ sae.W_enc)
    return sae.to(device)

"""The one grammar for naming a component (model.sites.parse_component): round trips, aliases, errors, and
index ranges that match the sites' real tensors."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from lmscope.model.sites import (
    HEAD_KINDS,
    NEURON_KINDS,
    WHOLE_KINDS,
    Component,
    ComponentError,
    SiteError,
    format_component,
    head_input,
    index_range,
    parse_component,
    split_site,
)


def _every_component(model) -> list[Component]:
    """Every kind this model has, whole and (where it takes one) with its last valid index."""
    out = []
    for site in model.sites:
        layer, kind = split_site(site)
        out.append(Component(layer, kind))
        if kind in HEAD_KINDS + NEURON_KINDS:
            out.append(Component(layer, kind, index_range(model.cfg, kind)[0] - 1))
    return out + [Component(layer, whole) for layer in range(model.cfg.n_layers) for whole in WHOLE_KINDS]


def test_round_trip_for_every_kind(tiny):
    cfg = tiny.cfg
    for comp in _every_component(tiny):
        name = str(comp)
        assert name == format_component(comp.layer, comp.kind, comp.index)
        assert parse_component(name, cfg) == comp
        assert comp.site in tiny.sites  # a component lives on a real site
        if comp.kind in WHOLE_KINDS:
            assert comp.site == f"blocks.{comp.layer}.{WHOLE_KINDS[comp.kind]}"
    assert str(Component(7, "attn.z", 3)) == "blocks.7.attn.z[3]"
    assert str(Component(None, "embed")) == "embed" and str(Component(2, "mlp")) == "blocks.2.mlp"


@torch.no_grad()
def test_index_ranges_match_the_sites_tensors(tiny_llama):
    """attn.k / attn.v index key/value heads (2 in this GQA model), the others query heads or neurons:
    exactly the size of the axis the index selects in the cached tensor."""
    cfg = tiny_llama.cfg
    sites = ["blocks.1." + kind for kind in HEAD_KINDS + NEURON_KINDS]
    _, cache = tiny_llama.run_with_cache(torch.tensor([[2, 3, 4]]), sites=sites)
    for kind in HEAD_KINDS + NEURON_KINDS:
        axis = {"attn.pattern": 1}.get(kind, 2 if kind in HEAD_KINDS else -1)
        n, _ = index_range(cfg, kind)
        assert cache[f"blocks.1.{kind}"].shape[axis] == n
        parse_component(f"blocks.1.{kind}[{n - 1}]", cfg)
        with pytest.raises(ComponentError, match=rf"indexed 0\.\.{n - 1}"):
            parse_component(f"blocks.1.{kind}[{n}]", cfg)
    assert index_range(cfg, "attn.k")[0] == 2 and index_range(cfg, "attn.q")[0] == 4


def test_aliases(tiny_llama):
    cfg = tiny_llama.cfg
    same = {
        "blocks.2.attn.hook_z[3]": "blocks.2.attn.z[3]",
        "blocks.2.attn.hook_q[1]": "blocks.2.attn.q[1]",
        "blocks.0.mlp.hook_post[5]": "blocks.0.mlp.post[5]",
        "blocks.1.hook_resid_post": "blocks.1.resid_post",
        "blocks.1.hook_mlp_out": "blocks.1.mlp.out",
        "hook_embed": "embed",
        "unembed": "logits",
        "L2H3": "blocks.2.attn.z[3]",
        "l2h3": "blocks.2.attn.z[3]",
        "L1 N7": "blocks.1.mlp.post[7]",
        "L1N7": "blocks.1.mlp.post[7]",
        "  blocks.2.attn.z[ 3 ] ": "blocks.2.attn.z[3]",
    }
    for alias, name in same.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # these are aliases, not deprecated forms
            assert str(parse_component(alias, cfg)) == name, alias
    # the old short forms: still parsed, with a warning that gives the canonical name
    old = {
        "2.3": "blocks.2.attn.z[3]",
        "2.3.q": "blocks.2.attn.q[3]",
        "2.3.k": "blocks.2.attn.k[1]",  # query head 3 reads key/value head 3 // (4 / 2) = 1
        "2.0.v": "blocks.2.attn.v[0]",
        "mlp.1": "blocks.1.mlp",
        "mlp.1.gate": "blocks.1.mlp.pre",  # the gate's input is the GLU's mlp.pre
    }
    for short, name in old.items():
        with pytest.warns(FutureWarning, match=re.escape(f"write '{name}'")):
            assert str(parse_component(short, cfg)) == name
    for part, kv in (("q", 3), ("k", 1), ("v", 1)):
        assert head_input(cfg, 2, 3, part) == Component(2, f"attn.{part}", kv)
    assert parse_component(Component(2, "attn.z", 1), cfg) == Component(2, "attn.z", 1)


def test_errors_say_what_is_wrong(tiny_llama):
    cfg = tiny_llama.cfg
    cases = {
        "blocks.2.atn.z[1]": r"unknown component .*Closest valid names: blocks\.2\.attn\.z\[1\]",
        "blocks.2.attn.zz": r"Closest valid names: blocks\.2\.attn\.z",
        "nonsense": r"unknown component 'nonsense'\. Components are written blocks\.L\.attn\.z\[H\]",
        "blocks.7.attn.z[0]": r"this model has layers 0\.\.2",
        "blocks.2.attn.z[4]": r"attn\.z has 4 heads, indexed 0\.\.3",
        "blocks.2.attn.v[2]": r"attn\.v has 2 key/value heads, indexed 0\.\.1",
        f"blocks.2.mlp.post[{cfg.d_mlp}]": rf"{cfg.d_mlp} neurons, indexed 0\.\.{cfg.d_mlp - 1}",
        "blocks.2.resid_post[3]": "resid_post takes no index",
        "blocks.2.attn[1]": "attn takes no index",
        "blocks.2.attn.z[-1]": "whole number",
        "blocks.2.attn.z[1][2]": "one index",
        "blocks.*.attn.z[1]": "names one thing",
        "pos_embed": "no site pos_embed",  # rotary model: no learned positions
        "": "non-empty",
        "2.9.q": r"attn\.q has 4 heads",
    }
    for name, message in cases.items():
        with pytest.raises(ComponentError, match=message):
            parse_component(name, cfg)
    # a ComponentError is both a ValueError and a SiteError (a KeyError), so either kind of handler catches it
    assert issubclass(ComponentError, ValueError) and issubclass(ComponentError, SiteError)
    with pytest.raises(ComponentError, match=r"is not a sender here; write blocks\.L\.attn\.z\[H\]"):
        parse_component("blocks.1.attn.q[0]", cfg, kinds=["attn.z"], what="sender")
    with pytest.raises(ComponentError, match="is not a head"):
        parse_component("blocks.1.attn.z", cfg, kinds=["attn.z"], indexed=True, what="head")
    with pytest.raises(ComponentError, match=r"write blocks\.L\.mlp$"):
        parse_component("blocks.1.mlp.post[3]", cfg, kinds=["mlp"], indexed=False, what="MLP")
    with pytest.raises(ComponentError, match="takes no index"):
        format_component(1, "resid_post", 3)
    with pytest.raises(ComponentError, match="not a layer part"):
        format_component(1, "attn.zz")

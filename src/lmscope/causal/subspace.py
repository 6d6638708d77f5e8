"""Subspace patching at one site of the prediction position, and the candidate directions to patch.

A `SiteProblem` holds what every subspace method needs about one site: the activation h [n, d] on base and
source prompts at the prediction position, and `run(h, idx)`, the model's logits there when the site holds h.
`site_problem(model, task, site)` builds it so that `run` starts at the site's layer from cached activations
and computes the last position only (the keys/values of earlier positions come from the base run, which no
patch at the last position changes). DAS, the audit and the tests of the abstract example all use it; the
abstract example builds one by hand.

Patching a subspace with orthonormal basis B [d, k] from source u into base w keeps w's orthogonal part:
w' = w + B Bᵀ (u - w); for one unit direction v, w' = w + ((u - w)·v) v.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from ..model.interventions import Hook
from ..model.sites import split_site

# Sites whose activation at a position is one vector (subspaces of head sites would need a head index).
VECTOR_SITES = ("resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.pre", "mlp.post", "mlp.out")
PRIVILEGED = ("mlp.pre", "mlp.post")  # a nonlinearity acts per coordinate: the neuron basis means something


@dataclass
class SiteProblem:
    """One site at the prediction position of n prompt pairs, and how the model continues from it.

    base, source:  [n, d] the site's activation on the base (clean) and source (corrupt) prompts
    answer, wrong: [n] token ids; logit difference = logit(answer) - logit(wrong)
    target:        [n] the answer a successful interchange should produce (the source's answer)
    base_class:    [n] 0/1 value of the patched concept on the base prompt (the source has the other)
    run:           (h [b, d], idx [b]) -> logits [b, V] at the prediction position with the site set to h
    read_out:      [d, r] columns spanning the directions downstream weights read, or None (unknown)
    privileged:    whether the site's coordinates are neurons (a per-coordinate nonlinearity)
    """

    site: str
    base: Tensor
    source: Tensor
    answer: Tensor
    wrong: Tensor
    target: Tensor
    base_class: Tensor
    run: Callable[[Tensor, Tensor], Tensor]
    read_out: Tensor | None = None
    privileged: bool = False
    read_out_note: str = ""

    @property
    def n(self) -> int:
        return self.base.shape[0]

    @property
    def d(self) -> int:
        return self.base.shape[1]

    def logit_diff(self, logits: Tensor, idx: Tensor) -> Tensor:
        """[b, V] -> logit(answer) - logit(wrong) [b] for examples idx."""
        return logits.gather(1, self.answer[idx, None]).squeeze(1) - logits.gather(
            1, self.wrong[idx, None]
        ).squeeze(1)

    def acts_by_class(self) -> tuple[Tensor, Tensor]:
        """All 2n clean activations [2n, d] and the concept's value on each [2n] (source = 1 - base)."""
        acts = torch.cat([self.base, self.source])
        labels = torch.cat([self.base_class, 1 - self.base_class])
        return acts, labels


def orthonormal(basis: Tensor) -> Tensor:
    """[d] or [d, k] -> [d, k] with orthonormal columns spanning the same subspace."""
    basis = basis.detach().float()
    if basis.dim() == 1:
        basis = basis[:, None]
    if basis.dim() != 2:
        raise ValueError(f"a subspace basis is [d] or [d, k], not {tuple(basis.shape)}")
    q, r = torch.linalg.qr(basis)
    if (r.diagonal().abs() < 1e-6 * r.diagonal().abs().max().clamp(min=1e-30)).any():
        raise ValueError("the basis vectors are linearly dependent (or zero): the subspace is ill-defined")
    return q


def interchange(base: Tensor, source: Tensor, basis: Tensor | None) -> Tensor:
    """Patch span(basis) from source into base: base + ((source - base) @ B) @ Bᵀ. basis None = all of it."""
    if basis is None:
        return source
    return base + ((source - base) @ basis) @ basis.T


def split_direction(v: Tensor, read_out: Tensor) -> tuple[Tensor, Tensor]:
    """v [d] -> (v_row, v_kernel): its parts in the span of read_out's columns and orthogonal to it."""
    q, r = torch.linalg.qr(read_out.float())
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max()  # drop directions read_out doesn't span
    q = q[:, keep]
    v_row = q @ (q.T @ v.float())
    return v_row, v.float() - v_row


# ---------------------------------------------------------------------------------------------- the model


def _vector_site(model, site: str) -> tuple[int, str]:
    [site] = model.resolve_sites([site])
    layer, kind = split_site(site)
    if layer is None or kind not in VECTOR_SITES:
        raise ValueError(
            f"subspace methods take a per-layer vector site ({', '.join(VECTOR_SITES)}), not {site!r}; "
            "e.g. blocks.8.resid_post or blocks.8.mlp.post"
        )
    return layer, kind


def _prefix_kv(kv: DynamicCache, first: int, stop: int) -> list[tuple[Tensor, Tensor]]:
    """The keys/values [n, kv_heads, stop, d_head] of layers first.. for positions < stop, copied once."""
    return [
        (lay.keys[:, :, :stop].contiguous(), lay.values[:, :, :stop].contiguous())
        for lay in kv.layers[first:]
    ]


def _step_kv(prefix: list[tuple[Tensor, Tensor]], first: int, idx: Tensor) -> DynamicCache:
    """A fresh cache holding examples idx of `prefix` at layers first.. (a run extends it in place).

    Layers before `first` are skipped by the run (start_from), so they only have to report the prefix
    length (HF reads it from layer 0 for positions and the mask): they get [b, kv_heads, stop, 1] zeros
    (not empty: an empty layer reports length 0) instead of a gathered copy.
    """
    keys = prefix[0][0]
    blank = keys.new_zeros(()).expand(len(idx), keys.shape[1], keys.shape[2], 1)
    return DynamicCache([(blank, blank)] * first + [(k[idx], v[idx]) for k, v in prefix])


def site_problem(
    model,
    task,
    site: str,
    readers: list[str] | None = None,
    target: Tensor | None = None,
    base_class: Tensor | None = None,
) -> SiteProblem:
    """Cache what subspace patching at `site` on task's prediction position needs; see SiteProblem.

    Base = clean prompts, source = corrupt prompts. target defaults to task.wrong (the answer flips, as in
    IOI with a swapped name pattern); base_class defaults to the IOI order (ABB = 1) when the task records
    it, otherwise 0 (clean) for every base. readers: for residual-stream sites, heads "L.H" (or
    "L.H.q"/".k"/".v") whose weights define the read-out; see `read_out_matrix`.
    """
    layer, kind = _vector_site(model, site)
    [site] = model.resolve_sites([site])
    resid = f"blocks.{layer}.resid_pre"
    kv = DynamicCache()
    with torch.no_grad():
        _, base_cache = model.run_with_cache(
            task.inputs("clean"), sites=[site, resid], logits_to_keep=1, kv_cache=kv
        )
        _, source_cache = model.run_with_cache(task.inputs("corrupt"), sites=[site], stop_at=site)
    stop = task.clean.shape[1] - 1  # the prediction position is the last one (prompts are left-padded)
    start = base_cache[resid][:, -1:]  # [n, 1, d_model]
    prefix = _prefix_kv(kv, layer, stop)  # only what the run needs, sliced once, not per step
    del kv
    inputs = task.inputs("clean")

    def run(h: Tensor, idx: Tensor) -> Tensor:
        set_h = Hook(site, lambda act, _site: h[:, None, :].to(act.dtype))
        logits, _ = model.run_with_cache(
            {name: t[idx] for name, t in inputs.items()},
            sites=[],
            interventions=[set_h],
            start_from=(layer, start[idx]),
            kv_cache=_step_kv(prefix, layer, idx),
            logits_to_keep=1,
        )
        return logits[:, -1].float()

    if base_class is None:
        order = task.meta.get("order")
        base_class = (
            torch.tensor([o == "ABB" for o in order], dtype=torch.long)
            if order is not None
            else torch.zeros(len(task), dtype=torch.long)
        )
    read_out, note = read_out_matrix(model, site, readers)
    return SiteProblem(
        site=site,
        base=base_cache[site][:, -1].float(),
        source=source_cache[site][:, -1].float(),
        answer=task.answer,
        wrong=task.wrong,
        target=task.wrong if target is None else target,
        base_class=base_class,
        run=run,
        read_out=read_out,
        privileged=kind in PRIVILEGED,
        read_out_note=note,
    )


def read_out_matrix(model, site: str, readers: list[str] | None = None) -> tuple[Tensor, str]:
    """[d, r] columns spanning what the weights downstream of `site` read from it, and a note saying which.

    mlp.post: the rows of W_out (the only reader of the neurons). Residual-stream sites: what the named
    readers read (circuits.composition.reader_matrix: heads' q/k/v inputs such as 'blocks.23.attn.q[0]', MLP
    inputs, logits) with their norm's weight folded in; readers=None takes every head and MLP input of later
    layers (then the read-out usually spans everything and the split says nothing).
    Norms divide by a data-dependent scale; a direction in the kernel still changes that scale a little.
    """
    layer, kind = _vector_site(model, site)
    w = model.weights
    if kind == "mlp.post":
        # h -> h @ W_out reads exactly the span of W_out's columns: [d_mlp, d_model]
        return w.W_out(layer).detach().float(), f"W_out of layer {layer}"
    if kind in ("mlp.pre",):
        raise ValueError("no read-out split for mlp.pre: audit mlp.post (the neurons W_out reads)")
    first = layer + 1 if kind in ("resid_post", "mlp.out") else layer
    if readers:
        from ..circuits.composition import READER_KINDS, reader_matrix, stream_position
        from ..model.sites import parse_component

        written = stream_position(model, parse_component(site, model.cfg))[1]
        comps = [parse_component(r, model.cfg, kinds=READER_KINDS, what="reader") for r in readers]
        late = [str(c) for c in comps if stream_position(model, c)[0] < written]
        if late:
            raise ValueError(f"readers {', '.join(late)} read the residual stream before {site} is written")
        cols = [reader_matrix(model, c).float() for c in comps]
        return torch.cat(cols, dim=1), "what " + ", ".join(map(str, comps)) + " read"
    cols = []
    for lay in range(first, model.cfg.n_layers):
        for mat in (w.W_Q(lay), w.W_K(lay), w.W_V(lay)):
            cols.append(mat.detach().float().permute(1, 0, 2).reshape(model.cfg.d_model, -1))
        for mat in (w.W_in(lay), w.W_gate(lay)):
            if mat is not None:
                cols.append(mat.detach().float())
    return torch.cat(cols, dim=1), f"every head and MLP input of layers {first}..{model.cfg.n_layers - 1}"


# ------------------------------------------------------------------------------------------- evaluation


@dataclass
class PatchOutcome:
    """A patch's effect on n examples. fldd: fraction of logit difference lost, 1 - LD_patched / LD_clean
    (mean over examples of each); flipped: share with LD_patched < 0; iia: share whose top token is the
    target (interchange-intervention accuracy)."""

    name: str
    logit_diff: Tensor  # [n]
    clean_logit_diff: Tensor  # [n]
    top_is_target: Tensor  # [n] bool

    @property
    def mean_logit_diff(self) -> float:
        return float(self.logit_diff.mean())

    @property
    def fldd(self) -> float:
        return float(1 - self.logit_diff.mean() / self.clean_logit_diff.mean())

    @property
    def flipped(self) -> float:
        return float((self.logit_diff < 0).float().mean())

    @property
    def iia(self) -> float:
        return float(self.top_is_target.float().mean())

    def row(self) -> dict:
        return {
            "patch": self.name,
            "logit_diff": self.mean_logit_diff,
            "fldd": self.fldd,
            "flipped": self.flipped,
            "iia": self.iia,
        }


def run_batched(problem: SiteProblem, h: Tensor, batch_size: int = 64) -> Tensor:
    """Logits [n, V] with the site set to h [n, d], in batches, without gradients."""
    out = []
    with torch.no_grad():
        for i in range(0, problem.n, batch_size):
            idx = torch.arange(i, min(i + batch_size, problem.n))
            out.append(problem.run(h[idx], idx))
    return torch.cat(out)


def evaluate(
    problem: SiteProblem,
    basis: Tensor | None,
    name: str = "",
    batch_size: int = 64,
    clean: Tensor | None = None,
) -> PatchOutcome:
    """Patch span(basis) ([d] or [d, k]; None = the whole component) from source into base, measure it.

    clean: the unpatched logits [n, V] if already computed (they are the same for every patch)."""
    basis = None if basis is None else orthonormal(basis)
    idx = torch.arange(problem.n)
    if clean is None:
        clean = run_batched(problem, problem.base, batch_size)
    patched = run_batched(problem, interchange(problem.base, problem.source, basis), batch_size)
    return PatchOutcome(
        name=name or ("full component" if basis is None else f"{basis.shape[1]}-dim subspace"),
        logit_diff=problem.logit_diff(patched, idx),
        clean_logit_diff=problem.logit_diff(clean, idx),
        top_is_target=patched.argmax(-1) == problem.target,
    )


# ------------------------------------------------------------------------------------ candidate directions


def mean_difference(problem: SiteProblem) -> Tensor:
    """Unit direction [d] from the concept's class-0 mean to its class-1 mean over all clean activations."""
    acts, labels = problem.acts_by_class()
    direction = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
    return direction / direction.norm()


def probe_direction(problem: SiteProblem, l2: float = 1e-2, steps: int = 200) -> Tensor:
    """Unit weight vector [d] of an L2-regularised logistic probe for the concept on clean activations."""
    acts, labels = problem.acts_by_class()
    # centred and scaled by one number: a per-coordinate scaling would change which direction is found
    scale = (acts - acts.mean(0)).pow(2).sum(1).mean().sqrt().clamp(min=1e-6)
    x = (acts - acts.mean(0)) / scale * x_dim_scale(acts)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, labels.float())
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    direction = w.detach()  # isotropic scaling leaves the direction as it is
    return direction / direction.norm()


def x_dim_scale(acts: Tensor) -> float:
    """sqrt(d): puts centred activations of mean squared norm 1 at unit scale per coordinate."""
    return float(acts.shape[1]) ** 0.5


def gradient_direction(problem: SiteProblem, batch_size: int = 32) -> Tensor:
    """Unit direction [d]: the mean gradient of the logit difference with respect to the site, each
    example's sign set by its concept value so that all point from class 0 towards class 1."""
    total = torch.zeros(problem.d)
    for i in range(0, problem.n, batch_size):
        idx = torch.arange(i, min(i + batch_size, problem.n))
        h = problem.base[idx].clone().requires_grad_(True)
        ld = problem.logit_diff(problem.run(h, idx), idx)
        (grad,) = torch.autograd.grad(ld.sum(), h)
        # LD falls as h moves towards the source's class: towards class 0 from class 1 and vice versa
        sign = 2.0 * problem.base_class[idx].float() - 1.0
        total += (grad * sign[:, None]).sum(0)
    return total / total.norm()

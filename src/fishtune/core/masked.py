"""Selective fine-tuning with LoRA-like memory and dense-like speed: only the masked entries are trainable.

`apply_mask(model, mask)` freezes every pretrained parameter and makes the k selected entries of all masked
tensors one flat trainable vector ``delta`` (a `MaskedWeights` submodule,
docs/algorithms.md, "Masked training and sparse deltas"). How a step runs:

- The model's masked tensors hold W0+delta *in place*: they become views of one flat weight buffer, so the
  forward is the model's own dense forward: no parametrization, no W0+delta copy, no saved-tensor hooks.
  Unselected entries are bit-identical copies of the pretrained weight at all times.
- Each masked tensor is a leaf that requires grad but is a buffer, not a parameter (so `parameters()`,
  optimizers and `trainable_count` see only ``delta`` and the head). Its gradient is gathered, the moment
  autograd has it, into the k slots of ``delta.grad`` (a post-accumulate-grad hook) and freed: no dense
  gradient outlives its layer and no dense optimizer state exists. Tensors with no selected entry stay
  frozen and get no weight gradient at all.
- After the optimizer changes ``delta``, one scatter writes W0[idx] + delta back into the flat buffer
  (`MaskedAdamW.step` does it at once; with any other optimizer the model's forward pre-hook does it before
  each forward). The update equals a dense AdamW step on dense gradients × mask.
- ``weight_grad="blocks"`` (and "auto", the default, off CUDA): a masked `nn.Linear` (or GPT-2 `Conv1D`)
  whose entries lie in a few rows or columns computes only that block of dW instead of the dense product,
  and a masked `nn.Embedding` sums dY only into the selected rows of the batch's tokens, never a vocabulary
  × width gradient (`_blocked`); such a weight gets no dense gradient and no hook.

AdamW's decoupled weight decay acts on the effective weight W0+delta in `MaskedAdamW`, exactly as a dense
AdamW on the masked entries would; a stock optimizer (e.g. the one `Trainer` builds) decays delta toward
zero instead, i.e. toward the pretrained value. Either way unselected entries never move.

Apply the mask after moving the model to its device and dtype. `merge(model)` makes the masked tensors
plain frozen parameters again (holding W0+delta); `deltas` stores a trained model as the difference only
(indices + values + the dense task head), in safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from . import _blocked
from .masks import Mask, param_names

__all__ = ["MaskedWeights", "MaskedTensor", "apply_mask", "merge", "masked_tensors", "sync_weights",
           "MaskedAdamW", "trainable_count", "weight_grad_summary"]

STATE = "fishtune_masked"  # the submodule `apply_mask` adds to the model
WEIGHT_GRADS = ("auto", "dense", "blocks")  # apply_mask's weight_grad


@dataclass
class _Segment:
    """One masked tensor inside its group: entries from ``start`` of the flat weight buffer, its
    selected flat ``indices``, and their slots ``offset:offset+count`` of the group's ``delta``."""

    name: str
    shape: tuple[int, ...]
    start: int
    indices: torch.Tensor
    offset: int
    weight: torch.Tensor  # the model's tensor: a leaf view of the flat buffer holding W0 + delta
    owners: list[tuple[nn.Module, str]]
    handle: object = None
    plan: object = None  # a `_blocked.Plan` when its Linear layers compute only a block of dW

    @property
    def count(self) -> int:
        return int(self.indices.numel())


class _Group:
    """Masked tensors of one device and dtype: one flat weight buffer, one trainable ``delta``."""

    def __init__(self, items) -> None:
        self.flat = torch.cat([p.detach().reshape(-1) for _, p, _ in items])
        self.segments: list[_Segment] = []
        start = offset = 0
        for name, p, idx in items:
            idx = idx.to(device=p.device, dtype=torch.long)
            w = self.flat[start:start + p.numel()].view(p.shape).detach().requires_grad_(True)
            self.segments.append(_Segment(name, tuple(p.shape), start, idx, offset, w, []))
            start, offset = start + p.numel(), offset + idx.numel()
        self.index = torch.cat([s.start + s.indices for s in self.segments])
        self.base = self.flat[self.index].clone()  # W0 at the selected entries (weight decay, saving)
        self.delta = nn.Parameter(torch.zeros_like(self.base))
        self.grad_buf: torch.Tensor | None = None
        self.written: set[int] = set()  # segments whose gradient reached delta.grad in this cycle
        self.trusted: int | None = None  # delta's version when `MaskedAdamW` last wrote it back

    def gather(self, seg_no: int, flat: torch.Tensor, index: torch.Tensor) -> None:
        """Add ``flat[index]`` (segment ``seg_no``'s k gradient entries, in its ``indices`` order) into its
        slots of ``delta.grad``; the first write of an accumulation cycle gathers straight into them (no
        zeroing pass per tensor, no temporary)."""
        seg, d = self.segments[seg_no], self.delta
        if d.grad is None:  # a new accumulation cycle: reuse one zeroed buffer
            if self.grad_buf is None:
                self.grad_buf = torch.zeros_like(d)
            else:
                self.grad_buf.zero_()
            d.grad = self.grad_buf
            self.written.clear()
        slot = d.grad[seg.offset:seg.offset + seg.count]
        if seg_no in self.written:
            slot.add_(flat.index_select(0, index))
        else:
            torch.index_select(flat, 0, index, out=slot)
            self.written.add(seg_no)

    def hook(self, seg_no: int):
        seg = self.segments[seg_no]

        def gather(w: torch.Tensor) -> None:
            g, w.grad = w.grad, None  # the dense gradient dies here
            if g is not None:
                self.gather(seg_no, g.reshape(-1), seg.indices)

        return gather

    @torch.no_grad()
    def sync(self, trust: bool = False) -> None:
        """Write W0 + delta into the selected entries of the flat buffer. ``trust`` (`MaskedAdamW` after its
        step): always written, and later calls skip it while delta's version stays the same. Otherwise it is
        written unless so skipped (a stock optimizer may update ``delta.data``, and a fused kernel updates it
        without bumping its version: neither leaves a trace, so delta is then written before every
        forward, two kernels)."""
        if not trust and self.trusted is not None and self.trusted == self.delta._version:
            return
        self.flat.index_copy_(0, self.index, self.base + self.delta.to(self.base.dtype))
        self.trusted = self.delta._version if trust else None

    def untouched(self) -> list[_Segment]:
        """Segments that got no gradient in the current cycle (their tensor took no part in the loss)."""
        if self.delta.grad is None or len(self.written) == len(self.segments):
            return []
        return [s for i, s in enumerate(self.segments) if i not in self.written]


class MaskedWeights(nn.Module):
    """The trainable state of a masked model: ``delta<g>`` per group of masked tensors (one per device and
    dtype, usually one). Made by `apply_mask`; `merge` removes it."""

    def __init__(self, model: nn.Module, chosen: list[tuple[str, torch.Tensor]], weight_grad: str = "auto") -> None:
        super().__init__()
        params = dict(model.named_parameters())
        owners: dict[int, list[tuple[nn.Module, str]]] = {}
        for module in model.modules():
            for attr, p in module._parameters.items():
                if p is not None:
                    owners.setdefault(id(p), []).append((module, attr))
        by_kind: dict[tuple, list] = {}
        for name, idx in chosen:
            p = params[name]
            by_kind.setdefault((p.device, p.dtype), []).append((name, p, idx))
        self.groups: list[_Group] = []
        for g, items in enumerate(by_kind.values()):
            group = _Group(items)
            self.register_parameter(f"delta{g}", group.delta)
            for i, seg in enumerate(group.segments):
                seg.owners = owners[id(params[seg.name])]
                for module, attr in seg.owners:  # tied weights: every module holding the tensor
                    module._parameters.pop(attr)
                    module.register_buffer(attr, seg.weight)
                seg.plan = None if weight_grad == "dense" else _blocked.plan_for(
                    seg.owners, seg.shape, seg.indices,
                    linear=weight_grad == "blocks" or seg.weight.device.type != "cuda")
                if seg.plan is None:
                    seg.handle = seg.weight.register_post_accumulate_grad_hook(group.hook(i))
                    continue
                seg.weight.requires_grad_(False)  # autograd computes no dense dW for it
                for module, _ in seg.owners:
                    module.forward = _blocked.blocked_forward(module, group.delta, seg.plan, partial(group.gather, i))
            self.groups.append(group)
        self.pre_hook = None

    def sync(self, *_) -> None:
        for g in self.groups:
            g.sync()

    def __deepcopy__(self, memo):
        # gradient hooks and blocked forwards are bound to this model's tensors: a copy would train nothing
        # (or write into this model's gradient), so refuse instead of copying silently
        raise TypeError("a masked model cannot be deep-copied: merge(model) first, or apply the mask to a copy")

    def segments(self):
        return [(g, s) for g in self.groups for s in g.segments]


def _states(model: nn.Module) -> list[MaskedWeights]:
    return [m for m in model.modules() if isinstance(m, MaskedWeights)]


def weight_grad_summary(model: nn.Module) -> dict[str, float]:
    """Of the masked weight matrices (embeddings aside), how many compute only a block of dW
    (``weight_grad`` blocks or auto) and that block's share of their full weight-gradient products, in
    percent; and how many masked embeddings gather their gradient rows."""
    segs = [s for st in _states(model) for _, s in st.segments() if len(s.shape) == 2]
    out = _blocked.summary([(s.shape, s.plan) for s in segs if s.plan is None or s.plan.table is None])
    out["gathered_embeddings"] = sum(s.plan is not None and s.plan.table is not None for s in segs)
    return out


@torch.no_grad()
def _own_cpu_storage(model: nn.Module, masked: set[int]) -> None:
    """Give every other CPU parameter and buffer its own copy of its values. A model loaded from safetensors
    on the CPU holds its weights as views of the file's memory map, which stays resident while any of them
    lives: once the masked tensors are copied into the flat buffer, the map would keep a second copy of
    them (+80 MiB RSS on MiniLM at FISH 0.5 %, measured). Off the CPU nothing is mapped: no copy."""
    seen: set[int] = set()
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for t in store.values():
                if t is None or id(t) in masked or id(t) in seen or t.device.type != "cpu":
                    continue
                seen.add(id(t))
                t.data = t.data.clone()


def apply_mask(model: nn.Module, mask: Mask, trainable: list[str] | tuple[str, ...] = (),
               weight_grad: str = "auto") -> nn.Module:
    """Make ``mask``'s entries the only trainable pretrained values of ``model`` (in place; returned).

    ``trainable`` names parameters trained densely as they are (the task head). Every other parameter gets
    ``requires_grad=False``. ``weight_grad``: "dense" (autograd's full weight gradient, gathered: the
    update is bit-identical to dense gradients × mask), "blocks" (a masked `nn.Linear`/`Conv1D` computes
    only the rows or columns of its weight gradient that hold selected entries when that is at most half
    the product, and a masked `nn.Embedding` sums its gradient only for the selected rows of the batch's
    tokens, `_blocked`; equal to dense up to summation order) or "auto" (the default: "blocks" off CUDA,
    where it was measured faster at every block share up to a half; on CUDA only the embeddings gather,
    Linear layers keep autograd's dW until measured there). Raises ValueError when the mask does not fit
    the model, one is applied already, or ``weight_grad`` is unknown. Apply it after moving the model to
    its device and dtype.
    """
    if weight_grad not in WEIGHT_GRADS:
        raise ValueError(f"weight_grad must be {'|'.join(WEIGHT_GRADS)}, got {weight_grad!r}")
    if not isinstance(mask, Mask):
        raise TypeError(f"mask: expected a fishtune Mask, got {type(mask).__name__}")
    if _states(model):  # before check_model: the masked tensors are no parameters any more
        raise ValueError("apply_mask: the model already has a mask applied (call merge(model) first)")
    mask.check_model(model)
    trainable = param_names(model, trainable, "trainable")
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for n in trainable:
        params[n].requires_grad_(True)
    chosen = [(n, idx) for n, idx in mask.indices.items() if n not in trainable and idx.numel()]
    state = MaskedWeights(model, chosen, weight_grad)
    _own_cpu_storage(model, {id(s.weight) for _, s in state.segments()})
    model.add_module(STATE, state)
    state.pre_hook = model.register_forward_pre_hook(state.sync)  # a stock optimizer changed delta
    return model


@dataclass
class MaskedTensor:
    """A masked tensor's view of the trainable state: ``delta`` and ``base`` (W0) at its ``indices``."""

    indices: torch.Tensor
    delta: torch.Tensor
    base: torch.Tensor
    shape: tuple[int, ...]


def masked_tensors(model: nn.Module) -> dict[str, MaskedTensor]:
    """Parameter name -> `MaskedTensor` for every masked tensor of ``model`` (writes into ``delta`` reach
    the model at its next forward or `sync_weights`)."""
    return {s.name: MaskedTensor(s.indices, g.delta[s.offset:s.offset + s.count],
                                 g.base[s.offset:s.offset + s.count], s.shape)
            for st in _states(model) for g, s in st.segments()}


def sync_weights(model: nn.Module) -> nn.Module:
    """Bring the masked tensors up to date with ``delta`` (needed only after changing delta by hand or with
    a stock optimizer and reading weights without a forward; `MaskedAdamW` and the forward do it)."""
    for st in _states(model):
        st.sync()
    return model


def trainable_count(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> int:
    """Number of trainable values, leaving out the parameters named in ``exclude`` (e.g. the head)."""
    exclude = {exclude} if isinstance(exclude, str) else set(exclude)
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n not in exclude)


def merge(model: nn.Module) -> nn.Module:
    """Make every masked tensor a plain frozen parameter again, holding W0 + delta (in place; returned)."""
    for name, st in [(n, m) for n, m in model.named_modules() if isinstance(m, MaskedWeights)]:
        st.sync()
        for _, seg in st.segments():
            if seg.handle is not None:
                seg.handle.remove()
            weight = nn.Parameter(seg.weight.detach(), requires_grad=False)
            for module, attr in seg.owners:
                module._buffers.pop(attr)
                module.register_parameter(attr, weight)
                if seg.plan is not None:
                    del module.forward  # the class's forward again
        st.pre_hook.remove()
        parent, _, attr = name.rpartition(".")
        delattr(model.get_submodule(parent) if parent else model, attr)
    return model


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel can step ``params``: floating point, all on one device type that
    has the kernel (CPU, CUDA, ...)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    kinds = {p.device.type for p in params}
    return (len(kinds) == 1 and kinds <= set(_get_fused_kernels_supported_devices())
            and all(torch.is_floating_point(p) for p in params))


class MaskedAdamW(torch.optim.AdamW):
    """AdamW whose decoupled weight decay on a sparse ``delta`` acts on the effective weight W0 + delta,
    the update a dense AdamW applies to the masked entries; a masked tensor that got no gradient in a step
    is left as it was (as a dense AdamW skips a parameter without a gradient). Other trainable parameters
    (the head) are treated exactly as AdamW treats them. After each step the model's masked tensors are
    brought up to date. The fused AdamW kernel is used wherever torch has one for the parameters' device
    (CPU and CUDA included: on one CPU thread it steps MiniLM 5× faster than the plain loop; the result
    equals it within float rounding, tested) unless ``fused``/``foreach`` is given. Without a mask it is
    AdamW with that default (what `fit` trains dense and adapter models with)."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0, **kw) -> None:
        groups = [g for st in _states(model) for g in st.groups]
        sparse = [g.delta for g in groups if g.delta.requires_grad]
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        if "fused" not in kw and "foreach" not in kw and fused_supported(sparse + dense):
            kw["fused"] = True
        param_groups = [g for g in ({"params": sparse, "sparse": True}, {"params": dense, "sparse": False})
                        if g["params"]]
        super().__init__(param_groups, lr=lr, weight_decay=weight_decay, **kw)
        self._groups = {id(g.delta): g for g in groups}

    @torch.no_grad()
    def step(self, closure=None):
        keep = []  # (delta slice, its saved values and moments) of segments without a gradient
        for group in self.param_groups:
            if not group.get("sparse"):
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                for seg in self._groups[id(p)].untouched():
                    sl = slice(seg.offset, seg.offset + seg.count)
                    state = [t for t in self.state.get(p, {}).values() if torch.is_tensor(t) and t.dim()]
                    keep.append([(t[sl], t[sl].clone()) for t in [p, *state]])
                if group["weight_decay"]:  # AdamW's p*(1 - lr*wd), applied to W0 + p
                    base = self._groups[id(p)].base
                    p.sub_(group["lr"] * group["weight_decay"] * (base.to(p.dtype) + p))
        saved = [g["weight_decay"] for g in self.param_groups]
        for g in self.param_groups:
            if g.get("sparse"):
                g["weight_decay"] = 0.0
        try:
            loss = super().step(closure)
        finally:
            for g, wd in zip(self.param_groups, saved):
                g["weight_decay"] = wd
        for pairs in keep:
            for view, old in pairs:
                view.copy_(old)
        for g in self._groups.values():
            g.sync(trust=True)
        return loss

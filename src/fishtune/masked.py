"""Selective fine-tuning with LoRA-like memory: only the masked entries are trainable values.

`apply_mask(model, mask)` freezes every pretrained parameter and gives each masked tensor a parametrization
(`torch.nn.utils.parametrize`) with a trainable vector ``delta`` of its k_t selected entries at fixed flat
indices; the forward uses ``W0.index_add(idx, delta)``, so unselected entries are bit-identical copies of the
pretrained weight and no dense gradient or optimizer state exists for them (ALGORITHMS.md, "Masked
fine-tuning"). It works for every tensor kind (Linear, embeddings, LayerNorm, biases) and with a plain
PyTorch loop or `transformers.Trainer`.

AdamW's decoupled weight decay acts on the effective weight W0+delta in `MaskedAdamW`, exactly as a dense
AdamW on the masked entries would; a stock optimizer (e.g. the one `Trainer` builds) decays delta toward
zero instead, i.e. toward the pretrained value. Either way unselected entries never move.

Memory: a layer that uses W0+delta (e.g. `F.linear`) keeps it for its backward, one dense copy per masked
tensor. Inside `recompute_weights()` (the training loop's forward uses it) autograd keeps only a recipe
(W0, indices, delta) and rebuilds W0+delta when the backward needs it, so no copy outlives its layer.

`merge(model)` folds the deltas into the weights; `sparse_delta`/`save_delta`/`apply_delta` store a trained
model as the difference only (indices + values + the dense task head), in safetensors.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .masks import Mask

__all__ = ["SparseDelta", "apply_mask", "merge", "sparse_delta", "save_delta", "load_delta", "apply_delta",
           "MaskedAdamW", "trainable_count", "recompute_weights"]

# W0+delta tensors made inside `recompute_weights()`: id -> (weak ref, parametrization, W0)
_LIVE: dict[int, tuple[weakref.ref, SparseDelta, torch.Tensor]] = {}
_RECOMPUTE = [0]


class SparseDelta(nn.Module):
    """Parametrization W -> W with ``delta`` added at flat ``indices`` (the only trainable values)."""

    def __init__(self, indices: torch.Tensor, base: torch.Tensor) -> None:
        super().__init__()
        idx = indices.to(device=base.device, dtype=torch.long)
        self.register_buffer("indices", idx, persistent=False)
        # the pretrained values at the indices, kept for weight decay of W0 + delta (k_t floats)
        self.register_buffer("base", base.detach().reshape(-1)[idx].clone(), persistent=False)
        self.delta = nn.Parameter(torch.zeros(idx.numel(), dtype=base.dtype, device=base.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = self.rebuild(weight, self.delta)
        if _RECOMPUTE[0]:
            root = out if out._base is None else out._base  # layers save views of it (F.linear: its .t())
            _LIVE[id(root)] = (weakref.ref(root), self, weight)
        return out

    def rebuild(self, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return weight.reshape(-1).index_add(0, self.indices, delta.to(weight.dtype)).view_as(weight)


class _Recipe:
    """What autograd keeps instead of a W0+delta tensor: enough to rebuild it (no dense copy)."""

    __slots__ = ("param", "weight", "delta", "view")

    def __init__(self, param: SparseDelta, weight: torch.Tensor, view: tuple | None) -> None:
        # delta's values at forward time: a view of the live parameter (only the optimizer changes it,
        # after the backward); detached so rebuilding adds nothing to the graph. ``view``: (size, stride,
        # offset) when the layer saved a view of W0+delta (F.linear saves its transpose)
        self.param, self.weight, self.delta, self.view = param, weight, param.delta.detach(), view

    def rebuild(self) -> torch.Tensor:
        full = self.param.rebuild(self.weight, self.delta)
        return full if self.view is None else full.as_strided(*self.view)


@contextlib.contextmanager
def recompute_weights(enabled: bool = True, stats: dict | None = None) -> Iterator[None]:
    """Within this context (around the forward), layers that save a W0+delta weight for their backward save
    a `_Recipe` instead and rebuild the weight in the backward: activation-like memory, nothing dense kept.

    ``stats``, when given, accumulates ``saved_bytes`` (tensors autograd keeps for backward, parameters left
    out: they are held anyway) and ``rebuilt_bytes`` (weights replaced by recipes); ``enabled=False`` only
    counts (every tensor is kept, as without this context).
    """

    def pack(t: torch.Tensor):
        size = t.numel() * t.element_size()
        base = t if t._base is None else t._base
        entry = _LIVE.get(id(base))
        if enabled and entry is not None and entry[0]() is base:
            if stats is not None:
                stats["rebuilt_bytes"] = stats.get("rebuilt_bytes", 0) + size
            view = None if base is t else (t.size(), t.stride(), t.storage_offset())
            return _Recipe(entry[1], entry[2], view)
        if stats is not None and not isinstance(base, nn.Parameter):  # parameters are held anyway
            stats["saved_bytes"] = stats.get("saved_bytes", 0) + size
        return t

    def unpack(x):
        return x.rebuild() if isinstance(x, _Recipe) else x

    _RECOMPUTE[0] += 1
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        _RECOMPUTE[0] -= 1
        if not _RECOMPUTE[0]:
            _LIVE.clear()


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def apply_mask(model: nn.Module, mask: Mask, trainable: list[str] | tuple[str, ...] = ()) -> nn.Module:
    """Make ``mask``'s entries the only trainable pretrained values of ``model`` (in place; returned).

    ``trainable`` names parameters trained densely as they are (the task head). Every other parameter gets
    ``requires_grad=False``. Raises ValueError when the mask does not fit the model.
    """
    mask.check_model(model)
    params = dict(model.named_parameters())
    missing = [n for n in trainable if n not in params]
    if missing:
        raise ValueError(f"trainable: no parameter named {missing[0]!r} in the model")
    for p in model.parameters():
        p.requires_grad_(False)
    for n in trainable:
        params[n].requires_grad_(True)
    for name, idx in mask.indices.items():
        if name in trainable or not idx.numel():
            continue
        module, attr = _owner(model, name)
        parametrize.register_parametrization(module, attr, SparseDelta(idx, params[name]), unsafe=True)
        module.parametrizations[attr].original.requires_grad_(False)
    return model


def _deltas(model: nn.Module) -> dict[str, SparseDelta]:
    """Parameter name -> its SparseDelta, for every parametrized tensor of ``model``."""
    out = {}
    for mod_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for attr, plist in module.parametrizations.items():
                for p in plist:
                    if isinstance(p, SparseDelta):
                        out[f"{mod_name}.{attr}" if mod_name else attr] = p
    return out


def trainable_count(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> int:
    """Number of trainable values, leaving out the parameters named in ``exclude`` (e.g. the head)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n not in exclude)


def merge(model: nn.Module) -> nn.Module:
    """Fold every sparse delta into its weight and remove the parametrizations (in place; returned)."""
    for name in list(_deltas(model)):
        module, attr = _owner(model, name)
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


def sparse_delta(model: nn.Module, head: list[str] | tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The trained difference as flat tensors: ``<name>::indices``, ``<name>::values`` per masked tensor and
    ``<name>::dense`` for each head parameter (stored whole: it is freshly initialised, not a delta)."""
    out = {}
    for name, p in _deltas(model).items():
        out[f"{name}::indices"] = p.indices.detach().cpu()
        out[f"{name}::values"] = p.delta.detach().cpu().contiguous()
    params = dict(model.named_parameters())
    for n in head:
        out[f"{n}::dense"] = params[n].detach().cpu().contiguous()
    return out


def save_delta(model: nn.Module, path: str | Path, head: list[str] | tuple[str, ...] = ()) -> int:
    """Save ``sparse_delta(model, head)`` to ``path`` (safetensors, atomic); returns the file size in bytes."""
    from safetensors.torch import save_file

    from .results import atomic_path

    shapes = {f"shape:{n}": ",".join(map(str, p.original.shape)) for n, p in _shape_sources(model).items()}
    with atomic_path(path) as tmp:
        save_file(sparse_delta(model, head), str(tmp), metadata={"format": "fishtune-sparse-delta-1", **shapes})
    return Path(path).stat().st_size


def _shape_sources(model: nn.Module) -> dict:
    out = {}
    for name in _deltas(model):
        module, attr = _owner(model, name)
        out[name] = module.parametrizations[attr]
    return out


def load_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a sparse delta file (tensors, metadata); ValueError when it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"sparse delta {path} is not a readable safetensors file: {e}") from None
    if meta.get("format") != "fishtune-sparse-delta-1":
        raise ValueError(f"sparse delta {path} was not written by fishtune.save_delta")
    return tensors, meta


@torch.no_grad()
def apply_delta(model: nn.Module, path: str | Path) -> nn.Module:
    """Add a saved sparse delta onto a pretrained ``model`` and load its head (in place; returned).
    Raises ValueError when a name or shape does not match the model."""
    tensors, meta = load_delta(path)
    params = dict(model.named_parameters())
    for key, t in tensors.items():
        name, _, kind = key.rpartition("::")
        if name not in params:
            raise ValueError(f"sparse delta {path}: parameter {name!r} is not in the model (made for another model?)")
        p = params[name]
        if kind == "dense":
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"sparse delta {path}: {name!r} has shape {tuple(t.shape)}, model {tuple(p.shape)}")
            p.copy_(t)
        elif kind == "indices":
            shape = meta.get(f"shape:{name}")
            if shape is not None and tuple(int(x) for x in shape.split(",")) != tuple(p.shape):
                raise ValueError(f"sparse delta {path}: {name!r} has shape {shape}, model {tuple(p.shape)}")
            values = tensors[f"{name}::values"]
            if t.numel() and int(t.max()) >= math.prod(p.shape):
                raise ValueError(f"sparse delta {path}: indices of {name!r} fall outside its shape")
            flat = p.view(-1)
            flat.index_add_(0, t.to(p.device), values.to(p.device, p.dtype))
    return model


class MaskedAdamW(torch.optim.AdamW):
    """AdamW whose decoupled weight decay on a sparse ``delta`` acts on the effective weight W0 + delta,
    the update a dense AdamW applies to the masked entries. Other trainable parameters (the head) are
    treated exactly as AdamW treats them."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0, **kw) -> None:
        deltas = _deltas(model).values()
        sparse = [d.delta for d in deltas if d.delta.requires_grad]
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [g for g in ({"params": sparse, "sparse": True}, {"params": dense, "sparse": False}) if g["params"]]
        super().__init__(groups, lr=lr, weight_decay=weight_decay, **kw)
        self._bases = {id(d.delta): d.base for d in deltas}

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group.get("sparse") and group["weight_decay"]:
                lr, wd = group["lr"], group["weight_decay"]
                for p in group["params"]:
                    if p.grad is not None:  # AdamW's p*(1 - lr*wd), applied to W0 + p
                        p.sub_(lr * wd * (self._bases[id(p)].to(p.dtype) + p))
        saved = [g["weight_decay"] for g in self.param_groups]
        for g in self.param_groups:
            if g.get("sparse"):
                g["weight_decay"] = 0.0
        try:
            return super().step(closure)
        finally:
            for g, wd in zip(self.param_groups, saved):
                g["weight_decay"] = wd

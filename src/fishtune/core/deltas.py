"""Sparse deltas: a masked model stored as the difference from its pretrained weights (per masked tensor its
selected flat indices and trained values, plus the dense task head), in safetensors; `apply_delta` adds one
onto a pretrained model, all or nothing."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .masked import _states, masked_tensors
from .masks import param_names

__all__ = ["sparse_delta", "save_delta", "load_delta", "apply_delta"]


def sparse_delta(model: nn.Module, head: str | list[str] | tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The trained difference as flat tensors: ``<name>::indices``, ``<name>::values`` per masked tensor and
    ``<name>::dense`` for each head parameter (stored whole: it is freshly initialised, not a delta).

    ValueError when ``model`` has no mask applied (never masked, or merged: its training is in the weights
    then, and a delta would hold only the head) or ``head`` names a parameter it does not have."""
    if not _states(model):
        raise ValueError("save_delta: the model has no mask applied (never masked, or merge(model) already put "
                         "the trained values into its weights: save the model itself instead)")
    head = param_names(model, head, "head")
    out = {}
    for name, t in masked_tensors(model).items():
        out[f"{name}::indices"] = t.indices.detach().cpu()
        out[f"{name}::values"] = t.delta.detach().cpu().contiguous()
    params = dict(model.named_parameters())
    for n in head:
        out[f"{n}::dense"] = params[n].detach().cpu().contiguous()
    return out


def save_delta(model: nn.Module, path: str | Path, head: str | list[str] | tuple[str, ...] = ()) -> int:
    """Save ``sparse_delta(model, head)`` to ``path`` (safetensors, atomic); returns the file size in bytes."""
    from safetensors.torch import save_file

    from .files import atomic_path

    tensors = sparse_delta(model, head)  # checks the model and the head first: nothing written on an error
    shapes = {f"shape:{n}": ",".join(map(str, t.shape)) for n, t in masked_tensors(model).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "fishtune-sparse-delta-1", **shapes})
    return Path(path).stat().st_size


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

    All or nothing: every entry is checked first (names, shapes, index ranges, finite values) and the model
    is changed only when all fit; otherwise ValueError naming the file and the parameter."""
    tensors, meta = load_delta(path)
    if _states(model):
        raise ValueError(f"sparse delta {path}: the model has a mask applied; apply a delta to the pretrained "
                         "model (or merge(model) first)")
    params = dict(model.named_parameters())
    ops = []
    for key, t in tensors.items():
        name, sep, kind = key.rpartition("::")
        if not sep or kind not in ("dense", "indices", "values"):
            raise ValueError(f"sparse delta {path}: unexpected entry {key!r}")
        if name not in params:
            raise ValueError(f"sparse delta {path}: parameter {name!r} is not in the model (made for another model?)")
        p = params[name]
        if kind == "values":
            if f"{name}::indices" not in tensors:
                raise ValueError(f"sparse delta {path}: {name!r} has values but no indices")
            continue
        values = t if kind == "dense" else tensors.get(f"{name}::values")
        if values is None:
            raise ValueError(f"sparse delta {path}: {name!r} has indices but no values")
        if not values.is_floating_point() or not bool(torch.isfinite(values).all()):
            raise ValueError(f"sparse delta {path}: {name!r} holds non-finite or non-float values")
        if kind == "dense":
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"sparse delta {path}: {name!r} has shape {tuple(t.shape)}, model {tuple(p.shape)}")
            ops.append((p, None, t))
            continue
        shape = meta.get(f"shape:{name}")
        if shape is not None and tuple(int(x) for x in shape.split(",")) != tuple(p.shape):
            raise ValueError(f"sparse delta {path}: {name!r} has shape {shape}, model {tuple(p.shape)}")
        if t.dtype not in (torch.int64, torch.int32) or t.dim() != 1 or tuple(values.shape) != tuple(t.shape):
            raise ValueError(f"sparse delta {path}: indices and values of {name!r} do not match")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= math.prod(p.shape)):
            raise ValueError(f"sparse delta {path}: indices of {name!r} fall outside its shape")
        ops.append((p, t, values))
    for p, idx, values in ops:
        if idx is None:
            p.copy_(values)
        else:
            p.view(-1).index_add_(0, idx.to(p.device, torch.long), values.to(p.device, p.dtype))
    return model

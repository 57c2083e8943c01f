"""A dense-trained embedding's gradient on the CPU as one buffer kept across steps.

Autograd's embedding backward builds a vocabulary × width gradient on every step (MiniLM: 30,522 × 384,
47 MiB), zero-fills it and scatters the batch's rows into it; the optimizer then frees it. On the CPU a block
that size is above glibc's largest mmap threshold (32 MiB), so every step maps fresh pages, faults each one in,
zeroes it twice and unmaps it afterwards: ~12 ms of a 520 ms MiniLM step, spent on rows that stay zero.

`held_embedding_grads(model)` (what `fit` trains inside) makes each qualifying embedding emit a sparse
gradient (the batch's rows only), summed by autograd into a dense ``weight.grad`` buffer allocated once;
before each training forward that finds the gradient cleared (``zero_grad(set_to_none=True)``), the buffer's
rows touched since it was last handed out are zeroed and it becomes ``weight.grad`` again. The optimizer sees
the same dense gradient as before, equal up to the order of the sum over repeated tokens. On exit the
embeddings are as they were.

Qualifies: a plain `nn.Embedding` on the CPU whose weight is a trainable parameter held by no other module
(a weight tied to an output layer gets a dense gradient there, so it keeps autograd's path). A masked
embedding (`core.masked`) is not a trainable parameter and keeps its own gathered gradient.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["held_embedding_grads"]

MAX_PENDING = 64  # forwards whose rows are remembered before a buffer is zeroed whole instead


def _qualifies(module: nn.Module, holders: dict[int, int]) -> bool:
    w = getattr(module, "weight", None)
    return (type(module) is nn.Embedding and not module.sparse and module.max_norm is None
            and not module.scale_grad_by_freq and isinstance(w, nn.Parameter) and w.requires_grad
            and w.device.type == "cpu" and holders.get(id(w), 0) == 1)


class _Held:
    """One embedding's kept gradient buffer and the ids its rows were written at since it was zeroed."""

    def __init__(self, module: nn.Embedding) -> None:
        self.module = module
        self.buffer = torch.zeros_like(module.weight)
        self.pending: list[torch.Tensor] | None = []  # None: rows unknown, zero it whole

    def before_forward(self, module: nn.Module, args) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        w = module.weight
        if w.grad is None:  # the optimizer cleared it: rows written since the last hand-out go back to zero
            with torch.no_grad():
                if self.pending is None:
                    self.buffer.zero_()
                elif self.pending:
                    self.buffer.index_fill_(0, torch.cat(self.pending).long(), 0.0)  # ids may be int32
            self.pending = []
            w.grad = self.buffer
        elif w.grad is not self.buffer:  # somebody else's gradient tensor: do not touch it
            return
        ids = args[0] if args and torch.is_tensor(args[0]) else None
        if ids is None or self.pending is None or len(self.pending) >= MAX_PENDING:
            self.pending = None  # zeroed whole next time (also bounds what is kept between clears)
        else:
            self.pending.append(ids.detach().reshape(-1))


@contextlib.contextmanager
def held_embedding_grads(model: nn.Module):
    """Within the block, qualifying embeddings of ``model`` accumulate into one kept gradient buffer each
    (module docstring); yields how many."""
    holders: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                holders[id(p)] = holders.get(id(p), 0) + 1
    held = [_Held(m) for m in model.modules() if _qualifies(m, holders)]
    handles = []
    try:
        for h in held:
            h.module.sparse = True
            handles.append(h.module.register_forward_pre_hook(h.before_forward))
        yield len(held)
    finally:
        for h in held:  # a gradient left in the buffer stays the weight's (a plain dense tensor)
            h.module.sparse = False
        for handle in handles:
            handle.remove()

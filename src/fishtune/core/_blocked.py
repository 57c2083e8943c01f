"""Masked `nn.Linear` (and GPT-2's `Conv1D`) layers whose weight gradient is computed only where the mask
has entries.

A masked step needs k entries of a Linear's weight gradient dW = dYᵀX (out × in), yet autograd computes all
of it, a third of the layer's training FLOPs. Fisher masks are concentrated: on MiniLM/SST-2 at 0.5 % most
masked weight matrices hold their entries in a handful of input features (columns), e.g. 4 of 384 or 14 of
1,536 (bench/README.md). The rows or columns of dW that hold a selected entry are one small dense product,

    dW[:, C] = dYᵀ X[:, C]        or        dW[R, :] = dY[:, R]ᵀ X,

and only X[:, C] needs saving for it (GPT-2's `Conv1D` stores W as in × out: the same with rows and columns
swapped). `plan` picks the cheaper block for a mask when it costs at most `MAX_SHARE` of the full product
(else the layer keeps autograd's dense gradient); `blocked_forward` is the layer's forward in training:
y = x Wᵀ + b, dX = dY W and db as autograd computes them, and the block's k entries gathered by
``write(flat_block, positions)`` (`masked._Group.gather`). Under autocast the matmuls run in the autocast
dtype, as `F.linear` does. The entries equal the dense gradient's up to the order of the sum over tokens
(a GEMM of another shape may block it differently): within 1e-6 relative in fp32, tested.

A masked `nn.Embedding` (`embedding_plan`) needs its selected entries' rows only: its backward sums dY over
the batch's tokens whose row holds one (at most tokens × width values), never the vocabulary × width
gradient autograd builds and zeroes on every step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MAX_SHARE = 0.5  # use a block only when it is at most this share of the full out × in product


@dataclass
class Plan:
    """Which block of dW to compute: ``axis`` 1 = the columns ``keep`` (dW[:, keep]), 0 = the rows
    ``keep``; ``local`` = each selected entry's flat position inside that block, in the mask's order."""

    axis: int
    keep: torch.Tensor
    local: torch.Tensor
    share: float  # the block's size over the full matrix's
    table: torch.Tensor | None = None  # an embedding's: vocabulary row -> its slot in ``keep``, or -1
    order: torch.Tensor | None = None  # an embedding's: 0..k-1 (its entries are written in the mask's order)


def blockable(module: nn.Module, attr: str) -> bool:
    """Whether ``module.<attr>`` is the weight of a layer `blocked_forward` can run (exact types only: a
    subclass may change the forward; an embedding only in its plain form)."""
    return attr == "weight" and (type(module) is nn.Linear or _is_conv1d(module) or _plain_embedding(module))


def _plain_embedding(module: nn.Module) -> bool:
    return (type(module) is nn.Embedding and module.max_norm is None and not module.scale_grad_by_freq
            and not module.sparse)


def plan_for(owners: list[tuple[nn.Module, str]], shape: tuple[int, ...], indices: torch.Tensor,
             linear: bool = True) -> Plan | None:
    """The plan of a masked tensor held by ``owners`` (module, attribute): an embedding's rows (every owner a
    plain `nn.Embedding`), a Linear's block when ``linear`` (every owner a Linear/Conv1D, `plan`), else None
    (autograd's dense gradient)."""
    if not owners or not all(blockable(m, a) for m, a in owners):
        return None
    if all(type(m) is nn.Embedding for m, _ in owners):
        return embedding_plan(shape, indices)
    if any(type(m) is nn.Embedding for m, _ in owners) or not linear:
        return None
    return plan(shape, indices)


def embedding_plan(shape: tuple[int, ...], indices: torch.Tensor) -> Plan:
    """An embedding's selected entries by row: ``keep`` the rows holding one, ``local`` each entry's slot
    in ``keep`` × width + its column, ``table`` (vocabulary long) each row's slot in ``keep`` or -1."""
    vocab, width = shape
    rows, at = torch.unique(indices // width, return_inverse=True)
    table = torch.full((vocab,), -1, dtype=torch.long, device=indices.device)
    table[rows] = torch.arange(rows.numel(), device=indices.device)
    order = torch.arange(indices.numel(), device=indices.device)
    return Plan(0, rows, at * width + indices % width, rows.numel() / vocab, table, order)


def _is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D  # only a model that has one needs transformers here

    return type(module) is Conv1D


def plan(shape: tuple[int, ...], indices: torch.Tensor, max_share: float = MAX_SHARE) -> Plan | None:
    """The cheaper of the row and column block holding every selected flat index of a weight matrix, or None
    when it is more than ``max_share`` of the full product (or the tensor is not a matrix)."""
    if len(shape) != 2 or indices.numel() == 0:
        return None
    out, inn = shape
    r, c = indices // inn, indices % inn
    rows, r_at = torch.unique(r, return_inverse=True)
    cols, c_at = torch.unique(c, return_inverse=True)
    by_cols, by_rows = out * cols.numel(), rows.numel() * inn
    if min(by_cols, by_rows) > max_share * out * inn:
        return None
    share = min(by_cols, by_rows) / (out * inn)
    if by_cols <= by_rows:
        return Plan(1, cols, r * cols.numel() + c_at, share)
    return Plan(0, rows, r_at * inn + c, share)


def summary(plans: list[tuple[tuple[int, ...], Plan | None]]) -> dict[str, float]:
    """How much of the masked matrices' dW a model computes: ``(shape, plan)`` per masked matrix ->
    matrices with a block, all masked matrices, and the blocks' share of their full products (percent)."""
    blocked = [(s, p) for s, p in plans if p is not None]
    size = sum(s[0] * s[1] for s, _ in blocked)
    share = sum(p.share * s[0] * s[1] for s, p in blocked) / size if size else 1.0
    return {"blocked": len(blocked), "matrices": len(plans), "block_share_percent": round(100 * share, 3)}


_NO_CONTEXT = contextlib.nullcontext()


class _BlockedLinear(torch.autograd.Function):
    """y = x Wᵀ + b (``conv1d``: x W + b, W stored in × out) whose backward gives dX and db, and dW only at
    the plan's block (gathered by ``write``, not returned: the weight is frozen). ``anchor`` (the trainable
    delta) only makes sure the backward runs when nothing else before the layer needs a gradient; it gets
    none from here."""

    @staticmethod
    def forward(ctx, x, weight, bias, anchor, plan: Plan, write: Callable[[torch.Tensor, torch.Tensor], None],
                conv1d: bool):
        kind = x.device.type
        cast = torch.is_autocast_enabled(kind)
        ctx.dtypes = None
        if cast:  # the matmuls in the autocast dtype, as F.linear would run them; gradients in the inputs' own
            ctx.dtypes = x.dtype, weight.dtype, None if bias is None else bias.dtype
            dt = torch.get_autocast_dtype(kind)
            x, weight = x.to(dt), weight.to(dt)
            bias = None if bias is None else bias.to(dt)
        x2 = x.reshape(-1, x.shape[-1])
        with torch.autocast(kind, enabled=False) if cast else _NO_CONTEXT:
            if conv1d:
                y = (x2 @ weight if bias is None else torch.addmm(bias, x2, weight)).view(*x.shape[:-1], -1)
            else:
                y = F.linear(x, weight, bias)
        by_inputs = plan.axis == (0 if conv1d else 1)  # the block is a set of input features: keep only them
        ctx.save_for_backward(x2.index_select(1, plan.keep) if by_inputs else x2, weight)
        ctx.plan, ctx.write, ctx.conv1d, ctx.by_inputs = plan, write, conv1d, by_inputs
        return y

    @staticmethod
    def backward(ctx, dy):
        xs, wc = ctx.saved_tensors
        p = ctx.plan
        dy2 = dy.reshape(-1, dy.shape[-1])
        dys = dy2 if ctx.by_inputs else dy2.index_select(1, p.keep)  # a block of outputs: only their dY columns
        # the block as the layer stores W: in × out (Conv1D) or out × in (Linear); the narrower operand goes
        # first (a GEMM with a few rows is several times faster on the CPU than one with a few columns)
        if xs.shape[1] <= dys.shape[1]:
            block = xs.t() @ dys if ctx.conv1d else (xs.t() @ dys).t()
        else:
            block = (dys.t() @ xs).t() if ctx.conv1d else dys.t() @ xs
        dx = db = None
        if ctx.needs_input_grad[0]:  # one GEMM over the tokens (dy itself may be strided: a batched product)
            dx = (dy2 @ (wc.t() if ctx.conv1d else wc)).view(*dy.shape[:-1], -1)
        if ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        if ctx.dtypes is not None:
            x_dtype, w_dtype, b_dtype = ctx.dtypes
            block = block.to(w_dtype)
            dx = None if dx is None else dx.to(x_dtype)
            db = None if db is None else db.to(b_dtype)
        ctx.write(block.reshape(-1), p.local)
        return dx, None, db, None, None, None, None


class _GatheredEmbedding(torch.autograd.Function):
    """F.embedding whose backward sums dY only over the tokens whose row holds selected entries, into one
    row per such token id in the batch (at most tokens × width), and writes the selected entries; the
    vocabulary × width gradient never exists. Rows of ``padding_idx`` get no gradient, as in `nn.Embedding`."""

    @staticmethod
    def forward(ctx, ids, weight, anchor, plan: Plan, write: Callable[[torch.Tensor, torch.Tensor], None],
                padding_idx: int | None):
        ctx.save_for_backward(ids)
        ctx.plan, ctx.write, ctx.padding_idx, ctx.w_dtype = plan, write, padding_idx, weight.dtype
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, dy):
        (ids,) = ctx.saved_tensors
        p, width = ctx.plan, dy.shape[-1]
        ids = ids.reshape(-1)
        slots = p.table[ids]  # each token's row slot in keep, -1 when its row holds no selected entry
        hit = slots >= 0 if ctx.padding_idx is None else (slots >= 0) & (ids != ctx.padding_idx)
        present, at = torch.unique(slots[hit], return_inverse=True)  # selected rows seen in this batch
        rows = dy.new_zeros(present.numel(), width).index_add_(0, at, dy.reshape(-1, width)[hit])
        where = torch.full((p.keep.numel(),), -1, dtype=torch.long, device=ids.device)
        where[present] = torch.arange(present.numel(), device=ids.device)
        pos = where[p.local // width]  # each selected entry's row in ``rows``, -1 when not in the batch
        found = pos >= 0
        entries = dy.new_zeros(p.local.numel())
        entries[found] = rows[pos[found], p.local[found] % width]
        ctx.write(entries.to(ctx.w_dtype), p.order)
        return None, None, None, None, None, None


def blocked_forward(module: nn.Module, anchor: torch.Tensor, p: Plan,
                    write: Callable[[torch.Tensor, torch.Tensor], None]):
    """The forward to bind to a masked ``module`` (an `nn.Linear`, `Conv1D` or `nn.Embedding`; an instance
    attribute that `masked.merge` removes): the blocked Function while gradients are recorded, the class's
    own forward otherwise."""
    plain = type(module).forward.__get__(module)
    if type(module) is nn.Embedding:
        def embed(ids: torch.Tensor) -> torch.Tensor:
            if not torch.is_grad_enabled():
                return plain(ids)
            return _GatheredEmbedding.apply(ids, module.weight, anchor, p, write, module.padding_idx)

        return embed
    conv1d = _is_conv1d(module)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return plain(x)
        return _BlockedLinear.apply(x, module.weight, module.bias, anchor, p, write, conv1d)

    return forward

"""Batched exact per-sample gradients for the Fisher (engine "hooks"); see fisher.py for the contract.

One forward and one backward per chunk of the batch give every sample's own gradient g_i of every scored
parameter, from each layer's input (forward hook) and the gradient of its output (tensor hook), the way
per-sample-gradient libraries do it (ALGORITHMS.md, "Fisher information"):

- ``nn.Linear``: g_i(W) = Σ_t δ_it a_itᵀ (a batched matmul), g_i(b) = Σ_t δ_it; transformers' ``Conv1D``
  the same with W stored (in, out).
- ``nn.Embedding``: sparse. The rows a sample touches get Σ_{t: x_it = v} δ_it (repeated tokens summed
  before squaring); no dense B × V × d tensor. An embedding called with a shared (1, T) index (BERT/GPT-2
  position ids) has its output expanded to the batch in the forward hook, so its gradient arrives per sample.
- ``nn.LayerNorm``: closed form, g_i(γ) = Σ_t δ_it ⊙ x̂_it, g_i(β) = Σ_t δ_it.
- other normalisation leaves (``*RMSNorm``, ``T5LayerNorm``, ...): ``torch.func.vmap`` of ``vjp`` of the
  module's own forward, one sample at a time.

While a chunk runs, the scored parameters have ``requires_grad=False`` and hooked outputs are made to
require grad, so autograd builds no batch-summed parameter gradient at all (no dense embedding gradient).
A parameter's g_i is squared only once all its calls in the forward have contributed (shared weights).
Rows are compacted to right padding first (left padding would shift absolute positions that the
batch-size-1 loop never sees); padded positions then get an exactly zero output gradient and never leak.
Memory per chunk is about chunk × the largest dense scored tensor: ``chunk_size`` or the environment
variables ``FISHTUNE_FISHER_CHUNK`` (samples) / ``FISHTUNE_FISHER_MEM_MB`` (budget, default 1024) bound it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["supports", "batch_stats", "plan"]

SEQ_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # pragma: no cover - transformers is a dependency
        return ()
    return Conv1D


def _kind(module: nn.Module) -> str | None:
    """How this engine forms per-sample gradients of ``module``'s own parameters (None: it cannot)."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _conv1d_type()):
        return "conv1d"
    if isinstance(module, nn.Embedding):
        plain = type(module).forward is nn.Embedding.forward
        return "embedding" if plain and module.max_norm is None and not module.scale_grad_by_freq else None
    if isinstance(module, nn.LayerNorm):
        return "layernorm"
    name = type(module).__name__
    if name.endswith("Norm") and "Batch" not in name and next(module.children(), None) is None:
        return "func"
    return None


def plan(model: nn.Module, names: list[str]) -> list[tuple[nn.Module, str, list[tuple[str, str]]]] | None:
    """(module, kind, [(attr, scored name)]) for every module holding a scored parameter; None when any
    such module (or a parametrized one) is not supported. Tied parameters are followed to every user."""
    named = dict(model.named_parameters())
    scope = {id(named[n]): n for n in names}
    out, seen = [], set()
    for module in model.modules():
        own = [(a, scope[id(p)]) for a, p in module.named_parameters(recurse=False) if id(p) in scope]
        if not own:
            continue
        kind = _kind(module)
        if kind is None or getattr(module, "parametrizations", None) is not None:
            return None
        if kind != "func" and any(a not in ("weight", "bias") for a, _ in own):
            return None
        out.append((module, kind, own))
        seen.update(n for _, n in own)
    return out if seen == set(names) else None


def supports(model: nn.Module, names: list[str]) -> bool:
    """True when every parameter in ``names`` can get exact per-sample gradients from this engine."""
    return bool(names) and plan(model, names) is not None


def _default_chunk(steps, n: int) -> int:
    env = os.environ.get("FISHTUNE_FISHER_CHUNK")
    if env:
        return max(1, int(env))
    budget = float(os.environ.get("FISHTUNE_FISHER_MEM_MB", "1024")) * 2**20
    largest = max([p.numel() for m, k, own in steps if k != "embedding" for a, _ in own
                   for p in [getattr(m, a)]] or [1])
    return max(1, min(n, int(budget // (8 * largest))))


def _compact(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move each row's attended positions to the front (stable) and drop all-padding columns."""
    am = batch.get("attention_mask")
    if am is None or am.dim() != 2:
        return batch
    keep = am != 0
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    width = max(1, int(keep.sum(1).max()))
    out = dict(batch)
    for k in SEQ_KEYS:
        v = batch.get(k)
        if v is not None and v.dim() == 2 and v.shape == am.shape:
            out[k] = v.gather(1, order)[:, :width]
    return out


class _Chunk:
    """Hooks and accumulators for one chunk of ``size`` samples."""

    def __init__(self, steps, size, grad, phi_idx, device):
        self.steps, self.size, self.grad, self.phi_idx = steps, size, grad, phi_idx
        self.sums: dict[str, torch.Tensor] = {}
        ptype = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
        self.phi = torch.zeros(size, dtype=ptype, device=device)
        self.pending: dict[str, int] = {}
        self.buf: dict[str, object] = {}
        self.busy = False
        for module, _, own in steps:
            for a, n in own:
                self.sums[n] = torch.zeros(getattr(module, a).shape, dtype=torch.float32, device=device)

    def register(self) -> list:
        return [m.register_forward_hook(self._forward_hook(m, k, own)) for m, k, own in self.steps]

    def _forward_hook(self, module, kind, own):
        def hook(mod, args, out):
            if self.busy or not isinstance(out, torch.Tensor) or not args:
                return None
            x = args[0]
            if kind == "embedding" and out.shape[0] == 1 and self.size > 1:
                out, x = out.expand(self.size, *out.shape[1:]), x.expand(self.size, *x.shape[1:])
            if out.shape[0] != self.size or x.shape[0] != self.size:
                raise RuntimeError(f"fisher engine 'hooks': {type(mod).__name__} was called on a tensor without "
                                   f"the batch as its first dimension; use fisher.engine=loop for this model")
            if not out.requires_grad:
                out = out.detach().requires_grad_()
            for _, n in own:
                self.pending[n] = self.pending.get(n, 0) + 1
            saved = x.detach()
            out.register_hook(lambda g: self._backward(mod, kind, own, saved, g))
            return out

        return hook

    def _backward(self, mod, kind, own, x, g) -> None:
        B = self.size
        if kind == "embedding":
            for _, n in own:
                self._add_sparse(n, mod, x.reshape(B, -1), g.reshape(B, -1, g.shape[-1]).float())
            return
        if kind == "func":
            for n, c in zip([n for _, n in own], self._func_grads(mod, own, x, g)):
                self._add(n, c.float())
            return
        gf = g.float()
        if kind in ("linear", "conv1d"):
            a = x.float().reshape(B, -1, x.shape[-1])
            d = gf.reshape(B, -1, g.shape[-1])
            for attr, n in own:
                if attr == "bias":
                    c = d.sum(1)
                elif kind == "linear":
                    c = torch.bmm(d.transpose(1, 2), a)
                else:
                    c = torch.bmm(a.transpose(1, 2), d)
                self._add(n, c)
        else:  # layernorm
            shape = tuple(mod.normalized_shape)
            dims = tuple(range(-len(shape), 0))
            xf = x.float()
            mean = xf.mean(dims, keepdim=True)
            var = xf.var(dims, unbiased=False, keepdim=True)
            xh = (xf - mean) * torch.rsqrt(var + mod.eps)
            for attr, n in own:
                c = gf * xh if attr == "weight" else gf
                self._add(n, c.reshape(B, -1, *shape).sum(1))

    def _func_grads(self, mod, own, x, g):
        from torch.func import functional_call, vjp, vmap

        params = {a: getattr(mod, a).detach() for a, _ in own}

        def one(xb, gb):
            _, fn = vjp(lambda p: functional_call(mod, p, (xb.unsqueeze(0),)), params)
            return fn(gb.unsqueeze(0))[0]

        self.busy = True
        try:
            with torch.enable_grad():
                out = vmap(one)(x, g)
        finally:
            self.busy = False
        return [out[a] for a, _ in own]

    def _add(self, n: str, c: torch.Tensor) -> None:
        if n in self.buf:
            self.buf[n] += c
        else:
            self.buf[n] = c
        self._done(n)

    def _add_sparse(self, n, mod, idx, d) -> None:
        B, N = idx.shape
        b = torch.arange(B, device=idx.device).repeat_interleave(N)
        v = idx.reshape(-1).long()
        vals = d.reshape(B * N, -1)
        if mod.padding_idx is not None:  # autograd gives the padding row no gradient
            keep = v != mod.padding_idx
            b, v, vals = b[keep], v[keep], vals[keep]
        self.buf.setdefault(n, []).append((b, v, vals))
        self._done(n)

    def _done(self, n: str) -> None:
        self.pending[n] -= 1
        if self.pending[n] == 0:
            self._finalize(n)

    def finish(self) -> None:
        for n in list(self.buf):
            self._finalize(n)

    def _finalize(self, n: str) -> None:
        c = self.buf.pop(n, None)
        if c is None:
            return
        if isinstance(c, list):
            return self._finalize_sparse(n, c)
        flat = c.reshape(c.shape[0], -1)
        if n in self.phi_idx:
            self.phi += flat[:, self.phi_idx[n]].square().sum(1, dtype=self.phi.dtype)
        c = c.square_() if self.grad == "squared" else c.abs_()
        self.sums[n] += c.sum(0)

    def _finalize_sparse(self, n: str, parts) -> None:
        b = torch.cat([p[0] for p in parts])
        v = torch.cat([p[1] for p in parts])
        vals = torch.cat([p[2] for p in parts])
        rows, d = self.sums[n].shape
        keys, inv = torch.unique(b * rows + v, return_inverse=True)
        agg = torch.zeros(keys.numel(), d, dtype=torch.float32, device=vals.device).index_add_(0, inv, vals)
        ub, uv = keys // rows, keys % rows
        if n in self.phi_idx:
            self._phi_sparse(self.phi_idx[n], d, ub, uv, agg)
        self.sums[n].index_add_(0, uv, agg.square() if self.grad == "squared" else agg.abs())

    def _phi_sparse(self, idx, d, ub, uv, agg) -> None:
        """φ over mask entries (flat ``idx`` into (rows, d), sorted) that fall in the touched rows."""
        mrow, mcol = idx // d, idx % d
        start = torch.searchsorted(mrow, uv)
        count = torch.searchsorted(mrow, uv, right=True) - start
        total = int(count.sum())
        if not total:
            return
        u = torch.repeat_interleave(torch.arange(uv.numel(), device=uv.device), count)
        first = torch.repeat_interleave(start - (torch.cumsum(count, 0) - count), count)
        entry = first + torch.arange(total, device=uv.device)
        sq = agg[u, mcol[entry]].square().to(self.phi.dtype)
        self.phi.index_add_(0, ub[u], sq)


def batch_stats(model, batch, names, kind, generator, phi_mask, grad,
                chunk_size: int | None = None) -> Iterator[tuple[dict, torch.Tensor]]:
    """Yield, per chunk of the batch, (Σ_i g_i² per name (or Σ|g_i|), φ of each sample of the chunk)."""
    from .fisher import per_sample_loss

    steps = plan(model, names)
    if steps is None:
        raise ValueError("fisher engine 'hooks' does not support every scored parameter of this model; "
                         "use fisher.engine=loop (or auto)")
    named = dict(model.named_parameters())
    n_total = int(batch["labels"].shape[0])
    chunk = max(1, int(chunk_size)) if chunk_size else _default_chunk(steps, n_total)
    device = next(model.parameters()).device
    phi_idx = {}
    if phi_mask is not None:
        phi_idx = {n: i.to(device=device, dtype=torch.long) for n, i in phi_mask.indices.items()
                   if n in names and i.numel()}
    flags = {n: named[n].requires_grad for n in names}
    for n in names:
        named[n].requires_grad_(False)
    try:
        for start in range(0, n_total, chunk):
            sub = _compact({k: v[start:start + chunk] for k, v in batch.items()})
            size = int(sub["labels"].shape[0])
            state = _Chunk(steps, size, grad, phi_idx, device)
            handles = state.register()
            try:
                losses = per_sample_loss(model, sub, kind, generator)
                if losses.requires_grad:
                    losses.sum().backward()
            finally:
                for h in handles:
                    h.remove()
            state.finish()
            yield state.sums, state.phi
    finally:
        for n, f in flags.items():
            named[n].requires_grad_(f)

"""Batched exact per-sample gradients for the Fisher (engine "hooks"); see fisher.py for the contract.

One forward and one backward per chunk of the batch give every sample's own gradient g_i of every scored
parameter, from each layer's input (forward hook) and the gradient of its output (tensor hook), the way
per-sample-gradient libraries do it (docs/algorithms.md, "Fisher information"):

- ``nn.Linear``: g_i(W) = Σ_t δ_it a_itᵀ (a batched matmul), g_i(b) = Σ_t δ_it; transformers' ``Conv1D``
  the same with W stored (in, out).
- ``nn.Embedding``: sparse. The rows a sample touches get Σ_{t: x_it = v} δ_it (repeated tokens summed
  before squaring, by a sort and a segment sum of fixed size: no host sync); no dense B × V × d tensor. An
  embedding called with a shared (1, T) index (BERT/GPT-2 position ids) has its output expanded to the batch
  in the forward hook, so its gradient arrives per sample.
- ``nn.LayerNorm``: closed form, g_i(γ) = Σ_t δ_it ⊙ x̂_it, g_i(β) = Σ_t δ_it.
- RMSNorm-like leaves (one 1-D ``weight``, an ``eps``/``variance_epsilon``: LlamaRMSNorm, T5LayerNorm, ...):
  closed form g_i(w) = Σ_t δ_it ⊙ x̂_it with x̂ = x·rsqrt(mean(x²) + eps) computed in float32 (cast to the
  input dtype as LlamaRMSNorm does), used only once a numerical probe of the module's own backward confirmed
  that form (cached per module).
- other normalisation leaves: ``torch.func.vmap`` of ``vjp`` of the module's own forward.

Σ_i g_i² is one reduction per tensor on CUDA (``vector_norm`` over the chunk, squared: the squares are never
materialised; on CPU an in-place square and a sum, faster there). ``bf16=True`` (precision "bf16") runs each
chunk's forward under bf16 autocast and forms the per-sample products from bf16 operands with float32 output
(``bmm(..., out_dtype=float32)`` on CUDA, upcast operands where a backend lacks it); squares and sums are
float32, φ float64 (float32 on devices without it).
While a chunk runs, the scored parameters have ``requires_grad=False`` and hooked outputs are made to
require grad, so autograd builds no batch-summed parameter gradient at all (no dense embedding gradient).
A parameter's g_i is squared only once all its calls in the forward have contributed (shared weights).
How a batch becomes chunks is `fishtune.core._chunking`: rows grouped by length (longest first; on CPU cut where
padding costs more than a chunk), each chunk compacted to right padding on the batch's own device (left
padding would shift absolute positions that the batch-size-1 loop never sees; padded positions then get an
exactly zero output gradient and never leak) and moved to the model without blocking. Memory per chunk is
about chunk × 8 bytes × the largest dense scored tensor: ``chunk_size``, or ``FISHTUNE_FISHER_CHUNK``
(samples), or a budget of ``FISHTUNE_FISHER_MEM_MB`` (default: a quarter of the free CUDA memory, PyTorch's
unused cache included, at least 1 GiB; 1 GiB elsewhere).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch
from torch import nn

from . import _chunking
from .losses import per_sample_loss

__all__ = ["supports", "batch_stats", "plan"]

_RMS_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BMM_DTYPE: dict[str, bool] = {}


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # pragma: no cover - transformers is a dependency
        return ()
    return Conv1D


def _eps(module: nn.Module):
    for attr in ("variance_epsilon", "eps"):
        v = getattr(module, attr, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def _rms_hat(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype).float()


def _rms_form(module: nn.Module) -> bool:
    """True when the gradient of ``module``'s output w.r.t. its only parameter ``weight`` is δ ⊙ x̂ (probed
    once with the module's own forward in float32; cached)."""
    if module in _RMS_OK:
        return _RMS_OK[module]
    from torch.func import functional_call

    params = dict(module.named_parameters(recurse=False))
    w, eps, ok = params.get("weight"), _eps(module), False
    if len(params) == 1 and w is not None and w.dim() == 1 and eps is not None:
        gen = torch.Generator().manual_seed(0)
        x = (torch.randn(3, 5, w.shape[0], generator=gen) * 3).to(w.device)
        r = torch.randn(3, 5, w.shape[0], generator=gen).to(w.device)
        p = w.detach().float().clone().requires_grad_()
        try:
            with torch.enable_grad(), torch.autocast(w.device.type, enabled=False):
                out = functional_call(module, {"weight": p}, (x,))
                (got,) = torch.autograd.grad((out.float() * r).sum(), p)
            want = (r * _rms_hat(x, eps)).sum((0, 1))
            ok = bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max())))
        except Exception:  # e.g. under inference_mode: no verdict to keep, the generic path this time
            return False
    _RMS_OK[module] = ok
    return ok


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
        return "rmsnorm" if _rms_form(module) else "func"
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


def _bmm32(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """float32 p @ q of bf16 operands, accumulated in float32."""
    dev = p.device.type
    if _BMM_DTYPE.get(dev, True):
        try:
            out = torch.bmm(p, q, out_dtype=torch.float32)
            _BMM_DTYPE[dev] = True
            return out
        except torch.OutOfMemoryError:
            raise
        except (NotImplementedError, RuntimeError, TypeError):  # this backend has no bmm.dtype
            _BMM_DTYPE[dev] = False
    return torch.bmm(p.float(), q.float())


class _Chunk:
    """Hooks and accumulators (``sums``, Σ over samples, added to in place) for one chunk of ``size``."""

    def __init__(self, steps, size, grad, phi_idx, device, sums, bf16=False):
        self.steps, self.size, self.grad, self.phi_idx, self.sums, self.bf16 = steps, size, grad, phi_idx, sums, bf16
        ptype = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
        self.phi = torch.zeros(size, dtype=ptype, device=device)
        self.pending: dict[str, int] = {}
        self.buf: dict[str, object] = {}
        self.busy = False

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
        with torch.autocast(g.device.type, enabled=False):  # float32 products and squares, whatever the caller
            self._backward_fp32(mod, kind, own, x, g)

    def _backward_fp32(self, mod, kind, own, x, g) -> None:
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
            for attr, n in own:
                if attr == "bias":
                    self._add(n, gf.reshape(B, -1, g.shape[-1]).sum(1))
                    continue
                dt = torch.bfloat16 if self.bf16 else torch.float32
                a = x.to(dt).reshape(B, -1, x.shape[-1])
                d = g.to(dt).reshape(B, -1, g.shape[-1])
                p, q = (d.transpose(1, 2), a) if kind == "linear" else (a.transpose(1, 2), d)
                self._add(n, _bmm32(p, q) if self.bf16 else torch.bmm(p, q))
        elif kind == "rmsnorm":
            (_, n), = own
            self._add(n, (gf * _rms_hat(x, _eps(mod))).reshape(B, -1, gf.shape[-1]).sum(1))
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
            vals = vals * (v != mod.padding_idx).unsqueeze(1).to(vals.dtype)
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
        if flat.device.type == "cuda":  # one fused read of the chunk's products
            s = torch.linalg.vector_norm(flat, 2 if self.grad == "squared" else 1, dim=0)
            s = s.square_() if self.grad == "squared" else s
        else:  # CPU: its norm reduction over dim 0 is slower than an in-place square and a sum
            s = (flat.square_() if self.grad == "squared" else flat.abs_()).sum(0)
        self.sums[n] += s.view(self.sums[n].shape)

    def _finalize_sparse(self, n: str, parts) -> None:
        """Segment sums of each (sample, row) pair's values, squared into their rows: the number of segments
        is bounded by the token count, so no size leaves the device (spare segments add zeros to some rows)."""
        b = torch.cat([p[0] for p in parts])
        v = torch.cat([p[1] for p in parts])
        vals = torch.cat([p[2] for p in parts])
        rows, d = self.sums[n].shape
        keys, order = torch.sort(b * rows + v, stable=True)
        new = torch.ones_like(keys, dtype=torch.bool)
        new[1:] = keys[1:] != keys[:-1]
        seg = torch.cumsum(new, 0) - 1
        agg = torch.zeros(keys.numel(), d, dtype=torch.float32, device=vals.device).index_add_(0, seg, vals[order])
        skeys = torch.arange(keys.numel(), device=keys.device).scatter_(0, seg, keys)
        ub, uv = skeys // rows, skeys % rows
        if n in self.phi_idx:
            used = int(new.sum())
            self._phi_sparse(self.phi_idx[n], d, ub[:used], uv[:used], agg[:used])
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


def batch_stats(model, batch, names, kind, generator, phi_mask, grad, chunk_size: int | None = None, *,
                sums: dict | None = None, steps=None, bf16: bool = False
                ) -> Iterator[tuple[dict, torch.Tensor, torch.Tensor]]:
    """Yield, per chunk of the batch, (Σ_i g_i² per name (or Σ|g_i|), φ of each sample of the chunk, the
    chunk's rows in the batch). Rows are grouped by length (except with ``kind="expected"``, whose label
    draws follow the input order) so that chunks carry little padding.

    With ``sums`` (float32 tensors of the parameters' shapes on the model's device), every chunk adds into
    it in place and it is what is yielded; otherwise each chunk yields a fresh dict. ``steps``: ``plan``'s
    result, when the caller already has it. ``bf16``: the forward under bf16 autocast, bf16 operands for the
    per-sample products (float32 output). The batch may stay on the host: chunks move to the model's device.
    """

    steps = steps if steps is not None else plan(model, names)
    if steps is None:
        raise ValueError("fisher engine 'hooks' does not support every scored parameter of this model; "
                         "use fisher.engine=loop (or auto)")
    named = dict(model.named_parameters())
    n_total = int(batch["labels"].shape[0])
    device = next(model.parameters()).device
    chunk = max(1, int(chunk_size)) if chunk_size else _chunking.default_chunk(steps, n_total, device)
    phi_idx = {}
    if phi_mask is not None:
        phi_idx = {n: i.to(device=device, dtype=torch.long) for n, i in phi_mask.indices.items()
                   if n in names and i.numel()}
    flags = {n: named[n].requires_grad for n in names}
    for n in names:
        named[n].requires_grad_(False)
    host = batch["labels"].device.type == "cpu"
    dense = sum(getattr(m, a).numel() for m, k, own in steps if k != "embedding" for a, _ in own)
    split = _chunking.CHUNK_COST / max(dense, 1) if host and device.type == "cpu" else None
    groups = list(torch.arange(n_total).split(chunk)) if kind == "expected" else _chunking.groups(batch, chunk, split)
    try:
        for rows in groups:
            rows = rows.to(batch["labels"].device)
            sub = _chunking.to_device(_chunking.compact({k: v[rows] for k, v in batch.items()}), device)
            size = int(sub["labels"].shape[0])
            acc = sums if sums is not None else {
                n: torch.zeros(named[n].shape, dtype=torch.float32, device=device) for n in names}
            state = _Chunk(steps, size, grad, phi_idx, device, acc, bf16)
            handles = state.register()
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    losses = per_sample_loss(model, sub, kind, generator)
                if losses.requires_grad:
                    losses.sum().backward()
            finally:
                for h in handles:
                    h.remove()
            state.finish()
            yield acc, state.phi, rows
    finally:
        for n, f in flags.items():
            named[n].requires_grad_(f)

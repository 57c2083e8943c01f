"""Diagonal empirical Fisher from per-sample gradients, and each sample's own Fisher mass.

docs/algorithms.md, "Fisher information": F_S = (1/|S|) Σ_{i∈S} g_i ⊙ g_i with g_i = ∇θ L(x_i, y_i), y_i the
true label (``kind="empirical"``) or drawn from the model's predictive distribution (``kind="expected"``).
It is a mean of *per-sample* squared gradients, never the square of a batch gradient. A sample's mass over
a parameter set Q is φ_Q(i) = Σ_{p∈Q} g_i[p]².

Two engines compute the g_i, both exact:
- ``"loop"``: the reference, one backward per sample (batch size 1, padding stripped), as the FISH code.
- ``"hooks"``: per-sample gradients of whole batches from layer inputs and output gradients
  (`fishtune.core._persample`); used by ``"auto"`` when every parameter in scope lives in a supported layer.
The model runs in eval() mode (no dropout) unless ``dropout=True``; F accumulates in float32, φ in float64.

``precision`` (both engines; the default is the exact one):
- ``"fp32"``: float32 throughout, matmuls as the process has them set (TF32 off by default in PyTorch).
- ``"tf32"``: CUDA matmuls in TF32 (``torch.backends.cuda.matmul.allow_tf32`` set only inside the call and
  restored; the legacy flag alone, since mixing it with the new fp32_precision API raises in torch 2.13).
  No effect on CPU.
- ``"bf16"``: the forward under bf16 autocast (float32 weights; the backward follows its dtypes); the hooks
  engine forms each per-sample product from bf16 operands with float32 accumulation and output (the loop
  gets float32 parameter gradients from autograd). Squares and F stay float32, φ float64.
Both fast precisions change F by rounding only (measure their agreement with ``bench/fisher.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from . import _persample
from .losses import SEQ_KEYS, per_sample_loss
from .masks import Mask, param_names

__all__ = ["FisherResult", "compute_fisher", "per_sample_loss", "PRECISIONS"]

PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass
class FisherResult:
    """``diag[name]``: mean over samples of g_i² (or |g_i| with ``grad="absolute"``), float32, the
    parameter's shape. ``phi``: (n,) per-sample mass over ``phi_mask`` in input order, or None."""

    diag: dict[str, torch.Tensor]
    phi: torch.Tensor | None
    num_samples: int
    engine: str
    precision: str = "fp32"


@contextmanager
def _tf32():
    m = torch.backends.cuda.matmul
    try:
        before, attr, on = m.allow_tf32, "allow_tf32", True
    except RuntimeError:  # the process set the new fp32_precision API: keep to it (mixing raises)
        before, attr, on = m.fp32_precision, "fp32_precision", "tf32"
    setattr(m, attr, on)
    try:
        yield
    finally:
        setattr(m, attr, before)


def _precision_context(precision: str, device: torch.device) -> ExitStack:
    stack = ExitStack()
    if precision == "tf32":
        stack.enter_context(_tf32())
    elif precision == "bf16":
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    return stack


def _split_samples(batch: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """One unpadded batch of size 1 per sample (positions where attention_mask is 0 dropped)."""
    n = batch["labels"].shape[0]
    am = batch.get("attention_mask")
    out = []
    for i in range(n):
        keep = am[i].bool() if am is not None else None
        sample = {}
        for k, v in batch.items():
            v = v[i : i + 1]
            if k in SEQ_KEYS and keep is not None and v.dim() == 2:
                v = v[:, keep]
            sample[k] = v
        out.append(sample)
    return out


def compute_fisher(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    params: list[str] | None = None,
    phi_mask: Mask | None = None,
    kind: str = "empirical",
    grad: str = "squared",
    engine: str = "auto",
    dropout: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = True,
    precision: str = "fp32",
) -> FisherResult:
    """Diagonal Fisher of ``model`` over every sample in ``batches`` (collated dicts with ``labels``).

    ``params``: names of the parameters to score (default: all); others get no gradient. ``phi_mask``:
    also return each sample's mass φ over these entries. ``grad="absolute"`` accumulates |g| instead of g²
    (the FISH reference code's option). ``precision``: fp32 (exact, default) | tf32 | bf16, see the module
    docstring. Raises ValueError when ``batches`` holds no sample or an option is unknown.
    """
    if grad not in ("squared", "absolute"):
        raise ValueError(f"fisher.grad must be squared|absolute, got {grad!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"fisher.precision must be fp32|tf32|bf16, got {precision!r}")
    named = dict(model.named_parameters())
    if not named:
        raise ValueError("model: it has no parameters (nothing to compute a Fisher for)")
    names = list(named) if params is None else param_names(model, params, "params")
    if phi_mask is not None:
        phi_mask.check_model(model)
    if engine not in ("auto", "loop", "hooks"):
        raise ValueError(f"fisher.engine must be auto|loop|hooks, got {engine!r}")
    steps = _persample.plan(model, names) if engine != "loop" and names else None
    if engine == "auto":
        engine = "hooks" if steps is not None else "loop"

    was_training = model.training
    saved_flags = {n: p.requires_grad for n, p in named.items()}
    model.train(dropout)
    for n, p in named.items():
        p.requires_grad_(n in names)
    device = next(model.parameters()).device
    diag = {n: torch.zeros(named[n].shape, dtype=torch.float32, device=device) for n in names}
    phis: list[torch.Tensor] = []
    count = 0
    bar = tqdm(desc=f"fisher ({engine})", unit="sample", disable=not progress, leave=False)
    try:
        for batch in batches:
            if engine == "loop":
                batch = {k: v.to(device) for k, v in batch.items()}
                for sample in _split_samples(batch):
                    with _precision_context(precision, device):
                        grads = _sample_grads(model, sample, names, named, kind, generator)
                    phis.append(_accumulate(diag, [grads], phi_mask, grad))
                    count += 1
                    bar.update(1)
            else:  # the batch may stay on the host: its chunks move to the device (phi stays there)
                first = len(phis)
                order = []
                with _tf32() if precision == "tf32" else nullcontext():  # bf16: batch_stats autocasts
                    for _, phi, rows in _persample.batch_stats(model, batch, names, kind, generator, phi_mask,
                                                               grad, sums=diag, steps=steps, bf16=precision == "bf16"):
                        phis.append(phi)
                        order.append(rows)
                        count += len(phi)
                        bar.update(len(phi))
                if phi_mask is not None:  # chunks follow length order: back to the batch's input order
                    back = torch.argsort(torch.cat([r.cpu() for r in order]))
                    phis[first:] = [torch.cat(phis[first:])[back.to(phis[first].device)]]
    finally:
        bar.close()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        for n, p in named.items():
            p.requires_grad_(saved_flags[n])
    if count == 0:
        raise ValueError("batches: no samples to compute the Fisher over (empty loader?)")
    for t in diag.values():
        t /= count
    phi = torch.cat([p.cpu().to(torch.float64) for p in phis]) if phi_mask is not None else None
    return FisherResult(diag=diag, phi=phi, num_samples=count, engine=engine, precision=precision)


def _sample_grads(model, sample, names, named, kind, generator) -> dict[str, torch.Tensor]:
    """Gradient of one sample's loss w.r.t. each parameter in ``names`` (zeros where it has none)."""
    model.zero_grad(set_to_none=True)
    per_sample_loss(model, sample, kind, generator).sum().backward()
    return {n: named[n].grad if named[n].grad is not None else torch.zeros_like(named[n]) for n in names}


def _accumulate(diag, grads_per_sample, phi_mask: Mask | None, grad: str) -> torch.Tensor:
    """Add each sample's g² (or |g|) into ``diag``; return the samples' φ over ``phi_mask`` (or zeros)."""
    phi = torch.zeros(len(grads_per_sample), dtype=torch.float64)
    for i, grads in enumerate(grads_per_sample):
        for n, g in grads.items():
            g = g.detach().float()
            sq = g * g
            diag[n] += sq if grad == "squared" else g.abs()
            if phi_mask is not None and n in phi_mask.indices:
                phi[i] += float(sq.reshape(-1)[phi_mask.indices[n].to(sq.device)].sum(dtype=torch.float64))
    return phi

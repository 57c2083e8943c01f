"""Diagonal empirical Fisher from per-sample gradients, and each sample's own Fisher mass.

ALGORITHMS.md, "Fisher information": F_S = (1/|S|) Σ_{i∈S} g_i ⊙ g_i with g_i = ∇θ L(x_i, y_i), y_i the
true label (``kind="empirical"``) or drawn from the model's predictive distribution (``kind="expected"``).
It is a mean of *per-sample* squared gradients, never the square of a batch gradient. A sample's mass over
a parameter set Q is φ_Q(i) = Σ_{p∈Q} g_i[p]².

Two engines compute the g_i, both exact:
- ``"loop"``: the reference, one backward per sample (batch size 1, padding stripped), as the FISH code.
- ``"hooks"``: per-sample gradients of whole batches from layer inputs and output gradients
  (`fishtune._persample`); used by ``"auto"`` when every parameter in scope lives in a supported layer.
The model runs in eval() mode (no dropout) unless ``dropout=True``; F and φ accumulate in float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .masks import Mask

__all__ = ["FisherResult", "compute_fisher", "per_sample_loss"]

SEQ_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@dataclass
class FisherResult:
    """``diag[name]``: mean over samples of g_i² (or |g_i| with ``grad="absolute"``), float32, the
    parameter's shape. ``phi``: (n,) per-sample mass over ``phi_mask`` in input order, or None."""

    diag: dict[str, torch.Tensor]
    phi: torch.Tensor | None
    num_samples: int
    engine: str


def per_sample_loss(
    model: nn.Module, batch: Mapping[str, torch.Tensor], kind: str = "empirical", generator=None
) -> torch.Tensor:
    """(B,) loss of each sample: cross-entropy, or squared error when the model has one output (STS-B).

    ``kind="expected"`` replaces the labels by draws from the model's own predictive distribution
    (regression: y ~ N(f(x), 1)), with ``generator`` for reproducibility.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits.float()
    labels = batch["labels"]
    if kind == "expected":
        with torch.no_grad():
            if logits.shape[-1] == 1:
                noise = torch.randn(logits.shape[0], generator=generator, device="cpu").to(logits.device)
                labels = logits[:, 0] + noise
            else:
                probs = torch.softmax(logits, -1).cpu()
                labels = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)
    elif kind != "empirical":
        raise ValueError(f"fisher.kind must be empirical|expected, got {kind!r}")
    if logits.shape[-1] == 1:
        return (logits[:, 0] - labels.to(logits.dtype)) ** 2
    return torch.nn.functional.cross_entropy(logits, labels.long(), reduction="none")


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
) -> FisherResult:
    """Diagonal Fisher of ``model`` over every sample in ``batches`` (collated dicts with ``labels``).

    ``params``: names of the parameters to score (default: all); others get no gradient. ``phi_mask``:
    also return each sample's mass φ over these entries. ``grad="absolute"`` accumulates |g| instead of g²
    (the FISH reference code's option). Raises ValueError when ``batches`` holds no sample.
    """
    if grad not in ("squared", "absolute"):
        raise ValueError(f"fisher.grad must be squared|absolute, got {grad!r}")
    named = dict(model.named_parameters())
    names = list(named) if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"params: no parameter named {unknown[0]!r} in the model")
    if phi_mask is not None:
        phi_mask.check_model(model)
    from . import _persample

    if engine == "auto":
        engine = "hooks" if _persample.supports(model, names) else "loop"
    if engine not in ("loop", "hooks"):
        raise ValueError(f"fisher.engine must be auto|loop|hooks, got {engine!r}")

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
            batch = {k: v.to(device) for k, v in batch.items()}
            if engine == "loop":
                for sample in _split_samples(batch):
                    grads = _sample_grads(model, sample, names, named, kind, generator)
                    phis.append(_accumulate(diag, [grads], phi_mask, grad))
                    count += 1
                    bar.update(1)
            else:
                for sums, phi in _persample.batch_stats(model, batch, names, kind, generator, phi_mask, grad):
                    for n, t in sums.items():
                        diag[n] += t
                    phis.append(phi.cpu().to(torch.float64))
                    count += len(phi)
                    bar.update(len(phi))
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
    phi = torch.cat(phis).cpu() if phi_mask is not None else None
    return FisherResult(diag=diag, phi=phi, num_samples=count, engine=engine)


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

"""Batched per-sample gradients for the Fisher (engine "hooks"); see fisher.py for the contract.

Placeholder until the batched engine lands: `supports` says no, so "auto" uses the exact loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def supports(model: nn.Module, names: list[str]) -> bool:
    """True when every parameter in ``names`` can get exact per-sample gradients from this engine."""
    return False


def batch_stats(model, batch, names, kind, generator, phi_mask, grad) -> Iterator[tuple[dict, torch.Tensor]]:
    """Yield, per chunk of the batch, (Σ_i g_i² per name (or Σ|g_i|), φ of each sample of the chunk)."""
    raise NotImplementedError("the hooks engine is not available yet; use fisher.engine=loop")

"""The per-sample loss both Fisher engines differentiate (`fishtune.core.fisher`, `fishtune.core._persample`), and
the keys of a collated batch that run along the sequence."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["SEQ_KEYS", "per_sample_loss"]

SEQ_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


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

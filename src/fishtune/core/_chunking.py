"""How the hooks engine (`fishtune.core._persample`) cuts a batch into chunks: the chunk size from a memory
budget, rows grouped by length so that chunks carry little padding, each chunk compacted to right padding and
moved to the model's device without blocking on CUDA."""

from __future__ import annotations

import os

import torch

from .losses import SEQ_KEYS

# a chunk's fixed cost on CPU (Python, hooks, launches) in padded tokens × dense scored parameters: 32 tokens
# on MiniLM's 10.6 M (16 to 128 all within 5 % there); tiny models get few chunks, large ones many
CHUNK_COST = 32 * 10.6e6


def default_chunk(steps, n: int, device: torch.device) -> int:
    """Samples per chunk: ``FISHTUNE_FISHER_CHUNK``, else a budget (``FISHTUNE_FISHER_MEM_MB``, default a
    quarter of the free CUDA memory, at least 1 GiB; 1 GiB elsewhere) over 8 bytes × the largest dense
    scored tensor (its per-sample products and their reduction)."""
    env = os.environ.get("FISHTUNE_FISHER_CHUNK")
    if env:
        return max(1, int(env))
    mb = os.environ.get("FISHTUNE_FISHER_MEM_MB")
    budget = float(mb) * 2**20 if mb else float(2**30)
    if not mb and device.type == "cuda":  # free memory, counting what the caching allocator holds unused
        free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
        budget = max(budget, (free - torch.cuda.memory_allocated(device)) / 4)
    largest = max([p.numel() for m, k, own in steps if k != "embedding" for a, _ in own
                   for p in [getattr(m, a)]] or [1])
    return max(1, min(n, int(budget // (8 * largest))))


def compact(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The chunk on the model's device; host tensors go through pinned memory without blocking on CUDA."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: (v.pin_memory() if v.device.type == "cpu" else v).to(device, non_blocking=True)
            for k, v in batch.items()}


def groups(batch, chunk: int, split: float | None) -> list[torch.Tensor]:
    """The batch's rows in chunks of at most ``chunk``, longest first (input order without an attention
    mask). With ``split`` (host batch, CPU model: a chunk's fixed cost in padded tokens), a dynamic program
    over the sorted lengths cuts the chunks where padding would cost more than a chunk."""
    am = batch.get("attention_mask")
    n = int(batch["labels"].shape[0])
    if am is None or am.dim() != 2:
        return list(torch.arange(n).split(chunk))
    lengths = am.ne(0).sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    if split is None:
        return list(order.split(chunk))
    L = lengths[order].tolist()
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - chunk), j):  # rows i..j-1 in one chunk, padded to L[i]
            c = best[i] + split + (j - i) * L[i]
            if c < best[j]:
                best[j], cut[j] = c, i
    bounds, j = [], n
    while j:
        bounds.append((cut[j], j))
        j = cut[j]
    return [order[i:j] for i, j in reversed(bounds)]

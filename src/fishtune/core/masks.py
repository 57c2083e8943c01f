"""Masks over a model's parameters: which entries a selective fine-tune trains.

A `Mask` holds, per parameter tensor, the sorted flat indices of its selected entries. Selection rules
follow docs/algorithms.md, "Which entries a mask holds":

- k = floor(ratio / 100 × P), at least 1, P = the parameters in the universe (head excluded by default);
  `k_rule="fish_reference"` counts like varunnair18/FISH: floor(ratio/100 × (P + P_head)) − P_head.
- top-k is global over all tensors, exact, ties broken by flat index ascending over the tensors in
  `named_parameters()` order; bottom-k (reverse IRD) is the same with the order of scores reversed and ties
  still by ascending index. `scope="per_tensor"` gives each tensor its share of k instead.
- Masks are saved with safetensors and identified by a sha256 over names, shapes and indices.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["Mask", "num_selected", "select_top_k", "mask_from_names"]

HEAD = "head::"  # key prefix of the task head's tensors in a masks file


@dataclass
class Mask:
    """Selected entries per parameter: ``indices[name]`` is a sorted int64 tensor of flat indices into
    the parameter ``name`` of shape ``shapes[name]``. Tensors with nothing selected are left out."""

    indices: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    info: dict = field(default_factory=dict)
    head: dict[str, torch.Tensor] = field(default_factory=dict)  # the task head the Fisher saw (saved along)

    @property
    def count(self) -> int:
        """Number of selected entries (exact)."""
        return int(sum(int(i.numel()) for i in self.indices.values()))

    def names(self) -> list[str]:
        return list(self.indices)

    def dense(self, name: str) -> torch.Tensor:
        """Boolean tensor of the parameter's shape, True where selected."""
        out = torch.zeros(math.prod(self.shapes[name]), dtype=torch.bool)
        out[self.indices[name]] = True
        return out.view(self.shapes[name])

    def sha256(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.indices):
            h.update(name.encode())
            h.update(repr(tuple(self.shapes[name])).encode())
            h.update(self.indices[name].to(torch.int64).contiguous().numpy().tobytes())
        return h.hexdigest()

    def issubset(self, other: Mask) -> bool:
        """True when every entry selected here is selected in ``other``."""
        for name, idx in self.indices.items():
            if name not in other.indices:
                if idx.numel():
                    return False
                continue
            if not torch.isin(idx, other.indices[name]).all():
                return False
        return True

    def check_model(self, model: nn.Module, where: str = "mask") -> None:
        """Raise ValueError (starting with ``where``, e.g. the file's name) when this mask or its saved head
        does not fit ``model`` (a name or shape differs)."""
        params = dict(model.named_parameters())
        for name, t in self.head.items():
            if name not in params or tuple(params[name].shape) != tuple(t.shape):
                raise ValueError(f"{where}: its head {name!r} does not fit the model (a mask made for another model "
                                 "or another number of labels?)")
        for name, shape in self.shapes.items():
            if name not in params:
                raise ValueError(f"{where}: parameter {name!r} is not in the model (a mask made for another model?)")
            if tuple(params[name].shape) != tuple(shape):
                raise ValueError(
                    f"{where}: parameter {name!r} has shape {tuple(params[name].shape)} in the model, "
                    f"{tuple(shape)} in the mask (a mask made for another model?)"
                )

    def save(self, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
        """Write to ``path`` (safetensors), atomically; shapes and the sha256 go into the metadata, the
        task head (``self.head``, the weights the Fisher was computed with) in as ``head::<name>``."""
        from safetensors.torch import save_file

        from .files import atomic_path

        meta = {f"shape:{n}": ",".join(map(str, s)) for n, s in self.shapes.items()}
        meta["sha256"] = self.sha256()
        meta.update(metadata or {})
        tensors = {n: i.to(torch.int64).contiguous() for n, i in self.indices.items()}
        tensors.update({f"{HEAD}{n}": t.detach().cpu().contiguous() for n, t in self.head.items()})
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Mask:
        """Read a mask written by `save`; raise ValueError when the file is corrupted."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for truncated/garbled headers
            raise ValueError(f"mask file {path} is not a readable safetensors file: {e}") from None
        try:
            shapes = {k[len("shape:"):]: tuple(int(x) for x in v.split(",") if x)
                      for k, v in meta.items() if k.startswith("shape:")}
        except ValueError:
            raise ValueError(f"mask file {path} is corrupted (a shape in its metadata is not a list of sizes)") \
                from None
        indices = {k: v for k, v in tensors.items() if not k.startswith(HEAD)}
        head = {k[len(HEAD):]: v for k, v in tensors.items() if k.startswith(HEAD)}
        mask = cls(indices=indices, shapes={n: shapes[n] for n in indices if n in shapes}, head=head)
        if set(mask.shapes) != set(indices) or ("sha256" in meta and meta["sha256"] != mask.sha256()):
            raise ValueError(f"mask file {path} is corrupted (its sha256 or shapes do not match its contents)")
        for n, idx in indices.items():
            if idx.dtype not in (torch.int64, torch.int32) or idx.dim() != 1:
                raise ValueError(f"mask file {path}: indices of {n!r} are a {idx.dim()}-D {idx.dtype} tensor, not "
                                 "a 1-D list of flat integer indices")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= math.prod(mask.shapes[n])):
                raise ValueError(f"mask file {path}: indices of {n!r} fall outside its shape")
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise ValueError(f"mask file {path}: indices of {n!r} are not sorted and distinct")
            indices[n] = idx.to(torch.int64)
        for n, t in head.items():
            if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise ValueError(f"mask file {path}: its head {n!r} holds non-finite or non-float values")
        return mask


def num_selected(ratio: float, universe: int, head: int = 0, rule: str = "exact") -> int:
    """k for a ratio in percent of ``universe`` parameters (docs/algorithms.md, "Which entries a mask holds").

    ``rule="exact"``: floor(ratio/100 × universe), at least 1. ``rule="fish_reference"``: the FISH reference
    code's count, floor(ratio/100 × (universe + head)) − head, at least 1.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 100:
        raise ValueError(f"ratio must be in (0, 100] (percent of the pretrained parameters), got {ratio!r}")
    if rule == "exact":
        k = math.floor(ratio / 100 * universe)
    elif rule == "fish_reference":
        k = math.floor(ratio / 100 * (universe + head)) - head
    else:
        raise ValueError(f"mask.k_rule must be one of exact|fish_reference, got {rule!r}")
    return max(1, min(k, universe))


CHUNK = 1 << 20  # entries ranked at once: selection holds O(chunk + k) scores, never a copy of them all


def _ranked(score: torch.Tensor, allowed: torch.Tensor | None, largest: bool, zero_last: bool) -> torch.Tensor:
    """The key `select_top_k` ranks a slice of scores by (larger first): -inf for what may not be chosen."""
    s = score.to(torch.float64 if score.dtype == torch.float64 else torch.float32)
    if not largest:
        s = -s
        if zero_last:  # after every -F < 0, before the disallowed -inf; ties keep the flat-index order
            s = torch.where(s == 0, torch.full_like(s, -torch.finfo(s.dtype).max), s)
    if allowed is not None:
        s = torch.where(allowed, s, torch.full_like(s, -math.inf))
    return torch.nan_to_num(s, nan=-math.inf, posinf=math.inf, neginf=-math.inf)


def _kth_largest(keys, k: int) -> torch.Tensor:
    """The k-th largest value over the key chunks ``keys`` (a running top-k: O(chunk + k) memory)."""
    best = None
    for key in keys:
        top = key if key.numel() <= k else torch.topk(key, k, sorted=False).values
        best = top if best is None else torch.cat([best, top])
        if best.numel() > 4 * k:  # merge only now and then: a top-k over ~5k entries per 4k new ones
            best = torch.topk(best, k, sorted=False).values
    return torch.topk(best, k, sorted=False).values.min()


def _first_k(keys, k: int) -> list[torch.Tensor]:
    """Exactly k entries of largest key over the chunks ``keys()`` yields (callable twice), ties by lower
    index in the chunks' order: per chunk, the chosen positions in it."""
    thresh = _kth_largest(keys(), k)
    above, ties, spare = [], [], k  # ties kept only while some could still be needed (O(k) memory)
    for key in keys():
        above.append((key > thresh).nonzero().squeeze(1))
        tie = (key == thresh).nonzero().squeeze(1)[:spare] if spare > 0 else above[-1][:0]
        ties.append(tie)
        spare -= tie.numel()
    missing = k - sum(x.numel() for x in above)
    chosen = []
    for up, tie in zip(above, ties):
        take = tie[:missing]
        missing -= take.numel()
        chosen.append(torch.sort(torch.cat([up, take])).values if take.numel() else up)
    return chosen


def select_top_k(
    scores: Mapping[str, torch.Tensor],
    k: int,
    *,
    largest: bool = True,
    candidates: Mask | None = None,
    scope: str = "global",
    zero_last: bool = False,
) -> Mask:
    """Exactly ``k`` entries with the largest (``largest=False``: smallest) scores.

    ``scores`` maps parameter names to score tensors (e.g. the Fisher diagonal), in ``named_parameters()``
    order; ``candidates`` restricts the choice to the entries of another mask (IRD's range C). Ties go to
    the lower flat index, tensors taken in the order of ``scores``. ``scope="per_tensor"`` selects within
    each tensor its share of k (largest remainders), the total still exactly k. ``zero_last`` (with
    ``largest=False``, reverse IRD): entries scoring exactly 0 rank after every positive one, so they are
    taken only where fewer than k candidates score above 0 (then by ascending flat index). The scores are
    ranked `CHUNK` entries at a time: no copy of them all is made (a 1B-parameter model's would take GBs).
    """
    names = list(scores)
    if not names:
        raise ValueError("scores is empty: no parameters to select from")
    flat = {n: scores[n].detach().reshape(-1) for n in names}
    allowed = {}
    if candidates is not None:
        for n in names:
            allowed[n] = torch.zeros(flat[n].numel(), dtype=torch.bool, device=flat[n].device)
            if n in candidates.indices:
                allowed[n][candidates.indices[n].to(flat[n].device)] = True
    available = candidates.count if candidates is not None else sum(f.numel() for f in flat.values())
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k: a whole number of entries, got {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k: at least one entry must be selected, got k={k}")
    if k > available:
        raise ValueError(f"k={k} entries requested but only {available} candidates exist")

    def pick(group: list[str], q: int) -> dict[str, list[torch.Tensor]]:
        starts = [(n, a) for n in group for a in range(0, flat[n].numel(), CHUNK)]

        def keys():
            for n, a in starts:
                part = None if candidates is None else allowed[n][a:a + CHUNK]
                yield _ranked(flat[n][a:a + CHUNK], part, largest, zero_last)

        out: dict[str, list[torch.Tensor]] = {}
        for (n, a), pos in zip(starts, _first_k(keys, q)):
            out.setdefault(n, []).append(pos + a)
        return out

    if scope == "global":
        picked = pick(names, k)
    elif scope == "per_tensor":
        sizes = [int(allowed[n].sum()) if candidates is not None else flat[n].numel() for n in names]
        picked = {}
        for n, q in zip(names, _apportion(k, sizes)):
            if q:
                picked.update(pick([n], q))
    else:
        raise ValueError(f"mask.scope must be global|per_tensor, got {scope!r}")
    indices, shapes = {}, {}
    for n in names:
        idx = torch.cat(picked[n]) if n in picked else None
        if idx is not None and idx.numel():
            indices[n] = idx.cpu()
            shapes[n] = tuple(scores[n].shape)
    return Mask(indices, shapes)


def _apportion(k: int, sizes: list[int]) -> list[int]:
    """Split k over tensors in proportion to their sizes (largest remainder), each quota <= its size."""
    total = sum(sizes)
    raw = [k * s / total for s in sizes]
    quotas = [min(math.floor(r), s) for r, s in zip(raw, sizes)]
    order = sorted(range(len(sizes)), key=lambda i: (-(raw[i] - quotas[i]), i))
    i = 0
    while sum(quotas) < k:
        j = order[i % len(order)]
        if quotas[j] < sizes[j]:
            quotas[j] += 1
        i += 1
    return quotas


def param_names(model: nn.Module, names: str | Sequence[str], what: str) -> list[str]:
    """``names`` (parameter names, or one name as a string) checked against ``model``; ValueError naming the
    argument ``what`` and the first name the model does not have."""
    names = [names] if isinstance(names, str) else list(names)
    params = dict(model.named_parameters())
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"{what}: no parameter named {unknown[0]!r} in the model")
    return names


def mask_from_names(model: nn.Module, names: str | Sequence[str]) -> Mask:
    """A mask selecting every entry of the named parameters (e.g. BitFit's biases)."""
    names = param_names(model, names, "names")
    params = dict(model.named_parameters())
    return Mask(
        {n: torch.arange(params[n].numel()) for n in names},
        {n: tuple(params[n].shape) for n in names},
    )

"""Fisher-based selection from a set of training samples: the pieces FISH Mask, IRD and FISH-Tuning share.

`Selector` holds a model, its tokenised training examples and a collate function, and answers: which
parameters may be selected (the universe: head excluded by default, optional regex scope), how many
entries a ratio means (k), which samples a seed draws, and the Fisher (and per-sample mass φ) over any
list of sample indices. docs/algorithms.md, "FISH Mask" and "Which entries a mask holds".
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .fisher import FisherResult, compute_fisher
from .heap import trim_heap
from .masks import Mask, num_selected, param_names, select_top_k

__all__ = ["Selector", "draw_samples", "fish_mask"]


def draw_samples(num_train: int, n: int, seed: int) -> list[int]:
    """``n`` distinct training indices drawn at random with ``seed``; the first m of the same permutation
    are the draw of size m, so every ladder cell's random set is a prefix of the largest one."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ValueError(f"fisher.num_samples must be a whole number, got {n!r}")
    if n > num_train:
        raise ValueError(f"fisher.num_samples={n} is larger than the training set ({num_train} examples)")
    if n < 1:
        raise ValueError(f"fisher.num_samples must be >= 1, got {n}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_train, generator=gen)[:n].tolist()


@dataclass
class Selector:
    """Fisher-based choices over ``model``'s parameters from the examples in ``samples``.

    ``samples[i]`` is one tokenised example (a dict with ``labels``; a tokenised `datasets.Dataset` works),
    ``collate`` pads a list of them into a batch. ``head``: parameters never selected and not counted in P
    (unless ``include_head``). ``scope``: a regex; only matching parameter names are scored and selected,
    while the ratio still counts all of P.
    """

    model: nn.Module
    samples: Sequence
    collate: Callable
    head: Sequence[str] = ()
    scope: str | None = None
    include_head: bool = False
    k_rule: str = "exact"
    mask_scope: str = "global"
    fisher_kind: str = "empirical"
    fisher_grad: str = "squared"
    engine: str = "auto"
    batch_size: int = 16
    dropout: bool = False
    progress: bool = True
    precision: str = "fp32"  # fisher.precision: fp32 | tf32 | bf16 (compute_fisher)
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(self.model).__name__}")
        if not hasattr(self.samples, "__len__") or not hasattr(self.samples, "__getitem__"):
            raise TypeError(f"samples: expected a list or datasets.Dataset of tokenised examples, got "
                            f"{type(self.samples).__name__}")
        if len(self.samples) == 0:
            raise ValueError("samples: the training set is empty")
        params = dict(self.model.named_parameters())
        if not params:
            raise ValueError("model: it has no parameters to select from")
        self.head = tuple(param_names(self.model, self.head, "head"))
        self.universe_names = [n for n in params if self.include_head or n not in self.head]
        self.num_params = sum(params[n].numel() for n in self.universe_names)  # P
        self.num_head = sum(params[n].numel() for n in self.head if n in params)
        if self.scope:
            try:
                pattern = re.compile(self.scope)
            except re.error as e:
                raise ValueError(f"fisher.scope: not a valid regex ({e})") from None
            self.candidate_names = [n for n in self.universe_names if pattern.search(n)]
            if not self.candidate_names:
                raise ValueError(f"fisher.scope: {self.scope!r} matches no parameter of the model")
        else:
            self.candidate_names = list(self.universe_names)

    def k(self, ratio: float) -> int:
        """Entries to select for ``ratio`` percent of P (exact count; at most the candidates in scope)."""
        k = num_selected(ratio, self.num_params, self.num_head, self.k_rule)
        available = sum(dict(self.model.named_parameters())[n].numel() for n in self.candidate_names)
        if k > available:
            raise ValueError(f"ratio {ratio}% needs {k} entries but fisher.scope leaves only {available}")
        return k

    def draw(self, n: int, seed: int) -> list[int]:
        return draw_samples(len(self.samples), n, seed)

    def batches(self, indices: Sequence[int]):
        for start in range(0, len(indices), self.batch_size):
            yield self.collate([self.samples[i] for i in indices[start : start + self.batch_size]])

    def fisher(self, indices: Sequence[int], phi_mask: Mask | None = None) -> FisherResult:
        """Fisher over the examples at ``indices`` (cached per index list when no φ is asked)."""
        key = tuple(indices)
        if phi_mask is None and key in self._cache:
            return self._cache[key]
        res = compute_fisher(self.model, self.batches(list(indices)), params=self.candidate_names,
                             phi_mask=phi_mask, kind=self.fisher_kind, grad=self.fisher_grad, engine=self.engine,
                             dropout=self.dropout, progress=self.progress, precision=self.precision)
        if phi_mask is None:
            self._cache = {key: res}  # one entry: the ladder asks for the same set twice in a row
        return res

    def forget(self) -> None:
        """Drop the cached Fisher scores (as large as the model's scored parameters) once selection is done,
        and hand the heap that selection freed back to the system (glibc keeps it otherwise: ~100 MiB of
        RSS through the whole fine-tune on MiniLM, measured)."""
        self._cache = {}
        trim_heap()

    def top_k(self, fisher: FisherResult, ratio: float, *, largest: bool = True,
              candidates: Mask | None = None, zero_last: bool = False) -> Mask:
        """The ratio's k entries of largest (or smallest) Fisher, inside ``candidates`` when given.
        ``zero_last`` (bottom-k only): entries with F = 0 only where fewer than k candidates have F > 0.
        The mask's info counts the selected entries with F = 0 (``zero_fisher``) and the candidates with
        F > 0 (``positive_candidates``)."""
        mask = select_top_k(fisher.diag, self.k(ratio), largest=largest, candidates=candidates,
                            scope=self.mask_scope, zero_last=zero_last)
        params = dict(self.model.named_parameters())
        mask.head = {n: params[n].detach().cpu().clone() for n in self.head if n in params}
        mask.info["zero_fisher"] = sum(int((fisher.diag[n].reshape(-1)[i.to(fisher.diag[n].device)] == 0).sum())
                                       for n, i in mask.indices.items())
        mask.info["positive_candidates"] = _positive(fisher.diag, candidates)
        return mask


def _positive(diag: dict[str, torch.Tensor], candidates: Mask | None) -> int:
    """How many entries (inside ``candidates`` when given) have a Fisher above 0."""
    if candidates is None:
        return sum(int((f > 0).sum()) for f in diag.values())
    return sum(int((diag[n].reshape(-1)[i.to(diag[n].device)] > 0).sum())
               for n, i in candidates.indices.items() if n in diag)


def fish_mask(selector: Selector, ratio: float, num_samples: int, seed: int) -> tuple[Mask, list[int]]:
    """FISH Mask (Sung et al. 2021): top-k by Fisher over ``num_samples`` random samples; returns the mask
    and the sample indices used."""
    indices = selector.draw(num_samples, seed)
    return selector.top_k(selector.fisher(indices), ratio), indices

"""IRD, Iterative Range Decreasing (Dong et al., arXiv 2403.08484, Algorithm 1), its reverse (Eq. 5-6),
and FISH Mask on the same ladder: the selection half of the paper's search.

The walk (docs/algorithms.md, "IRD"): from (R_0, N_0), alternately a *sample step* (keep the N_t samples of S
with the largest φ over the current mask, then re-select at the same ratio from them) and a *parameter step* (the
range C shrinks to the current mask, then the top-k at the next ratio inside it). With the paper's ladder
N=[128,32,16,1], R=[2.5,0.5,0.1,0.02] it visits the 7 "staircase" cells. ``nested=False`` keeps C at all
parameters. ``reverse=True`` reverses every choice after the first cell (smallest φ, bottom-k among the
entries the samples touch, F > 0; ``zero_fisher="include"``: the literal bottom-k over every entry). No cell
needs fine-tuning to be chosen: every mask comes first, each cell is then trained independently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .masks import Mask
from .selection import Selector

__all__ = ["Cell", "cell_name", "ratio_name", "check_ladder", "staircase", "grid", "ird_walk", "fish_ladder"]


def ratio_name(ratio: float) -> str:
    """``r<ratio>``, the ratio as short as it stays exact (0.5, 2.5, 20; 0.5000001 kept whole)."""
    short = f"{ratio:g}"
    return f"r{short if float(short) == float(ratio) else repr(float(ratio))}"


def cell_name(ratio: float, samples: int) -> str:
    """``r<ratio>-n<samples>``: two cells never share a name."""
    return f"{ratio_name(ratio)}-n{samples}"


@dataclass
class Cell:
    """One visited (ratio, samples) pair: its mask and the samples its Fisher came from."""

    ratio: float
    samples: int
    mask: Mask
    sample_indices: list[int]
    phi: list[float] | None = None  # the samples' Fisher mass at the sample step that chose them
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return cell_name(self.ratio, self.samples)


def check_ladder(samples: Sequence[int], ratios: Sequence[float]) -> None:
    """ValueError naming the argument unless both are non-empty, of one length, strictly decreasing, with
    samples >= 1 (integers) and ratios in (0, 100]."""
    samples, ratios = list(samples), list(ratios)
    if not samples or not ratios:
        raise ValueError("samples, ratios: the ladder needs at least one step")
    if len(samples) != len(ratios):
        raise ValueError(f"samples, ratios: one of each per step, got {len(samples)} and {len(ratios)}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in samples):
        raise ValueError(f"samples: whole numbers >= 1, got {samples}")
    if not all(isinstance(r, (int, float)) and 0 < r <= 100 for r in ratios):
        raise ValueError(f"ratios: percentages in (0, 100], got {ratios}")
    for name, seq in (("samples", samples), ("ratios", ratios)):
        if any(b >= a for a, b in zip(seq, seq[1:])):
            raise ValueError(f"{name}: must be strictly decreasing, got {seq}")


def staircase(samples: Sequence[int], ratios: Sequence[float]) -> list[tuple[float, int]]:
    """The cells the walk visits: (R_0,N_0), then (R_{t-1},N_t), (R_t,N_t) for t = 1..T-1."""
    check_ladder(samples, ratios)
    cells = [(ratios[0], samples[0])]
    for t in range(1, len(samples)):
        cells += [(ratios[t - 1], samples[t]), (ratios[t], samples[t])]
    return cells


def grid(samples: Sequence[int], ratios: Sequence[float]) -> list[tuple[float, int]]:
    """Every (ratio, samples) pair of the ladder's grid (the paper's Fig. 1)."""
    return [(r, n) for n in samples for r in ratios]  # grouped by sample set: one Fisher per size


def _keep(phi: torch.Tensor, n: int, largest: bool) -> list[int]:
    """Positions of the n samples with the largest (smallest) φ; ties: earlier position first; returned in
    their original order."""
    order = torch.argsort(-phi if largest else phi, stable=True)
    return sorted(order[:n].tolist())


def ird_walk(selector: Selector, samples: Sequence[int], ratios: Sequence[float], seed: int, *,
             nested: bool = True, reverse: bool = False, zero_fisher: str = "exclude") -> list[Cell]:
    """Walk the ladder and return every visited cell with its mask (see the module docstring).

    ``zero_fisher`` (reverse only): ``exclude`` takes the bottom-k among the entries with F > 0 under the
    cell's samples (entries with F = 0 only where fewer than k have F > 0: the other half of what the
    samples touch); ``include`` is the literal reading, where those F = 0 entries (embedding rows of tokens
    the samples never contain) come first.

    Raises ValueError naming the argument when ``samples``/``ratios`` are empty, of different lengths, not
    strictly decreasing, or out of range."""
    check_ladder(samples, ratios)
    if zero_fisher not in ("exclude", "include"):
        raise ValueError(f"zero_fisher: exclude|include, got {zero_fisher!r}")
    if max(samples) > len(selector.samples):
        raise ValueError(f"ladder.samples: {max(samples)} samples asked, the training set has "
                         f"{len(selector.samples)}")
    largest = not reverse
    pick = {"largest": largest, "zero_last": reverse and zero_fisher == "exclude"}
    S = selector.draw(samples[0], seed)
    F = selector.fisher(S)
    Q = selector.top_k(F, ratios[0])  # the first cell is FISH's, reversed or not
    cells = [Cell(ratios[0], samples[0], Q, list(S), info=_info(Q))]
    C: Mask | None = None  # None: all parameters
    for t in range(1, len(samples)):
        phi = selector.fisher(S, phi_mask=Q).phi
        keep = _keep(phi, samples[t], largest)
        S = [S[i] for i in keep]
        kept_phi = [float(phi[i]) for i in keep]
        F = selector.fisher(S)
        Q = selector.top_k(F, ratios[t - 1], candidates=C, **pick)  # sample step
        cells.append(Cell(ratios[t - 1], samples[t], Q, list(S), kept_phi, _info(Q)))
        if nested:
            C = Q  # parameter step: the range decreases to the current mask
        Q = selector.top_k(F, ratios[t], candidates=C, **pick)
        cells.append(Cell(ratios[t], samples[t], Q, list(S), kept_phi, _info(Q)))
    return cells


def fish_ladder(selector: Selector, cells: Sequence[tuple[float, int]], seed: int) -> list[Cell]:
    """FISH Mask at each (ratio, samples) cell from a *random* sample set of that size (prefixes of one
    seeded permutation, so the largest cell equals IRD's first)."""
    out = []
    for ratio, n in cells:
        S = selector.draw(n, seed)
        mask = selector.top_k(selector.fisher(S), ratio)
        out.append(Cell(ratio, n, mask, S, info=_info(mask)))
    return out


def _info(mask: Mask) -> dict:
    return {"zero_fisher": mask.info.get("zero_fisher", 0),
            "positive_candidates": mask.info.get("positive_candidates")}

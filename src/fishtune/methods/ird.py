"""IRD and reverse IRD (Dong et al. 2024, Algorithm 1 and Eq. 5-6) as methods: one plan per visited cell.

Both names live in this module because they are one walk in two directions (`fishtune.core.ird.ird_walk`).
Options recorded in every result: ``nested`` (the candidate range shrinks, default) and ``reverse``;
reverse IRD's ``zero_fisher`` says whether its bottom-k ranges over the entries its samples touch (F > 0,
``exclude``, default) or over every entry (``include``, the literal reading: from the second cell on it
picks only F = 0 entries, embedding rows of tokens the samples never contain, and trains the head alone).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.ird import ird_walk
from .base import Context, Method, Plan, register


class _Walk(Method):
    reverse = False
    sparsity_modes = ("ladder",)
    draws_fisher_samples = True

    @dataclass
    class Config:
        nested: bool = True  # each cell's mask inside the last larger-ratio cell's (docs/algorithms.md, "IRD")

    def plans(self, ctx: Context) -> list[Plan]:
        self.check_sparsity(ctx.sparsity)
        zero_fisher = getattr(self.cfg, "zero_fisher", "exclude")
        cells = ird_walk(ctx.selector, ctx.ladder.samples, ctx.ladder.ratios, ctx.seed,
                         nested=self.cfg.nested, reverse=self.reverse, zero_fisher=zero_fisher)
        extra = {"zero_fisher_rule": zero_fisher} if self.reverse else {}
        return [Plan(cell=c.name, mask=c.mask, ratio=c.ratio, samples=c.samples,
                     info={"sample_indices": c.sample_indices, "phi": c.phi, "nested": self.cfg.nested,
                           "reverse": self.reverse, **extra, **c.info})
                for c in cells]


@register("ird")
class IRD(_Walk):
    reverse = False


@register("reverse_ird")
class ReverseIRD(_Walk):
    reverse = True

    @dataclass
    class Config:
        nested: bool = True
        zero_fisher: str = "exclude"  # exclude: bottom-k among entries with F > 0 | include: the literal reading

        def __post_init__(self) -> None:
            if self.zero_fisher not in ("exclude", "include"):
                raise ValueError(f"method.zero_fisher must be exclude|include, got {self.zero_fisher!r}")

"""FISH Mask (Sung, Nair, Raffel 2021): top-k parameters by empirical Fisher over n random samples.

With ``sparsity=ladder`` it gives the paper's left-hand matrices: FISH at each cell IRD visits, from a
random sample set of that cell's size; ``sparsity=grid`` gives all ladder cells (paper Fig. 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.ird import fish_ladder
from .base import Context, Method, Plan, ladder_cells, register


@register("fish")
class Fish(Method):
    sparsity_modes = ("single", "ladder", "grid")
    draws_fisher_samples = True
    @dataclass
    class Config:
        pass

    def plans(self, ctx: Context) -> list[Plan]:
        sel, mode = ctx.selector, ctx.sparsity.mode
        if mode == "single":
            cells = [(r, ctx.num_samples) for r in ctx.ratios()]
        else:
            cells = ladder_cells(ctx.sparsity, ctx.ladder)
        out = []
        for c in fish_ladder(sel, cells, ctx.seed):
            name = "main" if mode == "single" else c.name
            out.append(Plan(cell=name, mask=c.mask, ratio=c.ratio, samples=c.samples,
                            info={"sample_indices": c.sample_indices, **c.info}))
        return out

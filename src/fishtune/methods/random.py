"""Random Mask (Sung et al. 2021's baseline): k entries drawn uniformly at random with the seed."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.masks import select_top_k
from .base import Context, Method, Plan, random_scores, register


@register("random")
class RandomMask(Method):
    @dataclass
    class Config:
        pass

    def plans(self, ctx: Context) -> list[Plan]:
        sel = ctx.selector
        scores = random_scores(ctx.model, sel.candidate_names, ctx.seed)
        return [Plan(cell=ctx.cell(r), mask=select_top_k(scores, sel.k(r), scope=sel.mask_scope), ratio=r)
                for r in ctx.ratios()]

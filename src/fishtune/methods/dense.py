"""Dense (full) fine-tuning: every parameter trains (Table 2's first row)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Context, Method, Plan, register


@register("dense")
class Dense(Method):
    ratio_fixed = True
    @dataclass
    class Config:
        pass

    def plans(self, ctx: Context) -> list[Plan]:
        return [Plan(cell="main", ratio=100.0)]

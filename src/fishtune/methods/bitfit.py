"""BitFit (Ben Zaken et al. 2022): train only the biases of the pretrained model, plus the task head.

The ratio is whatever the biases amount to (0.08 % of BERT-base); `sparsity` is ignored and the exact
count is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.masks import mask_from_names
from .base import Context, Method, Plan, register


@register("bitfit")
class BitFit(Method):
    ratio_fixed = True
    @dataclass
    class Config:
        pattern: str = "bias"  # a parameter is a bias when its last name component ends with this

    def plans(self, ctx: Context) -> list[Plan]:
        sel = ctx.selector
        names = [n for n in sel.candidate_names if n.rsplit(".", 1)[-1].endswith(self.cfg.pattern)]
        if not names:
            raise ValueError(f"bitfit: the model has no parameter ending with {self.cfg.pattern!r}")
        mask = mask_from_names(ctx.model, names)
        return [Plan(cell="main", mask=mask, ratio=100.0 * mask.count / sel.num_params)]

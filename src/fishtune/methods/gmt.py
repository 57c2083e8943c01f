"""GMT, Gradient-Mask Tuning (Li et al. 2024, arXiv 2406.15330; docs/algorithms.md, "GMT").

Every parameter stays trainable. After each backward, before the optimizer step, the gradient entries
whose |g| lies below the ``mask_ratio`` quantile are set to zero, so the step only moves the entries with
the largest gradients; the mask is recomputed every step and so changes from step to step.

Choices where our copy of the paper is silent (all options, recorded in ``plan.info``):
- ``mask_ratio: null`` (default) resolves to ``1 - sparsity.ratio/100``: each step keeps the ratio's share of
  entries (0.5 % → mask_ratio 0.995), which puts GMT on Table 2's axis; a number (e.g. 0.2, GMT's own range
  of 10-40 %) gives the paper's reading.
- The quantile is torch.quantile's linear interpolation; "below" is strict (|g| < q), so ties at q are
  kept. It is computed with ``kthvalue`` (torch.quantile refuses tensors of more than 2**24 entries).
- ``scope: per_tensor`` (default; docs/algorithms.md, "GMT") or ``global`` (one quantile over all masked tensors).
- ``accumulation``: our loop steps the optimizer every batch, so accumulation=n recomputes the mask every
  n steps from |Σ g| over those n steps (the accumulation window) and applies it to each step's gradient
  until the next window ends; n=1 (default) is the exact per-step rule.
- The task head (and, with ``mask.include_head``, nothing else) is left unmasked, as for every method.
- Adam's moments still move an entry whose gradient was zeroed this step (as in GMT: it masks gradients,
  not updates), so the trained count is all parameters; ``info`` records the entries kept per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError
from .base import Context, Method, Plan, register


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(x, q) (linear interpolation, same arithmetic: rank in x's dtype, lerp) for any size,
    via kthvalue."""
    flat = x.reshape(-1)
    n = flat.numel()
    rank = torch.tensor(q, dtype=flat.dtype) * (n - 1)
    lo = int(rank.floor())
    v_lo = flat.kthvalue(lo + 1).values
    v_hi = flat.kthvalue(min(lo + 2, n)).values if lo + 1 < n else v_lo
    return torch.lerp(v_lo, v_hi, (rank - lo).to(flat.device))


class GradientMask:
    """StepHook: zero the gradient entries of ``names`` whose |g| is below the ``mask_ratio`` quantile."""

    def __init__(self, names: list[str], mask_ratio: float, scope: str = "per_tensor", accumulation: int = 1):
        self.names, self.mask_ratio, self.scope, self.accumulation = list(names), mask_ratio, scope, accumulation
        self._window: dict[str, torch.Tensor] = {}
        self._keep: dict[str, torch.Tensor] = {}
        self.kept: list[int] = []  # entries whose gradient survived, per step

    def thresholds(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The |g| quantile per tensor (or one global one) that decides what is zeroed."""
        if self.scope == "global":
            t = quantile(torch.cat([g.abs().reshape(-1) for g in grads.values()]), self.mask_ratio)
            return {n: t for n in grads}
        return {n: quantile(g.abs(), self.mask_ratio) for n, g in grads.items()}

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> None:
        params = dict(model.named_parameters())
        grads = {n: params[n].grad for n in self.names if params[n].grad is not None}
        if not grads:
            return
        if self.accumulation > 1:
            for n, g in grads.items():
                self._window[n] = self._window[n] + g if n in self._window else g.clone()
            if not self._keep or (step + 1) % self.accumulation == 0:  # first step: its own gradient
                window = self._window
                self._keep = {n: window[n].abs() >= t for n, t in self.thresholds(window).items()}
            if (step + 1) % self.accumulation == 0:
                self._window = {}
            keep = self._keep
        else:
            keep = {n: grads[n].abs() >= t for n, t in self.thresholds(grads).items()}
        kept = 0
        for n, g in grads.items():
            g.mul_(keep[n])  # zero below the quantile (keeps the sign and value of the rest)
            kept += int(keep[n].sum())
        self.kept.append(kept)


@register("gmt")
class GMT(Method):
    @dataclass
    class Config:
        mask_ratio: float | None = None  # fraction of entries zeroed per step; None: 1 - sparsity.ratio/100
        scope: str = "per_tensor"  # per_tensor (default; docs/algorithms.md, "GMT") | global
        accumulation: int = 1  # recompute the mask every n steps from the window's summed gradient

        def __post_init__(self) -> None:
            if self.mask_ratio is not None and not 0 <= self.mask_ratio < 1:
                raise ConfigError(f"method.mask_ratio must be in [0, 1), got {self.mask_ratio}")
            if self.scope not in ("per_tensor", "global"):
                raise ConfigError(f"method.scope must be per_tensor|global, got {self.scope!r}")
            if self.accumulation < 1:
                raise ConfigError(f"method.accumulation must be >= 1, got {self.accumulation}")

    def plans(self, ctx: Context) -> list[Plan]:
        sel = ctx.selector
        out = []
        for ratio in ctx.ratios():
            q = self.cfg.mask_ratio if self.cfg.mask_ratio is not None else 1 - ratio / 100
            hook = GradientMask(sel.universe_names, q, self.cfg.scope, self.cfg.accumulation)
            out.append(Plan(cell=ctx.cell(ratio), hook=hook, ratio=ratio,
                            info={"gmt_mask_ratio": q, "gmt_scope": self.cfg.scope,
                                  "gmt_accumulation": self.cfg.accumulation,
                                  "gmt_mask_ratio_from_sparsity": self.cfg.mask_ratio is None}))
        return out

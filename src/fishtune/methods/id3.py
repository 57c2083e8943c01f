"""ID³: step-by-step unmasking (Agarwal et al. 2024, "Step-by-Step Unmasking for Parameter-Efficient
Fine-tuning of Large Language Models"; docs/algorithms.md, "ID³").

Training starts with nothing of the pretrained model unmasked (the task head always trains). At every
step, after backward, the hook grows the unmasked set to the schedule's size u(t) by adding the still-masked
entries with the highest score, then zeroes the gradient of every entry still masked; entries once unmasked
stay trainable. The set never exceeds the budget k = floor(ratio × P) and reaches it at step
``budget_at × train_steps`` (default: half the training steps).

Our copy of the paper lacks its formulas, so the score and schedule are ours (all options, recorded):
- score_i = a_i / mean(a) + ``explore`` × sqrt(ln(t + 2) / (n_i + 1)), a UCB-style rule: a_i is an
  exponential moving average (``beta``) of |g_i| (exploitation, normalised so ``explore`` is scale-free),
  n_i the number of steps in which entry i had a nonzero gradient (entries never tried get the largest bonus).
  Ties go to the lower flat index (``masks.select_top_k``), so a run is deterministic.
- ``schedule``: ``linear`` u(t) = k0 + (k − k0)·t/(T−1), or ``geometric`` u(t) = k0·(k/k0)^(t/(T−1)), with
  k0 = ceil(``initial`` × k) entries unmasked at step 0 and T = ceil(``budget_at`` × train_steps).
- Gradients are dense (all parameters have requires_grad); still-masked entries get a zero gradient, so
  Adam's moments for them stay zero. AdamW's weight decay would still shrink them, so after every optimizer
  step the hook restores them from a saved copy (a global optimizer post-step hook, limited to optimizers
  that hold this model's parameters): frozen entries stay bit-identical with any weight decay.
- A newly unmasked entry starts with zero Adam moments but its tensor's shared step count (bias correction).
- The result reports the count actually unmasked (``trained_count``), exactly k once the budget is reached.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..config import ConfigError
from ..core.masks import select_top_k
from .base import Context, Method, Plan, register


def schedule(t: int, k: int, total: int, kind: str = "linear", initial: float = 0.01) -> int:
    """Unmasked entries after step ``t`` (0-based): k0 at t=0, k from t = total-1 on, non-decreasing."""
    k0 = min(k, max(1, math.ceil(initial * k)))
    if total <= 1 or t >= total - 1:
        return k
    frac = t / (total - 1)
    if kind == "linear":
        return min(k, k0 + math.floor((k - k0) * frac))
    if kind == "geometric":
        return min(k, math.floor(k0 * (k / k0) ** frac))
    raise ConfigError(f"method.schedule must be linear|geometric, got {kind!r}")


class Unmasking:
    """StepHook growing the unmasked set of ``names`` to ``schedule(t)`` entries, never more than ``k``."""

    def __init__(self, names: list[str], k: int, total: int, kind: str = "linear", initial: float = 0.01,
                 explore: float = 0.1, beta: float = 0.9) -> None:
        self.names, self.k, self.total, self.kind, self.initial = list(names), k, total, kind, initial
        self.explore, self.beta = explore, beta
        self.unmasked: dict[str, torch.Tensor] = {}  # bool per tensor
        self.ema: dict[str, torch.Tensor] = {}
        self.tried: dict[str, torch.Tensor] = {}  # steps with a nonzero gradient, per entry
        self.saved: dict[str, torch.Tensor] = {}  # pretrained values (restored where still masked)
        self.counts: list[int] = []  # unmasked entries after each step's growth
        self._params: dict[str, nn.Parameter] = {}
        self._handle = None

    @property
    def trained_count(self) -> int | None:
        return self.counts[-1] if self.counts else None

    def _start(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        self._params = {n: params[n] for n in self.names}
        for n, p in self._params.items():
            self.unmasked[n] = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
            self.ema[n] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            self.tried[n] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            self.saved[n] = p.detach().clone()
        ids = {id(p) for p in self._params.values()}
        ref = weakref.ref(self)

        def after_step(opt, args, kwargs) -> None:
            me = ref()
            if me is not None and any(id(p) in ids for g in opt.param_groups for p in g["params"]):
                me.restore()

        self._handle = register_optimizer_step_post_hook(after_step)
        weakref.finalize(self, self._handle.remove)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the pretrained value back into every still-masked entry (bit-identical)."""
        for n, p in self._params.items():
            p.copy_(torch.where(self.unmasked[n], p, self.saved[n]))

    def scores(self, t: int) -> dict[str, torch.Tensor]:
        """Exploitation (normalised EMA of |g|) plus the exploration bonus; -inf where already unmasked."""
        masked_mean = sum(float(e[~self.unmasked[n]].sum()) for n, e in self.ema.items())
        masked_mean /= max(1, sum(int((~u).sum()) for u in self.unmasked.values()))
        scale = 1.0 / masked_mean if masked_mean > 0 else 0.0
        out = {}
        for n in self.names:
            s = self.ema[n] * scale + self.explore * torch.sqrt(math.log(t + 2) / (self.tried[n] + 1))
            out[n] = s.masked_fill(self.unmasked[n], -math.inf)
        return out

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> None:
        if not self._params:
            self._start(model)
        for n, p in self._params.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            self.ema[n].mul_(self.beta).add_(g.abs().float(), alpha=1 - self.beta)
            self.tried[n] += (g != 0).float()
        have = sum(int(u.sum()) for u in self.unmasked.values())
        want = schedule(step, self.k, self.total, self.kind, self.initial)
        if want > have:
            new = select_top_k(self.scores(step), want - have)
            for n, idx in new.indices.items():
                self.unmasked[n].view(-1)[idx.to(self.unmasked[n].device)] = True
            have = want
        self.counts.append(have)
        for n, p in self._params.items():
            if p.grad is not None:
                p.grad.mul_(self.unmasked[n])


@register("id3")
class ID3(Method):
    reports_trained_count = True
    @dataclass
    class Config:
        schedule: str = "linear"  # linear | geometric growth of the unmasked set
        budget_at: float = 0.5  # fraction of the training steps at which the budget k is reached
        initial: float = 0.01  # fraction of k unmasked at the first step
        explore: float = 0.1  # weight of the exploration bonus (0: pure |grad| exploitation)
        beta: float = 0.9  # EMA factor of |grad| in the exploitation score
        total_steps: int | None = None  # schedule length; None: the run's training steps

        def __post_init__(self) -> None:
            if self.schedule not in ("linear", "geometric"):
                raise ConfigError(f"method.schedule must be linear|geometric, got {self.schedule!r}")
            if not 0 < self.budget_at <= 1:
                raise ConfigError(f"method.budget_at must be in (0, 1], got {self.budget_at}")
            if not 0 < self.initial <= 1:
                raise ConfigError(f"method.initial must be in (0, 1], got {self.initial}")
            if self.explore < 0 or not 0 <= self.beta < 1:
                raise ConfigError(f"method.explore must be >= 0 and method.beta in [0, 1), got "
                                  f"{self.explore}, {self.beta}")

    def plans(self, ctx: Context) -> list[Plan]:
        steps = self.cfg.total_steps or ctx.train_steps
        if not steps:
            raise ConfigError("method.total_steps: id3 needs the number of training steps (none given)")
        reach = max(1, math.ceil(self.cfg.budget_at * steps))
        sel = ctx.selector
        out = []
        for ratio in ctx.ratios():
            k = sel.k(ratio)
            hook = Unmasking(sel.universe_names, k, reach, self.cfg.schedule, self.cfg.initial, self.cfg.explore,
                             self.cfg.beta)
            out.append(Plan(cell=ctx.cell(ratio), hook=hook, ratio=ratio,
                            info={"id3_budget": k, "id3_budget_step": reach, "id3_train_steps": steps,
                                  "id3_schedule": self.cfg.schedule, "id3_initial": self.cfg.initial,
                                  "id3_explore": self.cfg.explore, "id3_beta": self.cfg.beta}))
        return out

"""Diff pruning (Guo, Rush, Kim 2021, "Parameter-Efficient Transfer Learning with Diff Pruning"; Table 2's
baseline, docs/algorithms.md, "Baselines").

The fine-tuned model is θ0 + δ with δ = z ⊙ w: a dense diff vector w and a hard-concrete gate z (Louizos et
al. 2018) per entry, trained jointly with the task loss plus ``l0_weight`` × E[‖z‖₀], the expected number of
open gates. After this diff phase δ is magnitude-pruned to exactly k = floor(ratio × P) entries (the largest
|z̄ ⊙ w|, z̄ the deterministic gate, ties by flat index), and the returned plan fine-tunes only those entries.

The diff phase is selection: it runs inside `plans()` on ``fisher.num_samples`` training samples drawn
with the seed (the same draw FISH uses), in eval() mode (no dropout), with Adam, through
`torch.func.functional_call`, so the model's own weights are never touched. The task head trains with it.

Choices (options, recorded in ``plan.info``): the paper's full schedule (several epochs of diff training,
then fine-tuning at the pruned mask) is shortened to ``steps`` (default 20) of batch ``batch_size``; the
gate's stretch interval (``stretch_low``, ``stretch_high``) = (-1.5, 1.5), its initial log-α 5 and
``l0_weight`` 1.25e-7 follow the values we recall from Guo et al. §6 (their text is not in our sources);
``temperature`` β = 1 is our default. ``lr`` 1e-3 (larger than fine-tuning's 5e-5, so a short phase
separates entries). ``init_from_diff: false`` (default) fine-tunes the mask from the pretrained weights and
the seeded head like every other method, so the diff phase only selects; ``true`` continues from the pruned
diff values and the diff phase's head, Guo et al.'s pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..config import ConfigError
from ..core.fisher import per_sample_loss
from ..core.masked import masked_tensors
from ..core.masks import Mask, select_top_k
from .base import Context, Method, Plan, register


class HardConcrete:
    """Gates z = clamp(sigmoid((log u − log(1−u) + log α)/β)·(r − l) + l, 0, 1), u ~ U(0, 1)."""

    def __init__(self, low: float, high: float, temperature: float) -> None:
        self.low, self.high, self.beta = low, high, temperature

    def sample(self, log_alpha: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(log_alpha.shape, generator=gen).clamp(1e-6, 1 - 1e-6).to(log_alpha.device)
        s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / self.beta)
        return (s * (self.high - self.low) + self.low).clamp(0, 1)

    def mean(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """The deterministic gate used at test time."""
        return (torch.sigmoid(log_alpha) * (self.high - self.low) + self.low).clamp(0, 1)

    def expected_l0(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """P(z ≠ 0) summed: the differentiable L0 penalty."""
        return torch.sigmoid(log_alpha - self.beta * math.log(-self.low / self.high)).sum()


def learn_diff(model: nn.Module, batches, names: list[str], head: list[str], cfg, seed: int):
    """Train (w, log α) over ``names`` and a copy of the ``head`` on ``batches`` (a list, cycled) for
    ``cfg.steps`` steps; return (pruning scores |z̄ ⊙ w|, δ = z̄ ⊙ w, trained head, loss history)."""
    params = dict(model.named_parameters())
    gate = HardConcrete(cfg.stretch_low, cfg.stretch_high, cfg.temperature)
    w = {n: torch.zeros_like(params[n], requires_grad=True) for n in names}
    log_alpha = {n: torch.full_like(params[n], cfg.alpha_init, requires_grad=True) for n in names}
    heads = {n: params[n].detach().clone().requires_grad_(True) for n in head if n in params}
    opt = torch.optim.Adam([*w.values(), *log_alpha.values(), *heads.values()], lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    losses = []

    def forward(overrides):
        return lambda **inputs: functional_call(model, overrides, args=(), kwargs=inputs)

    try:
        model.eval()
        for p in params.values():
            p.requires_grad_(False)
        for step in range(cfg.steps):
            batch = batches[step % len(batches)]
            over = {n: params[n] + gate.sample(log_alpha[n], gen) * w[n] for n in names}
            over.update(heads)
            task = per_sample_loss(forward(over), batch).mean()
            l0 = sum(gate.expected_l0(a) for a in log_alpha.values())
            opt.zero_grad(set_to_none=True)
            (task + cfg.l0_weight * l0).backward()
            opt.step()
            losses.append(float(task.detach()))
    finally:
        model.train(was_training)
        for n, p in params.items():
            p.requires_grad_(flags[n])
    with torch.no_grad():
        delta = {n: gate.mean(log_alpha[n]) * w[n] for n in names}
        scores = {n: d.abs() for n, d in delta.items()}
    return scores, delta, {n: h.detach() for n, h in heads.items()}, losses


@register("diff_pruning")
class DiffPruning(Method):
    @dataclass
    class Config:
        steps: int = 20  # diff-phase optimizer steps (selection; the paper trains epochs)
        batch_size: int = 8  # samples per diff-phase step, cycled over the fisher.num_samples draw
        lr: float = 1e-3  # Adam lr for w, log α and the head copy in the diff phase
        l0_weight: float = 1.25e-7  # λ of the expected-L0 penalty (Guo et al.)
        temperature: float = 1.0  # hard-concrete β
        stretch_low: float = -1.5  # hard-concrete stretch l (Guo et al.)
        stretch_high: float = 1.5  # hard-concrete stretch r (Guo et al.)
        alpha_init: float = 5.0  # initial log α (gates start open)
        init_from_diff: bool = False  # fine-tune from the pruned diff and the diff phase's head

        def __post_init__(self) -> None:
            if self.steps < 1 or self.batch_size < 1:
                raise ConfigError(f"method.steps and method.batch_size must be >= 1, got {self.steps}, "
                                  f"{self.batch_size}")
            if not self.stretch_low < 0 < 1 < self.stretch_high:
                raise ConfigError(f"method.stretch_low < 0 and stretch_high > 1 needed, got {self.stretch_low}, "
                                  f"{self.stretch_high}")
            if self.temperature <= 0 or self.lr <= 0 or self.l0_weight < 0:
                raise ConfigError("method.temperature and method.lr must be > 0, method.l0_weight >= 0")

    def plans(self, ctx: Context) -> list[Plan]:
        sel, cfg = ctx.selector, self.cfg
        indices = sel.draw(ctx.num_samples, ctx.seed)
        device = next(sel.model.parameters()).device
        batches = [{k: v.to(device) for k, v in sel.collate([sel.samples[i] for i in indices[s:s + cfg.batch_size]])
                    .items()} for s in range(0, len(indices), cfg.batch_size)]
        head = [] if sel.include_head else list(sel.head)
        scores, delta, heads, losses = learn_diff(sel.model, batches, sel.candidate_names, head, cfg, ctx.seed)
        out = []
        for ratio in ctx.ratios():
            mask = select_top_k(scores, sel.k(ratio), scope=sel.mask_scope)
            nonzero = sum(int((delta[n] != 0).sum()) for n in delta)
            info = {"sample_indices": indices, "diff_steps": cfg.steps, "diff_batch_size": cfg.batch_size,
                    "diff_lr": cfg.lr, "l0_weight": cfg.l0_weight, "temperature": cfg.temperature,
                    "stretch": [cfg.stretch_low, cfg.stretch_high], "alpha_init": cfg.alpha_init,
                    "init_from_diff": cfg.init_from_diff, "diff_loss_first_last": [losses[0], losses[-1]],
                    "diff_nonzero_before_pruning": nonzero, "zero_score_selected": _zeros(mask, scores)}
            wrap = _start_from(mask, delta, heads) if cfg.init_from_diff else None
            out.append(Plan(cell=ctx.cell(ratio), mask=mask, wrap=wrap, ratio=ratio, samples=len(indices), info=info))
        return out


def _zeros(mask: Mask, scores: dict[str, torch.Tensor]) -> int:
    return sum(int((scores[n].reshape(-1)[i.to(scores[n].device)] == 0).sum()) for n, i in mask.indices.items())


def _start_from(mask: Mask, delta: dict[str, torch.Tensor], heads: dict[str, torch.Tensor]):
    """A `Plan.wrap` that writes the pruned diff into the masked model's sparse deltas and loads the head."""

    @torch.no_grad()
    def wrap(model: nn.Module) -> nn.Module:
        for name, sd in masked_tensors(model).items():
            sd.delta.copy_(delta[name].reshape(-1)[sd.indices.to(delta[name].device)].to(sd.delta))
        params = dict(model.named_parameters())
        for n, h in heads.items():
            params[n].copy_(h)
        return model

    return wrap

"""FISH-Tuning (Xue, Dong, Tu et al. 2025): the FISH Mask applied to the parameters a PEFT module adds
(docs/algorithms.md, "FISH-Tuning"). Registers two names from one module, one algorithm with two faces:

- ``fish_lora``: a `peft` LoRA of rank ``multiplier`` × r, where r is the rank plain ``lora`` chooses for the
  ratio (methods/lora.py) or ``method.r``; the budget is that plain LoRA's count, r × Σ(d_in + d_out).
- ``fish_adapter``: a bottleneck adapter (Houlsby et al. 2019: down-projection, GELU, up-projection, residual)
  on the output of each ``adapter_modules`` layer (BERT: the attention and FFN output projections, Houlsby's
  two places). peft has no such adapter, so it is a minimal module here (a documented choice); its
  bottleneck is sized to hold ``multiplier`` × the budget, and the budget is the same plain-LoRA count, so
  both faces sit beside ``lora`` at equal trainable counts in Table 2.

Selection (in `plans()`, on a deep copy): wrap the model with the large adapter (seeded init), warm it up
for ``warmup_steps`` AdamW steps on the ``fisher.num_samples`` draw (adapter and head train; LoRA's B and the
adapter's up-projection start at zero, so without warm-up A's / the down-projection's Fisher is exactly 0
and the Fisher is in effect "B only": ``warmup_steps: 0`` gives that reading, recorded), compute the
empirical Fisher over the adapter's parameters only, and keep its top-k entries, k = the budget. Training
(`Plan.wrap`) wraps the fresh pretrained model the same way (same seed: same initial adapter values, not
the warmed-up ones), then `fishtune.core.masked.apply_mask` makes the k selected adapter entries (and the head)
the only trainable values. `Plan.mask` is None (the mask names parameters that exist only after wrapping):
the trainable count is read from requires_grad and equals the plain LoRA's; the mask's sha256 is recorded.

Defaults where the paper is silent: ``multiplier`` 2; LoRA's alpha scaled by the multiplier so alpha/r (the
update scale) equals the plain LoRA's; warm-up 10 steps at lr 1e-3.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError
from ..core.fisher import compute_fisher
from ..core.masked import apply_mask
from ..core.masks import select_top_k
from .base import Context, Method, Plan, register
from .lora import per_rank, target_modules_of

ADAPTER_DEFAULTS = {  # module-name suffixes whose output gets an adapter (Houlsby: after attention and FFN)
    "bert": ["output.dense"], "roberta": ["output.dense"], "distilbert": ["out_lin", "lin2"],
    "gpt2": ["c_proj"], "llama": ["o_proj", "down_proj"], "qwen2": ["o_proj", "down_proj"],
}


class Bottleneck(nn.Module):
    """y = base(x) + up(GELU(down(base(x)))); ``up`` starts at zero, so the wrapped layer starts unchanged."""

    def __init__(self, base: nn.Module, size: int) -> None:
        super().__init__()
        w = base.weight
        d = w.shape[1] if type(base).__name__ == "Conv1D" else w.shape[0]  # output width
        self.base = base
        self.adapter_down = nn.Linear(d, size, device=w.device, dtype=w.dtype)
        self.adapter_up = nn.Linear(size, d, device=w.device, dtype=w.dtype)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, *args, **kwargs):
        y = self.base(*args, **kwargs)
        return y + self.adapter_up(nn.functional.gelu(self.adapter_down(y)))


def adapter_targets(model: nn.Module, suffixes: list[str]) -> list[tuple[str, int]]:
    """(module name, output width) of every module whose name ends with one of ``suffixes``."""
    out = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if w is not None and w.dim() == 2 and any(name == s or name.endswith("." + s) for s in suffixes):
            out.append((name, w.shape[1] if type(m).__name__ == "Conv1D" else w.shape[0]))
    if not out:
        raise ConfigError(f"method.adapter_modules: no 2-D weight in modules named {suffixes}")
    return out


def _seeded(model: nn.Module, seed: int):
    dev = next(model.parameters()).device
    return torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [])


class _FishTuning(Method):
    kind = "lora"

    @dataclass
    class Config:
        r: int | None = None  # the plain LoRA rank whose count is the budget; None: lora's choice for the ratio
        multiplier: int = 2  # the adapter searched holds multiplier × the budget (LoRA: rank multiplier × r)
        alpha: float = 16.0  # plain LoRA's lora_alpha (fish_lora uses alpha × multiplier: same alpha/r)
        dropout: float = 0.1  # lora_dropout
        target_modules: list[str] | None = None  # LoRA targets (budget and fish_lora); None: peft's defaults
        adapter_modules: list[str] | None = None  # fish_adapter: layers to adapt; None: per-architecture default
        warmup_steps: int = 10  # adapter warm-up before the Fisher (0: Fisher at init, in effect B/up only)
        warmup_lr: float = 1e-3  # AdamW lr of the warm-up

        def __post_init__(self) -> None:
            if self.multiplier < 1 or self.warmup_steps < 0 or self.warmup_lr <= 0:
                raise ConfigError("method.multiplier must be >= 1, method.warmup_steps >= 0, method.warmup_lr > 0")

    def plans(self, ctx: Context) -> list[Plan]:
        sel, cfg = ctx.selector, self.cfg
        targets = target_modules_of(ctx.model, cfg.target_modules)
        unit = per_rank(ctx.model, targets)
        out = []
        for ratio in ctx.ratios():
            r = cfg.r or max(1, round(sel.k(ratio) / unit))  # exactly as methods/lora.py
            budget = r * unit
            make, info = self._maker(ctx.model, targets, r, budget, ctx.seed, list(sel.head))
            indices = sel.draw(ctx.num_samples, ctx.seed)
            scored = make(copy.deepcopy(ctx.model))
            adapter, head = _split(scored)
            size = sum(p.numel() for n, p in scored.named_parameters() if n in adapter)
            if budget > size:
                raise ConfigError(f"{self.name}: the adapter is smaller than the budget {budget}")
            losses = _warm_up(scored, sel, indices, cfg.warmup_steps, cfg.warmup_lr, ctx.seed)
            fisher = compute_fisher(scored, sel.batches(indices), params=adapter, kind=sel.fisher_kind,
                                    grad=sel.fisher_grad, engine=sel.engine, dropout=sel.dropout,
                                    progress=sel.progress, precision=sel.precision)
            mask = select_top_k(fisher.diag, budget, scope=sel.mask_scope)
            zero = sum(int((fisher.diag[n].reshape(-1)[i.to(fisher.diag[n].device)] == 0).sum())
                       for n, i in mask.indices.items())
            del scored, fisher
            info.update(budget=budget, lora_r=r, sample_indices=indices, warmup_steps=cfg.warmup_steps,
                        warmup_lr=cfg.warmup_lr, warmup_loss_first_last=[losses[0], losses[-1]] if losses else None,
                        fisher_on="adapter after warm-up" if cfg.warmup_steps else "adapter at init (B/up only)",
                        zero_fisher=zero, adapter_params=size,
                        selected_per_kind=_per_kind(mask), mask_sha256=mask.sha256())
            out.append(Plan(cell=ctx.cell(ratio), wrap=_trainer(make, mask, head), ratio=ratio, samples=len(indices),
                            info=info))
        return out

    def _maker(self, model, targets, r, budget, seed, head):
        raise NotImplementedError


def _split(wrapped: nn.Module) -> tuple[list[str], list[str]]:
    """(adapter parameter names, other trainable names: the head) of a freshly wrapped model."""
    adapter = [n for n, _ in wrapped.named_parameters() if "lora_" in n or ".adapter_" in n]
    head = [n for n, p in wrapped.named_parameters() if p.requires_grad and n not in adapter]
    return adapter, head


def _per_kind(mask) -> dict[str, int]:
    out: dict[str, int] = {}
    for n, i in mask.indices.items():
        key = next((k for k in ("lora_A", "lora_B", "adapter_down", "adapter_up") if k in n), "other")
        out[key] = out.get(key, 0) + int(i.numel())
    return out


def _warm_up(model: nn.Module, sel, indices: list[int], steps: int, lr: float, seed: int) -> list[float]:
    """``steps`` AdamW steps on the trainable parameters (adapter + head), eval mode, batches cycled."""
    if steps == 0:
        return []
    from ..core.fisher import per_sample_loss

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batches = list(sel.batches(indices))
    device = params[0].device
    was_training, losses = model.training, []
    model.eval()
    try:
        for step in range(steps):
            batch = {k: v.to(device) for k, v in batches[step % len(batches)].items()}
            loss = per_sample_loss(model, batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return losses


def _trainer(make, mask, head: list[str]):
    """`Plan.wrap`: the same adapter on the given model, only the mask's entries and the head trainable."""

    def wrap(model: nn.Module) -> nn.Module:
        return apply_mask(make(model), mask, trainable=head)

    return wrap


@register("fish_lora")
class FishLoRA(_FishTuning):
    def _maker(self, model, targets, r, budget, seed, head):
        cfg, big = self.cfg, r * self.cfg.multiplier

        def make(m: nn.Module) -> nn.Module:
            from peft import LoraConfig, TaskType, get_peft_model

            conf = LoraConfig(task_type=TaskType.SEQ_CLS, r=big, lora_alpha=cfg.alpha * cfg.multiplier,
                              lora_dropout=cfg.dropout, target_modules=targets)
            with _seeded(m, seed):
                torch.manual_seed(seed)
                return get_peft_model(m, conf)

        return make, {"lora_r_searched": big, "lora_alpha": cfg.alpha * cfg.multiplier, "target_modules": targets}


@register("fish_adapter")
class FishAdapter(_FishTuning):
    def _maker(self, model, targets, r, budget, seed, head):
        cfg = self.cfg
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        suffixes = list(cfg.adapter_modules or ADAPTER_DEFAULTS.get(model_type, []))
        if not suffixes:
            raise ConfigError(f"method.adapter_modules: no default for model type {model_type!r}; set it")
        widths = [d for _, d in adapter_targets(model, suffixes)]
        # one unit of bottleneck adds 2d + 1 values per adapted layer (down W, down b, up W), plus d (up b)
        size = max(1, math.ceil((cfg.multiplier * budget - sum(widths)) / sum(2 * d + 1 for d in widths)))

        def make(m: nn.Module) -> nn.Module:
            with _seeded(m, seed):
                torch.manual_seed(seed)
                for name, _ in adapter_targets(m, suffixes):
                    parent, _, attr = name.rpartition(".")
                    owner = m.get_submodule(parent) if parent else m
                    setattr(owner, attr, Bottleneck(getattr(owner, attr), size))
            for n, p in m.named_parameters():
                p.requires_grad_(".adapter_" in n or n in head)
            return m

        return make, {"adapter_modules": suffixes, "adapter_size": size, "adapter_layers": len(widths)}

"""LoRA (Hu et al. 2021) through `peft`, its rank chosen so the trainable count is closest to the ratio.

Rank r adds r × (d_in + d_out) values per target module; r = max(1, round(k / Σ(d_in + d_out))). The count
actually trained is reported (it can differ from the ratio: LoRA's size moves in steps of one rank; the
paper uses r=1 at its smallest ratios).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import Context, Method, Plan, register


def target_modules_of(model: nn.Module, targets: list[str] | None) -> list[str]:
    if targets:
        return list(targets)
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(model.config, "model_type", None)
    if model_type not in DEFAULTS:
        raise ValueError(f"lora: no default target modules for model type {model_type!r}; set method.target_modules")
    return list(DEFAULTS[model_type])


def per_rank(model: nn.Module, targets: list[str]) -> int:
    """Values one unit of rank adds: Σ over target Linear/Conv1D weights of (d_in + d_out)."""
    total = 0
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if name.rsplit(".", 1)[-1] in targets and w is not None and w.dim() == 2:
            total += w.shape[0] + w.shape[1]
    if total == 0:
        raise ValueError(f"lora: no 2-D weight in modules named {targets}")
    return total


@register("lora")
class LoRA(Method):
    @dataclass
    class Config:
        r: int | None = None  # rank; None: chosen from sparsity.ratio
        alpha: float = 16.0  # lora_alpha
        dropout: float = 0.1  # lora_dropout
        target_modules: list[str] | None = None  # None: peft's defaults for the architecture

        def __post_init__(self) -> None:
            if self.r is not None and self.r < 1:
                raise ValueError(f"method.r must be >= 1 (or null: from the ratio), got {self.r}")
            if not 0 <= self.dropout < 1:
                raise ValueError(f"method.dropout must be in [0, 1), got {self.dropout}")
            if self.alpha <= 0:
                raise ValueError(f"method.alpha must be > 0, got {self.alpha}")

    def check_model(self, model: nn.Module) -> None:
        per_rank(model, target_modules_of(model, self.cfg.target_modules))

    def plans(self, ctx: Context) -> list[Plan]:
        targets = target_modules_of(ctx.model, self.cfg.target_modules)
        unit = per_rank(ctx.model, targets)
        out = []
        for ratio in ctx.ratios():
            r = self.cfg.r or max(1, round(ctx.selector.k(ratio) / unit))
            out.append(Plan(cell=ctx.cell(ratio), wrap=self._wrapper(r, targets), ratio=ratio,
                            info={"lora_r": r, "lora_alpha": self.cfg.alpha, "target_modules": targets}))
        return out

    def _wrapper(self, r: int, targets: list[str]):
        cfg = self.cfg

        def wrap(model: nn.Module) -> nn.Module:
            from peft import LoraConfig, TaskType, get_peft_model

            conf = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=targets)
            return get_peft_model(model, conf)

        return wrap

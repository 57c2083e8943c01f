"""The one interface a method implements, and the registry that finds a method by its config name.

A method answers: given the pretrained model, the training data and a budget, what do we train? It returns
`Plan`s: one for a single ratio, one per visited cell for a ladder. All plans exist before any training
(selection needs no fine-tuning), so every cell can be trained, resumed or scheduled on its own.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ..config import ConfigError, LadderConfig, SparsityConfig
from ..core.ird import cell_name, grid, ratio_name, staircase
from ..core.masks import Mask
from ..core.selection import Selector

__all__ = ["Plan", "StepHook", "Context", "Method", "register", "get", "names", "create"]


class StepHook(Protocol):
    """Called by the training loop after backward and before the optimizer step (GMT, ID³)."""

    def __call__(self, model: nn.Module, step: int) -> None: ...


@dataclass
class Plan:
    cell: str  # "main", or a ladder cell such as "r0.5-n16"
    mask: Mask | None = None  # entries to train (sparse); None: decided by `wrap` / all parameters
    wrap: Callable[[nn.Module], nn.Module] | None = None  # LoRA-style: returns the model to train
    hook: StepHook | None = None
    ratio: float | None = None  # target ratio in percent
    samples: int | None = None  # size of the sample set the mask came from
    info: dict[str, Any] = field(default_factory=dict)  # -> result.json (sample indices, options, ...)


@dataclass
class Context:
    """What a method may look at to make its plans."""

    selector: Selector  # model, training samples, head, Fisher and top-k
    sparsity: SparsityConfig
    ladder: LadderConfig
    num_samples: int  # fisher.num_samples
    seed: int
    train_steps: int | None = None  # optimizer steps the fine-tune will take (ID³'s schedule); None: unknown

    @property
    def model(self) -> nn.Module:
        return self.selector.model

    def ratios(self) -> list[float]:
        """The ratios a method that walks no cells trains at: the job's one ratio, or under a ladder or grid
        sparsity each distinct ratio of the ladder (one cell each, so one sweep gives every Table 2 row)."""
        if self.sparsity.mode == "single":
            return [float(self.sparsity.ratio)]
        return ladder_ratios(self.ladder)

    def cell(self, ratio: float) -> str:
        """The cell name of a per-ratio plan: ``main`` in a single-ratio job, else ``r<ratio>``."""
        return "main" if self.sparsity.mode == "single" else ratio_name(ratio)


class Method:
    """Base class: subclasses set `name`, `Config` (a dataclass) and implement `plans`.

    Capabilities, read by the runner and recorded in each result (no list of method names elsewhere):
    ``sparsity_modes`` the sparsity kinds it walks (``single`` ratio, ``ladder``, ``grid``); a method that
    walks only ``single`` trains, under a ladder or grid sparsity, one cell per ladder ratio (``r0.5``, ...);
    ``draws_fisher_samples`` it scores a sample set drawn from the training data (its size is checked
    against the training set before any work); ``ratio_fixed`` its trainable share does not follow
    ``sparsity`` (dense, BitFit: one Table 2 row at the measured ratio); ``reports_trained_count`` its step
    hook grows its own trainable set and says how many it trained (``hook.trained_count``).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    sparsity_modes: ClassVar[tuple[str, ...]] = ("single",)
    draws_fisher_samples: ClassVar[bool] = False
    ratio_fixed: ClassVar[bool] = False
    reports_trained_count: ClassVar[bool] = False

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    @classmethod
    def cell_names(cls, sparsity: SparsityConfig, ladder: LadderConfig) -> list[str]:
        """The cells a job of this method will train, known from the config alone."""
        if sparsity.mode == "single" or cls.ratio_fixed:
            return ["main"]
        if sparsity.mode not in cls.sparsity_modes:  # a single-ratio method at each ladder ratio
            return [ratio_name(r) for r in ladder_ratios(ladder)]
        return [cell_name(r, n) for r, n in ladder_cells(sparsity, ladder)]

    def check_model(self, model: nn.Module) -> None:
        """Raise ConfigError when an option does not fit ``model`` (called before any data is tokenised)."""

    @classmethod
    def check_sparsity(cls, sparsity: SparsityConfig) -> None:
        """ConfigError in one line when this method cannot run ``sparsity`` (checked before any work)."""
        if sparsity.mode not in cls.sparsity_modes and "single" not in cls.sparsity_modes:
            raise ConfigError(_mode_error(cls, sparsity))

    def plans(self, ctx: Context) -> list[Plan]:
        raise NotImplementedError


_REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make the method available as ``method=<name>``."""

    def deco(cls: type[Method]) -> type[Method]:
        if name != name.lower() or name in _REGISTRY:
            raise ValueError(f"method name {name!r} must be lowercase and unique")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise ConfigError(f"method: unknown method {name!r}, pick one in {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


def create(options: dict[str, Any]) -> Method:
    """Instantiate the method named in ``options['name']`` with the rest validated by its Config."""
    cls = get(options.get("name", ""))
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - fields - {"name"})
    if unknown:
        raise ConfigError(f"method.{unknown[0]}: not an option of method {cls.name} "
                          f"(options: {', '.join(sorted(fields)) or 'none'})")
    hints = typing.get_type_hints(cls.Config)
    values = {k: _typed(cls.name, k, v, hints[k]) for k, v in options.items() if k != "name"}
    try:
        cfg = cls.Config(**values)
    except TypeError as e:
        raise ConfigError(f"method: {e}") from None
    except ValueError as e:  # a Config's own range check
        raise ConfigError(str(e)) from None
    return cls(cfg)


def _typed(method: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the option's annotation (bool, int, float, str, list[str], optional)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    ok = True
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin in (list, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = list(value) if ok else value
    if not ok:
        want = getattr(hint, "__name__", str(hint)) + (" or null" if optional else "")
        raise ConfigError(f"method.{key} must be {want} for method {method}, got {value!r}")
    return value


def ladder_cells(sparsity: SparsityConfig, ladder: LadderConfig) -> list[tuple[float, int]]:
    """(ratio, samples) of every cell a ladder or grid sparsity visits (`staircase`/`grid` of the ladder)."""
    walk = staircase if sparsity.mode == "ladder" else grid
    return walk(ladder.samples, ladder.ratios)


def ladder_ratios(ladder: LadderConfig) -> list[float]:
    """The ratios a single-ratio method trains at under a ladder: ``ladder.single_ratios`` when set, else
    every distinct ratio of the ladder, in its order (largest first)."""
    ratios = ladder.ratios if ladder.single_ratios is None else [r for r in ladder.ratios
                                                                 if r in ladder.single_ratios]
    return list(dict.fromkeys(float(r) for r in ratios))


def _mode_error(cls: type[Method], sparsity: SparsityConfig) -> str:
    walks = " or ".join(f"sparsity={m}" for m in cls.sparsity_modes)
    return f"method={cls.name} walks a ladder: use {walks} (got sparsity={sparsity.name})"


def random_scores(model: nn.Module, names: list[str], seed: int) -> dict[str, torch.Tensor]:
    """Uniform random scores per entry (seeded): top-k of them is a uniformly random k-subset."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.rand(params[n].shape, generator=gen) for n in names}

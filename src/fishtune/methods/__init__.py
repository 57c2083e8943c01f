"""The methods, registered by name (``method=<name>``): one module per method, listed here explicitly."""

from . import (  # noqa: F401  (registers each method)
    bitfit,
    dense,
    diff_pruning,
    fish,
    fish_tuning,
    gmt,
    id3,
    ird,
    lora,
    random,
)
from .base import Context, Method, Plan, StepHook, create, get, names, register

__all__ = ["Context", "Method", "Plan", "StepHook", "create", "get", "names", "register"]

"""The methods, registered by name (``method=<name>``): one module per method, listed here explicitly."""

from . import bitfit, dense, fish, ird, lora, random  # noqa: F401  (registers each method)
from .base import Context, Method, Plan, StepHook, create, get, names, register

__all__ = ["Context", "Method", "Plan", "StepHook", "create", "get", "names", "register"]

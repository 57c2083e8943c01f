"""The methods, registered by name (``method=<name>``): one module per method in this folder. Every module
here is imported once, so its `@register` runs: adding a method is adding its module (and its YAML)."""

import importlib
import pkgutil

from .base import Context, Method, Plan, StepHook, create, get, names, register

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Context", "Method", "Plan", "StepHook", "create", "get", "names", "register"]

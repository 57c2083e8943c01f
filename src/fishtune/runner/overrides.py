"""Rewrite command-line overrides before Hydra parses them, so the commands users type work as typed.

Hydra 1.3 rejects two forms the README uses (STYLE.md §5, measured): a group option named like a number
(``sparsity=0.5``: "Config group override must be a string or a list. Got float") and a glob into a nested
group (``task=glue/*``: "Could not find 'task/glue/*'"). This turns ``sparsity=0.5,2.5`` into
``sparsity='0.5','2.5'`` and ``task=glue/*`` into ``task=glue/cola,glue/mnli,...``, and rejects an unknown
option of any of our groups with one line naming the group and the options.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

__all__ = ["OverrideError", "group_options", "rewrite"]

_GLOB = re.compile(r"[*?\[]")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class OverrideError(ValueError):
    """An override names an option that does not exist (one line)."""


def group_options(conf_dir: Path, group: str) -> list[str]:
    """Every option of a config group, nested folders included (``task`` -> ``glue/cola``, ...)."""
    root = conf_dir / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _groups(conf_dir: Path) -> list[str]:
    """Top-level config groups of ours (folders with YAML files), not Hydra's own (hydra/...)."""
    return sorted(p.name for p in conf_dir.iterdir() if p.is_dir() and p.name not in ("hydra", "local")
                  and any(p.rglob("*.yaml")))


def _split_values(value: str) -> list[str]:
    return [v.strip().strip("'\"") for v in value.split(",")] if value else [value]


def rewrite(args: list[str], conf_dir: str | Path) -> list[str]:
    """Return ``args`` with our group overrides made parseable by Hydra; raise OverrideError on an unknown
    option. Other arguments (flags, ``key.sub=value``, hydra/... overrides) pass through unchanged."""
    conf_dir = Path(conf_dir)
    groups = _groups(conf_dir)
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq or key not in groups or value.startswith(("choice(", "range(", "glob(")):
            out.append(arg)
            continue
        options = group_options(conf_dir, key)
        chosen: list[str] = []
        for v in _split_values(value):
            if _GLOB.search(v):
                matched = [o for o in options if fnmatch.fnmatchcase(o, v)]
                if not matched:
                    raise OverrideError(f"{key}={v}: matches no option of {key} ({', '.join(options)})")
                chosen += matched
            elif v in options:
                chosen.append(v)
            else:
                raise OverrideError(f"{key}: unknown option {v!r}, pick one in {', '.join(options)}")
        quoted = [f"'{c}'" if _NUMBER.match(c) else c for c in chosen]
        out.append(f"{key}={','.join(quoted)}")
    return out

"""Rewrite command-line overrides before Hydra parses them, so the commands users type work as typed.

Hydra 1.3 rejects two forms the README uses (STYLE.md §5, measured): a group option named like a number
(``sparsity=0.5``: "Config group override must be a string or a list. Got float") and a glob into a nested
group (``task=glue/*``: "Could not find 'task/glue/*'"). This turns ``sparsity=0.5,2.5`` into
``sparsity='0.5','2.5'`` and ``task=glue/*`` into ``task=glue/cola,glue/mnli,...``, and rejects an unknown
option of any of our groups with one line naming the group and the options.

`job_suffix` (the ``${fishtune.job:...}`` resolver of conf/config.yaml) names a job's folder after every other
override that changes its result, so a sweep over a plain key (``train.lr=1e-3,2e-3``) keeps every job.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from pathlib import Path

__all__ = ["OverrideError", "group_options", "rewrite", "job_overrides", "job_suffix", "register_resolver"]

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


# overrides that never put a job in another folder: the seed (already in the path) and keys that never
# change a result (config groups are in the path too: `hydra.runtime.choices` names them)
NOT_IN_FOLDER = ("seed", "cell", "resume", "name", "dry_run", "train.progress")
_READABLE = re.compile(r"^[A-Za-z0-9_.,=+:~\[\]-]{1,150}$")
RESOLVER = "fishtune.job"


def job_overrides(task_overrides, choices) -> list[str]:
    """The overrides of a job (``hydra.overrides.task``) that change its result and are not in the readable
    path: not a config group, not the seed, not a key of `NOT_IN_FOLDER`; ``key=value``, sorted."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = set(choices or ())
    parser = OverridesParser.create()
    kept = []
    for item in task_overrides or ():
        key, eq, value = str(item).partition("=")
        bare = key.lstrip("+~").split("@")[0]
        if bare in groups or bare in NOT_IN_FOLDER:
            continue
        try:  # Hydra's own spelling of the value, as its sweeper gives a job (1e-3 -> 0.001)
            value = parser.parse_override(str(item)).get_value_element_as_str() if eq else value
        except Exception:  # noqa: BLE001 - Hydra reports an override it cannot parse
            pass
        kept.append(f"{key.lstrip('+')}{eq}{value}")
    return sorted(kept)


def job_suffix(task_overrides, choices) -> str:
    """The part of a job's folder after ``seed<k>``: empty without other overrides, ``,k=v,...`` when they
    read well as a folder name (at most 150 characters, no ``/``, quotes or spaces), else ``,h-<12 hex of
    sha256>`` (run.py writes the overrides beside it, in ``overrides.txt``)."""
    kept = job_overrides(task_overrides, choices)
    if not kept:
        return ""
    text = ",".join(kept)
    if _READABLE.match(text):
        return f",{text}"
    return f",h-{hashlib.sha256(chr(10).join(kept).encode()).hexdigest()[:12]}"


def register_resolver() -> None:
    """Make ``${fishtune.job:...}`` (conf/config.yaml's job folders) known to OmegaConf in this process."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, job_suffix)

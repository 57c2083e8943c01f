"""The resume key: what tells a finished run or cell of the same job, whoever wrote it.

`config_hash` covers only what changes a result (the resolved config less the keys that never do, plus the
library versions); the contents of the files a run reads (the task's split files, a ``mask.load`` file) are
recorded beside it as ``inputs`` and must still match (`same_inputs`). `finished` is the one test a resume,
and a dry run's ``(complete)`` mark, make.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..core.files import unchanged
from ..data.glue import split_files
from .results import is_complete, read_result

__all__ = ["config_hash", "library_versions", "versions", "fishtune_commit", "input_files", "same_inputs", "done",
           "finished"]

# config keys that never change a result: which cells to train, whether to resume, the sweep's name,
# progress bars (a run or cell written under other values of these is the same result)
NOT_IN_KEY = ("cell", "resume", "name", "dry_run")
NOT_IN_KEY_TRAIN = ("progress",)
_UNSET_NOT_IN_KEY = (("ladder", "single_ratios"), ("data", "holdout"))
NOT_IN_KEY_TASK = ("label_range",)  # only checks the data: a run it lets through trains exactly as before


def config_hash(config: dict[str, Any]) -> str:
    """The resume key: sha256 of what decides a result (the resolved config without `NOT_IN_KEY` and
    ``train.progress``, and of ``train.method_lr`` only the run's own method's entry, plus the
    torch/transformers/peft versions), to tell finished work of the same job. ``task.label_range`` is left
    out: it only checks the data. ``mask.weight_grad`` counts only when it is ``blocks``: ``dense`` is the
    exact path every result before the option was trained with, and ``auto`` (the default) equals it up to
    the order of floating-point sums, so a result of either is found by both. ``ladder.single_ratios`` and
    ``data.holdout`` count only when set, and ``select_only`` only when true."""
    key = {k: v for k, v in config.items() if k not in NOT_IN_KEY}
    if not key.get("select_only"):  # false: the same key as every result written before the option existed
        key.pop("select_only", None)
    if isinstance(key.get("mask"), dict) and key["mask"].get("weight_grad", "dense") in ("dense", "auto"):
        key["mask"] = {k: v for k, v in key["mask"].items() if k != "weight_grad"}
    if isinstance(key.get("task"), dict):
        key["task"] = {k: v for k, v in key["task"].items() if k not in NOT_IN_KEY_TASK}
    for group, name in _UNSET_NOT_IN_KEY:  # options added later count only when set: older results stay found
        if isinstance(key.get(group), dict) and key[group].get(name) is None:
            key[group] = {k: v for k, v in key[group].items() if k != name}
    if isinstance(key.get("train"), dict):
        key["train"] = {k: v for k, v in key["train"].items() if k not in NOT_IN_KEY_TRAIN}
        method = (key.get("method") or {}).get("name")
        method_lr = key["train"].get("method_lr") or {}
        key["train"]["method_lr"] = {m: lr for m, lr in method_lr.items() if m == method}
    key["versions"] = library_versions()
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """The versions that can change a result (part of the resume key, recorded in every result)."""
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def versions() -> dict[str, str]:
    """Recorded in each result, not in the resume key: the constraints file's hash names the pinned set."""
    constraints = Path(__file__).resolve().parents[3] / "constraints.txt"  # the checkout's, as fishtune_commit
    pinned = hashlib.sha256(constraints.read_bytes()).hexdigest() if constraints.is_file() else "unknown"
    return {"python": platform.python_version(), **library_versions(), "git": fishtune_commit(),
            "constraints_sha256": pinned}


def fishtune_commit() -> str:
    """fishtune's own git commit: only when this package lies in a checkout whose root holds it as
    ``src/fishtune`` (a copy inside another repository must not record that repository's commit)."""
    root = Path(__file__).resolve().parents[3]  # <root>/src/fishtune/runner/resume.py
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=root)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = top.stdout.split()
    if top.returncode or len(lines) != 2 or Path(lines[0]).resolve() != root:
        return "unknown"
    return lines[1]


def input_files(rc: RunConfig) -> dict[str, Path]:
    """The files whose contents a result depends on, by a name that survives moving the repository:
    ``data.<split>`` (the task's local split files) and ``mask.load``."""
    files = {f"data.{split}": path for split, path in split_files(rc.task, rc.data).items()}
    if rc.mask.load:
        files["mask.load"] = Path(rc.mask.load)
    return files


def same_inputs(recorded: Any, files: dict[str, Path]) -> bool:
    """True when a result's recorded ``inputs`` are the bytes of ``files`` now (size + mtime, else sha256).
    A result without ``inputs`` (written before fishtune recorded them, e.g. the committed runs under
    docs/report) is found by its config hash alone."""
    if not recorded:
        return True
    if not isinstance(recorded, dict) or set(recorded) != set(files):
        return False
    return all(isinstance(recorded[k], dict) and unchanged(recorded[k], p) for k, p in files.items())


def done(path: Path, chash: str, files: dict[str, Path]) -> bool:
    if not is_complete(path, chash):
        return False
    return same_inputs((read_result(path) or {}).get("inputs"), files)


def finished(rc: RunConfig, out_dir: str | Path, chash: str) -> Path | None:
    """The result a resume of ``rc`` in ``out_dir`` returns without training (the run's result.json, or a cell
    job's cells/<cell>.json, written by a ladder or a cell job, ``ok`` with the same config hash and the same
    input contents); None when there is work to do or ``resume`` is off."""
    out = Path(out_dir)
    path = out / "result.json" if rc.cell is None else out / "cells" / f"{rc.cell}.json"
    return path if rc.resume and done(path, chash, input_files(rc)) else None

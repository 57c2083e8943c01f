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
# progress bars, and task.label_range, which only checks the data (a run it lets through trains as before)
NOT_IN_KEY = ("cell", "resume", "name", "dry_run", "train.progress", "task.label_range")
# options added after results were written, at the values those results were trained with: there they are
# left out of the key, so older results stay found. mask.weight_grad "auto" equals "dense" (the exact path)
# up to the order of floating-point sums; only "blocks" makes another key.
NEUTRAL = {"select_only": (False, None), "mask.weight_grad": ("dense", "auto"), "ladder.single_ratios": (None,),
           "data.holdout": (None,)}


def config_hash(config: dict[str, Any]) -> str:
    """The resume key: sha256 of what decides a result (the resolved config without `NOT_IN_KEY`, without a
    `NEUTRAL` option at one of its neutral values, and of ``train.method_lr`` only the run's own method's
    entry, plus the torch/transformers/peft versions), to tell finished work of the same job."""
    key = json.loads(json.dumps(config, default=str))  # a deep copy to prune
    for dotted in NOT_IN_KEY:
        _pop(key, dotted)
    for dotted, neutral in NEUTRAL.items():
        if _get(key, dotted, None) in neutral:
            _pop(key, dotted)
    if isinstance(key.get("train"), dict):
        method = (key.get("method") or {}).get("name")
        method_lr = key["train"].get("method_lr") or {}
        key["train"]["method_lr"] = {m: lr for m, lr in method_lr.items() if m == method}
    key["versions"] = library_versions()
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _get(tree: dict, dotted: str, default=None):
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _pop(tree: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = _get(tree, ".".join(parents), None) if parents else tree
    if isinstance(node, dict):
        node.pop(last, None)


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

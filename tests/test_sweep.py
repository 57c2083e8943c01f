"""A 2×2 sweep through `hydra/launcher=local` (submitit's local executor: real separate processes, tiny runs).

It finishes with four `ok` results that `fishtune.runner.results.load_results` reads; the same command run again
trains nothing (every job says "already complete"), counted from the submitit logs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fishtune.runner.results import load_results

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny-bert", "train=debug", "data.max_train_samples=32", "data.max_eval_samples=16",
        "fisher.num_samples=8", "method=fish,bitfit", "task=glue/rte,glue/wnli"]


def sweep(out: Path, *overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python run.py -m hydra/launcher=local <overrides>` with its sweep dir in ``out``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    code = out.parent / "code"  # run.py + conf/ as they were: an edit to conf/ mid-test changes no hash
    if not code.exists():
        shutil.copytree(ROOT / "conf", code / "conf", ignore=shutil.ignore_patterns("local"))
        shutil.copy2(ROOT / "run.py", code / "run.py")
    cmd = [sys.executable, "run.py", "-m", "hydra/launcher=local", *overrides, f"hydra.sweep.dir={out}"]
    return subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True, timeout=timeout)


def log_lines(out: Path, pattern: str) -> list[str]:
    """Lines matching ``pattern`` in every submitit log of the sweep (one log per job and attempt)."""
    rx = re.compile(pattern)
    return [line for log in sorted((out / ".submitit").glob("*/*_log.out"))
            for line in log.read_text(errors="replace").splitlines() if rx.search(line)]


@pytest.mark.slow
def test_local_sweep_2x2_completes_and_rerun_skips(tmp_path):
    out = tmp_path / "sweep"
    first = sweep(out, *TINY)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    df = load_results(out, cells=False)
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    assert {(r.task, r.method) for r in df.itertuples()} == {
        (t, m) for t in ("rte", "wnli") for m in ("fish", "bitfit")}
    assert all(p.startswith(str(out)) for p in df["path"])
    logs = sorted((out / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 4  # one process per job, its log under the sweep dir
    assert len(log_lines(out, r"cell main: training")) == 4

    results = sorted(out.rglob("result.json"))
    stamps = {p: p.stat().st_mtime_ns for p in results}
    second = sweep(out, *TINY)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert len(log_lines(out, r"cell main: training")) == 4  # no new fine-tune
    assert len(log_lines(out, r"already complete: ")) == 4
    assert {p: p.stat().st_mtime_ns for p in results} == stamps
    assert len(load_results(out, cells=False)) == 4

"""fishtune's Slurm path against a real scheduler (`make test-slurm` starts a one-node cluster first).

Marked `slurm`, skipped where `sinfo` does not answer. Tiny runs (tiny-bert, train=debug) on partition
`debug` without GPUs. Fine-tunes are counted from the submitit logs (Slurm appends to them across
requeues): every trained cell logs "cell <name>: training", a skipped one "cell <name>: already complete".
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fishtune.runner.overrides import job_suffix
from fishtune.runner.results import load_results, read_result

ROOT = Path(__file__).resolve().parents[1]


def _sinfo_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not _sinfo_answers(), reason="no Slurm cluster (sinfo)")]

SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=30"]
TINY = ["model=tiny-bert", "train=debug", "data.max_train_samples=32", "data.max_eval_samples=16"]
# 7 cells. The requeue test trains 20 steps a cell: a second or a few, well inside Slurm's 30 s KillWait, so
# the cell in training when SIGTERM comes is finished; the scancel test 60, to be sure to kill one mid-way.
LADDER = [*TINY, "method=ird", "sparsity=ladder", "ladder.samples=[8,4,2,1]", "task=glue/rte"]
CELLS = {"r2.5-n8", "r2.5-n4", "r0.5-n4", "r0.5-n2", "r0.1-n2", "r0.1-n1", "r0.02-n1"}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def snapshot(out: Path) -> Path:
    """run.py and conf/ copied beside the sweep: a requeued job composes its config again from the YAML
    files, so an edit to conf/ in this working tree mid-test would change the config hash under it."""
    code = out.parent / "code"
    if not code.exists():
        shutil.copytree(ROOT / "conf", code / "conf", ignore=shutil.ignore_patterns("local"))
        shutil.copy2(ROOT / "run.py", code / "run.py")
    return code


def command(out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "run.py", "-m", *SLURM, *overrides, f"hydra.sweep.dir={out}"]


def run(out: Path, overrides: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command(out, overrides), cwd=snapshot(out), env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def start(out: Path, overrides: list[str]) -> subprocess.Popen:
    """The sweep command in the background (it waits for its jobs like a user's terminal would)."""
    log = open(out.parent / f"{out.name}.client.log", "a")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command(out, overrides), cwd=snapshot(out), env=ENV, stdout=log,
                            stderr=subprocess.STDOUT)


def log_lines(out: Path, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [line for log in sorted((out / ".submitit").glob("*/*_log.out"))
            for line in log.read_text(errors="replace").splitlines() if rx.search(line)]


def trained(out: Path) -> list[str]:
    """The cells whose fine-tune started, once per start, over every job and attempt of the sweep."""
    return [re.search(r"cell (\S+): training", line).group(1) for line in log_lines(out, r"cell \S+: training")]


def cells_on_disk(job: Path) -> dict[str, dict]:
    return {p.stem: read_result(p) for p in sorted((job / "cells").glob("*.json"))}


def wait_for(what: str, check, timeout: float = 300, every: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def squeue(job_id: str) -> str:
    """The job's state in squeue ('' once it left the queue)."""
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def job_ids(out: Path) -> list[str]:
    """Slurm ids of the sweep's jobs ("12_0" for an array task), from their submitit logs."""
    return sorted(p.name.removesuffix("_0_log.out") for p in (out / ".submitit").glob("*/*_0_log.out"))


def ladder_dir(out: Path, overrides: list[str]) -> Path:
    """The ladder job's folder: the readable path, then the plain-key overrides (run.py's job folders)."""
    suffix = job_suffix(overrides, ["model", "train", "method", "sparsity", "task"])
    return out / "rte" / "tiny-bert" / "ird" / "ladder" / f"seed42{suffix}"


def test_slurm_sweep_2x2(tmp_path):
    out = tmp_path / "sweep"
    proc = run(out, [*TINY, "fisher.num_samples=8", "method=fish,bitfit", "task=glue/rte,glue/wnli"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = load_results(out, cells=False)
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    assert {(r.task, r.method) for r in df.itertuples()} == {
        (t, m) for t in ("rte", "wnli") for m in ("fish", "bitfit")}
    assert len(job_ids(out)) == 4  # one Slurm array task per run, its files under the sweep dir
    assert len(trained(out)) == 4


def test_request_the_cluster_cannot_meet_fails_at_submission(tmp_path):
    out = tmp_path / "sweep"
    proc = run(out, [*TINY, "method=bitfit", "task=glue/rte", "hydra.launcher.partition=no-such-partition"])
    assert proc.returncode != 0
    assert "Slurm refused the jobs" in proc.stderr and "invalid partition" in proc.stderr.lower()
    proc = run(out, [*TINY, "method=bitfit", "task=glue/rte", "hydra.launcher.mem_gb=100000"])
    assert proc.returncode != 0 and "Requested node configuration is not available" in proc.stderr
    assert not list(out.rglob("result.json"))


def test_requeue_resumes_at_the_next_cell(tmp_path):
    out = tmp_path / "sweep"
    job = ladder_dir(out, [*LADDER, "train.max_steps=20"])
    client = start(out, [*LADDER, "train.max_steps=20"])
    try:
        jid = wait_for("the job id", lambda: (out / ".submitit").is_dir() and job_ids(out))[0]
        wait_for("two finished cells", lambda: len(cells_on_disk(job)) >= 2)
        subprocess.run(["scontrol", "requeue", jid], check=True)
        states = [squeue(jid)]
        # the job finishes the cell it is in (Slurm's KillWait grace), starts no other, and is requeued
        wait_for("the requeued job to pend", lambda: squeue(jid) == "PENDING", timeout=120)
        states.append(squeue(jid))
        at_requeue = set(cells_on_disk(job))
        subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=False)  # skip Slurm's delay
        assert client.wait(timeout=600) == 0
        states.append(squeue(jid) or "(left the queue)")
    finally:
        if client.poll() is None:
            client.send_signal(signal.SIGINT)
            client.wait(timeout=30)
    print(f"job {jid}: squeue states {states}; cells on disk at requeue: {sorted(at_requeue)}")
    result = read_result(job / "result.json")
    assert result["status"] == "ok" and {c["cell"] for c in result["cells"]} == CELLS
    assert set(cells_on_disk(job)) == CELLS
    runs = trained(out)
    print(f"fine-tunes started: {len(runs)} {runs}")
    assert sorted(runs) == sorted(CELLS)  # 7 fine-tunes, each cell once: none redone
    skipped = {line.split()[1].rstrip(":") for line in log_lines(out, r"cell \S+: already complete")}
    assert skipped == at_requeue and len(skipped) >= 2  # the second attempt resumed after them
    assert len(log_lines(out, r"Starting with JobEnvironment")) == 2  # two attempts of one job
    if len(at_requeue) < len(CELLS):  # the job was stopped at a cell boundary, not cut mid-cell
        assert log_lines(out, r"not started, Slurm is ending this job")


def test_killed_mid_cell_keeps_finished_cells_and_rerun_completes_the_rest(tmp_path):
    out = tmp_path / "sweep"
    job = ladder_dir(out, [*LADDER, "train.max_steps=60"])
    client = start(out, [*LADDER, "train.max_steps=60"])
    try:
        jid = wait_for("the job id", lambda: (out / ".submitit").is_dir() and job_ids(out))[0]
        # mid-cell: a fine-tune has started whose cell file is not written yet
        wait_for("a cell in training",
                 lambda: len(cells_on_disk(job)) >= 1 and len(trained(out)) > len(cells_on_disk(job)))
        # SIGKILL to the job step at once, as when the grace period runs out or the node dies (a plain
        # scancel, like a requeue, sends SIGTERM first and the job finishes the cell it is in)
        subprocess.run(["scancel", "--signal=KILL", f"{jid}.0"], check=True)
        wait_for("the job to leave the queue", lambda: squeue(jid) == "", timeout=120)
    finally:
        client.send_signal(signal.SIGINT)  # without sacct the sweep would wait for a result that never comes
        client.wait(timeout=60)
    kept = cells_on_disk(job)
    started = trained(out)
    half_done = [c for c in started if c not in kept]
    print(f"job {jid} killed: {len(kept)} cells kept {sorted(kept)}, cut in half: {half_done}")
    assert kept and all(r is not None and r["status"] == "ok" for r in kept.values())  # nothing half-written
    assert len(half_done) <= 1 and len(kept) < len(CELLS)  # 1 unless the kill fell between two cells
    assert not (job / "result.json").exists()
    assert load_results(out, cells=False).empty  # no run claims success

    proc = run(out, [*LADDER, "train.max_steps=60"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = read_result(job / "result.json")
    assert result["status"] == "ok" and set(cells_on_disk(job)) == CELLS
    rerun = trained(out)[len(started):]
    print(f"rerun trained {rerun}")
    assert sorted(rerun) == sorted(CELLS - set(kept))  # only the missing ones, the half-done one included

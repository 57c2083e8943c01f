"""Hydra callback: build the report into the sweep folder when a multirun ends, and count failed jobs.

Enabled in conf/config.yaml (``hydra.callbacks.report``). Any error while reporting is logged and swallowed:
a finished sweep never fails because of its figures. Disable it with ``~hydra.callbacks.report``.

Every job of a sweep (in this process or, with the submitit launchers, in another) leaves its exit code in
``<sweep dir>/.jobs/<sweep id>/<job number>.json`` (`record_job`); at the end of the multirun `SWEEP` holds how
many of this sweep's jobs ran and which failed, so `run.py` can exit non-zero with one summary line. Each
multirun draws its own id at its start (passed to its jobs in ``$FISHTUNE_SWEEP_ID``, which submitit's local and
Slurm jobs inherit), so two sweeps into one folder (two processes of one experiment, each given other seeds)
never clear or count each other's records.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)
JOBS = ".jobs"
SWEEP_ID = "FISHTUNE_SWEEP_ID"  # this multirun's id, in the environment of the process and its jobs
SWEEP: dict[str, Any] = {}  # after a multirun: {"total": n, "failed": [(job dir, message), ...]}


def _records(sweep_dir: str | Path, sweep_id: str | None = None) -> Path:
    return Path(sweep_dir) / JOBS / (sweep_id or os.environ.get(SWEEP_ID) or "default")


def record_job(sweep_dir: str | Path, num: int, code: int, out_dir: str | Path, message: str = "") -> None:
    """Leave one job's exit code where its multirun's end will read it (this sweep's own record folder)."""
    path = _records(sweep_dir) / f"{num}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"code": code, "dir": str(out_dir), "message": message}))


def read_jobs(sweep_dir: str | Path, sweep_id: str | None = None) -> dict[str, Any]:
    """{"total": jobs of this sweep that reported, "failed": [(dir, message)] of those with a non-zero code}."""
    jobs = []
    for f in sorted(_records(sweep_dir, sweep_id).glob("*.json")):
        try:
            jobs.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            jobs.append({"code": 1, "dir": str(f), "message": "unreadable job record"})
    return {"total": len(jobs), "failed": [(j["dir"], j.get("message", "")) for j in jobs if j.get("code")]}


class ReportCallback(Callback):
    """``on_multirun_end``: `fishtune.report.build.build_report(<sweep dir>)` into ``<sweep dir>/report``."""

    def __init__(self, enabled: bool = True, out: str | None = None, pdf: bool = True) -> None:
        self.enabled, self.out, self.pdf = enabled, out, pdf

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        SWEEP.clear()
        os.environ[SWEEP_ID] = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # this sweep's own records

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        SWEEP.clear()
        try:
            SWEEP.update(read_jobs(_sweep_dir(config)))
        except Exception as e:  # noqa: BLE001
            log.warning("fishtune: cannot read the job records: %s", e)
        if not self.enabled:
            return
        try:
            sweep = Path(_sweep_dir(config))
            from .build import build_report

            written = build_report(sweep, self.out, formats=("png", "pdf") if self.pdf else ("png",))
            report = written[0].parent if written else sweep / "report"
            print(f"report: {len(written)} files in {report}")
        except Exception as e:  # noqa: BLE001 - a report must never crash the sweep
            log.warning("fishtune report failed: %s: %s", type(e).__name__, e, exc_info=True)
            print(f"report failed ({type(e).__name__}: {e}); run `python -m fishtune.report <sweep dir>` to retry")


def _sweep_dir(config: Any) -> str:
    try:
        return str(config.hydra.sweep.dir)
    except Exception:  # noqa: BLE001 - the config passed may lack the hydra node
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().sweep.dir)

"""Slurm launcher for fishtune sweeps: hydra-submitit-launcher's, plus what a resumable ladder job needs.

``conf/hydra/launcher/slurm.yaml`` targets ``hydra_plugins.fishtune_launcher.slurm.SlurmLauncher`` (Hydra loads
launchers only from the ``hydra_plugins`` namespace): hydra-submitit-launcher's Slurm launcher with
:class:`SlurmLauncherMixin` from here. Against the plain plugin it adds:

1. **Stop at a cell boundary when Slurm ends the job.** Slurm ends a job with SIGTERM, then SIGKILL after a
   grace period (``KillWait``, or the partition's preemption ``GraceTime``): on ``scontrol requeue``, on
   preemption in requeue mode, on ``scancel``. submitit ignores that SIGTERM, so the job would go on starting
   ladder cells until the SIGKILL cut one in half. Here SIGTERM only sets a flag; :func:`between_cells`
   (which ``run_experiment`` calls before each cell) then stops the job before its next cell: the cell
   being trained is finished and written if the grace period allows, none is started, and the process
   exits without a submitit result, so the sweep keeps waiting while Slurm requeues the job. The requeued
   job runs the same pickled call again (the launcher's ``checkpoint`` hook would save exactly that call),
   and ``run_experiment`` skips the cells already on disk: it resumes at the next unfinished cell.
2. **submitit's checkpointing on timeout/preemption signals is unchanged.** Slurm sends USR2
   ``signal_delay_s`` before the time limit; submitit calls the launcher's ``checkpoint`` hook
   (``DelayedSubmission`` of the same job), requeues it (at most ``max_num_timeout`` times) and exits at
   once; the requeued job resumes as above (a cell cut in half is trained again: only written cells count).
3. **A request the cluster cannot meet fails at submission** with sbatch's own message in one line
   (unknown partition, GPUs, CPUs or memory no node has), before anything runs: the job script is first
   given to ``sbatch --test-only`` (a cluster with ``EnforcePartLimits=NO`` would otherwise accept a job no
   node can ever run, and it would pend forever), then submitted.

The submitting process has no Slurm state of its own: everything lives in ``<sweep dir>/.submitit/``.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from typing import Any
from unittest import mock

from hydra.errors import CompactHydraException

__all__ = ["SlurmLauncherMixin", "SubmissionError", "JobStopped", "between_cells"]

_stop = threading.Event()


class SubmissionError(CompactHydraException):
    """sbatch refused the sweep's jobs (Hydra prints the message alone and exits 1)."""


class JobStopped(BaseException):
    """Raised between cells once Slurm asked the job to end.

    A BaseException on purpose: Hydra's ``run_job`` records an ``Exception`` as a failed result and
    submitit would report it to the sweep as the job's outcome, while the job is only being requeued.
    """


def between_cells(cell: str) -> None:
    """``run_experiment``'s hook before training ``cell``: raise :class:`JobStopped` once a stop was asked."""
    if _stop.is_set():
        raise JobStopped(f"cell {cell}: not started, Slurm is ending this job (finished cells are kept)")


def _chain_sigterm() -> None:
    """Make SIGTERM set the stop flag, then run the handler installed before (submitit's, which logs)."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        _stop.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


class SlurmLauncherMixin:
    """Put before hydra-submitit-launcher's ``SlurmLauncher``; see the module docstring for what it adds."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # runs inside the Slurm job
        _chain_sigterm()
        try:
            return super().__call__(*args, **kwargs)
        except JobStopped as e:
            print(f"{e}; exiting so that a requeued job resumes at this cell", flush=True)
            raise SystemExit(1) from None  # no submitit result: the sweep waits for the requeued job

    def launch(self, job_overrides, initial_job_idx):  # runs on the submitting machine
        from submitit.core.utils import FailedJobError
        from submitit.slurm.slurm import SlurmExecutor

        submit = SlurmExecutor._make_submission_command
        try:  # sbatch --test-only first: some clusters accept a job no node can run, and it pends forever
            with mock.patch.object(SlurmExecutor, "_make_submission_command", _tested_first(submit)):
                return super().launch(job_overrides, initial_job_idx)
        except FailedJobError as e:
            lines = [line for line in str(e).splitlines() if line.startswith("sbatch: error")]
            if not lines:  # a job that failed while running, not a refused submission
                raise
            raise SubmissionError(_refused("; ".join(lines))) from None


def _refused(message: str) -> str:
    return f"error: Slurm refused the jobs: {message} (set hydra.launcher.*, see conf/hydra/launcher/slurm.yaml)"


def _tested_first(submit):
    """Wrap submitit's sbatch command: ask ``sbatch --test-only`` about the same script before submitting."""

    def command(executor, path):
        proc = subprocess.run(["sbatch", "--test-only", str(path)], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise SubmissionError(_refused("; ".join(proc.stderr.strip().splitlines()) or f"rc {proc.returncode}"))
        return submit(executor, path)

    return command

"""fishtune's entry point: compose the config, validate it, run one job (or a sweep of them).

    python run.py model=minilm task=glue/sst2 method=fish sparsity=0.5
    python run.py method=ird task=glue/rte sparsity=ladder
    python run.py -m method=ird,fish 'task=glue/*' sparsity=ladder

Every job writes result.json in its output folder (outputs/runs/... or outputs/multirun/<name>/...);
re-running the same command skips what is complete. Bad input gives one line and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fishtune.runner.overrides import OverrideError, rewrite

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from fishtune.config import ConfigError, validate
    from fishtune.data.glue import DataUnavailable
    from fishtune.models import ModelUnavailable
    from fishtune.runner.experiment import run_experiment
    from fishtune.runner.launch import between_cells
    from fishtune.runner.results import format_result, write_status

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    message = ""
    try:
        rc = validate(cfg)  # 1. typed schema: one line per bad value, before any heavy work
        config = OmegaConf.to_container(cfg, resolve=True)
        if config.pop("dry_run", False):
            from fishtune.runner.experiment import config_hash, finished

            done = finished(rc, out_dir, config_hash(config))  # a resume would skip it
            print(f"dry run: {rc.task.name} {rc.model.name} {rc.method['name']} {rc.sparsity.name} -> {out_dir}"
                  + (" (complete)" if done else ""))
            return
        # 2. data → model → plans → train → result.json; under Slurm, stop between cells on SIGTERM
        result = run_experiment(rc, out_dir, config, before_cell=between_cells)
        print(format_result(result))
        code = 0 if result["status"] == "ok" else 1
        message = (result.get("reason") or "failed") if code else ""
    except DataUnavailable as e:  # recorded as skipped by run_experiment; a sweep goes on
        message = f"skipped: {e}"
        print(message, file=sys.stderr)
        code = 1
    except (ConfigError, ModelUnavailable, ValueError) as e:
        write_status(out_dir / "result.json", "failed", str(e), cfg)
        message = f"error: {e}"
        print(message, file=sys.stderr)
        code = 2
    if sweeping:
        from fishtune.report.callback import record_job

        # a task without data offline is skipped, not failed: `task=glue/*` sweeps go on and succeed
        record_job(hc.sweep.dir, hc.job.num, 0 if message.startswith("skipped") else code, out_dir, message)
    elif code:
        sys.exit(code)


def unwritable_run_dir(args: list[str]) -> str | None:
    """One line when a single run's folder cannot be created or written (Hydra would fail with a traceback
    while making it); None when it can, or when the config does not compose here (Hydra then says why)."""
    if "-m" in args or "--multirun" in args or any(a.startswith("-") or a.lower() == "dry_run=true" for a in args):
        return None
    try:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            hydra_cfg = compose("config", overrides=args, return_hydra_config=True).hydra
            if hydra_cfg.get("mode") == RunMode.MULTIRUN:  # an experiment file that sweeps: no single run folder
                return None
            folder = Path(str(hydra_cfg.run.dir))
    except Exception:  # noqa: BLE001 - a bad config is Hydra's (or validate's) to report
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fishtune-write-test-{os.getpid()}"  # per process: sweeps started together
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        return f"error: the run folder {folder} cannot be written ({e.strerror or e})"
    return None


if __name__ == "__main__":
    try:
        sys.argv = [sys.argv[0], *rewrite(sys.argv[1:], CONF)]
    except OverrideError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if problem := unwritable_run_dir(sys.argv[1:]):
        print(problem, file=sys.stderr)
        sys.exit(2)
    main()
    from fishtune.report.callback import SWEEP

    if SWEEP.get("failed"):  # a multirun: exit non-zero when any job failed or was skipped
        failed = SWEEP["failed"]
        print(f"{len(failed)} of {SWEEP['total']} jobs failed: {failed[0][1] or failed[0][0]}", file=sys.stderr)
        sys.exit(1)

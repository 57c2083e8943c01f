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

from fishtune.runner.overrides import OverrideError, register_resolver, rewrite

CONF = Path(__file__).resolve().parent / "conf"
register_resolver()  # ${fishtune.job:...}: the job folders of conf/config.yaml


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from fishtune.config import ConfigError, validate
    from fishtune.core.files import FolderBusy, clean_stray, folder_lock
    from fishtune.data.glue import DataUnavailable
    from fishtune.models import ModelUnavailable
    from fishtune.runner.experiment import check, config_hash, finished, run_experiment
    from fishtune.runner.launch import between_cells
    from fishtune.runner.results import format_result

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    message, code, dry = "", 0, False
    try:
        rc = validate(cfg)  # 1. typed schema: one line per bad value, before any heavy work
        config = OmegaConf.to_container(cfg, resolve=True)
        dry = config.pop("dry_run", False)
        check(rc, out_dir)  # 2. everything the config and the folder tell, before any data is read
        if dry:
            done = finished(rc, out_dir, config_hash(config))  # a resume would skip it
            print(f"dry run: {rc.task.name} {rc.model.name} {rc.method['name']} {rc.sparsity.name} -> {out_dir}"
                  + (" (complete)" if done else ""))
            return
        with folder_lock(out_dir):  # 3. one writer per run folder
            clean_stray(out_dir)  # what a killed write of an earlier run left
            _write_overrides(out_dir, hc)
            # data → model → plans → train → result.json; under Slurm, stop between cells on SIGTERM
            result = run_experiment(rc, out_dir, config, before_cell=between_cells)
        print(format_result(result))
        code = 0 if result["status"] == "ok" else 1
        message = (result.get("reason") or "failed") if code else ""
    except DataUnavailable as e:  # recorded as skipped by run_experiment; a sweep goes on
        message, code = f"skipped: {e}", 1
    except FolderBusy as e:  # another process owns the folder: write nothing there
        message, code = f"error: {e}", 2
    except (ConfigError, ModelUnavailable, ValueError) as e:
        message, code = f"error: {e}", 2
        if not dry:
            _record_failure(out_dir, str(e), cfg)
    except OSError as e:  # a full disk, a read-only folder: one line, recorded where it still can be
        message, code = f"error: cannot write {e.filename or out_dir}: {e.strerror or e}", 1
        _record_failure(out_dir, message[len("error: "):], cfg)
    if message:
        print(message, file=sys.stderr)
    if sweeping:
        from fishtune.report.callback import record_job

        # a task without data offline is skipped, not failed: `task=glue/*` sweeps go on and succeed
        try:
            record_job(hc.sweep.dir, hc.job.num, 0 if message.startswith("skipped") else code, out_dir, message)
        except OSError as e:
            print(f"error: cannot record job {hc.job.num} in {hc.sweep.dir}: {e.strerror or e}", file=sys.stderr)
    elif code:
        sys.exit(code)


def _record_failure(out_dir: Path, reason: str, cfg: DictConfig) -> None:
    """A failed result.json with ``reason`` (never over an ok one), unless the folder cannot take it."""
    from fishtune.runner.results import write_status

    try:
        write_status(out_dir / "result.json", "failed", reason, cfg)
    except OSError:
        pass  # the line on stderr (and the sweep's record) still say why


def _write_overrides(out_dir: Path, hc) -> None:
    """``overrides.txt``: the overrides a hashed folder name (``seed42,h-...``) stands for, one a line."""
    from fishtune.runner.overrides import job_overrides

    if ",h-" not in out_dir.name:
        return
    text = "".join(f"{o}\n" for o in job_overrides(hc.overrides.task, hc.runtime.choices))
    path = out_dir / "overrides.txt"
    if not path.is_file() or path.read_text() != text:
        from fishtune.core.files import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(text)


def unwritable_run_dir(args: list[str]) -> str | None:
    """One line when the folder Hydra would first write (a single run's folder, or a sweep's folder, dry runs
    included) cannot be created or written (Hydra would fail with a traceback while making it); None when it
    can, or when the config does not compose here (Hydra then says why)."""
    multirun = "-m" in args or "--multirun" in args
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return None  # --help, --cfg, ...: nothing is written
    try:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            overrides = [a for a in args if not a.startswith("-")]
            if multirun:  # the sweep folder: compose without the swept values (compose takes one job)
                from hydra.core.override_parser.overrides_parser import OverridesParser

                parser = OverridesParser.create()
                overrides = [o for o in overrides if not parser.parse_override(o).is_sweep_override()]
            hydra_cfg = compose("config", overrides=overrides, return_hydra_config=True).hydra
            multirun = multirun or hydra_cfg.get("mode") == RunMode.MULTIRUN  # an experiment file that sweeps
            folder = Path(str(hydra_cfg.sweep.dir if multirun else hydra_cfg.run.dir))
    except Exception:  # noqa: BLE001 - a bad config is Hydra's (or validate's) to report
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fishtune-write-test-{os.getpid()}"  # per process: sweeps started together
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        what = "sweep" if multirun else "run"
        return f"error: the {what} folder {folder} cannot be written ({e.strerror or e})"
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

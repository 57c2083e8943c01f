"""Every option of every config group composes and validates; run.py --cfg job works; overrides rewrite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, ROOT

from fishtune.config import ConfigError, validate
from fishtune.methods import create, names
from fishtune.runner.overrides import OverrideError, group_options, rewrite

GROUPS = ["model", "task", "method", "sparsity", "train"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_and_validates(compose, group):
    for option in group_options(CONF, group):
        cfg = compose([f"{group}={option}"])
        rc = validate(cfg)
        create(rc.method)
        if group in ("model", "method", "task"):
            stem = option.rsplit("/", 1)[-1]
            assert cfg[group].name == stem, f"{group}/{option}.yaml must say name: {stem}"


def test_method_yamls_match_registry():
    assert sorted(group_options(CONF, "method")) == names()


def test_sparsity_ratio_override_names_the_run(compose):
    rc = validate(compose(["sparsity.ratio=0.3"]))
    assert rc.sparsity.ratio == 0.3 and rc.sparsity.name == "0.3"
    assert validate(compose(["sparsity=2.5"])).sparsity.ratio == 2.5


@pytest.mark.parametrize("override,needle", [
    ("sparsity.ratio=0", "sparsity.ratio must be in (0, 100]"),
    ("sparsity.ratio=101", "sparsity.ratio must be in (0, 100]"),
    ("train.max_steps=0", "train.max_steps must be >= 1"),
    ("fisher.num_samples=0", "fisher.num_samples must be >= 1"),
    ("ladder.samples=[8,16,4,1]", "ladder.samples must be strictly decreasing"),
    ("train.epochs=abc", "train.epochs"),
    ("device=tpu", "device must be auto|cpu|cuda"),
])
def test_bad_values_give_one_line(compose, override, needle):
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_method_option(compose):
    with pytest.raises(ConfigError, match="method.bogus: not an option of method fish"):
        create(validate(compose(["+method.bogus=1"])).method)


def test_rewrite_numbers_and_globs():
    assert rewrite(["sparsity=0.5"], CONF) == ["sparsity='0.5'"]
    assert rewrite(["sparsity=0.5,2.5"], CONF) == ["sparsity='0.5','2.5'"]
    tasks = rewrite(["task=glue/*"], CONF)[0]
    assert tasks.startswith("task=") and len(tasks.split(",")) == 9
    assert rewrite(["-m", "train.epochs=2", "hydra/launcher=basic"], CONF) == ["-m", "train.epochs=2",
                                                                            "hydra/launcher=basic"]
    with pytest.raises(OverrideError, match="method: unknown option 'nope', pick one in"):
        rewrite(["method=nope"], CONF)


@pytest.mark.parametrize("group", GROUPS)
def test_run_py_every_option(group, tmp_path):
    """`run.py --cfg job` prints a group's config, and a dry-run sweep over all its options validates each
    (one process: Hydra's basic launcher runs the jobs in-process)."""
    options = group_options(CONF, group)
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), f"{group}={options[0]}", "--cfg", "job"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "name:" in out.stdout, out.stderr
    extra = ["sparsity=ladder"] if group == "method" else []
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", f"{group}={','.join(options)}", *extra,
                          "dry_run=true"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("dry run:") == len(options), out.stdout


def test_multirun_glob_expands_to_all_tasks(tmp_path):
    """The literal unquoted form works from a folder without glue/ (the shell passes glue/* through)."""
    for task in ("task=glue/*", "'task=glue/*'"):
        out = subprocess.run(f"{sys.executable} {ROOT / 'run.py'} -m method=ird,fish {task} sparsity=ladder "
                             "dry_run=true", shell=True, cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        jobs = [line for line in out.stdout.splitlines() if line.startswith("dry run:")]
        assert len(jobs) == 18, out.stdout  # 2 methods x 9 tasks
        assert {j.split()[2] for j in jobs} == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}


def _sweep_values(text: str) -> int:
    """How many values a sweeper entry holds: its commas outside {...} and [...] (a dict or list value)."""
    depth, count = 0, 1
    for ch in text:
        depth += ch in "{["
        depth -= ch in "}]"
        count += ch == "," and depth == 0
    return count


@pytest.mark.parametrize("experiment", group_options(CONF, "experiment"))
def test_experiment_file_is_one_command_and_lists_its_jobs(experiment, tmp_path):
    """`run.py experiment=X dry_run=true` (no -m: the file sweeps) validates and lists every job of its grid."""
    import yaml

    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_\n# "), "an experiment file says what it reproduces"
    grid = yaml.safe_load(text)["hydra"]["sweeper"]["params"]
    expected = 1
    for values in grid.values():
        expected *= _sweep_values(str(values))
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), f"experiment={experiment}", "dry_run=true"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    jobs = [line for line in out.stdout.splitlines() if line.startswith("dry run:")]
    assert len(jobs) == expected, out.stdout
    assert not (tmp_path / "outputs" / "runs").exists()  # no single-run folder made for a sweeping file
    # keys set in the file are not overrides: plain seed<k> folders, where the committed runs lie
    assert all("," not in Path(line.split(" -> ")[1].split(" (")[0]).name for line in jobs), out.stdout


@pytest.mark.slow
def test_cpu_experiment_runs_and_resumes(tmp_path):
    """repro_minilm_cpu's own settings (ladder sparsity for every method, sparse_lr), shrunk to a tiny model
    and one task: it trains every job, and the same command again trains nothing."""
    cmd = [sys.executable, str(ROOT / "run.py"), "experiment=repro_minilm_cpu", "model=tiny-bert",
           "hydra.sweeper.params.seed=1", "hydra.sweeper.params.task=glue/rte",
           "hydra.sweeper.params.method='dense,random'", "data.max_train_samples=32", "data.max_eval_samples=16",
           "train.epochs=1", "ladder.samples=[8,4]", "ladder.ratios=[5,1]", "fisher.num_samples=8",
           f"data.dir={ROOT / 'data' / 'glue'}"]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    sweep = tmp_path / "docs" / "report" / "runs" / "repro_minilm_cpu" / "rte" / "tiny-bert"
    # the command line's overrides name the job folders (seed1,h-<hash>: a '/' in data.dir), overrides.txt inside
    (random_dir,) = (sweep / "random" / "ladder").glob("seed1,h-*")
    assert "train.epochs=1" in (random_dir / "overrides.txt").read_text().splitlines()
    assert sorted(p.stem for p in (random_dir / "cells").glob("*.json")) == ["r1", "r5"]
    (dense_dir,) = (sweep / "dense" / "ladder").glob("seed1,h-*")
    dense = json.loads((dense_dir / "result.json").read_text())
    random = json.loads((random_dir / "result.json").read_text())
    assert 0 < dense["majority"] < 1 and dense["info"]["lr"] == 2e-4  # the experiment's method_lr
    assert [c["info"]["lr"] for c in random["cells"]] == [3e-2, 3e-2]  # the experiment's method_lr
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("already complete") == 2, again.stdout
    listed = subprocess.run([*cmd, "dry_run=true"], cwd=tmp_path, capture_output=True, text=True)
    assert listed.stdout.count(" (complete)") == 2, listed.stdout  # a dry run says what a resume would skip
    fresh = subprocess.run([*cmd, "dry_run=true", "train.epochs=2"], cwd=tmp_path, capture_output=True, text=True)
    assert fresh.returncode == 0 and "(complete)" not in fresh.stdout, fresh.stdout  # another config: not done


def test_job_folder_names_every_result_changing_override():
    from fishtune.runner.overrides import job_suffix

    choices = {"model": "tiny-bert", "task": "glue/rte", "experiment": None, "hydra/launcher": "basic"}
    assert job_suffix(["model=tiny-bert", "seed=3", "cell=r1", "resume=false", "name=x", "dry_run=true",
                       "train.progress=false", "experiment=repro_minilm_cpu"], choices) == ""
    assert job_suffix(["train.lr=2e-3", "+fisher.kind=expected", "model=minilm"], choices) == \
        ",fisher.kind=expected,train.lr=0.002"  # Hydra's spelling, as its sweeper gives a job
    assert job_suffix(["b.x=1", "a.y=2"], choices) == job_suffix(["a.y=2", "b.x=1"], choices)  # order-free
    hashed = job_suffix(["mask.load=/tmp/m.safetensors"], choices)
    assert hashed.startswith(",h-") and len(hashed) == 15  # a '/' never makes a folder level
    assert job_suffix(["mask.load=/tmp/other.safetensors"], choices) != hashed

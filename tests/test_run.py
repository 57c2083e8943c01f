"""run.py end to end: real MiniLM on real GLUE rows, ladder jobs that resume, and bad input (one line,
non-zero exit, no result that claims ok)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, needs_minilm

from fishtune.runner.results import load_results, read_result

TINY = ["model=tiny-bert", "train=debug", "data.max_train_samples=48", "data.max_eval_samples=16",
        "fisher.num_samples=8"]
LADDER = ["method=ird", "sparsity=ladder", "ladder.samples=[16,8,4,1]", "ladder.ratios=[20,10,5,1]"]


def run(args, cwd, check=False, env=None):
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@needs_minilm
@pytest.mark.slow
def test_minilm_fish_lora_bitfit_write_valid_results(tmp_path):
    run(["-m", "model=minilm", "task=glue/rte", "method=fish,lora,bitfit", "sparsity=0.5", "train=debug",
         "data.max_train_samples=48", "data.max_eval_samples=24", "fisher.num_samples=8", "name=e2e"],
        tmp_path, check=True)
    df = load_results(tmp_path / "outputs" / "multirun" / "e2e")
    assert sorted(df.method) == ["bitfit", "fish", "lora"] and set(df.status) == {"ok"}
    for path in (tmp_path / "outputs").rglob("result.json"):
        r = read_result(path)
        for key in ("config", "metrics", "score", "trainable_params", "total_params", "trainable_ratio", "seed",
                    "timings", "peak_memory", "versions"):
            assert key in r, f"{key} missing from {path}"
        assert r["total_params"] == 22713216  # MiniLM without its 2-class head (770 values)
        assert 0 <= r["score"] <= 1 and "accuracy" in r["metrics"]
        assert r["trainable_ratio"] == pytest.approx(100 * r["trainable_params"] / r["total_params"])
        if r["method"] == "fish":
            assert r["trainable_params"] == 113566 and len(r["mask_sha256"]) == 64
            assert len(r["info"]["sample_indices"]) == 8
        if r["method"] == "lora":
            assert r["info"]["lora_r"] >= 1 and r["trainable_params"] > 0
        assert {"torch", "transformers", "peft"} <= set(r["versions"])


def test_ladder_job_resumes_only_missing_cells(tmp_path):
    args = [*TINY, *LADDER, "task=glue/rte", "hydra.run.dir=job"]
    first = run(args, tmp_path, check=True)
    assert first.stdout.count(": training") == 7
    result = read_result(tmp_path / "job" / "result.json")
    assert [c["cell"] for c in result["cells"]] == ["r20-n16", "r20-n8", "r10-n8", "r10-n4", "r5-n4", "r5-n1",
                                                   "r1-n1"]
    assert result["best_cell"] in {c["cell"] for c in result["cells"]}
    assert all(len(c["mask_sha256"]) == 64 and c["info"]["sample_indices"] for c in result["cells"])
    assert "nested" in result["cells"][1]["info"]
    assert "r1-n1" in first.stdout and "samples" in first.stdout  # the printed table
    cells = tmp_path / "job" / "cells"
    (cells / "r10-n4.json").unlink()
    text = (cells / "r5-n1.json").read_text()
    (cells / "r5-n1.json").write_text(text[: len(text) // 2])  # half-written: not finished
    (tmp_path / "job" / "result.json").unlink()
    forged = json.loads((cells / "r20-n8.json").read_text())
    del forged["score"]  # "ok" without a score: not finished, trained again (no KeyError)
    (cells / "r20-n8.json").write_text(json.dumps(forged))
    again = run(args, tmp_path, check=True)
    assert again.stdout.count(": training") == 3 and again.stdout.count("already complete") == 4
    resumed = read_result(tmp_path / "job" / "result.json")
    assert [c["score"] for c in resumed["cells"]] == [c["score"] for c in result["cells"]]
    assert run(args, tmp_path, check=True).stdout.count("already complete") == 1  # the whole job is done
    # the resume key leaves out what does not change a result: a cell job finds the ladder's cell file
    for extra in (["cell=r10-n8"], ["train.progress=false"], ["cell=r5-n1", "train.progress=false"],
                  ["+train.method_lr.lora=1e-2"]):  # another method's lr: not this job's
        out = run([*args, *extra], tmp_path, check=True).stdout
        assert ": training" not in out and "already complete" in out, (extra, out[-2000:])


def test_resume_key_holds_only_the_runs_own_method_lr():
    from fishtune.runner.experiment import config_hash

    base = {"method": {"name": "fish"}, "train": {"lr": None, "method_lr": {"fish": 1e-3}, "progress": True}}
    other = copy.deepcopy(base)
    other["train"]["method_lr"]["dense"] = 2e-4  # a sweep gives dense its own lr: fish's runs stay found
    other["train"]["progress"] = False
    assert config_hash(other) == config_hash(base)
    own = copy.deepcopy(base)
    own["train"]["method_lr"]["fish"] = 3e-3
    assert config_hash(own) != config_hash(base)
    assert base["train"]["method_lr"] == {"fish": 1e-3} and "progress" in base["train"]  # the config is untouched
    # mask.weight_grad=dense is the exact path results before the option were trained with: same key
    with_default = copy.deepcopy(base)
    base["mask"] = {"scope": "global"}
    with_default["mask"] = {"scope": "global", "weight_grad": "dense"}
    assert config_hash(with_default) == config_hash(base)
    with_default["mask"]["weight_grad"] = "auto"  # the default: equal to dense up to summation order
    assert config_hash(with_default) == config_hash(base)
    with_default["mask"]["weight_grad"] = "blocks"
    assert config_hash(with_default) != config_hash(base)


@needs_minilm
def test_minilm_fish_with_weight_grad_blocks(tmp_path):
    """run.py trains with `mask.weight_grad=blocks` and records how much of dW it computed: on real MiniLM a
    FISH mask's matrices hold their entries in a few columns, so most compute a small block."""
    run(["model=minilm", "task=glue/rte", "method=fish", "sparsity=0.5", "train=debug", "data.max_train_samples=48",
         "data.max_eval_samples=24", "fisher.num_samples=8", "mask.weight_grad=blocks", "hydra.run.dir=job"],
        tmp_path, check=True)
    r = read_result(tmp_path / "job" / "result.json")
    assert r["status"] == "ok" and r["trainable_params"] == 113566
    wg = r["info"]["weight_grad"]
    assert wg["matrices"] > 0 and wg["blocked"] > wg["matrices"] / 2 and wg["block_share_percent"] < 50


def test_killed_ladder_job_finishes_the_rest(tmp_path):
    args = [*TINY, *LADDER, "task=glue/wnli", "hydra.run.dir=job"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    cells = tmp_path / "job" / "cells"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(cells.glob("*.json"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(cells.glob("*.json")))
    assert 2 <= done < 7, "kill the job part-way"
    again = run(args, tmp_path, check=True)
    assert again.stdout.count(": training") == 7 - done
    run([*args[:-1], "hydra.run.dir=uninterrupted"], tmp_path, check=True)
    a = read_result(tmp_path / "job" / "result.json")
    b = read_result(tmp_path / "uninterrupted" / "result.json")
    assert [c["score"] for c in a["cells"]] == [c["score"] for c in b["cells"]]
    assert [c["mask_sha256"] for c in a["cells"]] == [c["mask_sha256"] for c in b["cells"]]


def test_same_seed_same_mask_and_metrics(tmp_path):
    base = [*TINY, "task=glue/rte", "method=fish"]
    for d, seed in (("a", 1), ("b", 1), ("c", 2)):
        run([*base, f"seed={seed}", f"hydra.run.dir={d}"], tmp_path, check=True)
    a, b, c = (read_result(tmp_path / d / "result.json") for d in "abc")
    assert a["mask_sha256"] == b["mask_sha256"] and a["metrics"] == b["metrics"]
    assert a["info"]["sample_indices"] == b["info"]["sample_indices"]
    assert a["info"]["sample_indices"] != c["info"]["sample_indices"]


BAD = [
    (["model=nope"], "model: unknown option 'nope', pick one in"),
    (["task=glue/nope"], "task: unknown option 'glue/nope', pick one in"),
    (["method=nope"], "method: unknown option 'nope', pick one in"),
    (["sparsity=7"], "sparsity: unknown option '7', pick one in"),
    (["sparsity.ratio=0"], "sparsity.ratio must be in (0, 100]"),
    (["sparsity.ratio=100.5"], "sparsity.ratio must be in (0, 100]"),
    (["train.max_steps=0"], "train.max_steps must be >= 1"),
    (["fisher.num_samples=500"], "fisher.num_samples=500 is larger than the training set (48 examples of rte)"),
    (["method=ird", "sparsity=ladder", "ladder.samples=[128,32,16,1]"],
     "asks for 128 samples, the training set has 48"),
    (["method=ird", "sparsity=ladder", "ladder.samples=[1,16,32,128]"], "ladder.samples must be strictly decreasing"),
    (["model=bert-base"], "model bert-base: weights for 'google-bert/bert-base-uncased' not found locally"),
    (["device=cuda"], "device=cuda: CUDA is not available"),
    (["method=ird"], "method=ird walks a ladder: use sparsity=ladder"),
    (["train.patience=-1"], "train.patience must be >= 1"),
    (["train.warmup_ratio=2"], "train.warmup_ratio must be in [0, 1)"),
    (["train.eval_every=0"], "train.eval_every must be >= 1"),
    (["train.eval_batch_size=0"], "train.eval_batch_size must be >= 1"),
    (["train.weight_decay=-5"], "train.weight_decay must be >= 0"),
    (["task.text_fields=[nocol]"], "task.text_fields: no column 'nocol' in"),
    (["task.prompt='{nofield}'"], "task.prompt: {nofield} is not one of task.text_fields"),
    (["task.prompt='{0}'"], "task.prompt: positional slot {0}"),
    (["method=lora", "method.r=abc"], "method.r must be int or null for method lora, got 'abc'"),
    (["method=lora", "method.r=0"], "method.r must be >= 1"),
    (["method=ird", "sparsity=ladder", "ladder.samples=[16,8,4,1]", "method.nested=no"],
     "method.nested must be bool for method ird, got 'no'"),
    (["task.max_length=1000", "train.pad_to_max_length=true"], "task.max_length=1000 is longer than model tiny-bert"),
    (["task.num_labels=5"], "task.num_labels=5, but"),
    (["method=ird", "sparsity=ladder", "ladder.samples=[16,8,4,1]", "cell=r9-n9"],
     "cell=r9-n9: not a cell of this job"),
    (["fisher.scope='['"], "fisher.scope: not a valid regex"),
    (["fisher.scope=nomatch"], "fisher.scope: 'nomatch' matches no parameter"),
    (["method=lora", "method.target_modules=[nomod]"], "lora: no 2-D weight in modules named ['nomod']"),
    (["data.dir=/nonexistent"], "data.dir: no such folder '/nonexistent'"),
]
# the config alone tells: these stop before any data is read (no tokenising progress bar)
BEFORE_DATA = {"task.prompt='{0}'", "method.r=abc", "method.nested=no", "cell=r9-n9", "fisher.scope='['",
               "data.dir=/nonexistent", "train.patience=-1"}


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_no_ok_result(tmp_path, args, message):
    if "device=cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    out = run([*TINY, "task=glue/rte", *args, "hydra.run.dir=job"], tmp_path)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    if BEFORE_DATA & set(args):
        assert "Map" not in out.stderr, "checked only after the data was read"
    for path in tmp_path.rglob("result.json"):
        assert json.loads(path.read_text())["status"] != "ok"


def test_missing_data_is_skipped_and_sweep_goes_on(tmp_path):
    out = run(["-m", *TINY, "method=bitfit", "task=glue/qqp,glue/wnli", "name=s"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipped: task qqp: data not found in" in out.stderr and "QQP" in out.stderr
    df = load_results(tmp_path / "outputs" / "multirun" / "s")
    status = dict(zip(df.task, df.status))
    assert status == {"qqp": "skipped", "wnli": "ok"}
    single = run([*TINY, "method=bitfit", "task=glue/mnli", "hydra.run.dir=m"], tmp_path)
    assert single.returncode != 0 and "skipped: task mnli: data not found in" in single.stderr


def test_nan_loss_fails_with_step(tmp_path):
    out = run([*TINY, "task=glue/rte", "method=dense", "train.lr=1e30", "train.max_steps=4", "hydra.run.dir=j"],
              tmp_path)
    r = read_result(Path(tmp_path) / "j" / "result.json")
    assert r["status"] == "failed" and r["failed_step"] >= 1 and "at step" in r["reason"]
    assert out.returncode != 0


def test_failing_rerun_never_touches_a_finished_result(tmp_path):
    """A bad-input rerun into a finished run folder exits non-zero and leaves result.json, the cell files
    and the masks byte-identical (`.hydra/` is Hydra's record of the last command)."""
    args = [*TINY, "task=glue/rte", "method=fish", "sparsity=0.5", "hydra.run.dir=job"]
    run(args, tmp_path, check=True)
    job = tmp_path / "job"

    def files():
        return {p.relative_to(job): p.read_bytes() for p in job.rglob("*") if p.is_file() and ".hydra" not in p.parts}

    before = files()
    assert json.loads((job / "result.json").read_text())["status"] == "ok"
    for bad in (["train.lr=-1"], ["method=ird"], ["fisher.num_samples=500"]):
        out = run([*args, *bad], tmp_path)
        assert out.returncode != 0 and "error:" in out.stderr, bad
        assert files() == before, f"{bad}: a failing rerun changed the finished run"


def test_unwritable_run_folder_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    out = run([*TINY, "task=glue/rte", "hydra.run.dir=afile/job"], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: the run folder afile/job cannot be written" in out.stderr, out.stderr[-2000:]


def test_sweeping_experiment_file_makes_no_single_run_folder(tmp_path, monkeypatch):
    """An experiment file that sets hydra.mode=MULTIRUN has no single run folder to probe: the check must not
    create (or race another sweep started beside it on) the default run folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fishtune_run_script", ROOT / "run.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(tmp_path)
    assert script.unwritable_run_dir(["experiment=repro_minilm_cpu"]) is None
    assert not (tmp_path / "outputs").exists()


def test_sweep_with_failed_jobs_exits_non_zero(tmp_path):
    out = run(["-m", *TINY, "task=glue/rte", "method=dense", "seed=1,2", "train.lr=-1", "name=f"], tmp_path)
    assert out.returncode != 0
    assert "2 of 2 jobs failed: error: train.lr" in out.stderr, out.stderr[-2000:]
    ok = run(["-m", *TINY, "task=glue/rte", "method=bitfit", "seed=1,2", "name=g"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_a_saved_mask_and_its_head_train_again(tmp_path):
    """Each masks file carries the head the Fisher saw; `mask.load=` trains that mask (same mask, same head:
    the same scores as the run that made it) and refuses a mask made for another model."""
    from fishtune.core.masks import Mask

    base = [*TINY, "task=glue/rte", "method=fish", "sparsity=0.5"]
    run([*base, "hydra.run.dir=made"], tmp_path, check=True)
    file = tmp_path / "made" / "masks" / "main.safetensors"
    mask = Mask.load(file)
    assert set(mask.head) == {"classifier.weight", "classifier.bias"}
    made = read_result(tmp_path / "made" / "result.json")
    run([*TINY, "task=glue/rte", "method=random", f"mask.load={file}", "hydra.run.dir=again"], tmp_path, check=True)
    again = read_result(tmp_path / "again" / "result.json")
    assert again["mask_sha256"] == made["mask_sha256"] and again["info"]["head_from_mask_file"]
    assert again["metrics"] == made["metrics"] and again["trainable_params"] == made["trainable_params"]
    other = run([*TINY, "task=glue/rte", "model=tiny-llama", f"mask.load={file}", "hydra.run.dir=x"], tmp_path)
    assert other.returncode != 0 and "made for another model" in other.stderr and "Traceback" not in other.stderr
    missing = run([*base, "mask.load=nope.safetensors", "hydra.run.dir=y"], tmp_path)
    assert "error: mask.load: no such file 'nope.safetensors'" in missing.stderr


@pytest.mark.slow
def test_adapter_methods_train_every_ladder_ratio(tmp_path):
    """LoRA, FISH+LoRA and FISH+Adapter change the model's modules: each ratio's cell must still start from
    the pretrained model (the second cell used to fail to reset it), and a later cell is as if trained alone."""
    common = ["model=tiny-bert", "task=glue/rte", "sparsity=ladder", "train=debug", "data.max_train_samples=32",
              "data.max_eval_samples=16", "fisher.num_samples=8", "ladder.samples=[8,4]", "ladder.ratios=[5,1]"]
    run(["-m", "method=lora,fish_lora,fish_adapter", *common, "name=adapters"], tmp_path, check=True)
    df = load_results(tmp_path / "outputs" / "multirun" / "adapters")
    methods = ("fish_adapter", "fish_lora", "lora")
    assert sorted(zip(df.method, df.cell)) == [(m, c) for m in methods for c in ("r1", "r5")]
    assert set(df.status) == {"ok"}
    alone = run(["method=lora", *common, "cell=r1", "hydra.run.dir=alone"], tmp_path, check=True)
    assert alone.returncode == 0
    single = read_result(tmp_path / "alone" / "cells" / "r1.json")
    assert single["score"] == df[(df.method == "lora") & (df.cell == "r1")]["score"].item()

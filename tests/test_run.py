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
    # data and mask files that cannot be trained on (planted by PLANT): one line naming the file, before training
    (["task=glue/stsb", "data.dir=stsb_nan_train"], "STS-B/train.tsv, line 8: label 'nan' is not a finite number"),
    (["task=glue/stsb", "data.dir=stsb_inf_dev"], "STS-B/dev.tsv, line 8: label 'inf' is not a finite number"),
    (["task=glue/stsb", "data.dir=stsb_5.5_train"],
     "train.tsv, line 8: label '5.5' is outside task.label_range [0, 5]"),
    (["task=glue/stsb", "data.dir=stsb_-1_dev"], "dev.tsv, line 8: label '-1' is outside task.label_range [0, 5]"),
    (["mask.load=head_entries.safetensors"], "mask file head_entries.safetensors: it selects entries of the task "
     "head ('classifier.bias'), so it was made with mask.include_head=true"),
    (["mask.load=indices_2d.safetensors"], "mask file indices_2d.safetensors: indices of "
     "'bert.encoder.layer.0.attention.self.query.weight' are a 2-D torch.int64 tensor"),
    (["mask.load=nan_head.safetensors"], "mask file nan_head.safetensors: its head 'classifier.weight' holds "
     "non-finite"),
    (["mask.load=truncated.safetensors"], "mask file truncated.safetensors is not a readable safetensors file"),
    (["mask.load=other_labels.safetensors"], "mask file other_labels.safetensors: its head 'classifier.bias' "
     "does not fit the model"),
    # values read as what they are, before anything else; dry runs check what a run checks before data
    (["save_delta=no"], "save_delta must be true or false, got 'no'"),
    (["fisher.dropout=yes"], "fisher.dropout must be true or false, got 'yes'"),
    (["seed=abc"], "seed must be an integer, got 'abc'"),
    (["train.lr=inf"], "train.lr must be a finite number, got inf"),
    (["train.weight_decay=inf"], "train.weight_decay must be a finite number, got inf"),
    (["+sead=3"], "sead: not a config key (did you mean seed?)"),
    (["+train.lrr=1e-3"], "train.lrr: not a key of train (did you mean lr?)"),
    (["method=ird", "dry_run=true"], "method=ird walks a ladder: use sparsity=ladder"),
    (["method=ird", "sparsity=ladder", "ladder.samples=[16,8,4,1]", "cell=r9-n9", "dry_run=true"],
     "cell=r9-n9: not a cell of this job"),
    (["method=lora", "method.r=abc", "dry_run=true"], "method.r must be int or null for method lora, got 'abc'"),
    (["device=cuda", "dry_run=true"], "device=cuda: CUDA is not available"),
    ([f"mask.load={ROOT / 'README.md'}", "dry_run=true"], "mask.load: mask file"),
    ([f"mask.load={ROOT / 'README.md'}"], "mask.load: mask file"),
]


def _stsb(bad_split: str, label: str):
    """A small STS-B folder whose ``bad_split`` has ``label`` on line 8."""

    def plant(folder: Path) -> None:
        from fishtune.data.glue import default_data_dir

        (folder / "STS-B").mkdir(parents=True)
        for split, rows in (("train", 60), ("dev", 30)):
            lines = (default_data_dir() / "STS-B" / f"{split}.tsv").read_text().splitlines(keepends=True)[:rows]
            if split == bad_split:
                lines[7] = lines[7].rstrip("\n").rsplit("\t", 1)[0] + f"\t{label}\n"
            (folder / "STS-B" / f"{split}.tsv").write_text("".join(lines))

    return plant


def _mask_file(head_entries=False, two_d=False, nan_head=False, truncated=False, labels=2):
    """A masks file for tiny-bert (4 entries of one matrix, the head saved along), spoilt as asked."""

    def plant(path: Path) -> None:
        import torch
        from omegaconf import OmegaConf

        from fishtune.config import ModelConfig
        from fishtune.core.masks import Mask
        from fishtune.models import load_model

        cfg = ModelConfig(**OmegaConf.to_object(OmegaConf.load(ROOT / "conf" / "model" / "tiny-bert.yaml")))
        params = dict(load_model(cfg, labels).model.named_parameters())
        name = "bert.encoder.layer.0.attention.self.query.weight"
        indices = {name: torch.arange(4).view(2, 2) if two_d else torch.arange(4)}
        if head_entries:
            indices["classifier.bias"] = torch.tensor([0])
        head = {n: params[n].detach().clone() for n in ("classifier.weight", "classifier.bias")}
        if nan_head:
            head["classifier.weight"][0, 0] = float("nan")
        Mask(indices, {n: tuple(params[n].shape) for n in indices}, head=head).save(path)
        if truncated:
            path.write_bytes(path.read_bytes()[:100])

    return plant


# files a BAD row names (data.dir=<folder>, mask.load=<file>), written into the test's folder first
PLANT = {"stsb_nan_train": _stsb("train", "nan"), "stsb_inf_dev": _stsb("dev", "inf"),
         "stsb_5.5_train": _stsb("train", "5.5"), "stsb_-1_dev": _stsb("dev", "-1"),
         "head_entries.safetensors": _mask_file(head_entries=True), "indices_2d.safetensors": _mask_file(two_d=True),
         "nan_head.safetensors": _mask_file(nan_head=True), "truncated.safetensors": _mask_file(truncated=True),
         "other_labels.safetensors": _mask_file(labels=3)}
# the config alone tells: these stop before any data is read (no tokenising progress bar)
BEFORE_DATA = {"task.prompt='{0}'", "method.r=abc", "method.nested=no", "cell=r9-n9", "fisher.scope='['",
               "data.dir=/nonexistent", "train.patience=-1", "dry_run=true", "save_delta=no", "+sead=3",
               f"mask.load={ROOT / 'README.md'}"}


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_no_ok_result(tmp_path, args, message):
    if "device=cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    for arg in args:
        if (planted := arg.partition("=")[2]) in PLANT:
            PLANT[planted](tmp_path / planted)
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
    """A bad-input rerun into a finished run folder, or one with another config that fails in training (a
    nan loss), exits non-zero and leaves result.json, the cell files and the masks byte-identical (masks are
    written with their cell, once it trained ok; `.hydra/` is Hydra's record of the last command)."""
    args = [*TINY, "task=glue/rte", "method=fish", "sparsity=0.5", "hydra.run.dir=job"]
    run(args, tmp_path, check=True)
    job = tmp_path / "job"

    def files():
        return {p.relative_to(job): p.read_bytes() for p in job.rglob("*") if p.is_file() and ".hydra" not in p.parts}

    before = files()
    assert json.loads((job / "result.json").read_text())["status"] == "ok"
    for bad in (["train.lr=-1"], ["method=ird"], ["fisher.num_samples=500"],
                ["fisher.num_samples=16", "train.lr=1e30", "train.max_steps=4"]):
        out = run([*args, *bad], tmp_path)
        assert out.returncode != 0 and ("error:" in out.stderr or "at step" in out.stderr), bad
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


def test_sweep_over_a_plain_key_keeps_every_job(tmp_path):
    """`train.lr=1e-3,2e-3` puts each job in its own folder (seed42,...,train.lr=...): both results stay and
    the sweep's report has both rows."""
    run(["-m", *TINY, "task=glue/rte", "method=bitfit", "train.lr=1e-3,2e-3", "name=lr"], tmp_path, check=True)
    sweep = tmp_path / "outputs" / "multirun" / "lr"
    df = load_results(sweep)
    assert sorted(df.lr) == [1e-3, 2e-3] and set(df.status) == {"ok"}
    assert sorted(Path(p).name.rsplit(",", 1)[-1] for p in df.path) == ["train.lr=0.001", "train.lr=0.002"]
    import pandas as pd

    rows = pd.read_csv(sweep / "report" / "results.csv")
    assert sorted(rows.lr) == [1e-3, 2e-3]


def test_a_locked_run_folder_is_one_line(tmp_path):
    from fishtune.core.files import folder_lock

    with folder_lock(tmp_path / "job"):
        out = run([*TINY, "task=glue/rte", "method=bitfit", "hydra.run.dir=job"], tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    busy = f"/job is in use by process {os.getpid()} (one process writes a run folder at a time)"
    assert len(errors) == 1 and errors[0].endswith(busy), out.stderr
    assert not (tmp_path / "job" / "result.json").exists()


def test_two_sweeps_into_one_folder_each_exit_by_their_own_jobs(tmp_path):
    """A second sweep started into the folder of a running one (other jobs) neither clears nor counts the
    first one's job records: the failing one exits 1 with its own count, the other 0."""
    good = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", *TINY, "task=glue/rte", "method=bitfit",
                             "seed=1,2", "name=s"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    jobs = tmp_path / "outputs" / "multirun" / "s" / ".jobs"
    deadline = time.time() + 300
    while time.time() < deadline and not list(jobs.glob("*")) and good.poll() is None:
        time.sleep(0.2)
    bad = run(["-m", *TINY, "task=glue/rte", "method=dense", "seed=1,2", "train.lr=-1", "name=s"], tmp_path)
    _, err = good.communicate(timeout=600)
    assert bad.returncode == 1 and "2 of 2 jobs failed: error: train.lr" in bad.stderr, bad.stderr[-2000:]
    assert good.returncode == 0 and "failed" not in err, err[-2000:]
    assert len(list(jobs.glob("*"))) == 2  # each sweep its own records


def test_edited_data_or_mask_file_trains_again(tmp_path):
    """The resume key holds the contents of the files a run reads: an edited split file or a replaced
    `mask.load` file makes the same command train again (size + mtime, else sha256)."""
    import shutil

    data = tmp_path / "glue"
    shutil.copytree(ROOT / "data" / "glue" / "RTE", data / "RTE")
    args = [*TINY, "task=glue/rte", "method=fish", f"data.dir={data}", "hydra.run.dir=job"]
    run(args, tmp_path, check=True)
    assert "already complete" in run(args, tmp_path, check=True).stdout
    train = data / "RTE" / "train.tsv"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines[:1] + lines[2:] + lines[1:2]))  # one row moved: same size, other bytes
    again = run(args, tmp_path, check=True).stdout
    assert "cell main: training" in again, again[-2000:]
    assert read_result(tmp_path / "job" / "result.json")["inputs"]["data.train"]["size"] == train.stat().st_size

    run([*TINY, "task=glue/rte", "method=fish", "seed=2", "hydra.run.dir=other"], tmp_path, check=True)
    mask = tmp_path / "m.safetensors"
    shutil.copy(tmp_path / "job" / "masks" / "main.safetensors", mask)
    loaded = [*TINY, "task=glue/rte", "method=fish", f"mask.load={mask}", "hydra.run.dir=loaded"]
    run(loaded, tmp_path, check=True)
    assert "already complete" in run(loaded, tmp_path, check=True).stdout
    shutil.copy(tmp_path / "other" / "masks" / "main.safetensors", mask)
    assert "cell main: training" in run(loaded, tmp_path, check=True).stdout


def test_folders_where_files_belong_and_stray_tmp_files(tmp_path):
    """A folder where result.json or a masks file belongs: one line before any data is read, nothing
    written. Temporary files a killed write left are removed by the next run of that folder."""
    args = [*TINY, "task=glue/rte", "method=fish", "hydra.run.dir=job"]
    job = tmp_path / "job"
    for where in ("result.json", "masks/main.safetensors"):
        (job / where).mkdir(parents=True)
        out = run(args, tmp_path)
        assert out.returncode != 0 and "Traceback" not in out.stderr and "Map" not in out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"{where}: a folder where fishtune writes a file" in errors[0], out.stderr
        (job / where).rmdir()
    stray = [job / ".result.json.abc.tmp", job / "cells" / ".main.json.x.tmp"]
    for p in stray:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("half")
    run(args, tmp_path, check=True)
    assert not any(p.exists() for p in stray)


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if out.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or out.returncode}): needs root")


def test_full_disk_is_a_failed_result_the_sweep_counts(tmp_path):
    """A masks file that does not fit on the disk (a 1 MiB tmpfs): the job's result says failed with the
    reason, and the sweep's summary counts it; no traceback."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=1m")
    try:
        out = run(["-m", *TINY, "task=glue/rte", "method=fish", "sparsity.ratio=50", f"hydra.sweep.dir={disk}"],
                  tmp_path)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert "1 of 1 jobs failed: " in out.stderr and "No space left on device" in out.stderr, out.stderr[-2000:]
        (result,) = disk.rglob("result.json")
        r = json.loads(result.read_text())
        assert r["status"] == "failed" and "No space left on device" in r["reason"]
        assert not list(disk.rglob("*.safetensors")) and not list(disk.rglob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_read_only_folders_are_one_line(tmp_path):
    """A dry run into a read-only run folder and a sweep into a read-only sweep folder: one line, non-zero."""
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "ro,size=1m")
    try:
        for args, what in ((["hydra.run.dir=ro/job", "dry_run=true"], "run"),
                           (["-m", "seed=1,2", "hydra.sweep.dir=ro/s"], "sweep")):
            out = run([*TINY, "task=glue/rte", *args], tmp_path)
            assert out.returncode == 2 and "Traceback" not in out.stderr
            assert f"error: the {what} folder ro/" in out.stderr and "Read-only file system" in out.stderr
    finally:
        subprocess.run(["umount", str(ro)], check=False)

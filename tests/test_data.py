"""GLUE files: every vendored task loads with hub-compatible columns and labels; a missing column or a
malformed row is one line naming the file (and the line); out-of-memory is reported with the batch size."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace

import pytest

from fishtune.config import DataConfig, TaskConfig
from fishtune.data.glue import DataUnavailable, load_task

TASKS = {
    "cola": (TaskConfig(name="cola", glue_dir="CoLA", metric="matthews"), 8551, 1043),
    "sst2": (TaskConfig(name="sst2", glue_dir="SST-2"), 67349, 872),
    "mrpc": (TaskConfig(name="mrpc", glue_dir="MRPC", text_fields=["sentence1", "sentence2"]), 3668, 408),
    "stsb": (TaskConfig(name="stsb", glue_dir="STS-B", text_fields=["sentence1", "sentence2"], num_labels=1), 5749,
             1500),
    "rte": (TaskConfig(name="rte", glue_dir="RTE", text_fields=["sentence1", "sentence2"]), 2490, 277),
    "wnli": (TaskConfig(name="wnli", glue_dir="WNLI", text_fields=["sentence1", "sentence2"]), 635, 71),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_vendored_tasks_load(name):
    task, n_train, n_dev = TASKS[name]
    data = load_task(task, DataConfig(source="local"))
    assert len(data.train) == n_train and len(data.eval["validation"]) == n_dev
    row = data.train[0]
    assert set(task.text_fields) <= set(row) and "label" in row
    labels = set(data.eval["validation"]["label"])
    assert (min(labels) >= 0 and max(labels) <= 5) if name == "stsb" else labels == {0, 1}


def test_rte_labels_follow_the_hub():
    data = load_task(TASKS["rte"][0], DataConfig(source="local"))
    assert data.train[0]["label"] == 1  # "not_entailment" is 1, as in nyu-mll/glue


def _copy(tmp_path, folder="RTE"):
    from fishtune.data.glue import default_data_dir

    shutil.copytree(default_data_dir() / folder, tmp_path / folder)
    return tmp_path / folder


def test_missing_column_is_named(tmp_path):
    d = _copy(tmp_path)
    text = (d / "train.tsv").read_text().replace("sentence2", "hypothesis", 1)
    (d / "train.tsv").write_text(text)
    with pytest.raises(ValueError, match=r"train.tsv: missing column 'sentence2'"):
        load_task(TASKS["rte"][0], DataConfig(dir=str(tmp_path), source="local"))


def test_malformed_row_names_the_line(tmp_path):
    d = _copy(tmp_path)
    lines = (d / "dev.tsv").read_text().splitlines(keepends=True)
    lines[5] = lines[5].rstrip("\n") + "\textra\tfields\n"
    (d / "dev.tsv").write_text("".join(lines))
    with pytest.raises(ValueError, match=r"dev.tsv: malformed row .*line 6"):
        load_task(TASKS["rte"][0], DataConfig(dir=str(tmp_path), source="local"))


def test_bad_label_names_the_line(tmp_path):
    d = _copy(tmp_path)
    lines = (d / "train.tsv").read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace("not_entailment", "maybe").replace("\tentailment", "\tmaybe")
    (d / "train.tsv").write_text("".join(lines))
    with pytest.raises(ValueError, match=r"train.tsv, line 4: label 'maybe' is not entailment\|not_entailment"):
        load_task(TASKS["rte"][0], DataConfig(dir=str(tmp_path), source="local"))


def test_missing_files_offline(tmp_path):
    with pytest.raises(DataUnavailable, match=r"task rte: no train.tsv, dev.tsv in"):
        load_task(TASKS["rte"][0], DataConfig(dir=str(tmp_path), source="local"))


def test_out_of_memory_is_reported_with_the_batch_size(tmp_path, monkeypatch, compose):
    import torch

    from fishtune.config import validate
    from fishtune.runner import experiment
    from fishtune.runner.results import read_result

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(experiment, "fit", oom)
    rc = validate(compose(["model=tiny-bert", "task=glue/rte", "method=bitfit", "train=debug",
                           "data.max_train_samples=16", "data.max_eval_samples=8"]))
    experiment.run_experiment(rc, tmp_path, {"x": 1}, log=lambda *_: None)
    r = read_result(tmp_path / "result.json")
    assert r["status"] == "failed" and "out of memory on cpu with train.batch_size=8" in r["reason"]


@pytest.mark.parametrize("content,message", [
    (b"", r"train.tsv: the file is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\xfa binary", r"train.tsv: not UTF-8 text"),
])
def test_empty_or_binary_file_is_named(tmp_path, content, message):
    d = _copy(tmp_path)
    (d / "train.tsv").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_task(TASKS["rte"][0], DataConfig(dir=str(tmp_path), source="local"))


def test_header_only_dev_file_is_named_before_training(tmp_path):
    d = _copy(tmp_path)
    (d / "dev.tsv").write_text((d / "dev.tsv").read_text().splitlines(keepends=True)[0])
    with pytest.raises(ValueError, match=r"RTE \(validation\) has no examples"):
        load_task(TASKS["rte"][0], DataConfig(dir=str(tmp_path), source="local"))


STSB = replace(TASKS["stsb"][0], label_range=[0.0, 5.0])


@pytest.mark.parametrize("split,value,message", [
    ("train.tsv", "nan", "is not a finite number"),
    ("train.tsv", "inf", "is not a finite number"),
    ("train.tsv", "-0.5", r"is outside task.label_range \[0, 5\]"),
    ("dev.tsv", "nan", "is not a finite number"),
    ("dev.tsv", "5.25", r"is outside task.label_range \[0, 5\]"),
])
def test_regression_label_not_finite_or_out_of_range_names_the_line(tmp_path, split, value, message):
    """STS-B scores are checked like class labels: a nan/inf or out-of-range score in train or dev stops the
    load with the file and the line (it used to train on NaN, or fail after training)."""
    d = _copy(tmp_path, "STS-B")
    lines = (d / split).read_text().splitlines(keepends=True)
    lines[7] = lines[7].rstrip("\n").rsplit("\t", 1)[0] + f"\t{value}\n"
    (d / split).write_text("".join(lines))
    with pytest.raises(ValueError, match=rf"{split}, line 8: label '{value}' {message}"):
        load_task(STSB, DataConfig(dir=str(tmp_path), source="local"))
    if message.startswith("is outside"):  # no declared range: any finite score is accepted
        assert load_task(replace(STSB, label_range=None), DataConfig(dir=str(tmp_path), source="local")).train


def test_regression_labels_from_the_hub_are_checked_too():
    from datasets import Dataset

    from fishtune.data.glue import _check_split

    ok = Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0.0, 5.0]})
    _check_split(STSB, ok, "hub (train)")
    for label, message in ((math.nan, "is not a finite number"), (6.0, "outside task.label_range")):
        bad = Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1.0, label]})
        with pytest.raises(ValueError, match=rf"hub \(train\) row 2: label .* {message}"):
            _check_split(STSB, bad, "hub (train)")


@pytest.mark.parametrize("bad", [[0.0], [5.0, 0.0], [0.0, math.inf]])
def test_label_range_must_be_a_finite_interval(bad):
    from fishtune.config import ConfigError

    with pytest.raises(ConfigError, match="task.label_range must be"):
        replace(STSB, label_range=bad)

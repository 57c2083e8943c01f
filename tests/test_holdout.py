"""Model selection off the dev set: ``data.holdout`` is drawn from the training split, disjoint from the
training subset (which stays the subset a run without a holdout trains on) and from the dev set, and the
evaluation `fit` keeps depends on the holdout only: the dev set is then only reported."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from tiny import collate, tiny_examples, tiny_model

import fishtune.train.loop as loop
from fishtune.config import ConfigError, DataConfig, TaskConfig, TrainConfig
from fishtune.data.glue import load_task

SST2 = TaskConfig(name="sst2", glue_dir="SST-2")


def test_holdout_is_disjoint_from_the_training_subset_and_the_dev_set():
    data = load_task(SST2, DataConfig(source="local", max_train_samples=300, holdout=100), seed=3)
    plain = load_task(SST2, DataConfig(source="local", max_train_samples=300), seed=3)
    assert len(data.train) == 300 and len(data.holdout) == 100 and plain.holdout is None
    assert data.train["sentence"] == plain.train["sentence"], "the training subset does not move"
    dev = set(data.eval["validation"]["sentence"])
    # disjoint as examples of the split (SST-2 repeats a few phrases: compare positions in the permutation)
    full = load_task(SST2, DataConfig(source="local"), seed=3).train
    order = full.shuffle(seed=3)["sentence"]
    assert order[:300] == data.train["sentence"] and order[-100:] == data.holdout["sentence"]
    assert not dev & set(data.holdout["sentence"]), "the dev split is another file: no sentence shared"
    other = load_task(SST2, DataConfig(source="local", max_train_samples=300, holdout=100), seed=4)
    assert other.holdout["sentence"] != data.holdout["sentence"], "seeded"


def test_holdout_share_and_bad_values():
    data = load_task(TaskConfig(name="rte", glue_dir="RTE", text_fields=["sentence1", "sentence2"]),
                     DataConfig(source="local", holdout=0.1), seed=0)
    assert len(data.holdout) == 249 and len(data.train) == 2490 - 249
    for bad in (0, -3, 2.5, 1.0 + 1e-9):
        with pytest.raises(ConfigError, match="data.holdout"):
            DataConfig(holdout=bad)
    with pytest.raises(ValueError, match="leaves no training example"):
        load_task(TaskConfig(name="rte", glue_dir="RTE", text_fields=["sentence1", "sentence2"]),
                  DataConfig(source="local", holdout=2490), seed=0)


def _run(dev_labels_flipped: bool, lr=3e-2):
    torch.manual_seed(0)
    model = tiny_model("bert")
    train = Dataset.from_list(tiny_examples(32, seed=1))
    hold = Dataset.from_list(tiny_examples(16, seed=2))
    dev_rows = tiny_examples(16, seed=3)
    if dev_labels_flipped:
        dev_rows = [{**r, "labels": 1 - r["labels"]} for r in dev_rows]
    cfg = TrainConfig(epochs=5, batch_size=8, lr=lr, progress=False, early_stopping=False)
    task = TaskConfig(name="t", glue_dir="T", lr=lr)
    return loop.fit(model, train, {"validation": Dataset.from_list(dev_rows)}, collate, task, cfg,
                    torch.device("cpu"), seed=0, select=hold)


def test_the_epoch_kept_depends_on_the_holdout_only():
    a, b = _run(False), _run(True)
    assert a.best_epoch == b.best_epoch and a.holdout_score == b.holdout_score
    holdouts = [h["holdout"] for h in a.history]
    assert a.best_epoch == a.history[holdouts.index(max(holdouts))]["epoch"]
    assert a.score == a.history[a.best_epoch - 1]["score"], "the dev score reported is the chosen epoch's"
    assert a.dev_best == max(h["score"] for h in a.history)
    assert b.score == pytest.approx(1 - a.score), "flipped dev labels: the same epoch, the mirrored accuracy"


def test_without_a_holdout_the_best_dev_epoch_is_kept():
    torch.manual_seed(0)
    model = tiny_model("bert")
    train = Dataset.from_list(tiny_examples(32, seed=1))
    cfg = TrainConfig(epochs=3, batch_size=8, lr=3e-2, progress=False)
    r = loop.fit(model, train, {"validation": Dataset.from_list(tiny_examples(16, seed=3))}, collate,
                 TaskConfig(name="t", glue_dir="T"), cfg, torch.device("cpu"), seed=0)
    assert r.holdout_score is None and r.score == r.dev_best == max(h["score"] for h in r.history)

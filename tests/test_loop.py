"""`fit` on its own: early stopping with patience and threshold, the best evaluation's weights restored,
`eval_every`, linear warm-up, length-grouped batches, and a NaN loss failing with its step."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch
from conftest import needs_minilm
from datasets import Dataset
from tiny import collate, tiny_examples, tiny_model

import fishtune.train.loop as loop
from fishtune.config import TaskConfig, TrainConfig

TASK = TaskConfig(name="t", glue_dir="T", lr=1e-2)
CPU = torch.device("cpu")


def _data(n=16, **kw):
    return Dataset.from_list(tiny_examples(n, **kw)), {"validation": Dataset.from_list(tiny_examples(8, seed=9))}


def _scripted(monkeypatch, scores, model):
    """`evaluate` returns ``scores`` in turn; each call also records the classifier's weight then."""
    seen = []

    def fake(m, evals, collate, task, device, batch_size=64, bf16=True):
        seen.append(model.classifier.weight.detach().clone())
        score = scores[len(seen) - 1]
        return score, {"accuracy": score}

    monkeypatch.setattr(loop, "evaluate", fake)
    return seen


def test_early_stopping_after_patience_and_best_epoch_restored(monkeypatch):
    model = tiny_model("bert")
    seen = _scripted(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.9, 0.95], model)
    train, evals = _data()
    cfg = TrainConfig(epochs=6, batch_size=4, patience=2, threshold=0.3, progress=False, scheduler="constant")
    r = loop.fit(model, train, evals, collate, TASK, cfg, CPU, seed=0)
    assert r.stopped_early and r.epochs_run == 4 and r.best_epoch == 2 and r.score == 0.7
    assert [h["epoch"] for h in r.history] == [1, 2, 3, 4]
    assert torch.equal(model.classifier.weight, seen[1]), "the weights of the best evaluation are restored"
    assert not torch.equal(seen[1], seen[3])


@pytest.mark.parametrize("spill", [False, True])
def test_every_trainable_weight_of_the_best_epoch_restored_from_memory_or_its_file(monkeypatch, spill):
    """A dense CPU model's best copy goes to a temporary file (`SPILL_BYTES`), else to memory: either way
    every trainable weight is the best evaluation's at the end, and the file is closed."""
    import tempfile

    monkeypatch.setattr(loop, "SPILL_BYTES", 0 if spill else 2**60)
    model = tiny_model("bert")
    states, scores = [], [0.5, 0.9, 0.6, 0.7]

    def fake(m, evals, collate, task, device, batch_size=64, bf16=True):
        states.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return scores[len(states) - 1], {"accuracy": scores[len(states) - 1]}

    monkeypatch.setattr(loop, "evaluate", fake)
    files, real = [], tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: files.append(real(*a, **k)) or files[-1])
    train, evals = _data()
    cfg = TrainConfig(epochs=4, batch_size=4, progress=False, scheduler="constant")
    r = loop.fit(model, train, evals, collate, TASK, cfg, CPU, seed=0)
    assert r.best_epoch == 2
    assert all(torch.equal(p, states[1][n]) for n, p in model.named_parameters())
    assert any(not torch.equal(states[1][n], states[3][n]) for n in states[1])
    assert (len(files) == 1 and files[0].closed) if spill else not files


def test_no_early_stop_below_the_threshold(monkeypatch):
    model = tiny_model("bert")
    _scripted(monkeypatch, [0.2, 0.1, 0.1, 0.1], model)
    train, evals = _data()
    cfg = TrainConfig(epochs=4, batch_size=4, patience=1, threshold=0.3, progress=False)
    r = loop.fit(model, train, evals, collate, TASK, cfg, CPU, seed=0)
    assert not r.stopped_early and r.epochs_run == 4 and r.best_epoch == 1


def test_eval_every_evaluates_at_those_steps_once(monkeypatch):
    model = tiny_model("bert")
    _scripted(monkeypatch, [0.1 * i for i in range(1, 20)], model)
    train, evals = _data(16)
    cfg = TrainConfig(epochs=2, batch_size=4, eval_every=3, progress=False)  # 4 steps an epoch, 8 in all
    r = loop.fit(model, train, evals, collate, TASK, cfg, CPU, seed=0)
    assert [(h["epoch"], h["step"]) for h in r.history] == [(1, 3), (1, 4), (2, 6), (2, 8)]
    cfg = TrainConfig(epochs=2, batch_size=4, eval_every=2, progress=False)
    _scripted(monkeypatch, [0.1 * i for i in range(1, 20)], model)
    r = loop.fit(model, train, evals, collate, TASK, cfg, CPU, seed=0)
    assert [h["step"] for h in r.history] == [2, 4, 6, 8], "the epoch's end is evaluated once"


def test_linear_warmup_then_decay(monkeypatch):
    lrs = []

    class Recording(loop.MaskedAdamW):
        def step(self, closure=None):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(loop, "MaskedAdamW", Recording)
    model = tiny_model("bert")
    _scripted(monkeypatch, [0.5] * 4, model)
    train, evals = _data(32)
    cfg = TrainConfig(epochs=1, batch_size=4, warmup_ratio=0.25, progress=False)  # 8 steps, 2 of warm-up
    loop.fit(model, train, evals, collate, TASK, cfg, CPU, seed=0)
    assert lrs == pytest.approx([0.0, 0.005, 0.01, 0.01 * 5 / 6, 0.01 * 4 / 6, 0.01 * 3 / 6, 0.01 * 2 / 6,
                                 0.01 / 6])


def test_group_by_length_pads_less_and_sees_every_example(monkeypatch):
    model = tiny_model("bert")
    train, evals = _data(64, min_len=2, max_len=40)
    widths = {}
    for group in (False, True):
        seen = []

        def counting(rows, seen=seen):
            batch = collate(rows)
            seen.append((batch["input_ids"].numel(), int(batch["attention_mask"].sum()), len(rows)))
            return batch

        _scripted(monkeypatch, [0.5] * 4, model)
        cfg = TrainConfig(epochs=1, batch_size=8, group_by_length=group, progress=False)
        loop.fit(model, train, evals, counting, TASK, cfg, CPU, seed=0)
        assert sum(n for _, _, n in seen) == 64 and sum(t for _, t, _ in seen) == sum(
            len(x) for x in train["input_ids"]), "every example once"
        widths[group] = sum(p for p, _, _ in seen)
    assert widths[True] < 0.8 * widths[False]


def test_non_finite_loss_fails_with_its_step():
    model = tiny_model("bert")
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    train, evals = _data()
    cfg = TrainConfig(epochs=1, batch_size=4, progress=False)
    with pytest.raises(loop.NonFiniteLoss, match="at step 1"):
        loop.fit(model, train, evals, collate, TASK, cfg, CPU, seed=0)


def test_every_evaluation_nan_is_a_clear_failure(monkeypatch):
    """No finite dev score means no best state: a failure saying so (it used to end in KeyError: 'state')."""
    model = tiny_model("bert")
    _scripted(monkeypatch, [float("nan")] * 2, model)
    train, evals = _data()
    cfg = TrainConfig(epochs=2, batch_size=4, progress=False)
    with pytest.raises(loop.NonFiniteScore, match=r"every dev evaluation scored NaN \(2 up to step 8\)"):
        loop.fit(model, train, evals, collate, TASK, cfg, CPU, seed=0)
    assert issubclass(loop.NonFiniteScore, loop.NonFiniteLoss)  # the runner records it as a failed cell


def _storages(tensors) -> dict[int, int]:
    """data_ptr -> bytes of the storages behind ``tensors`` (skipping those without one)."""
    out = {}
    for t in tensors:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            continue
        if st.nbytes():
            out[st.data_ptr()] = st.nbytes()
    return out


def _alive() -> dict[int, int]:
    import gc

    gc.collect()
    return _storages(o for o in gc.get_objects() if torch.is_tensor(o))


@needs_minilm
@pytest.mark.parametrize("method", ["fish", "lora"])
def test_no_second_copy_of_the_model_while_training(monkeypatch, compose, tmp_path, method):
    """A masked or adapter job changes only its trainable entries and head: at every step of a two-epoch
    run (the initial state, the best epoch's values and the selection's scores all exist by then), the
    tensors alive beyond the model's own and those alive before the job hold well under one model's bytes."""
    from omegaconf import OmegaConf

    import fishtune.runner.experiment as experiment
    from fishtune.config import validate

    cfg = compose(["model=tiny-bert", "task=glue/sst2", f"method={method}", "sparsity=0.5",
                   "data.max_train_samples=16", "data.max_eval_samples=8", "fisher.num_samples=8",
                   "train.epochs=2", "train.batch_size=8", "train.progress=false", "device=cpu"])
    rc, config = validate(cfg), OmegaConf.to_container(cfg, resolve=True)
    before = _alive()
    extra, own = [], []

    def measure(model, step):
        mine = _storages([*model.parameters(), *model.buffers()])
        extra.append(sum(b for p, b in _alive().items() if p not in mine and p not in before))
        own.append(sum(mine.values()))

    real_fit = experiment.fit
    monkeypatch.setattr(experiment, "fit", lambda *a, **k: real_fit(*a, **{**k, "hook": measure}))
    result = experiment.run_experiment(rc, tmp_path, config, log=lambda _: None)
    assert result["status"] == "ok" and len(extra) == 4
    assert max(extra) < 0.25 * min(own), f"{max(extra)} bytes alive beside a {min(own)}-byte model"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from /proc (Linux)")
def test_trim_heap_hands_freed_heap_memory_back():
    """What the loop calls around each evaluation: the heap blocks a phase freed leave the resident set
    (glibc keeps them otherwise); the last block stays allocated, so the heap's top cannot shrink by itself."""
    import ctypes.util

    from fishtune.core.heap import trim_heap

    if not ctypes.util.find_library("c") or "glibc" not in " ".join(platform.libc_ver()):
        pytest.skip("glibc's malloc_trim")

    def rss_mib() -> float:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    blocks = [torch.ones(16 * 1024) for _ in range(4000)]  # 64 KiB each, under the mmap threshold: the heap
    held = blocks[-1]
    del blocks
    before = rss_mib()
    trim_heap()
    assert before - rss_mib() > 100, "about 250 MiB were freed"
    assert held.sum() == held.numel()

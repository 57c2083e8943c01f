"""The fine-tuning loop: AdamW on whatever is trainable, dev evaluation, early stopping, bf16, progress.

Paper §5.3: batch size 32, the task's learning rate, early stopping with patience 10 epochs once the score
exceeds 0.3. Inputs are padded per batch (dynamic padding; ``group_by_length`` sorts batches by length);
bf16 autocast on CUDA, fp32 on CPU. The loop knows only the model, a `StepHook` and the data: it never
imports a method. The score reported is the best dev epoch's.

No step waits for the GPU: batches are copied from pinned memory without blocking, the losses stay on the
device and are checked for NaN/inf every ``CHECK_EVERY`` steps and before each evaluation (a non-finite loss
still fails the run with the step it appeared at), and training time is read with one synchronisation
before each evaluation.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import TaskConfig, TrainConfig
from ..core.heap import trim_heap
from ..core.masked import MaskedAdamW, sync_weights
from ..data.metrics import compute_metrics, headline
from .embedding_grads import held_embedding_grads

__all__ = ["NonFiniteLoss", "NonFiniteScore", "TrainResult", "fit", "evaluate", "predict", "planned_steps",
           "train_step"]

CHECK_EVERY = 50  # steps between checks of the losses for NaN/inf (each check waits for the device)


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss became {value} at step {step}")
        self.step = step


class NonFiniteScore(NonFiniteLoss):
    """No dev evaluation gave a finite score, so there is no best state to keep (a failed run, like a NaN loss)."""

    def __init__(self, step: int, evaluations: int) -> None:
        RuntimeError.__init__(self, f"every dev evaluation scored NaN ({evaluations} up to step {step}): constant "
                                    "predictions, or dev labels the metric cannot use")
        self.step = step


@dataclass
class TrainResult:
    score: float
    metrics: dict[str, float]
    best_epoch: int
    steps: int
    epochs_run: int
    train_seconds: float
    samples_per_second: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    dev_best: float | None = None  # the best dev score over evaluations
    holdout_score: float | None = None  # the holdout score at the chosen evaluation (None: chosen on dev)


def planned_steps(num_examples: int, cfg: TrainConfig) -> int:
    """Optimizer steps `fit` will take: ``train.max_steps``, else batches per epoch × epochs."""
    return cfg.max_steps or max(1, math.ceil(num_examples / cfg.batch_size)) * cfg.epochs


def _loader(ds, collate, batch_size: int, shuffle: bool, seed: int, group_by_length: bool = False,
            pin: bool = False) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    if group_by_length:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        lengths = [len(x) for x in ds["input_ids"]]
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=gen)
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate, pin_memory=pin)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=collate,
                      pin_memory=pin)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _autocast(device: torch.device, bf16: bool):
    enabled = bf16 and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict(model: nn.Module, ds, collate, device, batch_size: int = 64, bf16: bool = True):
    """Predictions (class ids, or floats for one output) and labels over ``ds``."""
    model.eval()
    preds, labels = [], []
    for batch in _loader(ds, collate, batch_size, shuffle=False, seed=0, pin=device.type == "cuda"):
        batch = _to(batch, device)
        y = batch.pop("labels")
        with _autocast(device, bf16):
            logits = model(**batch).logits.float()
        preds.append(logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1))
        labels.append(y)
    return torch.cat(preds).cpu().numpy(), torch.cat(labels).cpu().numpy()


def evaluate(model: nn.Module, evals: dict, collate, task: TaskConfig, device, batch_size: int = 64,
             bf16: bool = True) -> tuple[float, dict[str, float]]:
    """(headline score, all metrics) over the task's eval splits; with several splits (MNLI) metrics are
    prefixed by the split and the headline is their mean."""
    metrics, scores = {}, []
    for split, ds in evals.items():
        p, y = predict(model, ds, collate, device, batch_size, bf16)
        m = compute_metrics(task.metric, p, y)
        scores.append(headline(task.metric, m))
        prefix = "" if len(evals) == 1 else f"{split}/"
        metrics.update({prefix + k: v for k, v in m.items()})
    return float(sum(scores) / len(scores)), metrics


def train_step(model: nn.Module, batch: dict, opt: torch.optim.Optimizer, device: torch.device, bf16: bool,
               hook: Callable | None = None, step: int = 0, sched=None) -> torch.Tensor:
    """One optimizer step on ``batch`` (already on ``device``); returns the loss, still on the device."""
    with _autocast(device, bf16):
        loss = model(**batch).loss
    loss.backward()
    if hook is not None:
        hook(model, step)
    opt.step()
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def _first_nonfinite(losses: list[tuple[int, torch.Tensor]]) -> tuple[int, float] | None:
    """(step, value) of the first non-finite loss in ``losses`` [(step, 0-d tensor)], or None (one sync)."""
    if not losses:
        return None
    values = torch.stack([v.float() for _, v in losses])
    bad = ~torch.isfinite(values)
    if not bool(bad.any()):
        return None
    i = int(bad.nonzero()[0, 0])
    return losses[i][0], float(values[i])


SPILL_BYTES = 64 * 2**20  # a best-epoch copy of CPU weights at least this large goes to a temporary file


class _BestState:
    """The best evaluation's values of the trainable parameters, and only those (a masked model's flat delta
    and head, an adapter and head, every weight when dense): one copy, kept off the accelerator, made at the
    first improvement and overwritten in place at each later one (never two at once). An improvement at the
    run's last evaluation copies nothing: the model holds it already.

    Weights on the CPU whose copy would take `SPILL_BYTES` or more (a dense model) are copied to an unnamed
    temporary file instead, written from and read back into the parameters' own memory, as `Trainer` keeps
    its best checkpoint on disk: the process holds the model once (MiniLM dense: 87 MiB less at the peak)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.saved: list[torch.Tensor] | None = None
        self.file = None
        self.current = True  # the model itself holds the best values
        size = sum(p.numel() * p.element_size() for p in params)
        self.spill = size >= SPILL_BYTES and all(p.device.type == "cpu" and p.is_contiguous() for p in params)

    @torch.no_grad()
    def keep(self, last: bool) -> None:
        self.current = last
        if last:
            return
        if self.spill:
            self.file = self.file or tempfile.TemporaryFile()
            self.file.seek(0)
            for p in self.params:
                self.file.write(_raw(p))
            self.file.flush()
            return
        if self.saved is None:
            pin = torch.cuda.is_available() and any(p.is_cuda for p in self.params)
            self.saved = [torch.empty(p.shape, dtype=p.dtype, device="cpu", pin_memory=pin) for p in self.params]
        for s, p in zip(self.saved, self.params):
            s.copy_(p)

    @torch.no_grad()
    def restore(self) -> None:
        try:
            if self.current:
                return
            if self.file is not None:
                self.file.seek(0)
                for p in self.params:
                    if self.file.readinto(_raw(p)) != p.numel() * p.element_size():
                        raise OSError("the best epoch's weights could not be read back from their temporary file")
            elif self.saved is not None:
                for p, s in zip(self.params, self.saved):
                    p.copy_(s)
        finally:
            if self.file is not None:
                self.file.close()
                self.file = None


def _raw(p: torch.Tensor):
    """A contiguous CPU tensor's bytes as a writable buffer over its own memory (no copy)."""
    return p.detach().reshape(-1).view(torch.uint8).numpy()


def fit(model: nn.Module, train_ds, evals: dict, collate, task: TaskConfig, cfg: TrainConfig,
        device: torch.device, seed: int, hook: Callable | None = None, select=None) -> TrainResult:
    """Train ``model``'s trainable parameters; evaluate every epoch (and every ``eval_every`` steps).

    ``select``: a holdout dataset that chooses the evaluation kept (and drives early stopping); the dev
    sets in ``evals`` are then only reported. Without it the best dev evaluation is kept (the paper's way).
    Raises NonFiniteLoss (with the step) on a NaN/inf loss, NonFiniteScore when every evaluation scored NaN.
    Returns the chosen evaluation's dev metrics; the model is left with the weights of that evaluation.
    A dense-trained CPU embedding's gradient is kept as one buffer across steps (`held_embedding_grads`).
    """
    with held_embedding_grads(model):
        return _fit(model, train_ds, evals, collate, task, cfg, device, seed, hook, select)


def _fit(model: nn.Module, train_ds, evals: dict, collate, task: TaskConfig, cfg: TrainConfig,
         device: torch.device, seed: int, hook: Callable | None, select) -> TrainResult:
    torch.manual_seed(seed)
    lr = cfg.lr or task.lr
    opt = MaskedAdamW(model, lr=lr, weight_decay=cfg.weight_decay)
    loader = _loader(train_ds, collate, cfg.batch_size, shuffle=True, seed=seed, group_by_length=cfg.group_by_length,
                     pin=device.type == "cuda")
    steps_per_epoch = max(1, len(loader))
    total = planned_steps(len(train_ds), cfg)
    epochs = math.ceil(total / steps_per_epoch)
    if cfg.scheduler == "linear":
        from transformers import get_linear_schedule_with_warmup

        sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    kept = _BestState([p for p in model.parameters() if p.requires_grad])
    best: dict = {"key": -math.inf}
    history, step, seen, train_time, stale, stopped = [], 0, 0, 0.0, 0, False
    losses: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet checked for NaN/inf
    bar = tqdm(total=total, desc="train", unit="step", disable=not cfg.progress, leave=False)
    t0 = time.perf_counter()

    def check() -> None:
        bad = _first_nonfinite(losses)
        losses.clear()
        if bad is not None:
            bar.close()
            raise NonFiniteLoss(*bad)

    def run_eval(epoch: int) -> None:
        nonlocal best, stale, train_time, t0
        check()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.perf_counter() - t0
        trim_heap()  # the heap the training steps freed, before the evaluation's larger batches (core.heap)
        score, metrics = evaluate(model, evals, collate, task, device, cfg.eval_batch_size, cfg.bf16)
        entry = {"epoch": epoch, "step": step, "score": score, "metrics": metrics}
        if select is not None:
            entry["holdout"] = evaluate(model, {"holdout": select}, collate, task, device, cfg.eval_batch_size,
                                        cfg.bf16)[0]
        trim_heap()
        history.append(entry)
        key = entry.get("holdout", score)  # what chooses: the holdout when there is one, else dev
        if key > best["key"]:
            best = {**entry, "key": key}
            kept.keep(last=step >= total)
            stale = 0
        else:
            stale += 1
        bar.set_postfix(score=f"{score:.4f}")
        t0 = time.perf_counter()

    for epoch in range(1, epochs + 1):
        model.train()
        for i, batch in enumerate(loader):
            seen += batch["labels"].shape[0]
            loss = train_step(model, _to(batch, device), opt, device, cfg.bf16, hook, step, sched)
            losses.append((step + 1, loss))
            step += 1
            if step % CHECK_EVERY == 0:
                check()
            bar.update(1)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total and i + 1 < steps_per_epoch:
                run_eval(epoch)  # (the epoch's last step is evaluated below, once)
            if step >= total:
                break
        run_eval(epoch)
        if step >= total:
            break
        if cfg.early_stopping and stale >= cfg.patience and best["key"] > cfg.threshold:
            stopped = True
            break
    bar.close()
    if "epoch" not in best:  # no score was ever > -inf: all NaN
        raise NonFiniteScore(step, len(history))
    kept.restore()
    sync_weights(model)
    return TrainResult(score=best["score"], metrics=best["metrics"], best_epoch=best["epoch"], steps=step,
                       epochs_run=history[-1]["epoch"], train_seconds=train_time,
                       samples_per_second=seen / train_time if train_time else 0.0,
                       history=[{k: v for k, v in h.items()} for h in history], stopped_early=stopped,
                       dev_best=max(h["score"] for h in history), holdout_score=best.get("holdout"))

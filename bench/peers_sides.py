"""The measured sides of `peers.py`, each run in its own one-thread worker process: fishtune's pipeline
(dense, FISH, the floor) and transformers' `Trainer` (dense, peft LoRA, peft supertuning), timed by `Meter`
(training CPU and wall seconds less evaluation, the process's peak RSS before and in training). `worker`
prints one ``RESULT {json}`` line that `peers.py` collects.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import common
import torch
from omegaconf import OmegaConf


def _hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if torch.is_tensor(p):
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _rss_mib(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux)
    except OSError:
        pass


class Meter:
    """CPU and wall seconds of this process in training (a call) less those spent evaluating inside it."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.eval_cpu = self.eval_wall = 0.0

    def _now(self) -> tuple[float, float]:
        common.sync(self.device)
        return time.process_time(), time.perf_counter()

    def evaluating(self, fn):
        def timed(*a, **k):
            c, w = self._now()
            try:
                return fn(*a, **k)
            finally:
                c2, w2 = self._now()
                self.eval_cpu += c2 - c
                self.eval_wall += w2 - w

        return timed

    def around(self, fn, *a, **k):
        self.before_peak = _rss_mib()  # loading, and a selective method's selection
        _reset_peak()
        c, w = self._now()
        out = fn(*a, **k)
        c2, w2 = self._now()
        self.train_cpu, self.train_wall = c2 - c - self.eval_cpu, w2 - w - self.eval_wall
        self.train_peak = _rss_mib()
        return out


# Each side's learning rate: its method's in the SST-2 case study, chosen for MiniLM on held-out training
# sentences (its `train.method_lr`); peft's supertuning has none of its own there and takes FISH's, as does the
# floor (head only). Speed and memory do not depend on it; the dev accuracies do.
_CASE_LR = OmegaConf.load(common.ROOT / "conf" / "experiment" / "sst2_case_minilm_cpu.yaml").train.method_lr
LR = {side: float(_CASE_LR[method]) for side, method in {
    "trainer-dense": "dense", "fishtune-dense": "dense", "peft-lora": "lora", "fishtune-fish": "fish",
    "peft-supertuning": "fish", "floor": "fish"}.items()}


def _compose(args, method: str, side: str):
    from hydra import compose, initialize_config_dir

    from fishtune.config import validate
    from fishtune.runner.overrides import rewrite

    over = ["model=minilm", "task=glue/sst2", f"method={method}", "sparsity=0.5", f"device={args.device}",
            "resume=false",
            f"seed={args.seed}", f"data.max_train_samples={args.train}", f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch}", "train.progress=false", "train.warmup_ratio=0.0",
            "train.scheduler=linear", "train.weight_decay=0.0", f"train.lr={LR[side]}",
            f"fisher.num_samples={min(128, args.train)}"]
    if args.eval:
        over.append(f"data.max_eval_samples={args.eval}")
    conf = common.ROOT / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=rewrite(over, conf))
    return validate(cfg), OmegaConf.to_container(cfg, resolve=True)


def _prepared(rc):
    """What `run_experiment` prepares, in its order: the seeded subset, then the seeded head, then tokens."""
    from fishtune.data.glue import load_task, tokenize
    from fishtune.models import load_model

    raw = load_task(rc.task, rc.data, rc.seed)
    torch.manual_seed(rc.seed)
    loaded = load_model(rc.model, rc.task.num_labels, rc.device)
    return loaded, tokenize(raw, loaded.tokenizer, rc.task.max_length, rc.train.pad_to_max_length)


def _identity(train_ds, model, head) -> dict:
    params = dict(model.named_parameters())
    labels = "labels" if "labels" in train_ds.column_names else "label"
    return {"data_sha": _hash(list(train_ds["input_ids"]), list(train_ds[labels])),
            "head_sha": _hash(*[params[n] for n in sorted(head)])}


def _fishtune(args, side: str, meter: Meter) -> dict:
    import fishtune.runner.experiment as experiment
    import fishtune.train.loop as loop
    from fishtune.core.masked import STATE
    from fishtune.models import head_names

    rc, config = _compose(args, "fish" if side == "fishtune-fish" else "dense", side)
    out: dict = {"lr": rc.train.lr or rc.task.lr}
    loop.evaluate = meter.evaluating(loop.evaluate)
    real_fit = loop.fit

    def fit(model, train_ds, *a, **k):
        head = [n for n in head_names(model) if not n.startswith(STATE)]  # the head, not the masked delta
        out.update(_identity(train_ds, model, head), samples=len(train_ds) * args.epochs)
        r = meter.around(real_fit, model, train_ds, *a, **k)
        out.update(score=r.score, steps=r.steps)
        return r

    if side == "floor":  # the same loop, body frozen, dX taken down to the embeddings
        loaded, data = _prepared(rc)
        model = loaded.model
        for n, p in model.named_parameters():
            p.requires_grad_(n in loaded.head)
        model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True) if m.training else o)
        from transformers import DataCollatorWithPadding

        fit(model, data.train, data.eval, DataCollatorWithPadding(loaded.tokenizer), rc.task, rc.train,
            torch.device(rc.device), rc.seed)
        out["trainable"] = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
        return out
    experiment.fit = fit
    with tempfile.TemporaryDirectory() as tmp:
        result = experiment.run_experiment(rc, tmp, config, log=lambda _: None)
    if result["status"] != "ok":
        raise SystemExit(f"{side}: {result.get('reason')}")
    out["trainable"] = result["trainable_params"]
    out["weight_grad"] = (result.get("info") or (result.get("cells") or [{}])[0].get("info") or {}).get("weight_grad")
    return out


def _peft(model, side: str, rc, data, head):
    """The peft side's model: LoRA at fishtune's rank for the FISH count, or supertuning at that count."""
    from peft import TaskType, get_peft_model

    from fishtune.core.selection import Selector
    from fishtune.methods.lora import per_rank, target_modules_of

    k = Selector(model, data.train, None, head=head, progress=False).k(rc.sparsity.ratio)
    if side == "peft-lora":
        from peft import LoraConfig

        targets = target_modules_of(model, None)
        r = max(1, round(k / per_rank(model, targets)))
        conf = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=16.0, lora_dropout=0.1, target_modules=targets)
        return get_peft_model(model, conf), {"lora_r": r, "fish_k": k}
    from peft import SupertuningConfig

    linear = {n: m.weight.numel() for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and not any(n.startswith(h.rsplit(".", 1)[0]) for h in head)}
    names = sorted({n.rsplit(".", 1)[-1] for n in linear})
    sparsity = 1.0 - k / sum(linear.values())
    conf = SupertuningConfig(task_type=TaskType.SEQ_CLS, target_modules=names, sparsity=sparsity)
    return get_peft_model(model, conf), {"supertuning_sparsity": sparsity, "fish_k": k}


def _trainer(args, side: str, meter: Meter) -> dict:
    import numpy as np
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    rc, _ = _compose(args, "dense", side)
    loaded, data = _prepared(rc)
    model, head = loaded.model, loaded.head
    out = {"lr": rc.train.lr or rc.task.lr, **_identity(data.train, model, head),
           "samples": len(data.train) * args.epochs}
    if side != "trainer-dense":
        model, info = _peft(model, side, rc, data, head)
        out.update(info)
    out["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch,
            per_device_eval_batch_size=rc.train.eval_batch_size,
            num_train_epochs=args.epochs, learning_rate=out["lr"], weight_decay=0.0, lr_scheduler_type="linear",
            warmup_steps=0, max_grad_norm=0.0, eval_strategy="epoch", save_strategy="epoch",
            load_best_model_at_end=True, metric_for_best_model="accuracy", save_only_model=True, save_total_limit=1,
            label_names=["labels"], report_to=[], use_cpu=args.device == "cpu", disable_tqdm=True,
            logging_strategy="no",
            bf16=args.device != "cpu" and rc.train.bf16,  # as fishtune: bf16 autocast on CUDA
            seed=rc.seed, dataloader_num_workers=0)

        def accuracy(p):
            return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

        trainer = Trainer(model=model, args=targs, train_dataset=data.train, eval_dataset=data.eval["validation"],
                          data_collator=DataCollatorWithPadding(loaded.tokenizer), compute_metrics=accuracy)
        trainer.evaluate = meter.evaluating(trainer.evaluate)
        r = meter.around(trainer.train)
        out.update(score=trainer.state.best_metric, steps=r.global_step)
    return out


def worker(args) -> None:
    torch.set_num_threads(1)
    meter = Meter(args.device)
    side = args.worker
    out = (_trainer if side.startswith(("trainer", "peft")) else _fishtune)(args, side, meter)
    out.update(side=side, train_cpu_s=meter.train_cpu, eval_cpu_s=meter.eval_cpu,
               peak_rss_mib=max(meter.before_peak, _rss_mib()),
               train_peak_rss_mib=meter.train_peak, samples_per_cpu_s=out["samples"] / meter.train_cpu,
               train_wall_s=meter.train_wall, samples_per_s=out["samples"] / meter.train_wall)
    if args.device.startswith("cuda"):
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out), flush=True)

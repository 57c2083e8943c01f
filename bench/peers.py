"""fishtune beside what its users would otherwise run, on one job done both ways: MiniLM on SST-2, a seeded
training subset (2,000 sentences), the whole dev set, batch 16, 2 epochs, max length 128, dynamic padding,
fp32, AdamW, linear decay, no warm-up, no clipping, the best epoch kept on both sides, the same training
subset and the same head initialisation (checked by hash across every run).

Sides (each run its own subprocess with one thread; the sides interleaved A, B, C, ..., A, B, C, ...):

- ``trainer-dense``: `transformers.Trainer` (its default fused AdamW, checkpoints of the model only, the best
  one loaded at the end), every weight trained;
- ``fishtune-dense``: `run.py method=dense`'s pipeline (`run_experiment`);
- ``peft-lora``: peft LoRA + `Trainer`, the rank matched to the FISH count as fishtune's LoRA chooses it;
- ``peft-supertuning``: peft's sparse tuner (`SupertuningConfig`: a fixed magnitude-chosen support per Linear,
  trained through a dense weight gradient) + `Trainer`, its sparsity set for the same trainable count;
- ``fishtune-fish``: `run.py method=fish sparsity=0.5` (Fisher selection, then the masked training);
- ``floor``: fishtune's loop with every body weight frozen and the head trained, the activations' gradient
  still taken down to the word embeddings: what any method that trains inside the network pays at least.

Speed is training samples per CPU-second of the measured process (the machine is shared: wall time would
measure the neighbours), evaluations excluded on both sides; memory the process's peak RSS (VmHWM), and the
training phase's own peak. Ratios are printed one a line, higher is better:

    python bench/peers.py --quick            # a few minutes: 256 sentences, 128 dev, 1 epoch, one round
    python bench/peers.py                    # the job above, two rounds
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import common
import torch

SIDES = ["trainer-dense", "fishtune-dense", "peft-lora", "fishtune-fish", "peft-supertuning", "floor"]
RATIOS = [  # (what, ours, reference, goal): speed ratios ours/reference, RSS ratios ours/reference
    ("dense speed (fishtune vs Trainer)", "fishtune-dense", "trainer-dense", "speed", ">= 1.0"),
    ("dense peak RSS (fishtune vs Trainer)", "fishtune-dense", "trainer-dense", "rss", "<= 1.05"),
    ("FISH 0.5 % speed (vs peft LoRA + Trainer)", "fishtune-fish", "peft-lora", "speed", ">= 1.10"),
    ("FISH 0.5 % peak RSS (vs peft LoRA + Trainer)", "fishtune-fish", "peft-lora", "rss", "<= 1.0"),
    ("FISH 0.5 % speed (vs peft supertuning + Trainer)", "fishtune-fish", "peft-supertuning", "speed", ">= 1.5"),
    ("FISH 0.5 % step (vs the floor)", "fishtune-fish", "floor", "step", "<= 1.05"),
]


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


def _compose(args, method: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fishtune.config import validate
    from fishtune.runner.overrides import rewrite

    over = ["model=minilm", "task=glue/sst2", f"method={method}", "sparsity=0.5", f"device={args.device}",
            "resume=false",
            f"seed={args.seed}", f"data.max_train_samples={args.train}", f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch}", "train.progress=false", "train.warmup_ratio=0.0",
            "train.scheduler=linear", "train.weight_decay=0.0", f"fisher.num_samples={min(128, args.train)}"]
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

    rc, config = _compose(args, "fish" if side == "fishtune-fish" else "dense")
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

    rc, _ = _compose(args, "dense")
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


def _supertuning_available() -> str | None:
    try:
        import peft
        from peft import SupertuningConfig  # noqa: F401
    except ImportError as e:
        return f"peft has no SupertuningConfig ({e})"
    return None if peft else "peft missing"


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} CPUs visible, {platform.system()} {platform.release()}"


def _mean(xs):
    return sum(xs) / len(xs)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--train", type=int, default=None, help="training sentences (default 2000; --quick 256)")
    p.add_argument("--eval", type=int, default=None, help="dev sentences (default: all 872; --quick 128)")
    p.add_argument("--epochs", type=int, default=None, help="default 2; --quick 1")
    p.add_argument("--rounds", type=int, default=None, help="rounds of every side (default 2; --quick 1)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--out", default=None, help="results file (default bench/results/<date>-peers[-quick].md)")
    p.add_argument("--worker", default=None, help=argparse_hidden())
    args = p.parse_args()
    q = args.quick
    args.train = args.train or (256 if q else 2000)
    args.eval = args.eval if args.eval is not None else (128 if q else 0)
    args.epochs = args.epochs or (1 if q else 2)
    args.rounds = args.rounds or (1 if q else 2)
    if args.worker:
        return worker(args)
    sides = [s for s in args.sides.split(",") if s]
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        raise SystemExit(f"--sides: unknown side {unknown[0]!r} (one of {', '.join(SIDES)})")
    notes = []
    if "peft-supertuning" in sides and (why := _supertuning_available()):
        sides.remove("peft-supertuning")
        notes.append(f"peft-supertuning skipped: {why}")
        print(notes[-1], flush=True)
    command = "python bench/peers.py " + " ".join(sys.argv[1:])
    load_before = _load()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(common.ROOT / "src")}
    passthru = ["--train", str(args.train), "--eval", str(args.eval), "--epochs", str(args.epochs),
                "--batch", str(args.batch), "--seed", str(args.seed), "--device", args.device]
    cpu = args.device == "cpu"  # the machine is shared: CPU seconds; a GPU's own wall time and memory
    speed, speed_unit = ("samples_per_cpu_s", "samples/CPU-s") if cpu else ("samples_per_s", "samples/s")
    memory, memory_unit = ("peak_rss_mib", "MiB RSS") if cpu else ("cuda_peak_mib", "MiB GPU")
    runs: list[dict] = []
    t0 = time.time()
    for rnd in range(args.rounds):
        for side in sides:
            proc = subprocess.run([sys.executable, __file__, "--worker", side, *passthru], capture_output=True,
                                  text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                raise SystemExit(f"{side} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            r = {**json.loads(line[7:]), "round": rnd + 1}
            runs.append(r)
            r["speed"], r["memory"] = r[speed], r[memory]
            print(f"round {rnd + 1} {side}: {r['speed']:.2f} {speed_unit}, peak {r['memory']:.0f} {memory_unit} "
                  f"(RSS in training {r['train_peak_rss_mib']:.0f} MiB), dev acc {r['score']:.4f}, "
                  f"trainable {r['trainable']}, {time.time() - t0:.0f} s", flush=True)
    same = {(r["data_sha"], r["head_sha"]) for r in runs}
    if len(same) != 1:
        raise SystemExit(f"the sides did not train the same subset and head: {sorted(same)}")
    agg = {s: {k: _mean([r[k] for r in runs if r["side"] == s])
               for k in ("speed", "memory", "train_peak_rss_mib", "score", "train_cpu_s")}
           for s in sides}
    lines = []
    for what, ours, ref, kind, goal in RATIOS:
        if ours not in agg or ref not in agg:
            continue
        a, b = agg[ours], agg[ref]
        if kind == "speed":
            line = (f"{what}: ours {a['speed']:.4g} {speed_unit}, reference {b['speed']:.4g} {speed_unit}, "
                    f"ratio {a['speed'] / b['speed']:.3g} (goal {goal})")
        elif kind == "rss":
            line = (f"{what}: ours {a['memory']:.0f} {memory_unit}, reference {b['memory']:.0f} {memory_unit}, ratio "
                    f"{a['memory'] / b['memory']:.3g} (goal {goal}; RSS in training "
                    f"{a['train_peak_rss_mib']:.0f} vs {b['train_peak_rss_mib']:.0f} MiB)")
        else:
            sa, sb = 1e3 * args.batch / a["speed"], 1e3 * args.batch / b["speed"]
            unit = "CPU-ms" if cpu else "ms"
            line = f"{what}: ours {sa:.4g} {unit}, reference {sb:.4g} {unit}, ratio {sa / sb:.3g} (goal {goal})"
        lines.append(line)
        print(line, flush=True)
    _write(args, command, load_before, _load(), sides, runs, agg, lines, notes, (speed_unit, memory_unit))


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


def _write(args, command, load_before, load_after, sides, runs, agg, lines, notes, units) -> None:
    import peft
    import transformers

    out = Path(args.out) if args.out else (common.ROOT / "bench" / "results" /
                                           f"{date.today()}-peers{'-quick' if args.quick else ''}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    r0 = runs[0]
    md = [f"# fishtune beside its peers, {date.today()}", "",
          f"- command: `{command}`", f"- machine: {_machine()}, device {args.device} (shared; one thread per measured "
          "process)",
          f"- load (uptime) before: `{load_before}`", f"- load (uptime) after: `{load_after}`",
          "- peak RSS (process): the whole process, loading and selection included; (training): from the first "
          "step to the end of training, evaluations included",
          f"- torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
          f"- job: MiniLM, SST-2 seeded {args.train}-sentence subset (sha {r0['data_sha']}), dev "
          f"{args.eval or 'all 872'} sentences, batch {args.batch}, {args.epochs} epoch(s), max length 128, dynamic "
          f"padding, fp32, AdamW, linear decay, no warm-up, no clipping, best epoch kept; head sha {r0['head_sha']} "
          f"on every side; {args.rounds} round(s), sides interleaved", *[f"- {n}" for n in notes], "",
          f"| side | dev acc | {units[0]} | peak {units[1]} (process) | peak RSS MiB (training) | trainable |",
          "|---|---|---|---|---|---|"]
    for s in sides:
        a = agg[s]
        trainable = next(r["trainable"] for r in runs if r["side"] == s)
        md.append(f"| {s} | {a['score']:.4f} | {a['speed']:.2f} | {a['memory']:.0f} | "
                  f"{a['train_peak_rss_mib']:.0f} | {trainable} |")
    md += ["", "Ratios (higher speed is better; RSS and step ratios are ours over the reference):", "", "```", *lines,
           "```", "", "Every run:", "", "```"]
    md += [json.dumps(r, sort_keys=True) for r in runs]
    md += ["```", ""]
    out.write_text("\n".join(md))
    print(f"written {out.relative_to(common.ROOT) if out.is_relative_to(common.ROOT) else out}")


if __name__ == "__main__":
    main()

"""fishtune beside what its users would otherwise run, on one job done both ways: MiniLM on SST-2, a seeded
training subset (2,000 sentences), the whole dev set, batch 16, 2 epochs, max length 128, dynamic padding,
fp32, AdamW, linear decay, no warm-up, no clipping, the best epoch kept on both sides, the same training
subset and the same head initialisation (checked by hash across every run), each side at its method's
learning rate (`peers_sides.LR`, the SST-2 case study's).

Sides (`peers_sides.py`; each run its own subprocess with one thread, interleaved A, B, C, ..., A, B, C, ...):

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

import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import common
import torch
from peers_sides import LR, worker

SIDES = ["trainer-dense", "fishtune-dense", "peft-lora", "fishtune-fish", "peft-supertuning", "floor"]
RATIOS = [  # (what, ours, reference, goal): speed ratios ours/reference, RSS ratios ours/reference
    ("dense speed (fishtune vs Trainer)", "fishtune-dense", "trainer-dense", "speed", ">= 1.0"),
    ("dense peak RSS (fishtune vs Trainer)", "fishtune-dense", "trainer-dense", "rss", "<= 1.05"),
    ("FISH 0.5 % speed (vs peft LoRA + Trainer)", "fishtune-fish", "peft-lora", "speed", ">= 1.10"),
    ("FISH 0.5 % peak RSS (vs peft LoRA + Trainer)", "fishtune-fish", "peft-lora", "rss", "<= 1.0"),
    ("FISH 0.5 % speed (vs peft supertuning + Trainer)", "fishtune-fish", "peft-supertuning", "speed", ">= 1.5"),
    ("FISH 0.5 % step (vs the floor)", "fishtune-fish", "floor", "step", "<= 1.05"),
    # the ceilings of FISH's speed ratios: no method that trains inside the network steps faster than the floor
    ("the floor's speed (vs peft LoRA + Trainer)", "floor", "peft-lora", "speed", None),
    ("the floor's speed (vs peft supertuning + Trainer)", "floor", "peft-supertuning", "speed", None),
]


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
    command = " ".join(["python bench/peers.py", *sys.argv[1:]])
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
        note = f"goal {goal}" if goal else "no goal: the most a method training inside the network reaches"
        if kind == "speed":
            line = (f"{what}: ours {a['speed']:.4g} {speed_unit}, reference {b['speed']:.4g} {speed_unit}, "
                    f"ratio {a['speed'] / b['speed']:.3g} ({note})")
        elif kind == "rss":
            line = (f"{what}: ours {a['memory']:.0f} {memory_unit}, reference {b['memory']:.0f} {memory_unit}, ratio "
                    f"{a['memory'] / b['memory']:.3g} ({note}; RSS in training "
                    f"{a['train_peak_rss_mib']:.0f} vs {b['train_peak_rss_mib']:.0f} MiB)")
        else:
            sa, sb = 1e3 * args.batch / a["speed"], 1e3 * args.batch / b["speed"]
            unit = "CPU-ms" if cpu else "ms"
            line = f"{what}: ours {sa:.4g} {unit}, reference {sb:.4g} {unit}, ratio {sa / sb:.3g} ({note})"
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
          f"on every side; {args.rounds} round(s), sides interleaved",
          "- learning rates: " + ", ".join(f"{s} {LR[s]:g}" for s in sides)
          + " (the SST-2 case study's, chosen on held-out training sentences; supertuning takes FISH's)",
          *[f"- {n}" for n in notes], "",
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

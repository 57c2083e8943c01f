"""FISH Mask with `transformers.Trainer`, unchanged: MiniLM on SST-2, only the masked 0.5 % (and the head)
train; the result is saved as a sparse delta and reloaded.

    python examples/trainer.py --max-train-samples 2000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from plain_loop import minilm_dir, sst2
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)

import fishtune as ft


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-train-samples", type=int, default=2000)
    ap.add_argument("--max-eval-samples", type=int, default=872)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--fisher-samples", type=int, default=128)
    ap.add_argument("--out", default="outputs/examples/trainer")
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    train, dev = sst2(tok, "train", args.max_train_samples), sst2(tok, "dev", args.max_eval_samples)
    collate = DataCollatorWithPadding(tok)

    head = ft.head_names(model)
    mask, _ = ft.fish_mask(ft.Selector(model, train, collate, head=head), args.ratio, args.fisher_samples, seed=0)
    ft.apply_mask(model, mask, trainable=head)

    targs = TrainingArguments(output_dir=args.out, per_device_train_batch_size=32, learning_rate=1e-3,
                              num_train_epochs=1, max_steps=args.max_steps, report_to=[], save_strategy="no",
                              use_cpu=not torch.cuda.is_available(), logging_steps=20)
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=dev, data_collator=collate,
                      compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())})
    trainer.train()
    print(f"dev accuracy {trainer.evaluate()['eval_accuracy']:.4f}")
    size = ft.save_delta(model, Path(args.out) / "delta.safetensors", head=head)
    print(f"sparse delta: {size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()

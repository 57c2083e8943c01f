"""FISH Mask with `transformers.Trainer`, unchanged: MiniLM on SST-2, only the masked 0.5 % (and the head)
train; the result is saved as a sparse delta (indices + values + head).

    python examples/trainer.py --max-train-samples 2000
"""

from __future__ import annotations

from pathlib import Path

import torch
from plain_loop import setup
from transformers import Trainer, TrainingArguments

import fishtune as ft


def main() -> None:
    args, model, train, dev, collate = setup("trainer", [("--max-steps", int, -1)])

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

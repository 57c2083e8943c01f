"""Masked training: after a few steps every unmasked entry is bit-identical to the pretrained weight and the
masked entries moved, also with weight decay > 0; a plain loop and transformers.Trainer both."""

from __future__ import annotations

import pytest
import torch
from tiny import collate, tiny_examples, tiny_model

from fishtune.masked import MaskedAdamW, apply_mask, merge, trainable_count
from fishtune.models import head_names
from fishtune.selection import Selector, fish_mask


def _check(model, pretrained, mask, head):
    for name, p in model.named_parameters():
        if name in head:
            continue
        before = pretrained[name]
        if name in mask.indices:
            moved = mask.dense(name)
            assert torch.equal(p[~moved], before[~moved]), f"{name}: unmasked entries changed"
            assert (p[moved] != before[moved]).float().mean() > 0.5, f"{name}: masked entries did not move"
        else:
            assert torch.equal(p, before), f"{name}: a tensor outside the mask changed"


def _masked_tiny_bert():
    """A tiny BERT with a 5 % FISH mask applied; its pretrained weights, examples, mask and head."""
    model = tiny_model("bert")
    head = head_names(model)
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    examples = tiny_examples(16)
    mask, _ = fish_mask(Selector(model, examples, collate, head=head, progress=False), 5.0, 8, seed=0)
    apply_mask(model, mask, trainable=head)
    return model, pretrained, examples, mask, head


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_plain_loop_only_masked_entries_move(weight_decay):
    model, pretrained, examples, mask, head = _masked_tiny_bert()
    assert trainable_count(model, exclude=head) == mask.count
    opt = MaskedAdamW(model, lr=1e-2, weight_decay=weight_decay)
    model.train()
    for step in range(3):
        batch = collate(examples[step * 4 : step * 4 + 4])
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    merge(model)
    _check(model, pretrained, mask, head)


def test_trainer_unchanged(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model, pretrained, examples, mask, head = _masked_tiny_bert()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
                             learning_rate=1e-2, weight_decay=0.1, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Dataset.from_list(examples), data_collator=collate).train()
    merge(model)
    _check(model, pretrained, mask, head)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_recompute_weights_same_updates_less_saved(arch):
    """Inside recompute_weights() autograd keeps recipes instead of W0+delta copies: the same parameters
    after three AdamW steps, bit for bit, and fewer bytes saved for backward."""
    from fishtune.masked import recompute_weights

    def train(lean):
        model = tiny_model(arch)
        head = head_names(model)
        examples = tiny_examples(16)
        mask, _ = fish_mask(Selector(model, examples, collate, head=head, progress=False), 40.0, 8, seed=0)
        apply_mask(model, mask, trainable=head)
        opt = MaskedAdamW(model, lr=1e-2, weight_decay=0.1)
        model.train()
        torch.manual_seed(0)
        stats = {}
        for step in range(3):
            with recompute_weights(enabled=lean, stats=stats):
                loss = model(**collate(examples[step * 4 : step * 4 + 4])).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        merge(model)
        return {n: p.detach().clone() for n, p in model.named_parameters()}, stats

    (plain, s0), (lean, s1) = train(False), train(True)
    assert all(torch.equal(plain[n], lean[n]) for n in plain)
    assert s1["rebuilt_bytes"] > 0 and s1["saved_bytes"] + s1["rebuilt_bytes"] == s0["saved_bytes"]

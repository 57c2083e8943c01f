"""Sparse masked training (`apply_mask` + `MaskedAdamW`) takes the same steps as dense AdamW on dense
gradients × mask (frozen entries held), weight decay included; frozen entries stay bit-identical; the sparse
checkpoint round trip (`save_delta` / `apply_delta`) gives identical logits."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import collate, tiny_examples, tiny_model

from fishtune.core.deltas import apply_delta, save_delta
from fishtune.core.masked import MaskedAdamW, apply_mask
from fishtune.core.masks import Mask
from fishtune.models import head_names

LR, WD, STEPS = 1e-2, 0.1, 4


def _mask(model, head, frac=0.2, seed=0) -> Mask:
    gen = torch.Generator().manual_seed(seed)
    idx, shapes = {}, {}
    for n, p in model.named_parameters():
        if n not in head:
            idx[n] = (torch.rand(p.numel(), generator=gen) < frac).nonzero().squeeze(1)
            shapes[n] = tuple(p.shape)
    return Mask(idx, shapes)


def _loss(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return torch.nn.functional.cross_entropy(model(**inputs).logits, batch["labels"])


def _effective(model, name):
    mod_name, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(mod_name), attr).detach().clone()


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_sparse_training_equals_dense_grad_times_mask(arch):
    model = tiny_model(arch)
    head = head_names(model)
    mask = _mask(model, head)
    ex = tiny_examples(4 * STEPS, seed=1)
    data = [collate(ex[i : i + 4]) for i in range(0, len(ex), 4)]
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}

    dense = copy.deepcopy(model).train(False)
    dparams = dict(dense.named_parameters())
    keep = {n: mask.dense(n) for n in mask.indices}
    opt_d = torch.optim.AdamW(dense.parameters(), lr=LR, weight_decay=WD)
    sparse = apply_mask(model, mask, trainable=head)
    opt_s = MaskedAdamW(sparse, lr=LR, weight_decay=WD)
    for batch in data:
        opt_d.zero_grad(set_to_none=True)
        _loss(dense, batch).backward()
        for n, m in keep.items():
            dparams[n].grad.mul_(m)
        opt_d.step()
        with torch.no_grad():  # the reference holds frozen entries (AdamW's decay would move them)
            for n, m in keep.items():
                dparams[n].copy_(torch.where(m, dparams[n], pretrained[n]))
        opt_s.zero_grad(set_to_none=True)
        _loss(sparse, batch).backward()
        opt_s.step()

    moved = 0
    for n in pretrained:
        got = _effective(sparse, n)
        torch.testing.assert_close(got, dparams[n].detach(), rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
        if n in keep:
            frozen = ~keep[n]
            assert torch.equal(got[frozen], pretrained[n][frozen]), n  # bit-identical
            moved += int((got[keep[n]] != pretrained[n][keep[n]]).sum())
    assert moved > 0.9 * mask.count  # the masked entries did train
    trainable = {id(p) for p in sparse.parameters() if p.requires_grad}
    dense_masked = masked_weights(sparse)
    assert len(dense_masked) == sum(1 for i in mask.indices.values() if i.numel())
    assert all(id(p) not in trainable for p in dense_masked)  # no dense pretrained weight trains
    assert sum(p.numel() for p in sparse.parameters() if p.requires_grad) == mask.count + sum(
        dparams[n].numel() for n in head)


def masked_weights(model):
    """The model's dense masked tensors (W0 + delta in place)."""
    return [s.weight for _, s in model.fishtune_masked.segments()]


def test_sparse_checkpoint_round_trip_identical_logits(tmp_path):
    model = tiny_model("bert")
    head = head_names(model)
    mask = _mask(model, head, frac=0.05)
    apply_mask(model, mask, trainable=head)
    opt = MaskedAdamW(model, lr=1e-2, weight_decay=0.01)
    ex = tiny_examples(12, seed=2)
    for i in range(0, 12, 4):
        opt.zero_grad(set_to_none=True)
        _loss(model, collate(ex[i : i + 4])).backward()
        opt.step()
    batch = collate(ex)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        want = model(**inputs).logits
    size = save_delta(model, tmp_path / "delta.safetensors", head=head)
    assert size < sum(p.numel() * 4 for p in masked_weights(model))  # tiny model: header-dominated
    fresh = tiny_model("bert")
    torch.nn.init.normal_(fresh.classifier.weight)  # the head must come from the file
    apply_delta(fresh, tmp_path / "delta.safetensors")
    with torch.no_grad():
        got = fresh(**inputs).logits
    assert torch.equal(got, want)

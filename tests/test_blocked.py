"""`apply_mask(weight_grad="blocks")` (and "auto" on CPU): a masked nn.Linear computes only the rows or
columns of its weight gradient that hold selected entries, a masked nn.Embedding only the selected rows of the
batch's tokens. The gradients and updates equal the dense path's up to the order of the
sum over tokens (1e-6 relative in fp32), frozen entries stay bit-identical, and `merge` restores the layers."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import VOCAB, collate, tiny_examples, tiny_model

from fishtune.core import _blocked
from fishtune.core.masked import MaskedAdamW, apply_mask, masked_tensors, merge
from fishtune.core.masks import Mask
from fishtune.models import head_names


def _structured_mask(model, head, seed=0) -> Mask:
    """Like a FISH mask: each matrix's entries in a few columns (or, alternately, a few rows), and a few
    scattered entries in every other tensor."""
    gen = torch.Generator().manual_seed(seed)
    idx, shapes, matrices = {}, {}, 0
    for n, p in model.named_parameters():
        if n in head:
            continue
        shapes[n] = tuple(p.shape)
        if p.dim() == 2 and "embed" not in n and "wte" not in n and "wpe" not in n:
            out, inn = p.shape
            full = torch.rand(out, inn, generator=gen) < 0.5
            keep = torch.zeros_like(full)
            matrices += 1
            if matrices % 2:
                keep[:, torch.randperm(inn, generator=gen)[:2]] = True
            else:
                keep[torch.randperm(out, generator=gen)[:2], :] = True
            idx[n] = (full & keep).reshape(-1).nonzero().squeeze(1)
        elif p.dim() == 2 and p.shape[0] == VOCAB:  # the word embedding: rows the batches use and some they
            rows = torch.randperm(VOCAB, generator=gen)[:12].tolist() + [0]  # do not, and the padding row
            cols = torch.randperm(p.shape[1], generator=gen)[:3]
            idx[n] = (torch.tensor(rows)[:, None] * p.shape[1] + cols[None]).reshape(-1).sort().values
        else:
            idx[n] = torch.randperm(p.numel(), generator=gen)[:3].sort().values
    return Mask(idx, shapes)


def _pair(arch: str, seed: int = 0):
    """(reference masked with dense dW, the same model masked with blocks, mask, head), both in train mode."""
    model = tiny_model(arch)
    head = head_names(model)
    mask = _structured_mask(model, head, seed=seed)
    ref = apply_mask(copy.deepcopy(model), mask, trainable=head, weight_grad="dense").train()
    apply_mask(model, mask, trainable=head, weight_grad="blocks")
    return ref, model.train(), mask, head


def test_plan_picks_the_smaller_block_and_finds_every_entry():
    full = torch.randn(12, 40)
    cols = torch.tensor([3, 17])
    idx = (torch.arange(12)[:, None] * 40 + cols[None]).reshape(-1)
    p = _blocked.plan((12, 40), idx)
    assert p.axis == 1 and p.keep.tolist() == [3, 17] and p.share == pytest.approx(2 / 40)
    assert torch.equal(full[:, p.keep].reshape(-1)[p.local], full.reshape(-1)[idx])
    tall = full.t().contiguous()  # 40 x 12: two rows (2 x 12) are cheaper than three columns (40 x 3)
    idx = torch.tensor([5 * 12 + 1, 5 * 12 + 10, 9 * 12 + 7])
    p = _blocked.plan((40, 12), idx)
    assert p.axis == 0 and p.keep.tolist() == [5, 9]
    assert torch.equal(tall[p.keep].reshape(-1)[p.local], tall.reshape(-1)[idx])
    scattered = torch.randperm(12 * 40, generator=torch.Generator().manual_seed(0))[:60].sort().values
    assert _blocked.plan((12, 40), scattered) is None  # every row and most columns: the dense product
    assert _blocked.plan((40,), torch.tensor([1])) is None


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_blocked_gradient_equals_the_dense_gradient_at_the_mask(arch):
    """Accumulated over two backwards; GPT-2's Conv1D layers (W stored in × out) block too."""
    ref, model, mask, head = _pair(arch)
    axes = {s.plan.axis for _, s in model.fishtune_masked.segments() if s.plan is not None and s.plan.table is None}
    assert axes == {0, 1}, "both a row and a column block are exercised"
    gathered = [s.name for _, s in model.fishtune_masked.segments() if s.plan is not None and s.plan.table is not None]
    assert any(s.shape[0] == VOCAB for _, s in model.fishtune_masked.segments() if s.name in gathered), gathered
    ex = tiny_examples(8)
    for b in (collate(ex[:4]), collate(ex[4:])):
        for m in (ref, model):
            torch.manual_seed(0)
            m(**b).loss.backward()
    want, got = ref.fishtune_masked.delta0.grad, model.fishtune_masked.delta0.grad
    assert float((got - want).norm() / want.norm()) < 1e-6
    for name in masked_tensors(model):
        seg = next(s for _, s in model.fishtune_masked.segments() if s.name == name)
        sl = slice(seg.offset, seg.offset + seg.count)
        assert torch.allclose(got[sl], want[sl], rtol=1e-5, atol=1e-7), name
        assert seg.weight.grad is None
    for n in head:  # the head's (dense) gradient is unchanged too
        assert torch.allclose(dict(model.named_parameters())[n].grad, dict(ref.named_parameters())[n].grad,
                              rtol=1e-5, atol=1e-7)


def test_blocked_training_matches_dense_and_merge_restores_the_layers():
    pretrained = {n: p.detach().clone() for n, p in tiny_model("bert").named_parameters()}
    ref, model, mask, head = _pair("bert", seed=1)
    opts = [MaskedAdamW(m, lr=1e-2, weight_decay=0.1) for m in (ref, model)]
    ex = tiny_examples(12, seed=2)
    for step in range(3):
        b = collate(ex[step * 4:step * 4 + 4])
        for m, opt in zip((ref, model), opts):
            torch.manual_seed(step)
            m(**b).loss.backward()
            opt.step()
            opt.zero_grad()
    merge(ref)
    merge(model)
    assert not [m for m in model.modules() if "forward" in m.__dict__], "merge left a blocked forward behind"
    params, ref_params = dict(model.named_parameters()), dict(ref.named_parameters())
    for n, before in pretrained.items():
        if n in head:
            continue
        moved = mask.dense(n) if n in mask.indices else torch.zeros_like(before, dtype=torch.bool)
        assert torch.equal(params[n][~moved], before[~moved]), f"{n}: an unmasked entry changed"
        assert torch.allclose(params[n], ref_params[n], rtol=1e-4, atol=1e-6), n
    with torch.no_grad():
        b = {k: v for k, v in collate(ex[:4]).items() if k != "labels"}
        assert torch.allclose(model.eval()(**b).logits, ref.eval()(**b).logits, atol=1e-5)


def test_trainer_trains_a_blocked_model(tmp_path):
    """transformers.Trainer (its own AdamW, gradient clipping, zero_grad) with blocks: the same weights as
    with the dense path after three steps, unmasked entries untouched."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    pretrained = {n: p.detach().clone() for n, p in tiny_model("bert").named_parameters()}
    ref, model, mask, head = _pair("bert", seed=3)
    ex = tiny_examples(12, seed=4)
    for m, where in ((ref, "ref"), (model, "blocks")):
        args = TrainingArguments(output_dir=str(tmp_path / where), per_device_train_batch_size=4, max_steps=3,
                                 learning_rate=1e-2, weight_decay=0.1, max_grad_norm=1.0, report_to=[],
                                 save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
        Trainer(model=m, args=args, train_dataset=Dataset.from_list(ex), data_collator=collate).train()
        merge(m)
    params, ref_params = dict(model.named_parameters()), dict(ref.named_parameters())
    for n in mask.indices:
        moved = mask.dense(n)
        assert torch.equal(params[n][~moved], pretrained[n][~moved]), n
        assert torch.allclose(params[n], ref_params[n], rtol=1e-4, atol=1e-6), n
    assert any(not torch.equal(params[n], pretrained[n]) for n in mask.indices if params[n].dim() == 2)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_blocked_under_bf16_autocast_follows_the_dense_path(arch):
    ref, model, _, _ = _pair(arch)
    b = collate(tiny_examples(4))
    for m in (ref, model):
        torch.manual_seed(0)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(**b).loss
        loss.backward()
    want, got = ref.fishtune_masked.delta0.grad, model.fishtune_masked.delta0.grad
    assert got.dtype == torch.float32
    assert float((got - want).norm() / want.norm()) < 2e-2


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_no_vocabulary_sized_gradient_for_the_word_embedding(arch):
    """The dense path's backward builds a vocabulary × width embedding gradient; blocks and auto (on CPU, the
    default) never do, and auto is blocks there."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    made.append(tuple(t.shape))
            return out

    b, plans = collate(tiny_examples(4)), {}
    for weight_grad in ("dense", "blocks", "auto"):
        model = tiny_model(arch)
        head = head_names(model)
        apply_mask(model, _structured_mask(model, head), trainable=head, weight_grad=weight_grad).train()
        width = model.get_input_embeddings().weight.shape[1]
        loss = model(**b).loss
        made = []
        with Shapes():
            loss.backward()
        assert ((VOCAB, width) in made) == (weight_grad == "dense"), weight_grad
        plans[weight_grad] = [(s.name, s.plan and s.plan.axis) for _, s in model.fishtune_masked.segments()]
    assert plans["auto"] == plans["blocks"] != plans["dense"]


@pytest.mark.parametrize("weight_grad", ["dense", "blocks"])
def test_a_masked_model_refuses_deepcopy(weight_grad):
    """A copy would share the gradient hooks / blocked forwards of the original (training nothing, or writing
    into the original's gradient): refused with one line; after merge the model copies again."""
    model = tiny_model("bert")
    head = head_names(model)
    apply_mask(model, _structured_mask(model, head), trainable=head, weight_grad=weight_grad)
    with pytest.raises(TypeError, match="merge"):
        copy.deepcopy(model)
    copy.deepcopy(merge(model))


def test_unknown_weight_grad_is_refused():
    model = tiny_model("bert")
    head = head_names(model)
    with pytest.raises(ValueError, match="weight_grad must be auto|dense|blocks"):
        apply_mask(model, _structured_mask(model, head), trainable=head, weight_grad="sampled")
    assert not hasattr(model, "fishtune_masked")

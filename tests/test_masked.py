"""Masked training: after a few steps every unmasked entry is bit-identical to the pretrained weight and the
masked entries moved, also with weight decay > 0; a plain loop and transformers.Trainer both."""

from __future__ import annotations

import pytest
import torch
from tiny import collate, tiny_examples, tiny_model

from fishtune.core.masked import MaskedAdamW, apply_mask, merge, trainable_count
from fishtune.core.selection import Selector, fish_mask
from fishtune.models import head_names


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
def test_gradient_is_the_dense_gradient_at_the_mask_and_nothing_dense_is_kept(arch):
    """delta.grad equals the dense gradient gathered at the mask, bit for bit (also accumulated over two
    backwards); afterwards no masked tensor holds a dense gradient, and the forward is the dense one."""
    import copy

    from fishtune.core.masked import masked_tensors

    model = tiny_model(arch)
    head = head_names(model)
    examples = tiny_examples(8)
    mask, _ = fish_mask(Selector(model, examples, collate, head=head, progress=False), 40.0, 8, seed=0)
    dense = copy.deepcopy(model).train()
    apply_mask(model, mask, trainable=head, weight_grad="dense")  # the exact path
    model.train()
    batches = [collate(examples[:4]), collate(examples[4:])]
    for b in batches:
        torch.manual_seed(0)
        dense(**b).loss.backward()
        torch.manual_seed(0)
        model(**b).loss.backward()
    params = dict(dense.named_parameters())
    tensors = masked_tensors(model)
    assert set(tensors) == {n for n, i in mask.indices.items() if i.numel()}
    state = model.fishtune_masked
    for name, t in tensors.items():
        seg = next(s for g, s in state.segments() if s.name == name)
        got = state.groups[0].delta.grad[seg.offset:seg.offset + seg.count]
        assert torch.equal(got, params[name].grad.reshape(-1)[t.indices]), name
        assert seg.weight.grad is None, f"{name}: a dense gradient was kept"
    assert trainable_count(model, exclude=head) == mask.count
    with torch.no_grad():
        b = {k: v for k, v in batches[0].items() if k != "labels"}
        assert torch.equal(model.eval()(**b).logits, dense.eval()(**b).logits)


def test_a_masked_tensor_without_gradient_does_not_move():
    """A masked tensor outside the loss gets no update, weight decay included (dense AdamW skips it)."""
    model, pretrained, examples, mask, head = _masked_tiny_bert()
    opt = MaskedAdamW(model, lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(2):
        batch = collate(examples[step * 4 : step * 4 + 4])
        out = model.bert.embeddings(input_ids=batch["input_ids"])  # only the embeddings take part
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    merge(model)
    params = dict(model.named_parameters())
    for name in mask.indices:
        if not name.startswith("bert.embeddings"):
            assert torch.equal(params[name], pretrained[name]), f"{name} moved without a gradient"
    moved = [n for n in mask.indices
             if n.startswith("bert.embeddings.word") and not torch.equal(params[n], pretrained[n])]
    assert moved, "the embeddings did train"


@pytest.mark.parametrize(("masked", "weight_decay"), [(True, 0.0), (True, 0.1), (False, 0.1)])
def test_fused_step_equals_the_plain_step(masked, weight_decay):
    """`MaskedAdamW` takes torch's fused AdamW on CPU by default; a few steps of it (masked with and without
    weight decay, or dense) end within float rounding of the plain per-tensor loop's, in the weights the model computes
    with (the fused kernel leaves delta's version counter alone: each step must still reach the weights)."""
    models, opts = [], []
    for fused in (None, False):
        if masked:
            model = _masked_tiny_bert()[0]
        else:
            model = tiny_model("bert")
        opt = MaskedAdamW(model, lr=1e-2, weight_decay=weight_decay, **({} if fused is None else {"fused": fused}))
        assert opt.defaults["fused"] is (fused is None)
        models.append(model.train())
        opts.append(opt)
    examples = tiny_examples(16)
    for step in range(4):
        batch = collate(examples[step * 4: step * 4 + 4])
        for model, opt in zip(models, opts):
            torch.manual_seed(step)  # the same dropout on both
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
    a, b = (dict((merge(m) if masked else m).named_parameters()) for m in models)  # the weights in use
    assert a.keys() == b.keys()
    for n in a:
        assert torch.allclose(a[n], b[n], rtol=1e-5, atol=1e-6), n
    assert not torch.equal(a["classifier.weight"], tiny_model("bert").classifier.weight), "it trained"


def test_a_model_loaded_from_safetensors_keeps_no_view_of_its_file(tmp_path):
    """On the CPU from_pretrained maps the weights file; apply_mask gives every other tensor its own copy so
    the map (a second copy of the masked weights) can go: equal values, no storage left from the load."""
    from transformers import AutoModelForSequenceClassification

    tiny_model("bert").save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    head = head_names(model)
    before = {n: (p.untyped_storage().data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}
    before.update({f"buffer {n}": (b.untyped_storage().data_ptr(), b.clone()) for n, b in model.named_buffers()})
    mask, _ = fish_mask(Selector(model, tiny_examples(8), collate, head=head, progress=False), 5.0, 4, seed=0)
    apply_mask(model, mask, trainable=head)
    after = {n: p for n, p in model.named_parameters()}
    after.update({f"buffer {n}": b for n, b in model.named_buffers() if n not in mask.indices})
    kept = [n for n, t in after.items() if n in before and t.untyped_storage().data_ptr() == before[n][0]]
    assert not kept, f"still views of the loaded storage: {kept[:3]}"
    assert all(torch.equal(t, before[n][1]) for n, t in after.items() if n in before)
    assert len([n for n in after if n in before]) > len(head)  # the frozen body's tensors were checked too

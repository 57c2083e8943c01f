"""`held_embedding_grads`: a dense-trained embedding's gradient summed into one kept buffer gives the same
training as autograd's dense embedding gradient (within float tolerance), and leaves the model as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import collate, tiny_examples, tiny_model

from fishtune.core.masked import MaskedAdamW
from fishtune.train.embedding_grads import held_embedding_grads
from fishtune.train.loop import train_step

CPU = torch.device("cpu")


def _batches(n=4, size=6):
    ex = tiny_examples(n * size, seed=3)
    return [collate(ex[i * size:(i + 1) * size]) for i in range(n)]


def _train(model, batches, accumulate=1):
    opt = MaskedAdamW(model, lr=1e-2)
    model.train()
    torch.manual_seed(0)  # the same dropout on both sides
    for i, b in enumerate(batches):
        if accumulate == 1:
            train_step(model, dict(b), opt, CPU, False)
            continue
        model(**b).loss.backward()
        if (i + 1) % accumulate == 0:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return model


@pytest.mark.parametrize("accumulate", [1, 2])
def test_held_embedding_gradient_trains_as_the_dense_one(accumulate):
    model = tiny_model("bert")
    plain = _train(copy.deepcopy(model), _batches(), accumulate)
    with held_embedding_grads(model) as n:
        held = _train(model, _batches(), accumulate)
    assert n == 3  # word, position and token-type embeddings
    emb = held.bert.embeddings.word_embeddings
    assert not emb.sparse and not emb._forward_pre_hooks
    moved = (held.bert.embeddings.word_embeddings.weight != tiny_model("bert").bert.embeddings.word_embeddings.weight)
    assert moved.any()  # the rows trained
    for (name, a), b in zip(held.named_parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name


def test_buffer_rows_of_the_last_batch_are_zeroed_before_the_next():
    model = tiny_model("bert")
    batches = _batches(3)
    with held_embedding_grads(model):
        opt = MaskedAdamW(model, lr=1e-2)
        model.train()
        for b in batches:
            model(**b).loss.backward()
            grad = model.bert.embeddings.word_embeddings.weight.grad
            seen = torch.unique(b["input_ids"])
            rows = torch.zeros(grad.shape[0], dtype=torch.bool)
            rows[seen] = True
            assert not grad[~rows].any()  # nothing left over from an earlier batch
            opt.step()
            opt.zero_grad(set_to_none=True)


def test_tied_frozen_or_masked_embeddings_keep_autograds_path():
    model = tiny_model("bert")
    emb = model.bert.embeddings
    emb.position_embeddings.weight.requires_grad_(False)
    model.extra = torch.nn.Linear(4, 4)
    model.extra.weight = emb.token_type_embeddings.weight  # held by a second module: a tied weight
    with held_embedding_grads(model) as n:
        assert n == 1 and emb.word_embeddings.sparse
        assert not emb.position_embeddings.sparse and not emb.token_type_embeddings.sparse
    assert not emb.word_embeddings.sparse


def test_many_forwards_without_a_clear_zero_the_whole_buffer(monkeypatch):
    import fishtune.train.embedding_grads as eg

    monkeypatch.setattr(eg, "MAX_PENDING", 2)
    model = tiny_model("bert")
    first, *rest = _batches(4)
    model.train()
    with held_embedding_grads(model):
        for b in [first, *rest[:2]]:  # accumulated past MAX_PENDING: the rows are no longer listed
            model(**b).loss.backward()
        model.zero_grad(set_to_none=True)
        model(**rest[2]).loss.backward()
        grad = model.bert.embeddings.word_embeddings.weight.grad
        rows = torch.zeros(grad.shape[0], dtype=torch.bool)
        rows[torch.unique(rest[2]["input_ids"])] = True
        assert not grad[~rows].any()


def test_int32_token_ids_are_zeroed_too():
    model = tiny_model("bert")
    first, second = _batches(2)
    model.train()
    with held_embedding_grads(model):
        for b in (first, second):
            model.zero_grad(set_to_none=True)
            model(**{**b, "input_ids": b["input_ids"].int()}).loss.backward()
        grad = model.bert.embeddings.word_embeddings.weight.grad
        rows = torch.zeros(grad.shape[0], dtype=torch.bool)
        rows[torch.unique(second["input_ids"])] = True
        assert not grad[~rows].any()

"""Masks: exact k, deterministic ties, candidates, per-tensor scope, save/load with sha256, BitFit, random."""

from __future__ import annotations

import pytest
import torch
from tiny import collate, tiny_examples, tiny_model

from fishtune.config import LadderConfig, SparsityConfig
from fishtune.core.masks import Mask, num_selected, select_top_k
from fishtune.core.selection import Selector
from fishtune.methods import Context, create
from fishtune.models import head_names


def test_exact_count_and_ties_by_index():
    scores = {"a": torch.tensor([1.0, 3.0, 3.0, 0.0]), "b": torch.tensor([[3.0, 2.0], [3.0, 5.0]])}
    m = select_top_k(scores, 3)
    assert m.count == 3
    assert m.indices["b"].tolist() == [3] and m.indices["a"].tolist() == [1, 2]  # 5, then the first two 3s
    low = select_top_k(scores, 2, largest=False)
    assert low.count == 2 and low.indices["a"].tolist() == [0, 3]


def test_candidates_restrict_the_choice():
    scores = {"a": torch.arange(10.0)}
    cand = Mask({"a": torch.tensor([0, 2, 4])}, {"a": (10,)})
    assert select_top_k(scores, 2, candidates=cand).indices["a"].tolist() == [2, 4]
    with pytest.raises(ValueError, match="only 3 candidates"):
        select_top_k(scores, 4, candidates=cand)


def test_per_tensor_scope_exact_total():
    scores = {"a": torch.rand(100), "b": torch.rand(300)}
    m = select_top_k(scores, 40, scope="per_tensor")
    assert m.count == 40 and len(m.indices["a"]) == 10 and len(m.indices["b"]) == 30


def test_num_selected_rules():
    assert num_selected(0.5, 1000) == 5
    assert num_selected(0.02, 1000) == 1  # at least one
    assert num_selected(20, 900, head=100, rule="fish_reference") == 100  # floor(0.2·1000) − 100
    for bad in (0, -1, 100.5):
        with pytest.raises(ValueError, match=r"ratio must be in \(0, 100\]"):
            num_selected(bad, 1000)


def test_save_load_roundtrip_and_corruption(tmp_path):
    m = select_top_k({"w": torch.rand(5, 7), "b": torch.rand(3)}, 9)
    path = tmp_path / "m.safetensors"
    m.save(path)
    back = Mask.load(path)
    assert back.sha256() == m.sha256() and back.count == 9
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Mask.load(path)


def test_mask_for_another_model_is_rejected():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match="not in the model"):
        Mask({"nope.weight": torch.tensor([0])}, {"nope.weight": (3,)}).check_model(model)
    name, p = next(iter(model.named_parameters()))
    with pytest.raises(ValueError, match="has shape"):
        Mask({name: torch.tensor([0])}, {name: (1, 2, 3)}).check_model(model)


# (what is wrong, indices of "w" (shape (4, 5)), head, the one line Mask.load must say)
BAD_MASK_FILES = [
    ("2-D indices", torch.tensor([[0, 1], [2, 3]]), {}, r"indices of 'w' are a 2-D torch.int64 tensor, not a 1-D"),
    ("unsorted", torch.tensor([3, 1]), {}, "indices of 'w' are not sorted and distinct"),
    ("repeated", torch.tensor([1, 1]), {}, "indices of 'w' are not sorted and distinct"),
    ("NaN head", torch.tensor([1]), {"cls.weight": torch.tensor([0.5, float("nan")])},
     "its head 'cls.weight' holds non-finite or non-float values"),
    ("inf head", torch.tensor([1]), {"cls.bias": torch.tensor([float("inf")])},
     "its head 'cls.bias' holds non-finite"),
]


@pytest.mark.parametrize("indices,head,message", [r[1:] for r in BAD_MASK_FILES], ids=[r[0] for r in BAD_MASK_FILES])
def test_mask_file_that_cannot_be_trained_is_one_line_naming_it(tmp_path, indices, head, message):
    path = tmp_path / "bad.safetensors"
    Mask({"w": indices}, {"w": (4, 5)}, head=head).save(path)  # sha256 and shapes consistent: only the content
    with pytest.raises(ValueError, match=rf"^mask file {path}: {message}") as info:
        Mask.load(path)
    assert "\n" not in str(info.value)


def test_mask_file_with_garbled_shape_metadata(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.tensor([1])}, str(tmp_path / "m.safetensors"), metadata={"shape:w": "4,x"})
    with pytest.raises(ValueError, match="corrupted .*a shape in its metadata"):
        Mask.load(tmp_path / "m.safetensors")


def test_check_model_names_where_the_mask_came_from():
    with pytest.raises(ValueError, match=r"^mask file a.safetensors: parameter 'nope.weight' is not in the model"):
        Mask({"nope.weight": torch.tensor([0])}, {"nope.weight": (3,)}).check_model(tiny_model("bert"),
                                                                                     where="mask file a.safetensors")


def _ctx(model, seed=0, ratio=0.5):
    ex = tiny_examples(16)
    sel = Selector(model, ex, collate, head=head_names(model), progress=False)
    return Context(sel, SparsityConfig(name=str(ratio), ratio=ratio), LadderConfig(), 8, seed)


def test_random_and_fish_masks_exact_and_seeded():
    model = tiny_model("bert")
    for name in ("random", "fish"):
        a = create({"name": name}).plans(_ctx(model, 0))[0].mask
        b = create({"name": name}).plans(_ctx(model, 0))[0].mask
        c = create({"name": name}).plans(_ctx(model, 1))[0].mask
        k = _ctx(model).selector.k(0.5)
        assert a.count == b.count == c.count == k
        assert a.sha256() == b.sha256(), f"{name}: same seed must give the same mask"
        assert a.sha256() != c.sha256(), f"{name}: another seed must give another mask"
        head = set(head_names(model))
        assert not head & set(a.indices), "the head is never in the mask"


def test_bitfit_selects_only_biases():
    model = tiny_model("bert")
    plan = create({"name": "bitfit"}).plans(_ctx(model))[0]
    assert plan.mask.names() and all(n.endswith("bias") for n in plan.mask.names())
    params = dict(model.named_parameters())
    biases = [n for n in params if n.endswith("bias") and n not in head_names(model)]
    assert plan.mask.count == sum(params[n].numel() for n in biases)


def test_sparse_delta_for_another_model_or_corrupted(tmp_path):
    from fishtune.core.deltas import apply_delta, save_delta
    from fishtune.core.masked import apply_mask

    model = tiny_model("bert")
    mask = select_top_k({n: torch.rand(p.shape) for n, p in model.named_parameters()}, 50)
    apply_mask(model, mask)
    path = tmp_path / "d.safetensors"
    save_delta(model, path)
    with pytest.raises(ValueError, match="another model"):
        apply_delta(tiny_model("gpt2"), path)
    with pytest.raises(ValueError, match="has shape"):
        apply_delta(tiny_model("bert", hidden_size=32, intermediate_size=24), path)
    data = path.read_bytes()
    path.write_bytes(data[:100])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        apply_delta(tiny_model("bert"), path)


def test_apply_delta_is_all_or_nothing(tmp_path):
    """A delta that does not fit (another head size, another depth, forged indices, NaN values) raises
    ValueError and leaves the model exactly as it was."""
    from safetensors.torch import load_file, save_file

    from fishtune.core.deltas import apply_delta, save_delta
    from fishtune.core.masked import apply_mask

    model = tiny_model("bert")
    mask = select_top_k({n: torch.rand(p.shape) for n, p in model.named_parameters()}, 50)
    apply_mask(model, mask, trainable=["classifier.weight", "classifier.bias"])
    with torch.no_grad():
        model.fishtune_masked.delta0.normal_()
    path = tmp_path / "d.safetensors"
    save_delta(model, path, head=["classifier.weight", "classifier.bias"])
    meta = {"format": "fishtune-sparse-delta-1"}
    tensors = load_file(str(path))
    name = "bert.encoder.layer.1.output.dense.weight"
    forged = {
        "indices out of range": {**tensors, f"{name}::indices": tensors[f"{name}::indices"] + 10**6},
        "negative index": {**tensors, f"{name}::indices": tensors[f"{name}::indices"] - 10**6},
        "NaN values": {**tensors, f"{name}::values": tensors[f"{name}::values"] * float("nan")},
        "values without indices": {k: v for k, v in tensors.items() if k != f"{name}::indices"},
        "indices without values": {k: v for k, v in tensors.items() if k != f"{name}::values"},
        "length mismatch": {**tensors, f"{name}::values": tensors[f"{name}::values"][:-1]},
    }
    targets = {"another head": lambda: tiny_model("bert", num_labels=3),
               "another depth": lambda: tiny_model("bert", num_hidden_layers=1)}
    cases = [(k, v, lambda: tiny_model("bert")) for k, v in forged.items()]
    cases += [(k, None, make) for k, make in targets.items()]
    for what, content, make in cases:
        target = make()
        before = {k: v.clone() for k, v in target.state_dict().items()}
        file = path
        if content is not None:
            file = tmp_path / f"{what.replace(' ', '_')}.safetensors"
            save_file(content, str(file), metadata=meta)
        with pytest.raises(ValueError):
            apply_delta(target, file)
        after = target.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), f"{what}: the model changed before the error"


def _reference_top_k(scores, k, largest=True, candidates=None, zero_last=False):
    """Sort everything at once (stable, descending): the first k, as `select_top_k` defines them."""
    keys, where = [], []
    for n, s in scores.items():
        s = s.reshape(-1).double()
        if not largest:
            s = -s
            if zero_last:
                s = torch.where(s == 0, torch.full_like(s, -torch.finfo(s.dtype).max), s)
        if candidates is not None:
            ok = torch.zeros_like(s, dtype=torch.bool)
            ok[candidates.indices.get(n, torch.empty(0, dtype=torch.long))] = True
            s = torch.where(ok, s, torch.full_like(s, -float("inf")))
        keys.append(torch.nan_to_num(s, nan=-float("inf")))
        where += [(n, i) for i in range(s.numel())]
    order = torch.sort(-torch.cat(keys), stable=True).indices[:k].tolist()
    out = {}
    for j in order:
        n, i = where[j]
        out.setdefault(n, []).append(i)
    return {n: sorted(v) for n, v in out.items()}


@pytest.mark.parametrize("chunk", [3, 7, 1 << 20])
@pytest.mark.parametrize("how", ["top", "bottom", "bottom_zero_last", "candidates"])
def test_chunked_selection_equals_one_sort_of_everything(monkeypatch, chunk, how):
    import fishtune.core.masks as masks

    monkeypatch.setattr(masks, "CHUNK", chunk)
    g = torch.Generator().manual_seed(chunk)
    scores = {"w": torch.randint(0, 4, (6, 5), generator=g).float(),
              "b": torch.randint(0, 4, (9,), generator=g).float(), "e": torch.rand(4, 3, generator=g)}
    scores["b"][2] = float("nan")
    kw = {"largest": how == "top" or how == "candidates", "zero_last": how == "bottom_zero_last"}
    if how == "candidates":
        kw["candidates"] = select_top_k({n: torch.rand(s.shape, generator=g) for n, s in scores.items()}, 25)
    for k in (1, 5, 12, 25):
        got = {n: v.tolist() for n, v in select_top_k(scores, k, **kw).indices.items()}
        assert got == _reference_top_k(scores, k, **kw), (how, k)

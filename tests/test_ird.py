"""IRD: the staircase, the sample step (largest φ; reverse: smallest; ties by position), nesting, exact
counts, and the first cell equal to FISH's."""

from __future__ import annotations

import pytest
import torch
from tiny import collate, tiny_examples, tiny_model
from torch import nn

from fishtune.core.ird import fish_ladder, grid, ird_walk, staircase
from fishtune.core.selection import Selector
from fishtune.models import head_names


class Toy(nn.Module):
    """logits = W x + b with W = 0: every sample's gradient is (p − y) x, so φ_Q(i) grows with |x_i|."""

    def __init__(self, d: int = 50):
        super().__init__()
        self.lin = nn.Linear(d, 2)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, x, **_):
        return type("Out", (), {"logits": self.lin(x)})()


def toy_samples(scales, d=50):
    gen = torch.Generator().manual_seed(0)
    direction = torch.rand(d, generator=gen) + 0.5
    return [{"x": s * direction, "labels": i % 2} for i, s in enumerate(scales)]


def toy_collate(items):
    return {"x": torch.stack([i["x"] for i in items]), "labels": torch.tensor([i["labels"] for i in items])}


def test_staircase_cells():
    assert staircase([128, 32, 16, 1], [2.5, 0.5, 0.1, 0.02]) == [
        (2.5, 128), (2.5, 32), (0.5, 32), (0.5, 16), (0.1, 16), (0.1, 1), (0.02, 1)]
    assert staircase([9, 3, 1], [4.0, 2.0, 1.0]) == [(4.0, 9), (4.0, 3), (2.0, 3), (2.0, 1), (1.0, 1)]
    assert len(grid([128, 32, 16, 1], [2.5, 0.5, 0.1, 0.02])) == 16


@pytest.mark.parametrize("reverse", [False, True])
def test_sample_step_keeps_largest_phi(reverse):
    scales = [float(s) for s in torch.randperm(20, generator=torch.Generator().manual_seed(3)) + 1]
    model = Toy()
    sel = Selector(model, toy_samples(scales), toy_collate, engine="loop", progress=False)
    cells = ird_walk(sel, [8, 4, 2, 1], [50.0, 20.0, 10.0, 2.0], seed=0, reverse=reverse)
    assert [(c.ratio, c.samples) for c in cells] == staircase([8, 4, 2, 1], [50.0, 20.0, 10.0, 2.0])
    first = cells[0].sample_indices
    for prev, cur in ((first, cells[1].sample_indices), (cells[2].sample_indices, cells[3].sample_indices),
                      (cells[4].sample_indices, cells[5].sample_indices)):
        ranked = sorted(prev, key=lambda i: scales[i], reverse=not reverse)
        assert sorted(cur) == sorted(ranked[: len(cur)]), "IRD keeps the samples with the largest φ"
    for c in cells:
        assert c.mask.count == sel.k(c.ratio), "exact count at each ratio"


def test_phi_ties_go_to_the_earlier_position():
    model = Toy()
    sel = Selector(model, toy_samples([2.0] * 6), toy_collate, engine="loop", progress=False)
    cells = ird_walk(sel, [6, 3], [50.0, 20.0], seed=0)
    S0 = cells[0].sample_indices
    assert cells[1].sample_indices == S0[:3]


@pytest.mark.parametrize("nested", [True, False])
def test_nesting_and_first_cell_equals_fish(nested):
    model = tiny_model("bert")
    sel = Selector(model, tiny_examples(24), collate, head=head_names(model), progress=False)
    samples, ratios = [16, 8, 4, 1], [40.0, 30.0, 20.0, 10.0]
    cells = ird_walk(sel, samples, ratios, seed=0, nested=nested)
    fish = fish_ladder(sel, staircase(samples, ratios), seed=0)
    assert cells[0].mask.sha256() == fish[0].mask.sha256()
    assert cells[0].sample_indices == fish[0].sample_indices
    for c in cells:
        assert c.mask.count == sel.k(c.ratio)
    # cell i+2 (smaller ratio) lies inside the mask of the last larger-ratio cell (i+1), when nested
    inside = [cells[i + 1].mask.issubset(cells[i].mask) for i in range(1, len(cells) - 1, 2)]
    inside += [cells[i + 1].mask.issubset(cells[i - 1].mask) for i in range(2, len(cells) - 1, 2)]
    if nested:
        assert all(inside)
    else:  # re-selected globally: some cell leaves the previous range
        assert not all(inside)


def test_reverse_ird_picks_bottom_k_and_counts_zero_fisher():
    model = tiny_model("bert")
    sel = Selector(model, tiny_examples(24), collate, head=head_names(model), progress=False)
    rev = ird_walk(sel, [16, 8], [20.0, 10.0], seed=0, reverse=True)
    fwd = ird_walk(sel, [16, 8], [20.0, 10.0], seed=0)
    assert rev[0].mask.sha256() == fwd[0].mask.sha256()  # reversed only after the first cell
    F = sel.fisher(rev[1].sample_indices).diag
    chosen = torch.cat([F[n].reshape(-1)[i] for n, i in rev[1].mask.indices.items()])
    assert chosen.max() <= torch.cat([v.reshape(-1) for v in F.values()]).median()
    assert rev[1].info["zero_fisher"] == int((chosen == 0).sum())


def _flat(F):
    return torch.cat([v.reshape(-1) for v in F.values()])


def test_reverse_ird_takes_no_zero_fisher_entry_while_positive_ones_suffice():
    """Default (zero_fisher=exclude): every cell after the first holds only entries with F > 0 under its own
    samples when at least k candidates have F > 0, and they are the k smallest of those; the literal reading
    (include) reproduces the plain bottom-k, which starts with the F = 0 entries."""
    model = tiny_model("bert")
    sel = Selector(model, tiny_examples(24), collate, head=head_names(model), progress=False)
    samples, ratios = [16, 4, 1], [10.0, 2.0, 0.5]
    rev = ird_walk(sel, samples, ratios, seed=0, reverse=True)
    literal = ird_walk(sel, samples, ratios, seed=0, reverse=True, zero_fisher="include")
    some_zero = False
    for cell, lit in zip(rev[1:], literal[1:]):
        F = sel.fisher(cell.sample_indices).diag
        chosen = torch.cat([F[n].reshape(-1)[i] for n, i in cell.mask.indices.items()])
        positive = cell.info["positive_candidates"]
        assert positive >= 0
        if positive >= cell.mask.count:
            assert cell.info["zero_fisher"] == 0 and bool((chosen > 0).all())
        else:  # every positive candidate, then F = 0 entries
            assert int((chosen > 0).sum()) == positive
        # the literal reading: the plain bottom-k (F = 0 first) inside the same kind of range
        lit_F = sel.fisher(lit.sample_indices).diag
        lit_chosen = torch.cat([lit_F[n].reshape(-1)[i] for n, i in lit.mask.indices.items()])
        some_zero |= int((lit_chosen == 0).sum()) > 0
        assert lit.info["zero_fisher"] == int((lit_chosen == 0).sum())
    assert some_zero  # the tiny model has F = 0 entries (unused vocabulary rows): the two readings differ
    # the k smallest positive F among the first reversed cell's candidates (the range is all parameters)
    cell = rev[1]
    F = _flat(sel.fisher(cell.sample_indices).diag)
    chosen = torch.cat([sel.fisher(cell.sample_indices).diag[n].reshape(-1)[i] for n, i in cell.mask.indices.items()])
    assert chosen.max() <= F[F > 0].sort().values[cell.mask.count - 1]


def test_reverse_ird_literal_reading_is_the_plain_bottom_k():
    """zero_fisher=include reproduces the walk as it was before the rule (plain bottom-k, ties by index)."""
    from fishtune.core.masks import select_top_k

    model = tiny_model("bert")
    sel = Selector(model, tiny_examples(24), collate, head=head_names(model), progress=False)
    lit = ird_walk(sel, [16, 8], [20.0, 10.0], seed=0, reverse=True, zero_fisher="include")
    F = sel.fisher(lit[1].sample_indices)
    plain = select_top_k(F.diag, sel.k(20.0), largest=False)
    assert lit[1].mask.sha256() == plain.sha256()


def test_ladder_larger_than_training_set():
    model = Toy()
    sel = Selector(model, toy_samples([1.0] * 4), toy_collate, engine="loop", progress=False)
    with pytest.raises(ValueError, match="training set"):
        ird_walk(sel, [8, 2], [50.0, 10.0], seed=0)


def test_ird_walk_checks_its_arguments():
    model = tiny_model("bert")
    sel = Selector(model, tiny_examples(24), collate, head=head_names(model), progress=False)
    bad = [
        (([16, 8], [2.0]), "samples, ratios: one of each per step"),
        (([], []), "samples, ratios: the ladder needs at least one step"),
        (([8, 16], [2.0, 1.0]), "samples: must be strictly decreasing"),
        (([16, 8], [1.0, 2.0]), "ratios: must be strictly decreasing"),
        (([16, 0], [2.0, 1.0]), "samples: whole numbers >= 1"),
        (([16, 8], [200.0, 1.0]), r"ratios: percentages in \(0, 100\]"),
    ]
    for (samples, ratios), message in bad:
        with pytest.raises(ValueError, match=message):
            ird_walk(sel, samples, ratios, seed=0)


def test_cell_names_are_exact_and_unique():
    from fishtune.core.ird import cell_name

    assert cell_name(0.5, 16) == "r0.5-n16" and cell_name(20.0, 1) == "r20-n1" and cell_name(0.02, 1) == "r0.02-n1"
    assert cell_name(0.5000001, 4) != cell_name(0.5, 4)


def test_reverse_ird_zero_fisher_option_is_checked():
    from fishtune.config import ConfigError
    from fishtune.methods import create

    assert create({"name": "reverse_ird"}).cfg.zero_fisher == "exclude"
    assert create({"name": "reverse_ird", "zero_fisher": "include"}).cfg.zero_fisher == "include"
    with pytest.raises(ConfigError, match="method.zero_fisher must be exclude|include"):
        create({"name": "reverse_ird", "zero_fisher": "drop"})
    with pytest.raises(ConfigError, match="zero_fisher: not an option of method ird"):
        create({"name": "ird", "zero_fisher": "include"})

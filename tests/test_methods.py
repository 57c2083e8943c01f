"""Every registered method through the same checks (one row each in `METHOD_CASES`, peft-style): it has
its `conf/method/<name>.yaml`, its options compose, its plans train a few steps on tiny BERT through the
training loop's step, something moves, and a masked plan moves nothing outside its mask and trains exactly
its mask's count. Adding a method means one module, one YAML file and one row here."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import CONF
from tiny import collate, tiny_examples, tiny_model

from fishtune.config import LadderConfig, SparsityConfig
from fishtune.core.masked import MaskedAdamW, apply_mask, sync_weights, trainable_count
from fishtune.core.selection import Selector
from fishtune.methods import Context, create, names
from fishtune.models import head_names
from fishtune.train.loop import train_step

SINGLE = SparsityConfig(name="5", mode="single", ratio=5.0)
LADDER = SparsityConfig(name="ladder", mode="ladder", ratio=None)

# name -> (options beyond the YAML's, sparsity)
METHOD_CASES = {
    "dense": ({}, SINGLE),
    "bitfit": ({}, SINGLE),
    "random": ({}, SINGLE),
    "fish": ({}, SINGLE),
    "lora": ({}, SINGLE),
    "ird": ({}, LADDER),
    "reverse_ird": ({}, LADDER),
    "diff_pruning": ({"steps": 3}, SINGLE),
    "fish_lora": ({"warmup_steps": 2}, SINGLE),
    "fish_adapter": ({"warmup_steps": 2}, SINGLE),
    "gmt": ({}, SINGLE),
    "id3": ({}, SINGLE),
}


def test_every_registered_method_has_a_row_and_a_yaml():
    assert sorted(METHOD_CASES) == names(), "add the new method's row to METHOD_CASES"
    for name in names():
        conf = yaml.safe_load((CONF / "method" / f"{name}.yaml").read_text())
        assert conf["name"] == name


@pytest.mark.parametrize("name", sorted(METHOD_CASES))
def test_method_trains_what_it_selects(name):
    extra, sparsity = METHOD_CASES[name]
    options = {k: v for k, v in yaml.safe_load((CONF / "method" / f"{name}.yaml").read_text()).items()}
    method = create({**options, **extra})
    method.check_sparsity(sparsity)
    model = tiny_model("bert")
    head = head_names(model)
    method.check_model(model)
    ex = tiny_examples(16)
    sel = Selector(model, ex, collate, head=head, progress=False)
    ctx = Context(sel, sparsity, LadderConfig(samples=[8, 4], ratios=[5.0, 1.0]), 8, 0, train_steps=2)
    plans = method.plans(ctx)
    assert [p.cell for p in plans] == method.cell_names(sparsity, ctx.ladder)
    plan = plans[-1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if plan.mask is not None:
        apply_mask(model, plan.mask, trainable=head)
        assert trainable_count(model, exclude=head) == plan.mask.count
    trained = plan.wrap(model) if plan.wrap is not None else model
    opt = MaskedAdamW(trained, lr=1e-2)
    trained.train()
    for step in range(2):
        loss = train_step(trained, collate(ex[step * 4 : step * 4 + 4]), opt, torch.device("cpu"), bf16=False,
                          hook=plan.hook, step=step)
        assert torch.isfinite(loss)
    sync_weights(model)
    now = {n: t for n, t in model.state_dict().items() if n in before}
    moved = [n for n in before if n not in head and n in now and not torch.equal(now[n], before[n])]
    adapters = [p for n, p in trained.named_parameters() if p.requires_grad and n not in before]
    assert moved or adapters, f"{name}: nothing but the head trained"
    if plan.mask is not None:
        for n in moved:
            changed = (now[n] != before[n]).reshape(-1).nonzero().squeeze(1)
            assert torch.isin(changed, plan.mask.indices[n]).all(), f"{name}: {n} moved outside the mask"


@pytest.mark.parametrize("name", sorted(METHOD_CASES))
def test_every_method_runs_under_a_ladder_sparsity(name):
    """`sparsity=ladder` is one sweep for Table 2: walkers walk the staircase, a single-ratio method trains one
    cell per ladder ratio (named r<ratio>) at that ratio, dense and BitFit their one cell."""
    extra, _ = METHOD_CASES[name]
    options = yaml.safe_load((CONF / "method" / f"{name}.yaml").read_text())
    method = create({**options, **extra})
    method.check_sparsity(LADDER)
    model = tiny_model("bert")
    sel = Selector(model, tiny_examples(16), collate, head=head_names(model), progress=False)
    ctx = Context(sel, LADDER, LadderConfig(samples=[8, 4], ratios=[5.0, 1.0]), 8, 0, train_steps=2)
    plans = method.plans(ctx)
    cells = [p.cell for p in plans]
    assert cells == method.cell_names(LADDER, ctx.ladder)
    if method.ratio_fixed:
        assert cells == ["main"]
    elif "ladder" not in method.sparsity_modes:
        assert cells == ["r5", "r1"] and [p.ratio for p in plans] == [5.0, 1.0]
        if plans[0].mask is not None:
            assert [p.mask.count for p in plans] == [sel.k(5.0), sel.k(1.0)]
    else:
        assert len(cells) > 2 and all(c.startswith(("r5-n", "r1-n")) for c in cells)  # the staircase's cells

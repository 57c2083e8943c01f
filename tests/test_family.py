"""The rest of the family on tiny models: Diff pruning, FISH-Tuning (fish_lora, fish_adapter), GMT and ID³.

What each trains is what it claims: counts, which entries, when. GMT zeroes exactly the sub-quantile
gradient entries each step; ID³ never exceeds its budget, reaches it on schedule and keeps frozen entries
bit-identical under weight decay; FISH-Tuning trains as many values as the plain LoRA it is compared with;
Diff pruning's count is exact. Then each runs end to end through run.py (tiny BERT; MiniLM marked slow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import needs_minilm
from tiny import collate, tiny_examples, tiny_model

from fishtune.config import LadderConfig, SparsityConfig
from fishtune.core.masked import MaskedAdamW, trainable_count
from fishtune.core.selection import Selector
from fishtune.methods import Context, create
from fishtune.methods.gmt import GradientMask, quantile
from fishtune.methods.id3 import schedule
from fishtune.models import head_names

ROOT = Path(__file__).resolve().parents[1]
RATIO = 5.0  # percent: a few hundred entries of the tiny BERT


def context(model, ratio=RATIO, train_steps=6, n=8):
    sel = Selector(model, tiny_examples(16), collate, head=head_names(model), progress=False)
    sparsity = SparsityConfig(name=str(ratio), mode="single", ratio=ratio)
    return Context(sel, sparsity, LadderConfig(), num_samples=n, seed=0, train_steps=train_steps)


def train(model, steps, hook=None, weight_decay=0.0, lr=1e-2, after_step=None):
    """The training loop's order (fishtune.train.loop.fit): backward, hook, MaskedAdamW step."""
    opt = MaskedAdamW(model, lr=lr, weight_decay=weight_decay)
    batch = collate(tiny_examples(8, seed=1))
    model.train()
    for step in range(steps):
        model(**batch).loss.backward()
        if hook is not None:
            hook(model, step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if after_step:
            after_step(step)
    return opt


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------- GMT


def test_quantile_matches_torch():
    x = torch.randn(1001, generator=torch.Generator().manual_seed(0)).abs()
    for q in (0.0, 0.2, 0.5, 0.995, 0.9999):
        torch.testing.assert_close(quantile(x, q), torch.quantile(x, q), rtol=0, atol=0)


@pytest.mark.parametrize("scope", ["per_tensor", "global"])
def test_gmt_zeroes_exactly_the_sub_quantile_entries_each_step(scope):
    model = tiny_model()
    ctx = context(model)
    method = create({"name": "gmt", "mask_ratio": 0.3, "scope": scope})
    (plan,) = method.plans(ctx)
    assert plan.mask is None and plan.wrap is None and plan.info["gmt_mask_ratio"] == 0.3
    head = set(ctx.selector.head)
    hook = plan.hook
    checked = []

    def checking(model, step):
        params = dict(model.named_parameters())
        before = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
        hook(model, step)
        masked = [n for n in before if n not in head]
        if scope == "global":
            q = torch.quantile(torch.cat([before[n].abs().reshape(-1) for n in masked]), 0.3)
        for n, g0 in before.items():
            if n in head:
                assert torch.equal(params[n].grad, g0), f"the head's gradient {n} must not be masked"
                continue
            t = torch.quantile(g0.abs().reshape(-1), 0.3) if scope == "per_tensor" else q
            expected = torch.where(g0.abs() < t, torch.zeros_like(g0), g0)
            assert torch.equal(params[n].grad, expected), f"step {step}: {n}"
        checked.append(step)

    before = snapshot(model)
    train(model, 3, checking)
    assert checked == [0, 1, 2]
    after = snapshot(model)
    moved = sum(int((after[n] != before[n]).sum()) for n in before)
    assert moved > 0.5 * sum(p.numel() for p in before.values()), "GMT trains every parameter (momentum included)"


def test_gmt_default_mask_ratio_follows_sparsity_and_accumulation_window():
    model = tiny_model()
    (plan,) = create({"name": "gmt"}).plans(context(model, ratio=0.5))
    assert plan.info["gmt_mask_ratio"] == pytest.approx(0.995) and plan.info["gmt_mask_ratio_from_sparsity"]
    # accumulation=2: the mask of steps 1-2 comes from |g0 + g1|, recomputed at the window's end (step 1)
    hook = GradientMask(["w"], 0.5, accumulation=2)
    w = torch.nn.Parameter(torch.zeros(4))
    mod = torch.nn.Module()
    mod.w = w
    grads = [torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([-1.0, 5.0, -3.0, 0.1])]
    outs = []
    for step, g in enumerate(grads):
        w.grad = g.clone()
        hook(mod, step)
        outs.append(w.grad.clone())
    assert torch.equal(outs[0], torch.tensor([0.0, -2.0, 3.0, 0.0]))  # first step: its own gradient
    # window sum |(0, 3, 0, 0.6)|, median 0.3: keep entries 1 and 3 of step 1's gradient
    assert torch.equal(outs[1], torch.tensor([0.0, 5.0, 0.0, 0.1]))


# ---------------------------------------------------------------- ID³


@pytest.mark.parametrize("kind", ["linear", "geometric"])
def test_id3_schedule_grows_to_budget_and_never_past_it(kind):
    for k, total in ((1000, 7), (5, 10), (1, 3), (300, 1)):
        sizes = [schedule(t, k, total, kind, 0.01) for t in range(2 * total + 2)]
        assert sizes[0] == (min(k, max(1, -(-k // 100))) if total > 1 else k)
        assert all(a <= b for a, b in zip(sizes, sizes[1:])), sizes
        assert max(sizes) == k and sizes[total - 1] == k and all(s <= k for s in sizes)
        if total > 1:
            assert sizes[total - 2] < k or k <= 1


def test_id3_unmasks_step_by_step_and_frozen_entries_stay_bit_identical():
    model = tiny_model()
    ctx = context(model, train_steps=8)
    (plan,) = create({"name": "id3"}).plans(ctx)  # budget at half the training steps: step 4
    k = ctx.selector.k(RATIO)
    assert plan.info["id3_budget"] == k and plan.info["id3_budget_step"] == 4
    hook, head = plan.hook, set(ctx.selector.head)
    initial = snapshot(model)
    seen = []

    def check(step):
        params = dict(model.named_parameters())
        count = sum(int(u.sum()) for u in hook.unmasked.values())
        assert count == hook.counts[-1] == schedule(step, k, 4, "linear", 0.01) <= k
        for n, p in params.items():
            if n in head:
                continue
            frozen = ~hook.unmasked[n]
            assert torch.equal(p[frozen], initial[n][frozen]), f"step {step}: a masked entry of {n} moved"
        if seen:  # unmasked entries stay unmasked
            assert all((hook.unmasked[n] | ~seen[-1][n]).all() for n in seen[-1])
        seen.append({n: u.clone() for n, u in hook.unmasked.items()})

    train(model, 8, plan.hook, weight_decay=0.1, after_step=check)  # weight decay: the restore is needed
    assert hook.counts == [schedule(t, k, 4, "linear", 0.01) for t in range(8)]
    assert hook.counts[3] == k and hook.counts[2] < k and hook.trained_count == k
    moved = sum(int((p != initial[n]).sum()) for n, p in model.named_parameters() if n not in head)
    assert 0 < moved <= k


def test_id3_exploration_prefers_entries_never_tried():
    from fishtune.methods.id3 import Unmasking

    hook = Unmasking(["w"], k=2, total=1, explore=1.0)
    mod = torch.nn.Module()
    mod.w = torch.nn.Parameter(torch.zeros(4))
    hook._start(mod)
    hook.ema["w"] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    hook.tried["w"] = torch.tensor([5.0, 0.0, 5.0, 0.0])
    top = torch.topk(hook.scores(0)["w"], 2).indices.sort().values
    assert top.tolist() == [1, 3]


def test_id3_needs_the_number_of_steps():
    with pytest.raises(ValueError, match="total_steps"):
        create({"name": "id3"}).plans(context(tiny_model(), train_steps=None))


# ---------------------------------------------------------------- FISH-Tuning


def _plain_lora_count():
    """(values plain LoRA trains at RATIO besides the head, its rank), counted as experiment._train_plan does."""
    model = tiny_model()
    ctx = context(model)
    head = sum(p.numel() for n, p in model.named_parameters() if n in ctx.selector.head)
    (plan,) = create({"name": "lora"}).plans(ctx)
    return trainable_count(plan.wrap(model)) - head, plan.info["lora_r"]


@pytest.mark.parametrize("name", ["fish_lora", "fish_adapter"])
def test_fish_tuning_trains_as_many_values_as_plain_lora(name):
    model = tiny_model()
    ctx = context(model)
    head_count = sum(p.numel() for n, p in model.named_parameters() if n in ctx.selector.head)
    lora_count, lora_r = _plain_lora_count()
    (plan,) = create({"name": name}).plans(ctx)
    assert plan.mask is None and plan.info["lora_r"] == lora_r and plan.info["budget"] == lora_count
    assert plan.info["adapter_params"] >= 2 * lora_count and plan.info["warmup_steps"] == 10
    assert torch.equal(model.classifier.weight, context(tiny_model()).model.classifier.weight), "selection copies"
    pre = snapshot(model)
    wrapped = plan.wrap(model)
    assert trainable_count(wrapped) - head_count == lora_count
    # only selected adapter entries (and the head) move; the pretrained weights never do
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
    train(wrapped, 2)
    for n, p in wrapped.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), f"{n} is frozen but moved"
    base = {n.replace("base_model.model.", "").replace(".base_layer", "").replace(".base.", ".")
            .replace(".parametrizations.weight.original", ".weight"): p for n, p in wrapped.named_parameters()}
    for n, p0 in pre.items():
        if n not in ctx.selector.head:
            assert torch.equal(base[n], p0), f"pretrained {n} moved"


def test_fish_lora_without_warmup_selects_from_b_only():
    model = tiny_model()
    (plan,) = create({"name": "fish_lora", "warmup_steps": 0}).plans(context(model))
    assert plan.info["fisher_on"].endswith("(B/up only)") and plan.info["warmup_loss_first_last"] is None
    # A's gradient is 0 at init (B = 0): B holds exactly the budget here (d_in = d_out), and all of it is chosen
    assert plan.info["selected_per_kind"] == {"lora_B": plan.info["budget"]}


def test_fish_tuning_is_deterministic():
    a = create({"name": "fish_lora"}).plans(context(tiny_model()))[0]
    b = create({"name": "fish_lora"}).plans(context(tiny_model()))[0]
    assert a.info["mask_sha256"] == b.info["mask_sha256"]


# ---------------------------------------------------------------- Diff pruning


def test_diff_pruning_count_is_exact_and_selection_leaves_the_model_alone():
    from fishtune.core.masked import apply_mask

    model = tiny_model()
    ctx = context(model)
    before = snapshot(model)
    (plan,) = create({"name": "diff_pruning", "steps": 5}).plans(ctx)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "the diff phase touched the model"
    assert plan.mask.count == ctx.selector.k(RATIO) and plan.wrap is None
    assert plan.info["diff_steps"] == 5 and plan.info["l0_weight"] == 1.25e-7
    assert not set(plan.mask.names()) & set(ctx.selector.head)
    again = create({"name": "diff_pruning", "steps": 5}).plans(context(tiny_model()))[0]
    assert again.mask.sha256() == plan.mask.sha256(), "seeded: the same mask twice"
    apply_mask(model, plan.mask, trainable=ctx.selector.head)
    head = sum(p.numel() for n, p in model.named_parameters() if n in ctx.selector.head)
    assert trainable_count(model) - head == plan.mask.count


def test_diff_pruning_keeps_the_largest_diffs_and_can_start_from_them():
    from fishtune.core.masked import apply_mask, masked_tensors
    from fishtune.methods.diff_pruning import learn_diff

    model = tiny_model()
    ctx = context(model)
    method = create({"name": "diff_pruning", "steps": 5, "init_from_diff": True})
    (plan,) = method.plans(ctx)
    sel = ctx.selector
    idx = sel.draw(8, 0)
    batches = [collate([sel.samples[i] for i in idx[s:s + 8]]) for s in range(0, 8, 8)]
    scores, delta, _, _ = learn_diff(tiny_model(), batches, sel.candidate_names, list(sel.head), method.cfg, 0)
    kept = torch.cat([scores[n].reshape(-1)[plan.mask.indices[n]] for n in plan.mask.indices])
    chosen = {n: plan.mask.dense(n).reshape(-1) if n in plan.mask.indices else torch.zeros(s.numel(), dtype=bool)
              for n, s in scores.items()}
    dropped = torch.cat([scores[n].reshape(-1)[~chosen[n]] for n in scores])
    assert kept.min() >= dropped.max(), "magnitude pruning keeps the largest |z̄ ⊙ w|"
    apply_mask(model, plan.mask, trainable=sel.head)
    plan.wrap(model)
    for name, sd in masked_tensors(model).items():
        torch.testing.assert_close(sd.delta, delta[name].reshape(-1)[sd.indices])


# ---------------------------------------------------------------- end to end through run.py

METHODS = ["diff_pruning", "fish_lora", "fish_adapter", "gmt", "id3"]


def _sweep(tmp_path, model):
    """All four methods (five names) through `run.py -m` in one process; their results by method."""
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", f"model={model}", "task=glue/rte",
           f"method={','.join(METHODS)}", "sparsity=0.5", "train=debug", "data.max_train_samples=32",
           "data.max_eval_samples=16", "fisher.num_samples=8", "task.max_length=128", "name=family"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    results = {}
    for path in (tmp_path / "outputs" / "multirun" / "family").rglob("result.json"):
        result = json.loads(path.read_text())
        assert result["status"] == "ok", result.get("reason")
        assert 0 <= result["score"] <= 1 and result["trainable_params"] > 0
        results[result["method"]] = result
    assert sorted(results) == sorted(METHODS)
    return results


def test_run_py_tiny_bert(tmp_path):
    for method, result in _sweep(tmp_path, "tiny-bert").items():
        k = int(0.5 / 100 * result["total_params"])
        if method in ("diff_pruning", "id3"):
            assert result["trainable_params"] == k
        if method == "gmt":
            assert result["trainable_params"] == result["total_params"]


@pytest.mark.slow
@needs_minilm
def test_run_py_minilm(tmp_path):
    for method, result in _sweep(tmp_path, "minilm").items():
        if method.startswith("fish_"):
            assert result["trainable_params"] == result["info"]["budget"]

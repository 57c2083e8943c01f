"""What the masks hold: the summaries a selection-only run writes, their sketches' overlaps and the masks page,
recomputed from the masks themselves on tiny models."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import needs_minilm
from tiny import collate, tiny_examples, tiny_model

from fishtune.core.ird import fish_ladder, ird_walk, staircase
from fishtune.core.mask_summary import (
    decode_sketch,
    encode_sketch,
    entry_hashes,
    exact_jaccard,
    jaccard,
    kind_of,
    layer_of,
    sketch,
    summarise,
)
from fishtune.core.masks import Mask, mask_from_names
from fishtune.core.selection import Selector

HEAD = ["classifier.weight", "classifier.bias"]
LADDER = ([16, 8, 4, 1], [20.0, 10.0, 5.0, 1.0])


@pytest.fixture(scope="module")
def masks():
    """FISH and IRD along a staircase of a tiny BERT, two seeds: {(method, seed): [Cell, ...]}."""
    model = tiny_model("bert")
    sel = Selector(model, tiny_examples(24), collate, head=HEAD, progress=False)
    out = {}
    for seed in (0, 1):
        out["fish", seed] = fish_ladder(sel, staircase(*LADDER), seed)
        out["ird", seed] = ird_walk(sel, *LADDER, seed)
    sizes = {n: p.numel() for n, p in model.named_parameters() if n not in HEAD}
    return out, sizes


def _random_mask(sizes: dict[str, int], k: int, seed: int, pool: int | None = None) -> Mask:
    """k entries drawn at random among the first ``pool`` flat entries of the model (all when None)."""
    names, offsets = list(sizes), np.cumsum([0, *sizes.values()])
    flat = np.sort(np.random.default_rng(seed).choice(pool or offsets[-1], size=k, replace=False))
    indices, shapes = {}, {}
    for i, n in enumerate(names):
        sel = flat[(flat >= offsets[i]) & (flat < offsets[i + 1])] - offsets[i]
        if sel.size:
            indices[n], shapes[n] = torch.as_tensor(sel, dtype=torch.int64), (sizes[n],)
    return Mask(indices, shapes)


def test_layer_and_kind_of_bert_names():
    assert layer_of("bert.encoder.layer.3.attention.self.query.weight") == "layer3"
    assert kind_of("bert.encoder.layer.3.attention.self.query.weight") == "attn_q"
    assert kind_of("bert.encoder.layer.0.attention.output.dense.weight") == "attn_o"
    assert kind_of("bert.encoder.layer.0.attention.output.LayerNorm.bias") == "layernorm"
    assert kind_of("bert.encoder.layer.0.intermediate.dense.bias") == "bias"
    assert kind_of("bert.encoder.layer.0.output.dense.weight") == "ffn_out"
    assert (layer_of("bert.embeddings.word_embeddings.weight"), kind_of("bert.embeddings.word_embeddings.weight")) \
        == ("embeddings", "word_emb")
    assert (layer_of("bert.pooler.dense.bias"), kind_of("bert.pooler.dense.bias")) == ("pooler", "pooler")
    assert layer_of("classifier.weight", HEAD) == kind_of("classifier.weight", HEAD) == "head"
    assert kind_of("model.layers.1.mlp.down_proj.weight") == "ffn_out"  # Llama


def test_shares_per_layer_and_kind_add_up_to_the_mask(masks):
    cells, sizes = masks
    for cell in itertools.chain.from_iterable(cells.values()):
        s = summarise(cell.mask, sizes, HEAD)
        assert s["count"] == cell.mask.count
        assert sum(s["layers"].values()) == sum(s["kinds"].values()) == cell.mask.count
        assert sum(s["layer_sizes"].values()) == sum(s["kind_sizes"].values()) == s["universe"] == sum(sizes.values())
        # each layer's count recomputed from the mask's own tensors
        for layer, n in s["layers"].items():
            assert n == sum(int(i.numel()) for name, i in cell.mask.indices.items() if layer_of(name) == layer)


def test_a_whole_tensor_lands_in_its_layer_and_kind(masks):
    model = tiny_model("bert")
    name = "bert.encoder.layer.1.attention.self.value.weight"
    s = summarise(mask_from_names(model, [name]), masks[1], HEAD)
    assert s["layers"] == {**dict.fromkeys(s["layers"], 0), "layer1": 256}
    assert s["kinds"]["attn_v"] == 256 and sum(s["kinds"].values()) == 256


def test_hash_is_the_documented_one():
    """splitmix64(fnv1a64(name) + index), recomputed in plain Python: committed sketches depend on it."""
    def fnv(text):
        h = 0xCBF29CE484222325
        for b in text.encode():
            h = ((h ^ b) * 0x100000001B3) % 2**64
        return h

    def splitmix(x):
        z = (x + 0x9E3779B97F4A7C15) % 2**64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        return z ^ (z >> 31)

    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert entry_hashes(name, [0, 7, 2**40]).tolist() == [splitmix((fnv(name) + i) % 2**64) for i in (0, 7, 2**40)]


def test_sketch_encoding_round_trips(masks):
    for cell in masks[0]["ird", 0]:
        values = sketch(cell.mask, 64)
        assert np.array_equal(decode_sketch(encode_sketch(values)), values) and values.size == min(64, cell.mask.count)
    with pytest.raises(ValueError, match="truncated"):
        decode_sketch("gA==")  # one byte that says more follow


def test_jaccard_of_a_mask_with_itself_is_one(masks):
    cells, _ = masks
    for cell in cells["fish", 0]:
        assert exact_jaccard(cell.mask, cell.mask) == 1.0
        for k in (8, 10**6):
            v = sketch(cell.mask, k)
            assert jaccard(v, cell.mask.count, v, cell.mask.count, k)[0] == 1.0


def test_sketch_jaccard_is_exact_for_small_masks(masks):
    cells, _ = masks
    flat = [c.mask for c in itertools.chain.from_iterable(cells.values())]
    for a, b in itertools.combinations(flat, 2):
        k = max(a.count, b.count)  # every sketch holds its whole mask
        j, se, exact = jaccard(sketch(a, k), a.count, sketch(b, k), b.count, k)
        assert exact and se == 0 and j == pytest.approx(exact_jaccard(a, b), abs=1e-12)


def test_sketch_jaccard_estimate_is_within_its_standard_error(masks):
    """Masks larger than the sketch: the bottom-k estimate lies within 4 standard errors of the exact value,
    and its errors over many pairs scatter as the standard error says."""
    sizes, k = masks[1], 256
    z = []
    for seed in range(30):
        a = _random_mask(sizes, 1500, 2 * seed, pool=4000)
        b = _random_mask(sizes, 1200 + 20 * seed, 2 * seed + 1, pool=4000)
        truth = exact_jaccard(a, b)
        j, se, exact = jaccard(sketch(a, k), a.count, sketch(b, k), b.count, k)
        assert not exact and 0 < truth < 1
        assert abs(j - truth) < 4 * se
        z.append((j - truth) / se)
    assert 0.5 < np.std(z) < 1.6


def test_masks_page_numbers_from_the_masks(masks, tmp_path):
    """Summary files of the tiny masks -> the page's shares (each mask's add up to 1) and overlaps (IRD vs FISH
    equal to the exact Jaccard of the masks; a method across seeds likewise)."""
    from fishtune.report.masks import load_summaries, mask_overlaps, mask_shares, write_masks_page

    cells, sizes = masks
    for (method, seed), walk in cells.items():
        for c in walk:
            record = {"task": "rte", "model": "tiny", "method": method, "seed": seed, "cell": c.name, "ratio": c.ratio,
                      "samples": c.samples, "zero_fisher": c.info["zero_fisher"], **summarise(c.mask, sizes, HEAD)}
            path = tmp_path / "runs" / method / f"seed{seed}" / "selection" / f"{c.name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record))
    df = load_summaries(tmp_path / "runs")
    assert len(df) == 4 * 7
    for by in ("layer", "kind"):
        long = mask_shares(df[df["seed"] == 0], by)
        assert long.groupby(["method", "cell"])["share"].sum().to_numpy() == pytest.approx(1.0)
    pairs = mask_overlaps(df)
    methods = pairs[pairs["comparison"] == "methods"].set_index(["method", "seed", "cell"])
    by_name = {(m, s): {c.name: c.mask for c in walk} for (m, s), walk in cells.items()}
    for name, mask in by_name["ird", 1].items():
        assert methods.loc[("fish vs ird", 1, name), "jaccard"] == pytest.approx(
            exact_jaccard(by_name["fish", 1][name], mask))
    seeds = pairs[(pairs["comparison"] == "seeds") & (pairs["method"] == "ird")].set_index("cell")
    for name, mask in by_name["ird", 1].items():
        assert seeds.loc[name, "jaccard"] == pytest.approx(exact_jaccard(by_name["ird", 0][name], mask))
    written = write_masks_page(tmp_path / "runs", tmp_path / "page", formats=("png",))
    assert {p.name for p in written} >= {"results.csv", "shares_layer.csv", "overlaps.csv", "zero_fisher.csv",
                                         "overlaps.png", "README.md"}


@needs_minilm
def test_selection_only_trains_nothing_and_writes_no_score(tmp_path, compose, monkeypatch):
    """select_only=true on a tiny BERT ladder: the masks and one summary per cell, result.json ok without a
    score (the fine-tuning tables leave it out), and the training loop is never entered."""
    from omegaconf import OmegaConf

    from fishtune.config import validate
    from fishtune.report.build import build_report
    from fishtune.report.collect import collect
    from fishtune.runner import experiment
    from fishtune.runner.results import load_run

    def no_training(*args, **kwargs):
        raise AssertionError("select_only must not fine-tune")

    monkeypatch.setattr(experiment, "fit", no_training)
    cfg = compose(["model=tiny-bert", "train=debug", "task=glue/rte", "data.max_train_samples=48",
                   "data.max_eval_samples=16", "method=ird", "sparsity=ladder", "ladder.samples=[16,8,4,1]",
                   "ladder.ratios=[20,10,5,1]", "select_only=true", "train.progress=false"])
    rc, config = validate(cfg), OmegaConf.to_container(cfg, resolve=True)
    out = tmp_path / "runs" / "job"
    result = experiment.run_experiment(rc, out, config, log=lambda *_: None)
    assert result["status"] == "ok" and result["selection_only"] and result.get("score") is None
    assert len(result["selected"]) == 7 and not result["cells"]
    assert load_run(out / "result.json").selection_only
    for s in result["selected"]:
        summary = json.loads((out / s["summary"]).read_text())
        mask = Mask.load(out / "masks" / f"{s['cell']}.safetensors")
        assert summary["count"] == mask.count == s["count"] and summary["mask_sha256"] == mask.sha256()
        assert summary["zero_fisher"] == s["info"]["zero_fisher"]
    assert collect(tmp_path / "runs").empty
    assert experiment.config_hash({**config, "select_only": False}) != result["config_hash"]
    assert experiment.config_hash({**config, "select_only": False}) == experiment.config_hash(
        {k: v for k, v in config.items() if k != "select_only"})  # false: the key of results before the option
    written = {p.name for p in build_report(tmp_path / "runs", tmp_path / "page", formats=("png",))}
    assert "shares_kind.csv" in written and "table2.md" not in written
    again = experiment.run_experiment(rc, out, config, log=lambda *_: None)  # resumed: nothing recomputed
    assert again["config_hash"] == result["config_hash"]

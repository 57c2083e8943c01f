"""The SST-2 case study's page on planted results with known answers: Table 3's arrows follow the paired
interval, every choice among cells or repeats is made on the holdout (dev scores changed: same choice), and the
page builds from whatever has finished (some seeds, some cells, cell files without their run's result.json)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fishtune.report import table3
from fishtune.report.build import build_report
from fishtune.report.case import STAIRCASE, case_verdicts, cell_tests, fig2_pair, grid_surface, table3_markdown
from fishtune.report.collect import collect
from fishtune.report.paper import TABLE3
from fishtune.report.table import lr_markdown, table2_data
from fishtune.runner.results import SCHEMA, load_results, write_json

SEEDS = range(1, 9)


def plant(root, method, sparsity, seed, cells, holdout=True, lr=None, cell_files_only=False, zero_fisher=None):
    """One run; ``cells`` maps (ratio, samples or None) -> dev score (the epoch chosen), or a tuple (dev, holdout,
    dev_best). Without ``holdout`` the result is as written before model selection moved off the dev set."""
    folder = root / "sst2" / "minilm" / method / sparsity / f"seed{seed}"
    config = {"method": {"name": method, **({"zero_fisher": "exclude"} if method == "reverse_ird" else {})}}
    run = {"schema": SCHEMA, "task": "sst2", "model": "minilm", "method": method, "sparsity": sparsity, "seed": seed,
           "status": "ok", "ratio_fixed": method in ("dense", "bitfit"), "majority": 0.5, "config": config}
    out = []
    for (r, n), v in cells.items():
        dev, held, best = v if isinstance(v, tuple) else (v, v, v)
        cell = {"cell": f"r{r:g}" + (f"-n{n}" if n else ""), "ratio": r, "samples": n, "status": "ok", "score": dev,
                "metrics": {"accuracy": dev}, "trainable_params": 1000, "info": {"lr": lr} if lr else {},
                "history": [{"epoch": 1, "step": 10, "score": dev}]}
        if holdout:
            cell |= {"dev_best": best, "holdout_score": held, "selected_on": "holdout"}
            cell["history"][0]["holdout"] = held
        if method == "reverse_ird":
            cell["info"] |= {"zero_fisher": 0 if zero_fisher is None else zero_fisher, "positive_candidates": 5000}
        if cell_files_only:
            write_json(folder / "cells" / f"{cell['cell']}.json", {**run, **cell})
        out.append(cell)
    if not cell_files_only:
        write_json(folder / "result.json", {**run, "cells": out})


def staircase(base, shift=None):
    return {c: base + (shift or {}).get(c, 0.0) for c in STAIRCASE}


def plant_case(root):
    """8 seeds: IRD clearly above FISH at (0.5, 32), clearly below at (0.02, 1), equal up to symmetric noise at
    (2.5, 128), higher on average but noisy at (0.1, 16); reverse IRD 2 points under IRD everywhere; a FISH grid
    for 3 seeds; dense, LoRA at 0.5 %."""
    rng = np.random.default_rng(0)
    for seed in SEEDS:
        base = 0.80 + 0.02 * rng.standard_normal()  # seeds differ a lot: only pairing separates the methods
        fish = staircase(base)
        ird = staircase(base, {(0.5, 32): 0.02 + 0.002 * rng.standard_normal(), (0.02, 1): -0.03,
                               (2.5, 128): 0.01 * (-1) ** seed, (0.1, 16): 0.01 + 0.05 * (-1) ** seed})
        plant(root, "fish", "ladder", seed, fish)
        plant(root, "ird", "ladder", seed, ird)
        plant(root, "reverse_ird", "ladder", seed, {c: s - 0.02 for c, s in ird.items()})
        plant(root, "dense", "ladder", seed, {(100.0, None): base + 0.05})
        plant(root, "lora", "ladder", seed, {(0.5, None): base + 0.01})
        if seed <= 3:
            plant(root, "fish", "grid", seed, {(r, n): base + r / 100 + n / 10000
                                               for r in (2.5, 0.5, 0.1, 0.02) for n in (1, 16, 32, 128)})
    return root


@pytest.fixture
def case(tmp_path):
    return plant_case(tmp_path)


def test_table3_arrows_follow_the_paired_interval(case):
    t = table3(collect(case)).set_index("cell")
    assert list(t.index) == [f"r{r:g}-n{n}" for r, n in STAIRCASE] and (t["n"] == 8).all()
    assert t.loc["r0.5-n32", "arrow"] == "▲" and t.loc["r0.02-n1", "arrow"] == "▼"
    assert t.loc["r2.5-n128", "arrow"] == "=" and t.loc["r0.1-n1", "arrow"] == "="
    noisy = t.loc["r0.1-n16"]  # IRD's mean is higher (a mean-only arrow would say ▲), its interval holds 0
    assert noisy["ird_mean"] > noisy["fish_mean"] and noisy["ci_low"] < 0 < noisy["ci_high"] and noisy["arrow"] == "="
    assert t.loc["r0.02-n1", "diff"] == pytest.approx(-0.03) and t.loc["r0.02-n1", "p"] == pytest.approx(2 / 2**8)
    # the paper's values beside ours, with its own arrows
    assert t.loc["r2.5-n128", "paper_fish"] == pytest.approx(0.922018349) and t.loc["r2.5-n128", "paper_arrow"] == "="
    assert t.loc["r0.5-n16", "paper_arrow"] == "▲" and t.loc["r2.5-n32", "paper_arrow"] == "▼"
    md = table3_markdown(table3(collect(case)))
    rows = [line for line in md.splitlines() if line.startswith("| **")]
    assert [r.split(" |")[0] for r in rows] == ["| **128**", "| **32**", "| **16**", "| **1**"]
    assert "| samples \\ ratio | 2.5 % | 0.5 % | 0.1 % | 0.02 % |" in md and "paper 92.20 \\| 92.20 =" in md
    pair = fig2_pair(collect(case))  # Fig. 2 draws these arrows, not the sign of the difference of means
    i, j = pair.ratios.index(0.1), pair.samples.index(16)
    assert pair.marks[i, j] == 0 and pair.marks[pair.ratios.index(0.5), pair.samples.index(32)] == 1
    assert np.isnan(pair.marks[pair.ratios.index(2.5), pair.samples.index(1)])  # off the staircase


def test_no_arrow_below_three_seeds(tmp_path):
    for seed in (1, 2):
        plant(tmp_path, "fish", "ladder", seed, staircase(0.8))
        plant(tmp_path, "ird", "ladder", seed, staircase(0.9))
    t = table3(collect(tmp_path))
    assert (t["arrow"] == "").all() and (t["n"] == 2).all()


def test_paper_table3_is_counts_of_the_872_dev_sentences():
    assert len(TABLE3) == 14 and {(r, n) for _, r, n in TABLE3} == set(STAIRCASE)
    for value in TABLE3.values():
        assert abs(value * 872 - round(value * 872)) < 1e-5


def test_verdicts_pool_the_staircase_and_compare_with_dense(case):
    v = case_verdicts(collect(case)).set_index("comparison")
    assert v.loc["IRD − Reverse IRD (staircase)", "mean"] == pytest.approx(0.02)
    assert v.loc["IRD − Reverse IRD (staircase)", "verdict"] == "higher"
    assert v.loc["IRD − Reverse IRD (staircase)", "p"] == pytest.approx(2 / 2**8)
    assert v.loc["LoRA − Dense (0.5 %)", "mean"] == pytest.approx(-0.04)
    assert v.loc["FISH Mask − Dense (0.5 %)", "verdict"] == "lower" and v.loc["FISH Mask − Dense (0.5 %)", "n"] == 8
    assert v.loc["IRD − FISH Mask (staircase)", "cells"] == 7


def test_a_seeds_ladder_and_grid_runs_are_one_seed(case):
    """FISH's grid runs (seeds 1-3) are not more seeds beside its ladder runs, and Table 2 takes the ladder."""
    from fishtune.report.stats import above_majority

    df = collect(case)
    assert above_majority(df).set_index("method").loc["fish", "n"] == 8
    fish = table2_data(df).set_index(["method", "ratio_key"]).loc[("fish", 0.1)]
    ladder = df[(df["method"] == "fish") & (df["kind"] == "ladder") & np.isclose(df["ratio"], 0.1)]
    assert fish["n_ok"] == 8 and fish["mean"] == pytest.approx(ladder.groupby("seed")["score"].max().mean())


def test_fig1_and_fig5_data(case):
    df = collect(case)
    g = grid_surface(df).set_index(["ratio", "samples"])
    assert len(g) == 16 and (g["n"] == 3).all()
    assert g.loc[(2.5, 128), "mean"] - g.loc[(0.02, 1), "mean"] == pytest.approx(2.48 / 100 + 127 / 10000)
    r = cell_tests(df, "reverse_ird", "ird").set_index("cell")
    assert (r["arrow"] == "▲").all() and (r["reverse_ird_zero_fisher"] == 0).all()


def test_every_choice_is_on_the_holdout_whatever_the_dev_scores(tmp_path):
    """Two learning rates of one seed, and two 0.5 % cells of one ladder: the holdout picks; changing only the
    dev scores (so dev would pick the other) changes no choice, only the numbers shown."""
    def sweep(root, dev_a, dev_b):
        plant(root / "a", "lora", "0.5", 1, {(0.5, None): (dev_a, 0.90, dev_a)}, lr=1e-3)
        plant(root / "b", "lora", "0.5", 1, {(0.5, None): (dev_b, 0.70, dev_b)}, lr=3e-3)
        plant(root / "c", "fish", "ladder", 1, {(0.5, 32): (dev_a, 0.60, dev_a), (0.5, 16): (dev_b, 0.65, dev_b)})
        plant(root / "d", "dense", "ladder", 1, {(100.0, None): 0.5})
        return collect(root)

    for dev_a, dev_b in ((0.80, 0.70), (0.70, 0.80)):
        df = sweep(tmp_path / f"{dev_a}", dev_a, dev_b)
        long = table2_data(df).set_index(["method", "ratio_key"])
        assert long.loc[("lora", 0.5), "mean"] == pytest.approx(dev_a)  # lr 1e-3, the holdout's pick
        assert long.loc[("fish", 0.5), "mean"] == pytest.approx(dev_b)  # cell r0.5-n16, the holdout's pick
        assert "| 0.001 (holdout) |" in lr_markdown(df)
        v = case_verdicts(df).set_index("comparison")
        assert v.loc["FISH Mask − Dense (0.5 %)", "mean"] == pytest.approx(dev_b - 0.5)


def test_old_results_without_a_holdout(tmp_path):
    for seed in (1, 2, 3):
        plant(tmp_path, "fish", "ladder", seed, staircase(0.8), holdout=False)
        plant(tmp_path, "ird", "ladder", seed, staircase(0.8), holdout=False)
    df = collect(tmp_path)
    assert (df["selected_on"] == "dev").all() and (df["dev_best"] == df["score"]).all()
    assert df["holdout_score"].isna().all()
    build_report(tmp_path, tmp_path / "out", formats=("png",))
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "chose their epoch on the dev set" in readme and "## The SST-2 case study" in readme
    assert not (tmp_path / "out" / "case_fig2_dev_best.png").exists()


def test_page_builds_from_what_has_finished(tmp_path):
    """Runs arrive over days: two seeds of FISH, one of IRD with three cells, one IRD run whose cells exist but
    whose result.json does not yet, no reverse IRD, no grid, no dense."""
    plant(tmp_path, "fish", "ladder", 1, staircase(0.8))
    plant(tmp_path, "fish", "ladder", 2, dict(list(staircase(0.8).items())[:4]))
    plant(tmp_path, "ird", "ladder", 1, dict(list(staircase(0.81).items())[:3]))
    plant(tmp_path, "ird", "ladder", 2, {(2.5, 128): 0.83}, cell_files_only=True)
    df = collect(tmp_path)
    lone = df[(df["method"] == "ird") & (df["seed"] == 2)]
    assert len(lone) == 1 and lone["score"].item() == pytest.approx(0.83) and lone["dev_best"].item() == 0.83
    finished, partial = load_results(tmp_path), load_results(tmp_path, in_progress=True)  # the library's reader
    assert len(partial) == len(finished) + 1 and len(finished) == 7 + 4 + 3
    row = partial[(partial["method"] == "ird") & (partial["seed"] == 2)].iloc[0]
    assert row["cell"] == "r2.5-n128" and row["score"] == pytest.approx(0.83) and row["run_seconds"] is None
    t = table3(df).set_index("cell")
    assert t.loc["r2.5-n128", "n"] == 2 and t.loc["r0.02-n1", "n"] == 0 and math.isnan(t.loc["r0.02-n1", "ird_mean"])
    written = build_report(tmp_path, tmp_path / "out", formats=("png",))
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "No FISH grid run has finished yet." in readme and "No seed has both finished yet." in readme
    assert "![Fig. 2](case_fig2.png)" in readme and "best dev epoch" in readme
    assert {p.name for p in written} >= {"case_table3.md", "case_verdicts.csv", "case_fig2.png",
                                         "case_fig2_dev_best.png"}


def test_full_page_files_and_text(case):
    out = case / "out"
    (case / "NOTES.md").write_text("# SST-2 case study\n\nProtocol.\n")
    names = {p.name for p in build_report(case, out, formats=("png",))}
    assert {"case_fig1.png", "case_fig5.png", "case_table3.csv", "case_reverse.csv", "case_grid.csv"} <= names
    readme = (out / "README.md").read_text()
    assert readme.startswith("# SST-2 case study") and "zero_fisher=exclude" in readme
    assert "### Table 3 (holdout-chosen)" in readme and "### Verdicts (best dev epoch)" in readme
    assert "![case_fig2](case_fig2.png)" not in readme  # the case's figures sit in its section, once

"""The reproduction report's parts on synthetic results with known answers: the majority-class floor, the
paper's Table 2 beside ours, the training curves, the learning-rate table and where each run ran."""

from __future__ import annotations

import pytest
from conftest import ROOT
from test_report import run

from fishtune.data.metrics import majority_score
from fishtune.report.build import build_report, where_it_ran
from fishtune.report.case_page import CSV_FILES, MD_FILES
from fishtune.report.collect import collect
from fishtune.report.curves import curve_data
from fishtune.report.paper import paper_beside_ours, paper_score
from fishtune.report.stats import above_majority, above_majority_markdown
from fishtune.report.table import lr_markdown, table2_data
from fishtune.runner.results import read_result, write_json


def test_majority_score_per_metric():
    assert majority_score("accuracy", [0, 0, 1], [0, 1, 1, 1]) == pytest.approx(0.25)
    assert majority_score("matthews", [1, 1, 0], [0, 1, 1]) == 0.0
    assert majority_score("f1_accuracy", [1, 1, 0], [1, 0]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert majority_score("pearson_spearman", [1.0, 4.0], [0.5, 3.0, 2.0]) == 0.0  # a constant: no correlation
    # a mean whose float std is not exactly 0 (it was NaN on STS-B)
    assert majority_score("pearson_spearman", [0.1, 0.2, 0.4, 3.3, 2.9], [0.5, 3.0, 2.0, 1.1, 4.2, 0.3]) == 0.0


def _with(path, **fields):
    data = read_result(path)
    data.update(fields)
    write_json(path, data)


def test_majority_row_is_listed_and_never_bold(tmp_path):
    r = tmp_path / "s"
    _with(run(r, "rte", "fish", "0.5", seed=1, score=0.50), majority=0.53)
    _with(run(r, "rte", "dense", "0.5", seed=1, score=0.60, trainable_ratio=100.0), majority=0.55)
    long = table2_data(collect(r))
    row = long[long["method"] == "majority"].iloc[0]
    assert row["mean"] == pytest.approx(0.54) and row["text"] == "54.0" and not row["best"]
    assert long.loc[long["method"] == "dense", "best"].item()


def test_a_learning_rate_sweep_shows_its_best_lr_in_table2(tmp_path):
    """Runs of one method and seed at several lrs are one entry, the best (the order of the folders, which
    decided it before, no longer does); a real second seed still counts as a seed."""
    r = tmp_path / "s"
    for i, (lr, score) in enumerate(((1e-4, 0.75), (2e-4, 0.81), (5e-4, 0.51))):
        _with(run(r / f"a{i}", "sst2", "dense", "0.5", seed=42, score=score, trainable_ratio=100.0),
              info={"lr": lr})
    _with(run(r / "b", "sst2", "fish", "0.5", seed=1, score=0.6), info={"lr": 1e-3})
    _with(run(r / "c", "sst2", "fish", "0.5", seed=2, score=0.7), info={"lr": 1e-3})
    long = table2_data(collect(r)).set_index("method")
    assert long.loc["dense", "mean"] == pytest.approx(0.81) and long.loc["dense", "n_ok"] == 1
    assert long.loc["fish", "mean"] == pytest.approx(0.65) and long.loc["fish", "n_ok"] == 2


def test_above_majority_finds_a_method_that_learned_and_none_that_did_not(tmp_path):
    r = tmp_path / "s"
    for seed, majority in ((1, 0.50), (2, 0.53), (3, 0.48)):
        _with(run(r, "rte", "dense", "0.5", seed=seed, score=majority + 0.10), majority=majority)  # learned
        _with(run(r, "rte", "lora", "0.5", seed=seed, score=majority + (0.01, -0.012, 0.002)[seed - 1]),
              majority=majority)  # noise around the floor
        _with(run(r, "rte", "bitfit", "0.5", seed=seed, score=majority - 0.05 - 0.001 * seed), majority=majority)
        if seed < 3:
            _with(run(r, "rte", "random", "0.5", seed=seed, score=majority + 0.2), majority=majority)
    # a ladder run counts its best cell
    _with(run(r, "rte", "fish", "ladder", seed=1, cells={(2.5, 8): 0.40, (0.5, 8): 0.65}), majority=0.5)
    # two learning rates of one method (a sweep, same seed) are two rows, not two seeds
    _with(run(r / "lr1", "mrpc", "gmt", "0.5", seed=1, score=0.7), majority=0.6, info={"lr": 0.01})
    _with(run(r / "lr2", "mrpc", "gmt", "0.5", seed=1, score=0.8), majority=0.6, info={"lr": 0.1})
    a = above_majority(collect(r)).set_index("method")
    assert a.loc["gmt (lr 0.01)", "n"] == 1 and a.loc["gmt (lr 0.1)", "mean"] == pytest.approx(0.2)
    assert a.loc["dense", "verdict"] == "above" and a.loc["dense", "mean"] == pytest.approx(0.10)
    assert a.loc["lora", "verdict"] == "not above (within noise)"
    assert a.loc["bitfit", "verdict"] == "below"
    assert a.loc["random", "verdict"] == "needs 3 seeds" and a.loc["random", "n"] == 2
    assert a.loc["fish", "mean"] == pytest.approx(0.15) and a.loc["fish", "n"] == 1
    md = above_majority_markdown(a.reset_index())
    assert "| m | rte | dense | 3 | 50.3 | +10.0 |" in md


def test_paper_numbers_and_ours_beside_them(tmp_path):
    assert paper_score("ird", 0.5, "rte") == (72.6, "bert-large")
    assert paper_score("fish", 0.02, "cola") == (53.6, "bert-base")
    assert paper_score("dense", "intrinsic", "mnli") == (pytest.approx(86.55), "bert-large")
    assert paper_score("random", 0.1, "rte") is None and paper_score("fish", 0.5, "wnli") is None
    r = tmp_path / "s"
    run(r, "rte", "ird", "0.5", seed=1, score=0.70)
    run(r, "rte", "ird", "0.5", seed=2, score=0.72)
    run(r, "rte", "gmt", "0.5", score=0.6)  # no counterpart in the paper: not listed
    md = paper_beside_ours(table2_data(collect(r)), "m")
    assert "| IRD | 0.5% | BERT-large | 71.0 ± 1.4 / 72.6 |" in md and "GMT" not in md


def test_curves_follow_the_best_cell_at_the_ratio_mean_over_seeds(tmp_path):
    r = tmp_path / "s"
    for seed, (a, b) in ((1, (0.5, 0.7)), (2, (0.6, 0.8))):
        path = run(r, "rte", "fish", "ladder", seed=seed, cells={(2.5, 8): 0.9, (0.5, 8): b - 0.1, (0.5, 4): b})
        data = read_result(path)
        for c in data["cells"]:  # only the best 0.5 % cell has the curve (a, b); the others a flat 0
            best = c["ratio"] == 0.5 and c["samples"] == 4
            curve = ((1, a), (2, b)) if best else ((1, 0.0), (2, 0.0))
            c["history"] = [{"epoch": e, "step": e, "score": s} for e, s in curve]
        write_json(path, data)
    dense = run(r, "rte", "dense", "0.5", seed=1, score=0.9, trainable_ratio=100.0)
    _with(dense, history=[{"epoch": 1, "step": 1, "score": 0.85}, {"epoch": 2, "step": 2, "score": 0.9}])
    data = curve_data(collect(r))
    fish = data[data["method"] == "fish"].set_index("epoch")
    assert fish.loc[1, "mean"] == pytest.approx(0.55) and fish.loc[2, "mean"] == pytest.approx(0.75)
    assert fish.loc[2, "min"] == pytest.approx(0.7) and fish.loc[2, "n"] == 2
    assert list(data.loc[data["method"] == "dense", "mean"]) == pytest.approx([0.85, 0.9])


def test_learning_rate_table_and_where_it_ran(tmp_path):
    r = tmp_path / "s"
    for lr, score in ((1e-3, 0.7), (3e-3, 0.8)):
        path = run(r / f"lr{lr}", "sst2", "lora", "0.5", score=score)
        data = read_result(path)
        data.update(info={"lr": lr}, device="cpu", timings={"total_seconds": 30.0})
        write_json(path, data)
    df = collect(r)
    md = lr_markdown(df)
    assert "| m | SST-2 | LoRA | 0.5% | 70.0 | 80.0 |" in md and "lr 0.003" in md
    where = where_it_ran(df)
    assert "| SST-2 | cpu | 2 | 2 | 1.0 |" in where and "RTE" in where.splitlines()[-1]
    assert lr_markdown(collect(r / "lr0.001")) == ""  # one lr: no sweep table


def test_notes_open_the_readme(tmp_path):
    r = tmp_path / "s"
    run(r, "rte", "fish", "0.5", score=0.7)
    (r / "NOTES.md").write_text("# MiniLM reproduction\n\nProtocol in words.\n")
    build_report(r, tmp_path / "out", formats=("png",))
    readme = (tmp_path / "out" / "README.md").read_text()
    assert readme.startswith("# MiniLM reproduction\n\nProtocol in words.\n") and "## Table 2" in readme


@pytest.mark.parametrize("page", [".", *(p.parent.name for p in sorted((ROOT / "docs" / "report").glob("*/runs")))])
def test_committed_report_is_regenerated_from_the_committed_runs(tmp_path, page):
    """Each docs/report page's tables are what `make report` draws from its runs/: nothing edited by hand."""
    where = ROOT / "docs" / "report" / page
    if not any((where / "runs").rglob("result.json")):
        pytest.skip("no committed runs")
    built = {p.name for p in build_report(where / "runs", tmp_path, formats=("png",))}
    case = [n for n in (*CSV_FILES, *MD_FILES) if n in built]  # the SST-2 case study's, where the page has one
    names = sorted(built & {"table2.md", "paper.md", "ird_vs_fish.csv", "above_majority.csv", "arrows.md",
                            "curves.csv",  # a page of fine-tuning runs; a page of selection-only runs (masks):
                            "shares_layer.csv", "shares_kind.csv", "overlaps.csv", "zero_fisher.csv", *case})
    assert names, f"{where}: the report wrote none of the compared tables"
    for name in names:
        committed = where / name
        assert committed.read_text() == (tmp_path / name).read_text(), f"{committed}: run make report"

"""fishtune.report: Table 2, ladder heatmaps, arrow counts, scaling, CLI, Hydra callback and notebook.

Fast tests write synthetic result.json files with known scores (through fishtune.runner.results.write_json, in the
schema training writes) and check the data behind each picture; slow tests run a real tiny sweep with
`run.py -m` and build the report (and the notebook) on it.
"""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fishtune.runner.results import SCHEMA, write_json

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "src" / "fishtune" / "report"
LADDER = [(2.5, 128), (0.5, 128), (0.5, 32), (0.1, 32), (0.1, 16), (0.02, 16), (0.02, 1)]


def run(root: Path, task: str, method: str, sparsity: str, seed: int = 42, score: float | None = None,
        cells: dict | None = None, status: str = "ok", reason: str | None = None, model: str = "m",
        trainable_ratio: float | None = None) -> Path:
    """Write one result.json; ``cells`` maps (ratio, samples) -> score (None: a failed cell)."""
    path = root / task / model / method / sparsity / f"seed{seed}" / "result.json"
    data = {"schema": SCHEMA, "task": task, "model": model, "method": method, "sparsity": sparsity, "seed": seed,
            "status": status, "reason": reason, "ratio_fixed": method in ("dense", "bitfit")}  # as the Method says
    if cells is not None:
        data["cells"] = [{"cell": f"r{r:g}-n{n}", "ratio": r, "samples": n, "score": s,
                          "metrics": {} if s is None else {"accuracy": s},
                          "status": "failed" if s is None else "ok",
                          **({"reason": "loss is nan"} if s is None else {})} for (r, n), s in cells.items()]
    elif status == "ok":
        ratio = float(sparsity) if sparsity.replace(".", "").isdigit() else None
        data.update(ratio=ratio, score=score, metrics={"accuracy": score},
                    trainable_ratio=trainable_ratio if trainable_ratio is not None else ratio)
    write_json(path, data)
    return path


@pytest.fixture
def table_sweep(tmp_path):
    """Table 2 data: rte and mrpc; fish has two seeds on rte; lora failed on mrpc; bitfit skipped on mrpc;
    random never ran on mrpc."""
    r = tmp_path / "sweep"
    run(r, "rte", "dense", "0.5", score=0.70, trainable_ratio=100.0)
    run(r, "mrpc", "dense", "0.5", score=0.80, trainable_ratio=100.0)
    run(r, "rte", "bitfit", "0.5", score=0.60, trainable_ratio=0.08)
    run(r, "mrpc", "bitfit", "0.5", status="skipped", reason="no data")
    run(r, "rte", "fish", "0.5", seed=1, score=0.72)
    run(r, "rte", "fish", "0.5", seed=2, score=0.76)
    run(r, "mrpc", "fish", "0.5", score=0.81)
    run(r, "rte", "lora", "0.5", score=0.65)
    run(r, "mrpc", "lora", "0.5", status="failed", reason="out of memory")
    run(r, "rte", "random", "0.5", score=0.55)
    run(r, "rte", "fish", "0.1", score=0.68)
    return r


def test_table2_values_bold_missing(table_sweep):
    from fishtune.report.collect import collect
    from fishtune.report.table import table2_data, table2_frame, table2_latex, table2_markdown

    long = table2_data(collect(table_sweep))
    text, bold = table2_frame(long, "m")
    rows = {(m, r): i for i, (m, r) in enumerate(zip(text["Method"], text["Params Ratio"]))}
    assert list(text["Method"])[:2] == ["Dense Fine-tuning", "BitFit"]
    assert list(text.columns) == ["Method", "Params Ratio", "MRPC", "RTE", "Avg"]
    d, b = rows[("Dense Fine-tuning", "100%")], rows[("BitFit", "0.08%")]
    f5, f1 = rows[("FISH Mask", "0.5%")], rows[("FISH Mask", "0.1%")]
    lo, ra = rows[("LoRA", "0.5%")], rows[("Random Mask", "0.5%")]
    assert text.loc[d, "RTE"] == "70.0" and text.loc[d, "MRPC"] == "80.0"
    assert text.loc[f5, "RTE"] == f"74.0 ± {np.std([0.72, 0.76], ddof=1) * 100:.1f}"  # mixed seeds: mean ± std
    assert text.loc[f5, "MRPC"] == "81.0"
    assert text.loc[b, "MRPC"] == "skipped" and text.loc[lo, "MRPC"] == "failed"
    assert text.loc[ra, "MRPC"] == "–" and text.loc[f1, "MRPC"] == "–"  # no run: a dash
    assert text.loc[f1, "RTE"] == "68.0"
    assert bold.loc[f5, "RTE"] and bold.loc[f5, "MRPC"]  # best per column
    assert bold[["RTE", "MRPC"]].to_numpy().sum() == 2
    assert text.loc[d, "Avg"] == "75.0" and text.loc[lo, "Avg"] == "–"
    md = table2_markdown(long)
    assert "**74.0 ±" in md and "**81.0**" in md and "out of memory" in md and "no data" in md
    tex = table2_latex(long)
    assert r"\textbf{81.0}" in tex and r"$\pm$" in tex and "0.5\\%" in tex
    entry = long[(long["method"] == "fish") & (long["task"] == "rte") & (long["ratio_key"] == 0.5)].iloc[0]
    assert entry["n_ok"] == 2 and entry["seeds"] == "1,2" and math.isclose(entry["mean"], 0.74)


def test_table2_partial_failure_is_counted(tmp_path):
    from fishtune.report.collect import collect
    from fishtune.report.table import table2_data, table2_frame

    run(tmp_path, "rte", "fish", "0.5", seed=1, score=0.5)
    run(tmp_path, "rte", "fish", "0.5", seed=2, status="failed", reason="nan")
    text, _ = table2_frame(table2_data(collect(tmp_path)), "m")
    assert text.loc[0, "RTE"] == "50.0 (1 failed)"


def ladder_sweep(root: Path, seeds=(42,)) -> Path:
    """fish vs ird on rte with known cells; ird's (0.02, 1) cell failed; ird has no (0.5, 32) cell."""
    fish = {(2.5, 128): 0.60, (0.5, 128): 0.62, (0.5, 32): 0.58, (0.1, 32): 0.55, (0.1, 16): 0.57,
            (0.02, 16): 0.50, (0.02, 1): 0.52}
    ird = {(2.5, 128): 0.60, (0.5, 128): 0.65, (0.1, 32): 0.54, (0.1, 16): 0.61, (0.02, 16): 0.59,
           (0.02, 1): None}
    for seed in seeds:
        run(root, "rte", "fish", "ladder", seed=seed, cells=fish)
        run(root, "rte", "ird", "ladder", seed=seed, cells=ird, status="failed", reason="loss is nan")
    return root


def test_heatmap_marks_and_best(tmp_path):
    from fishtune.report.collect import collect
    from fishtune.report.heatmap import arrow_counts, ladder_pairs

    pairs = ladder_pairs(collect(ladder_sweep(tmp_path)))
    assert len(pairs) == 1
    p = pairs[0]
    assert (p.left_method, p.right_method) == ("fish", "ird")
    assert p.ratios == [0.02, 0.1, 0.5, 2.5] and p.samples == [1, 16, 32, 128]  # 2.5 bottom, 128 right
    idx = lambda r, n: (p.ratios.index(r), p.samples.index(n))  # noqa: E731
    assert p.marks[idx(0.5, 128)] == 1 and p.marks[idx(0.1, 16)] == 1 and p.marks[idx(0.02, 16)] == 1
    assert p.marks[idx(0.1, 32)] == -1 and p.marks[idx(2.5, 128)] == 0
    assert np.isnan(p.marks[idx(0.5, 32)]) and np.isnan(p.marks[idx(0.02, 1)])
    assert np.isnan(p.left[idx(2.5, 1)]) and p.left_status[idx(2.5, 1)] == "unexplored"
    assert p.right_status[idx(0.02, 1)] == "failed" and p.right_status[idx(0.5, 32)] == "unexplored"
    assert p.best == [("right", *idx(0.5, 128))]
    assert p.counts() == {"wins": 3, "losses": 1, "ties": 1, "compared": 5}
    counts = arrow_counts(pairs)
    assert counts.iloc[-1][["task", "wins", "losses", "ties"]].tolist() == ["total", 3, 1, 1]
    frame = p.frame()
    assert frame["best"].sum() == 1 and (frame["mark"] == "up").sum() == 3


def test_heatmap_seeds_average_and_reverse_pair(tmp_path):
    from fishtune.report.collect import collect
    from fishtune.report.heatmap import ladder_pairs

    run(tmp_path, "sst2", "ird", "ladder", seed=1, cells={(2.5, 8): 0.8, (0.5, 8): 0.7})
    run(tmp_path, "sst2", "ird", "ladder", seed=2, cells={(2.5, 8): 0.6, (0.5, 8): 0.7})
    run(tmp_path, "sst2", "reverse_ird", "ladder", seed=1, cells={(2.5, 8): 0.7, (0.5, 8): 0.6})
    (p,) = ladder_pairs(collect(tmp_path))
    assert (p.left_method, p.right_method) == ("ird", "reverse_ird")
    assert math.isclose(p.left[1, 0], 0.7) and p.left_seeds[1, 0] == 2
    assert p.marks[1, 0] == 0 and p.marks[0, 0] == -1
    assert sorted(p.best) == [("left", 0, 0), ("left", 1, 0), ("right", 1, 0)]  # ties at the top: all marked


def test_build_report_writes_files(tmp_path, table_sweep):
    from fishtune.report.build import build_report

    ladder_sweep(table_sweep)
    grid = {(r, n): 0.5 + r / 10 + n / 1000 for r in (0.1, 2.5) for n in (1, 8)}
    run(table_sweep, "rte", "fish", "grid", cells=grid)
    run(table_sweep, "wnli", "ird", "ladder", status="failed", reason="boom")  # failed before any cell
    out = tmp_path / "out"
    written = build_report(table_sweep, out)
    names = {p.name for p in written}
    for name in ("results.csv", "table2.md", "table2.tex", "table2.csv", "arrows.csv", "arrows.md", "README.md",
                 "heatmap_rte_m_fish-vs-ird.png", "heatmap_rte_m_fish-vs-ird.pdf", "heatmaps_fish-vs-ird.png",
                 "scaling_fish.png"):
        assert name in names, name
        assert (out / name).stat().st_size > 0
    readme = (out / "README.md").read_text()
    assert "skipped" in readme and "out of memory" in readme and "boom" in readme
    assert "heatmap_wnli_m_fish-vs-ird.png" in names  # shown (empty, with its reason), not dropped


def test_old_or_corrupted_results_are_one_line_each(tmp_path, caplog):
    import json
    import logging

    from fishtune.report.collect import collect
    from fishtune.runner.results import ResultError, RunResult, load_run

    good = run(tmp_path, "rte", "ird", "ladder", cells={(2.5, 8): 0.6, (0.5, 4): 0.7})
    loaded = load_run(good)
    assert RunResult.from_json(loaded.to_json()) == loaded and loaded.best.cell == "r0.5-n4"
    data = json.loads(good.read_text())
    bad = {"old": {**data, "schema": 1}, "no_score": {**data, "cells": [{**data["cells"][0], "score": None}]}}
    for name, content in bad.items():
        write_json(tmp_path / name / "result.json", content)
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "result.json").write_text('{"schema": 2, "sta')
    messages = {"old": "schema 1, this fishtune reads 2", "no_score": "ok without a score", "garbled": "not JSON"}
    for name, message in messages.items():
        with pytest.raises(ResultError, match=message):
            load_run(tmp_path / name / "result.json")
    with caplog.at_level(logging.WARNING, logger="fishtune.runner.results"):
        df = collect(tmp_path)
    assert set(df["path"]) == {str(good.parent)}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all("\n" not in m for m in lines)


# a schema-2 result whose field has the wrong type (hand-edited, foreign): field -> value, and where
WRONG_TYPES = [("metrics", "x", "single"), ("info", "x", "single"), ("task", None, "single"),
               ("score", True, "single"), ("seed", "abc", "single"), ("history", "x", "single"),
               ("timings", [1], "single"), ("method", 3, "single"), ("ratio", "0.5", "single"),
               ("config", "x", "single"), ("majority", "x", "single"), ("metrics", "x", "cell"),
               ("score", True, "cell"), ("cells", "x", "ladder")]


def test_wrongly_typed_results_are_skipped_one_line_each_and_the_report_builds(tmp_path, caplog):
    import json
    import logging

    from fishtune.report.__main__ import main

    single = run(tmp_path, "rte", "fish", "0.5", score=0.7)
    ladder = run(tmp_path, "rte", "ird", "ladder", cells={(2.5, 8): 0.6, (0.5, 4): 0.7})
    s, lad = json.loads(single.read_text()), json.loads(ladder.read_text())
    for i, (key, value, where) in enumerate(WRONG_TYPES):
        if where == "single":
            bad = {**s, key: value}
        elif where == "cell":
            bad = {**lad, "cells": [{**lad["cells"][0], key: value}, *lad["cells"][1:]]}
        else:
            bad = {**lad, key: value}
        write_json(tmp_path / f"bad{i}" / "result.json", bad)
    with caplog.at_level(logging.WARNING, logger="fishtune.runner.results"):
        assert main([str(tmp_path), "--no-pdf"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped:")]
    assert len(lines) == len(WRONG_TYPES) and all("\n" not in m for m in lines)
    assert any("field 'metrics' holds str 'x', not dict" in m for m in lines)
    assert any("field 'score' holds bool" in m for m in lines)
    results = (tmp_path / "report" / "results.csv").read_text().splitlines()
    assert len(results) == 1 + 3 and "bad" not in "".join(results)  # the single run and the two ladder cells


def test_report_into_a_file_is_one_line(tmp_path, table_sweep, capsys):
    from fishtune.report.__main__ import main

    (tmp_path / "afile").write_text("keep")
    assert main([str(table_sweep), "--out", str(tmp_path / "afile"), "--no-pdf"]) == 2
    assert main([str(table_sweep), "--out", str(tmp_path / "afile" / "sub"), "--no-pdf"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: the report folder {tmp_path / 'afile'} is a file (give --out a folder)",
                   f"error: the report folder {tmp_path / 'afile' / 'sub'} cannot be created (Not a directory)"]
    assert (tmp_path / "afile").read_text() == "keep"


def test_cli_and_empty_folder(tmp_path, table_sweep, capsys):
    from fishtune.report.__main__ import main

    assert main([str(table_sweep)]) == 0
    assert (table_sweep / "report" / "table2.md").exists()
    assert "table2.md" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--no-pdf"]) == 1  # nothing found: says so, still writes the frame


def test_callback_never_raises(tmp_path, table_sweep, capsys):
    from omegaconf import OmegaConf

    from fishtune.report.callback import ReportCallback

    ReportCallback(pdf=False).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(table_sweep)}}}))
    assert (table_sweep / "report" / "table2.md").exists()
    ReportCallback().on_multirun_end(OmegaConf.create({}))  # no sweep dir anywhere: logged, not raised
    assert "report failed" in capsys.readouterr().out


def test_report_imports_nothing_heavy():
    banned = {"torch", "transformers", "fishtune.train", "fishtune.methods", "fishtune.runner.experiment"}
    for path in REPORT.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
        assert not [n for n in names if any(n == b or n.startswith(b + ".") for b in banned)], path
        assert len(path.read_text().splitlines()) < 400, path


def test_config_enables_callback(compose):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", return_hydra_config=True)
    targets = [c.get("_target_") for c in cfg.hydra.callbacks.values()]
    assert "fishtune.report.callback.ReportCallback" in targets


# ---- slow: a real sweep -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    name = f"test_report_{os.getpid()}"
    cmd = [sys.executable, "run.py", "-m", "model=tiny-bert", "task=glue/rte", "method=fish,ird", "sparsity=ladder",
           "train=debug", "train.max_steps=2", "data.max_train_samples=32", "data.max_eval_samples=16",
           "ladder.samples=[8,4,2,1]", "ladder.ratios=[2.5,0.5,0.1,0.02]", f"name={name}",
           f"hydra.sweep.dir={out}/sweep"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "sweep", proc


@pytest.mark.slow
def test_report_on_real_sweep(real_sweep, tmp_path):
    from fishtune.report.build import build_report
    from fishtune.report.collect import collect
    from fishtune.report.heatmap import ladder_pairs

    sweep, proc = real_sweep
    assert (sweep / "report" / "table2.md").exists(), proc.stdout[-2000:]  # drawn by the Hydra callback
    df = collect(sweep)
    assert set(df["method"]) == {"fish", "ird"} and len(df) >= 8
    (p,) = ladder_pairs(df)
    assert p.samples == [1, 2, 4, 8] and p.ratios == [0.02, 0.1, 0.5, 2.5]
    assert (~np.isnan(p.right)).sum() == 7 and len(p.best) >= 1
    written = build_report(sweep, tmp_path / "r")
    assert all(p.stat().st_size > 0 for p in written)


@pytest.mark.slow
def test_notebook_runs(real_sweep, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    sweep, _ = real_sweep
    nb = nbformat.read(ROOT / "notebooks" / "figures.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # no outputs stored
    os.environ["FISHTUNE_SWEEP"] = str(sweep)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        del os.environ["FISHTUNE_SWEEP"]
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 1


def _ladders(root, diff: float, seeds=(1, 2, 3, 4, 5, 6), noise: float = 0.01):
    """fish and ird ladders on rte, seeds paired; ird = fish + ``diff`` + seeded noise."""
    import random

    rng = random.Random(0)
    cells = [(2.5, 8), (2.5, 4), (0.5, 4)]
    for s in seeds:
        base = {c: 0.6 + rng.uniform(-0.05, 0.05) for c in cells}
        run(root, "rte", "fish", "ladder", seed=s, cells=base)
        run(root, "rte", "ird", "ladder", seed=s, cells={c: v + diff + rng.gauss(0, noise) for c, v in base.items()})


@pytest.mark.parametrize("diff,verdict", [(0.05, "ird better"), (-0.05, "ird worse"), (0.0, "within noise")])
def test_ird_vs_fish_finds_a_planted_difference_and_none_where_there_is_none(tmp_path, diff, verdict):
    from fishtune.report.collect import collect
    from fishtune.report.stats import paired_test, verdicts

    _ladders(tmp_path, diff)
    v = verdicts(collect(tmp_path))
    assert list(v["verdict"]) == [verdict] and int(v["n"].iloc[0]) == 6 and int(v["cells"].iloc[0]) == 3
    if diff:
        assert v["ci_low"].iloc[0] < diff < v["ci_high"].iloc[0]
        assert v["p"].iloc[0] == pytest.approx(2 / 64)  # all six seeds agree: the exact two-sided minimum
    _ladders(tmp_path / "two", diff, seeds=(1, 2))
    assert list(verdicts(collect(tmp_path / "two"))["verdict"]) == ["within noise"]  # two seeds: no verdict
    t = paired_test([0.1, 0.1, 0.1])  # three seeds can never pass a 5 % sign-flip test
    assert t["p"] == pytest.approx(0.25)


def test_report_writes_the_verdicts(tmp_path):
    _ladders(tmp_path, 0.05, seeds=(1, 2, 3))
    from fishtune.report.build import build_report

    build_report(tmp_path, formats=("png",))
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "ird vs fish beyond noise" in readme and "| m | rte | 3 | 3 |" in readme
    assert "ird better (t interval only: with 3 seeds the sign-flip p is ≥ 0.25)" in readme  # a 5-point gap
    assert "| m | rte | r0.5-n4 | 3 | +0.0491 | [+0.0069, +0.0913] |" in readme  # the per-cell differences

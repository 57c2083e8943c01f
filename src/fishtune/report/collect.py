"""Collect result.json files into the tidy table every report figure is drawn from.

`collect(*roots)` reads one or more folders (a multirun, several multiruns, Slurm outputs) through
`fishtune.runner.results.load_results` and adds the columns the report needs:

- ``nominal_ratio``: the parameter ratio (percent) a row was asked for: the cell's ratio, else the job's
  sparsity when it is a number (failed/skipped jobs carry only the sparsity name), else NaN;
- ``kind``: ``single`` (one score per job), ``ladder`` or ``grid`` (the cells of a staircase/grid job);
- ``run``: one id per result.json (its folder), so cells of the same job can be grouped;
- from `load_results`, the model-selection fields: ``score`` (dev at the evaluation chosen), ``dev_best``
  (the best dev score over epochs, what the paper reports), ``holdout_score`` (NaN when the run chose on dev)
  and ``selected_on`` ("holdout" or "dev");
- `MASK`, read from the files: ``zero_fisher`` (selected entries with F = 0), ``positive_candidates``
  (candidates with F > 0) and ``zero_fisher_mode`` (reverse IRD's ``method.zero_fisher``; "include" for
  results written before the option, the literal reading they used).

Runs still in progress (or trained as ``cell=`` jobs) have cells/<cell>.json but no result.json yet: their
cells are read too, so a page drawn while runs arrive shows what has finished.
`choice(df)` is the score every "pick the best of several" in the report ranks by: the holdout score where
there is one, else the dev score (never the dev score when a holdout was there to choose on).

Selection-only results (``select_only=true``: masks, no fine-tuning, no score) are left out; the masks page
(`fishtune.report.masks`) reads their summaries.

It also holds the shared vocabulary (task and method order, display names, number formatting). Nothing here
imports torch or the training code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fishtune.runner.results import find_results, load_results, read_result, unfinished_cells

# GLUE's own order; tasks not listed come after, alphabetically.
TASK_ORDER = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
TASK_NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
              "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
# Table 2's row order within one parameter ratio; methods not listed come after, alphabetically.
METHOD_ORDER = ("dense", "bitfit", "random", "diff_pruning", "lora", "fish", "fish_lora", "fish_adapter", "gmt",
                "id3", "ird", "reverse_ird")
METHOD_NAMES = {"dense": "Dense Fine-tuning", "bitfit": "BitFit", "random": "Random Mask",
                "diff_pruning": "Diff Pruning", "lora": "LoRA", "fish": "FISH Mask", "ird": "IRD",
                "reverse_ird": "Reverse IRD", "fish_lora": "FISH+LoRA", "fish_adapter": "FISH+Adapter",
                "gmt": "GMT", "id3": "ID3", "majority": "Majority class"}
# The (left, right) pairs the ladder heatmaps compare, in the order they are looked for.
PAIRS = (("fish", "ird"), ("ird", "reverse_ird"))
MISSING = "–"

COLUMNS = ("task", "model", "method", "sparsity", "seed", "cell", "ratio", "samples", "status", "reason",
           "score", "trainable_params", "trainable_ratio", "mask_sha256", "path", "ratio_fixed", "majority", "device",
           "run_seconds", "lr", "history", "dev_best", "holdout_score", "selected_on")
MASK = ("zero_fisher", "positive_candidates", "zero_fisher_mode")  # reverse IRD's cells, read from the files


def collect(*roots: str | Path) -> pd.DataFrame:
    """Every result (one row per run, or per ladder/grid cell) under ``roots``, with the report's columns.

    An empty folder gives an empty frame with the same columns, never an error; a result.json that is not a
    valid result (another schema, truncated, a field of the wrong type) is skipped with one logged line.
    """
    raw = [x for r in roots for x in _raw(r)]
    frames = [load_results(r, in_progress=True) for r in roots]
    frames = [f[~f["selection_only"].eq(True)] if "selection_only" in f else f for f in frames]  # no score: masks
    frames = [f for f in frames if not f.empty]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    df["ratio_fixed"] = df["ratio_fixed"].map(lambda v: v is True)  # recorded by the method (see Method)
    df = df.drop_duplicates(subset=["path", "cell"], keep="first").reset_index(drop=True)
    mask = pd.DataFrame([{"path": str(f), "cell": c.get("cell"), **_mask_fields(c, d.get("config") or {})}
                         for f, d, cells in raw for c in cells], columns=["path", "cell", *MASK])
    df = df.drop(columns=[c for c in MASK if c in df.columns]).merge(
        mask.drop_duplicates(["path", "cell"]), on=["path", "cell"], how="left")
    for col in ("ratio", "samples", "score", "trainable_params", "trainable_ratio", "majority", "run_seconds", "lr",
                "dev_best", "holdout_score", "zero_fisher", "positive_candidates"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["dev_best"] = df["dev_best"].fillna(df["score"])  # older results chose on dev: their score is the best
    df["selected_on"] = df["selected_on"].fillna("dev")
    df["sparsity"] = df["sparsity"].map(lambda s: None if s is None or _isnan(s) else str(s))
    df["run"] = df["path"]
    df["kind"] = df["sparsity"].map(_kind)
    df["nominal_ratio"] = [r if not _isnan(r) else _as_float(s) for r, s in zip(df["ratio"], df["sparsity"])]
    df["nominal_ratio"] = pd.to_numeric(df["nominal_ratio"], errors="coerce")
    return df


def choice(df: pd.DataFrame) -> pd.Series:
    """The score a choice among repeats or cells ranks by: ``holdout_score`` where a run recorded one, else
    ``score`` (results that chose on dev)."""
    return df["holdout_score"].where(df["holdout_score"].notna(), df["score"])


def _cells_of(data: dict) -> list[dict]:
    """The cells of one result.json's content (a single-ratio run: its flat fields, under its cell name)."""
    if data.get("cells"):
        return data["cells"]
    return [{**data, "cell": data.get("best_cell") or "main"}]


def _raw(root: str | Path):
    """(run folder, content, cells) for each valid result.json, and for each cell file of a run folder that
    has no result.json yet (a run in progress, or trained as ``cell=`` jobs)."""
    for path in find_results(root):
        if (data := read_result(path)) is not None:
            yield path.parent, data, _cells_of(data)
    for folder, data in unfinished_cells(root):
        yield folder, data, [data]


def _mask_fields(cell: dict, config: dict) -> dict:
    """A cell's `MASK` fields (what its selection recorded; the method's ``zero_fisher`` reading)."""
    info, method = cell.get("info") or {}, config.get("method") or {}
    mode = method.get("zero_fisher") or ("include" if method.get("name") == "reverse_ird" else None)
    return {"zero_fisher": info.get("zero_fisher"), "positive_candidates": info.get("positive_candidates"),
            "zero_fisher_mode": mode}  # reverse IRD before the option: the literal reading ("include")


def majority(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task): the mean over runs of the recorded majority-class dev score (``mean``) and how many
    runs recorded one (``runs``); runs differ only in their data subsets."""
    runs = df.drop_duplicates("run").dropna(subset=["majority"])
    return runs.groupby(["model", "task"])["majority"].agg(mean="mean", runs="count").reset_index()


def _kind(sparsity: str | None) -> str:
    return sparsity if sparsity in ("ladder", "grid") else "single"


def _as_float(s) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return math.nan


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def ordered(values: Iterable, order: Iterable) -> list:
    """The distinct ``values`` sorted by their place in ``order``; others after, alphabetically."""
    rank = {v: i for i, v in enumerate(order)}
    distinct = {v for v in values if v is not None and not _isnan(v)}
    return sorted(distinct, key=lambda v: (rank.get(v, len(rank)), str(v)))


def task_name(task: str) -> str:
    return TASK_NAMES.get(task, task)


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def fmt_score(x: float, scale: float = 100.0, digits: int = 1) -> str:
    """A score as the paper prints it: ×100, one decimal; "–" when there is none."""
    return MISSING if _isnan(x) else f"{x * scale:.{digits}f}"


def fmt_ratio(r: float) -> str:
    """A parameter ratio in percent: 100%, 0.5%, 0.08%, 0.02%."""
    if _isnan(r):
        return MISSING
    if r >= 10:
        return f"{r:.0f}%"
    return f"{float(f'{r:.2g}'):g}%"


def status_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Runs per status (one count per result.json, not per cell), by task/model/method: the report's
    inventory, so skipped and failed jobs are listed rather than dropped."""
    runs = df.drop_duplicates("run")
    if runs.empty:
        return pd.DataFrame(columns=["task", "model", "method", "sparsity", "ok", "skipped", "failed"])
    out = (runs.groupby(["task", "model", "method", "sparsity", "status"], dropna=False).size()
           .unstack("status", fill_value=0).reset_index())
    for s in ("ok", "skipped", "failed"):
        if s not in out.columns:
            out[s] = 0
    out.columns.name = None
    return out[["task", "model", "method", "sparsity", "ok", "skipped", "failed"]]


def problems(df: pd.DataFrame) -> pd.DataFrame:
    """Every skipped or failed run/cell with its reason (the report lists them under the table)."""
    bad = df[df["status"] != "ok"]
    return bad[["task", "model", "method", "sparsity", "seed", "cell", "status", "reason", "path"]].reset_index(
        drop=True)

"""Training curves: the dev score after each epoch, one line per method, so a reader sees whether runs
converged within their budget.

Each method is shown at one parameter ratio (default 0.5 %; dense and BitFit at their own share); a ladder
or grid run contributes its best cell at that ratio. `curve_data(df)` is the data (mean and spread over
seeds per epoch), `write_curves` draws one panel per task and model, with the majority-class score dotted.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .collect import METHOD_ORDER, TASK_ORDER, choice, majority, method_name, ordered, task_name

CURVE_COLUMNS = ["task", "model", "method", "epoch", "mean", "min", "max", "n"]


def curve_data(df: pd.DataFrame, ratio: float = 0.5) -> pd.DataFrame:
    """Per task, model, method and epoch: the mean (min, max) dev score over seeds at ``ratio``."""
    rows = []
    ok = df[(df["status"] == "ok") & df["score"].notna()]
    for _, g in ok.groupby("run", sort=False):
        fixed = bool(g["ratio_fixed"].iloc[0])
        at = g if fixed else g[(g["nominal_ratio"] - ratio).abs() < 1e-9]
        if at.empty:
            continue
        best = at.loc[choice(at).idxmax()]  # the cell the holdout picks (older runs: the best dev cell)
        for h in best["history"] if isinstance(best["history"], list) else []:
            rows.append({"task": best["task"], "model": best["model"], "method": best["method"],
                         "seed": best["seed"], "epoch": h["epoch"], "score": h["score"]})
    if not rows:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    per = pd.DataFrame(rows)
    out = (per.groupby(["task", "model", "method", "epoch"])["score"].agg(["mean", "min", "max", "count"])
           .reset_index().rename(columns={"count": "n"}))
    return out[CURVE_COLUMNS]


def draw_curves(data: pd.DataFrame, majority: dict[tuple[str, str], float] | None = None, ratio: float = 0.5):
    """One panel per task and model: score ×100 after each epoch, a line per method (band: min–max)."""
    panels = [(t, m) for t in ordered(data["task"], TASK_ORDER)
              for m in ordered(data.loc[data["task"] == t, "model"], ())]
    n = max(len(panels), 1)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.8 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (task, model) in zip(axes.flat, panels):
        sub = data[(data["task"] == task) & (data["model"] == model)]
        for method in ordered(sub["method"], METHOD_ORDER):
            s = sub[sub["method"] == method].sort_values("epoch")
            line = ax.plot(s["epoch"], s["mean"] * 100, marker="o", ms=3, label=method_name(method))[0]
            ax.fill_between(s["epoch"], s["min"] * 100, s["max"] * 100, color=line.get_color(), alpha=0.12)
        base = (majority or {}).get((task, model))
        if base is not None and not math.isnan(base):
            ax.axhline(base * 100, color="grey", ls=":", lw=1, label="majority class")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("dev score ×100")
        ax.set_title(f"{task_name(task)} · {model} · {ratio:g}%", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if panels:
        axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def write_curves(df: pd.DataFrame, out: Path, ratio: float = 0.5, formats=("png", "pdf")) -> list[Path]:
    """Save curves.csv and the figure when any run recorded its evaluations; returns the files written."""
    data = curve_data(df, ratio)
    if data.empty:
        return []
    out.mkdir(parents=True, exist_ok=True)
    base = {(r.task, r.model): r.mean for r in majority(df).itertuples()}
    paths = [out / "curves.csv"]
    data.to_csv(paths[0], index=False)
    fig = draw_curves(data, base, ratio)
    for ext in formats:
        paths.append(out / f"curves.{ext}")
        fig.savefig(paths[-1], dpi=150, bbox_inches="tight")
    return paths

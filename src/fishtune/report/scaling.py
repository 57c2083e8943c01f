"""FISH Mask's scaling plot (paper Fig. 1): score over Fisher samples, one line per mask sparsity.

Drawn from `sparsity=grid` jobs (every ratio × samples cell) of the FISH method. `scaling_data(df)` returns,
per task and model, a frame indexed by samples with one column per ratio (mean score over seeds; NaN where a
cell did not finish); `draw_scaling` only draws it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from .collect import TASK_ORDER, method_name, ordered, task_name


def scaling_data(df: pd.DataFrame, method: str = "fish") -> dict[tuple[str, str], pd.DataFrame]:
    """(task, model) -> samples × ratio table of mean ok scores from ``method``'s grid jobs."""
    grid = df[(df["kind"] == "grid") & (df["method"] == method) & df["ratio"].notna() & df["samples"].notna()]
    out = {}
    for task in ordered(grid["task"], TASK_ORDER):
        for model in ordered(grid.loc[grid["task"] == task, "model"], ()):
            g = grid[(grid["task"] == task) & (grid["model"] == model)]
            ok = g[(g["status"] == "ok") & g["score"].notna()]
            table = ok.pivot_table(index="samples", columns="ratio", values="score", aggfunc="mean")
            table = table.reindex(index=sorted(g["samples"].unique()), columns=sorted(g["ratio"].unique()))
            table.index, table.columns = table.index.astype(int), table.columns.astype(float)
            out[(task, model)] = table
    return out


def draw_scaling(data: dict[tuple[str, str], pd.DataFrame], method: str = "fish"):
    """One panel per task/model: score ×100 against samples (log scale), a line per ratio."""
    n = max(len(data), 1)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, ((task, model), table) in zip(axes.flat, data.items()):
        for ratio in table.columns:
            s = table[ratio]
            ax.plot(s.index, s.values * 100, marker="o", label=f"{ratio:g}%")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(table.index), [str(i) for i in table.index])
        ax.set_xlabel(f"{method_name(method)} samples")
        ax.set_ylabel("score ×100")
        ax.set_title(f"{task_name(task)} · {model}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(title="sparsity", fontsize=7, title_fontsize=7)
    for ax in list(axes.flat)[len(data):]:
        ax.set_visible(False)
    if not data:
        axes.flat[0].set_visible(True)
        axes.flat[0].text(0.5, 0.5, "no grid runs", ha="center", va="center")
    fig.tight_layout()
    return fig


def write_scaling(data: dict, out: Path, method: str = "fish", formats=("png", "pdf")) -> list[Path]:
    """Save the scaling figure when there is any grid data; returns the files written."""
    if not data:
        return []
    out.mkdir(parents=True, exist_ok=True)
    fig = draw_scaling(data, method)
    paths = []
    for ext in formats:
        path = out / f"scaling_{method}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths

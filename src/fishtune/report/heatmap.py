"""Ladder heatmaps (paper Figs. 2-6) and their arrow counts.

For each task and model, two matrices side by side: left the baseline (FISH Mask, or IRD against reverse IRD),
right the method compared (IRD, or reverse IRD). Rows are mask sparsity (largest ratio at the bottom, smallest
at the top), columns the number of Fisher samples (fewest left, most right), so IRD's staircase climbs from the
lower right to the upper left. The axes are the ratios and sample counts found in the data.

`ladder_pairs(df)` returns the data behind each picture (`LadderPair`: the two score matrices, each cell's
status, the up/down marks of the right matrix and the best cell of the pair); `arrow_counts` the paper's
"30 > 22" table; `draw_pair`/`draw_combined` only draw what the data says.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .collect import PAIRS, TASK_ORDER, method_name, ordered, task_name

TOL = 1e-9  # scores closer than this are a tie
UNEXPLORED = "unexplored"
_STATUS_RANK = ("ok", "failed", "skipped")  # a cell shows the first of these any of its seeds has


@dataclass
class LadderPair:
    """The data behind one heatmap pair. Matrices are indexed [row, column] = [ratios[i], samples[j]]."""

    task: str
    model: str
    left_method: str
    right_method: str
    ratios: list[float]  # row order, top to bottom (smallest ratio first)
    samples: list[int]  # column order, left to right (fewest first)
    left: np.ndarray  # mean score over seeds; NaN where there is none
    right: np.ndarray
    left_status: np.ndarray  # "ok", "failed", "skipped" or "unexplored" per cell
    right_status: np.ndarray
    left_seeds: np.ndarray  # how many ok seeds each mean is over
    right_seeds: np.ndarray
    marks: np.ndarray  # right vs left: +1 up (right wins), -1 down, 0 tie, NaN not comparable
    best: list[tuple[str, int, int]] = field(default_factory=list)  # ("left"|"right", row, col) at the max
    notes: dict[str, str] = field(default_factory=dict)  # side -> e.g. "1 run failed: <reason>"

    def counts(self) -> dict[str, int]:
        """Cells the right matrix wins, loses and ties against its left counterpart."""
        m = self.marks[~np.isnan(self.marks)]
        return {"wins": int((m > 0).sum()), "losses": int((m < 0).sum()), "ties": int((m == 0).sum()),
                "compared": int(m.size)}

    def frame(self) -> pd.DataFrame:
        """The pair as a tidy table: one row per side and cell, with mark and best flags."""
        rows = []
        best = set(self.best)
        for side in ("left", "right"):
            values, status = getattr(self, side), getattr(self, f"{side}_status")
            seeds = getattr(self, f"{side}_seeds")
            method = self.left_method if side == "left" else self.right_method
            for i, r in enumerate(self.ratios):
                for j, n in enumerate(self.samples):
                    mark = self.marks[i, j] if side == "right" else np.nan
                    rows.append({"task": self.task, "model": self.model, "side": side, "method": method,
                                 "ratio": r, "samples": n, "score": values[i, j], "status": status[i, j],
                                 "seeds": int(seeds[i, j]),
                                 "mark": {1.0: "up", -1.0: "down", 0.0: "tie"}.get(float(mark), ""),
                                 "best": (side, i, j) in best})
        return pd.DataFrame(rows)


def _cells(df: pd.DataFrame, task: str, model: str, method: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ladder cells of one method (grid cells when it has no ladder run), and its runs that have none."""
    sub = df[(df["task"] == task) & (df["model"] == model) & (df["method"] == method)]
    for kind in ("ladder", "grid"):
        part = sub[sub["kind"] == kind]
        if not part.empty:
            has_cell = part["ratio"].notna() & part["samples"].notna()
            return part[has_cell], part[~has_cell]
    return sub.iloc[0:0], sub.iloc[0:0]


def _matrix(cells: pd.DataFrame, ratios: list, samples: list):
    shape = (len(ratios), len(samples))
    values, seeds = np.full(shape, np.nan), np.zeros(shape, dtype=int)
    status = np.full(shape, UNEXPLORED, dtype=object)
    for (r, n), g in cells.groupby(["ratio", "samples"]):
        i, j = ratios.index(r), samples.index(n)
        ok = g[(g["status"] == "ok") & g["score"].notna()]
        if not ok.empty:
            values[i, j], seeds[i, j] = ok["score"].mean(), len(ok)
        status[i, j] = next((s for s in _STATUS_RANK if (g["status"] == s).any()), UNEXPLORED)
        if status[i, j] == "ok" and ok.empty:
            status[i, j] = "failed"  # "ok" without a score is not a result
    return values, status, seeds


def _note(runs: pd.DataFrame) -> str:
    if runs.empty:
        return ""
    bits = []
    for status, g in runs.groupby("status"):
        reason = next((r for r in g["reason"] if isinstance(r, str) and r), "")
        bits.append(f"{len(g)} run{'s' * (len(g) > 1)} {status}" + (f": {reason[:60]}" if reason else ""))
    return "; ".join(bits)


def make_pair(df: pd.DataFrame, task: str, model: str, left: str, right: str) -> LadderPair:
    """The heatmap data of ``left`` vs ``right`` on one task and model (either side may be absent: all grey)."""
    lcells, lruns = _cells(df, task, model, left)
    rcells, rruns = _cells(df, task, model, right)
    both = pd.concat([lcells, rcells])
    ratios = sorted({float(r) for r in both["ratio"]})
    samples = sorted({int(n) for n in both["samples"]})
    lv, ls, ln = _matrix(lcells, ratios, samples)
    rv, rs, rn = _matrix(rcells, ratios, samples)
    marks = np.full(lv.shape, np.nan)
    comparable = ~np.isnan(lv) & ~np.isnan(rv)
    diff = np.where(comparable, rv - lv, 0.0)
    marks[comparable] = np.where(diff > TOL, 1.0, np.where(diff < -TOL, -1.0, 0.0))[comparable]
    best: list[tuple[str, int, int]] = []
    finite = np.concatenate([lv[~np.isnan(lv)], rv[~np.isnan(rv)]])
    if finite.size:
        top = finite.max()
        for side, m in (("left", lv), ("right", rv)):
            best += [(side, int(i), int(j)) for i, j in zip(*np.nonzero(~np.isnan(m) & (m >= top - TOL)))]
    notes = {side: _note(runs) for side, runs in (("left", lruns), ("right", rruns)) if not runs.empty}
    return LadderPair(task, model, left, right, ratios, samples, lv, rv, ls, rs, ln, rn, marks, best, notes)


def ladder_pairs(df: pd.DataFrame) -> list[LadderPair]:
    """One `LadderPair` per task, model and compared pair found in ``df`` (tasks in GLUE order).

    A pair is drawn when both of its methods have ladder (or grid) runs; a task/model where no pair is
    complete gets its first pair with any method present, the missing side grey, so nothing is dropped.
    """
    out = []
    staged = df[df["kind"].isin(["ladder", "grid"])]
    for task in ordered(staged["task"], TASK_ORDER):
        for model in ordered(staged.loc[staged["task"] == task, "model"], ()):
            present = set(staged.loc[(staged["task"] == task) & (staged["model"] == model), "method"])
            pairs = [p for p in PAIRS if set(p) <= present] or [p for p in PAIRS if set(p) & present][:1]
            out += [make_pair(df, task, model, left, right) for left, right in pairs]
    return out


def arrow_counts(pairs: list[LadderPair]) -> pd.DataFrame:
    """Wins (up), losses (down) and ties of the right matrix per task/model, plus one total row per pair kind."""
    rows = [{"task": p.task, "model": p.model, "left": p.left_method, "right": p.right_method, **p.counts()}
            for p in pairs]
    df = pd.DataFrame(rows, columns=["task", "model", "left", "right", "wins", "losses", "ties", "compared"])
    totals = [{"task": "total", "model": "all", "left": left, "right": right,
               **g[["wins", "losses", "ties", "compared"]].sum().astype(int).to_dict()}
              for (left, right), g in df.groupby(["left", "right"], sort=False)]
    return pd.concat([df, pd.DataFrame(totals, columns=df.columns)], ignore_index=True) if totals else df


def arrows_markdown(counts: pd.DataFrame) -> str:
    """The arrow counts as a Markdown table ("wins > losses" in the last column)."""
    lines = ["| task | model | right vs left | ▲ wins | ▼ losses | = ties | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in counts.itertuples():
        verdict = ">" if r.wins > r.losses else "<" if r.wins < r.losses else "="
        name = task_name(r.task) if r.task != "total" else "**total**"
        lines.append(f"| {name} | {r.model} | {method_name(r.right)} vs {method_name(r.left)} | {r.wins} | "
                     f"{r.losses} | {r.ties} | {r.wins} {verdict} {r.losses} |")
    return "\n".join(lines) + "\n"


# ---- drawing ---------------------------------------------------------------------------------------------

_GREY, _FAILED, _SKIPPED = (0.82, 0.82, 0.82, 1.0), (0.96, 0.78, 0.78, 1.0), (0.9, 0.9, 0.9, 1.0)


def _colours(values: np.ndarray, status: np.ndarray) -> np.ndarray:
    cmap = matplotlib.colormaps["Greens"]
    rgba = np.zeros((*values.shape, 4))
    ok = ~np.isnan(values)
    lo, hi = (values[ok].min(), values[ok].max()) if ok.any() else (0.0, 1.0)
    for i, j in np.ndindex(values.shape):
        if ok[i, j]:
            t = 0.7 if hi - lo < TOL else (values[i, j] - lo) / (hi - lo)
            rgba[i, j] = cmap(0.15 + 0.8 * t)
        else:
            rgba[i, j] = {"failed": _FAILED, "skipped": _SKIPPED}.get(status[i, j], _GREY)
    return rgba


def _draw_matrix(ax, pair: LadderPair, side: str, ylabel: bool = True) -> None:
    values, status = getattr(pair, side), getattr(pair, f"{side}_status")
    method = pair.left_method if side == "left" else pair.right_method
    if values.size == 0:  # runs without any cell (failed or skipped before training)
        ax.text(0.5, 0.5, textwrap.fill(pair.notes.get(side, "no cells"), 36), ha="center", va="center",
                fontsize=8)
        ax.set_axis_off()
        ax.set_title(f"{method_name(method)} on {task_name(pair.task)}", fontsize=9)
        return
    rgba = _colours(values, status)
    ax.imshow(rgba, aspect="equal", interpolation="nearest")
    for i, j in np.ndindex(values.shape):
        if not np.isnan(values[i, j]):
            dark = rgba[i, j][:3].mean() < 0.5
            ax.text(j, i + 0.12, f"{values[i, j] * 100:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
            mark = pair.marks[i, j]
            if side == "right" and not np.isnan(mark) and mark != 0:
                ax.plot(j, i - 0.25, marker="^" if mark > 0 else "v", markersize=6, linestyle="none",
                        color="tab:blue" if mark > 0 else "tab:red", markeredgecolor="white", markeredgewidth=0.5)
        elif status[i, j] in ("failed", "skipped"):
            ax.text(j, i, status[i, j], ha="center", va="center", fontsize=6, color="dimgray")
    for s, i, j in pair.best:
        if s == side:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5,
                                   zorder=5, clip_on=False))
    ax.set_xticks(range(len(pair.samples)), [str(n) for n in pair.samples])
    ax.set_yticks(range(len(pair.ratios)), [f"{r:g}" for r in pair.ratios])
    ax.set_xlabel("FISH Mask samples", fontsize=8)
    if ylabel:
        ax.set_ylabel("Mask sparsity (%)", fontsize=8)
    ax.tick_params(labelsize=7, length=0)
    title = f"{method_name(method)} on {task_name(pair.task)}"
    if side in pair.notes:
        title += "\n" + textwrap.fill(f"({pair.notes[side]})", 40)
    ax.set_title(title, fontsize=9)
    ax.set_xticks(np.arange(-0.5, len(pair.samples)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(pair.ratios)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)


def _draw_into(fig, axes, pair: LadderPair) -> None:
    _draw_matrix(axes[0], pair, "left")
    _draw_matrix(axes[1], pair, "right", ylabel=False)


def draw_pair(pair: LadderPair):
    """One pair as its own figure (returned; the caller saves or shows it)."""
    w, h = max(len(pair.samples), 1), max(len(pair.ratios), 1)
    fig = Figure(figsize=(1.0 + 1.6 * w, 1.3 + 0.8 * h))
    axes = fig.subplots(1, 2, squeeze=False)
    _draw_into(fig, axes[0], pair)
    c = pair.counts()
    fig.suptitle(f"{task_name(pair.task)} · {pair.model}   ▲{c['wins']} ▼{c['losses']} ={c['ties']}", fontsize=10)
    fig.tight_layout()
    return fig


def draw_combined(pairs: list[LadderPair], per_row: int = 2):
    """Every pair in one figure, ``per_row`` pairs (two matrices each) per row."""
    rows = max(1, -(-len(pairs) // per_row))
    cols = min(per_row, max(len(pairs), 1))
    w = max((len(p.samples) for p in pairs), default=4)
    h = max((len(p.ratios) for p in pairs), default=4)
    fig = Figure(figsize=(cols * (1.0 + 1.6 * w), rows * (1.5 + 0.8 * h)))
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for k, pair in enumerate(pairs):
        r, c = divmod(k, per_row)
        _draw_into(fig, axes[r, 2 * c: 2 * c + 2], pair)
        axes[r, 2 * c].set_title(f"{pair.model}: " + axes[r, 2 * c].get_title(), fontsize=9)
    for ax in axes.flat[2 * len(pairs):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def slug(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", str(p)).strip("-") for p in parts)


def write_heatmaps(pairs: list[LadderPair], out: Path, formats=("png", "pdf")) -> list[Path]:
    """Save every pair and one combined figure per compared pair kind; returns the files written."""
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        fig = draw_pair(pair)
        stem = slug("heatmap", pair.task, pair.model, f"{pair.left_method}-vs-{pair.right_method}")
        written += _save(fig, out / stem, formats)
    kinds = ordered({(p.left_method, p.right_method) for p in pairs}, PAIRS)
    for left, right in kinds:
        group = [p for p in pairs if (p.left_method, p.right_method) == (left, right)]
        written += _save(draw_combined(group), out / slug("heatmaps", f"{left}-vs-{right}"), formats)
    return written


def _save(fig, stem: Path, formats) -> list[Path]:
    paths = []
    for ext in formats:
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths

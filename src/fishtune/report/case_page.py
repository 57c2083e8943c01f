"""The SST-2 case study's section of a report page: its figures (Figs. 1, 2, 5), files and Markdown.

`write_case(df, out)` draws what `case` computes and returns the files written and the README section. Each
table and figure is written for the holdout-chosen ``score``; Table 3, Fig. 2 and the verdicts again for
``dev_best`` (the paper's best dev epoch) when the runs held examples out, since the two then differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .case import (
    SCORES,
    TASK,
    case_verdicts,
    case_verdicts_markdown,
    cell_tests,
    fig2_pair,
    grid_surface,
    table3,
    table3_markdown,
)
from .collect import MISSING, fmt_score, method_name, ordered, task_name
from .heatmap import draw_pair

CSV_FILES = ("case_table3.csv", "case_verdicts.csv", "case_reverse.csv", "case_grid.csv")
MD_FILES = ("case_table3.md", "case_verdicts.md")


def draw_surface(surface: pd.DataFrame, method: str = "fish"):
    """Fig. 1: per model, the grid's mean score (cells: mean ± std over seeds) and the score over samples, one
    line per ratio with its ± std band."""
    models = ordered(surface["model"], ())
    fig = Figure(figsize=(10, 3.8 * max(len(models), 1)))
    axes = fig.subplots(max(len(models), 1), 2, squeeze=False)
    for (ax_map, ax_line), model in zip(axes, models):
        g = surface[surface["model"] == model]
        mean = g.pivot(index="ratio", columns="samples", values="mean").sort_index()
        std = g.pivot(index="ratio", columns="samples", values="std").reindex_like(mean)
        ax_map.imshow(mean.values * 100, cmap="Greens", aspect="equal")
        for i, j in np.ndindex(mean.shape):
            m, s = mean.values[i, j], std.values[i, j]
            if not np.isnan(m):
                ax_map.text(j, i, f"{m * 100:.1f}" + ("" if np.isnan(s) else f"\n±{s * 100:.1f}"), ha="center",
                            va="center", fontsize=7)
        ax_map.set_xticks(range(mean.shape[1]), [str(n) for n in mean.columns])
        ax_map.set_yticks(range(mean.shape[0]), [f"{r:g}" for r in mean.index])
        ax_map.set_xlabel(f"{method_name(method)} samples", fontsize=8)
        ax_map.set_ylabel("Mask sparsity (%)", fontsize=8)
        ax_map.set_title(f"{method_name(method)} on {task_name(TASK)} · {model}: mean ± std, "
                         f"{int(g['n'].min())}–{int(g['n'].max())} seeds", fontsize=9)
        for ratio in mean.index:
            m, s = mean.loc[ratio] * 100, std.loc[ratio].fillna(0) * 100
            ax_line.plot(mean.columns, m, marker="o", label=f"{ratio:g}%")
            ax_line.fill_between(mean.columns, m - s, m + s, alpha=0.15)
        ax_line.set_xscale("log", base=2)
        ax_line.set_xticks(list(mean.columns), [str(n) for n in mean.columns])
        ax_line.set_xlabel(f"{method_name(method)} samples", fontsize=8)
        ax_line.set_ylabel("score ×100", fontsize=8)
        ax_line.grid(alpha=0.3)
        ax_line.legend(title="sparsity", fontsize=7, title_fontsize=7)
    fig.tight_layout()
    return fig


def draw_reverse(tests: pd.DataFrame, left: str = "reverse_ird", right: str = "ird", mode: str = ""):
    """Fig. 5: ``right`` and ``left`` along the staircase (mean ± std over seeds), each cell's arrow of the
    paired test above it."""
    models = ordered(tests["model"], ())
    fig = Figure(figsize=(8, 3.6 * max(len(models), 1)))
    axes = fig.subplots(max(len(models), 1), 1, squeeze=False)[:, 0]
    for ax, model in zip(axes, models):
        g = tests[tests["model"] == model].reset_index(drop=True)
        x = np.arange(len(g))
        for k, (name, colour) in enumerate(((right, "tab:green"), (left, "tab:grey"))):
            ax.errorbar(x + (k - 0.5) * 0.12, g[f"{name}_mean"] * 100, yerr=g[f"{name}_std"].fillna(0) * 100,
                        marker="o", capsize=3, color=colour, label=method_name(name))
        top = np.nanmax((g[[f"{right}_mean", f"{left}_mean"]].max(axis=1) + g[f"{right}_std"].fillna(0)) * 100)
        for i, arrow in enumerate(g["arrow"]):
            ax.text(i, top + 0.5, arrow or "·", ha="center", va="bottom", fontsize=10,
                    color={"▲": "tab:blue", "▼": "tab:red"}.get(arrow, "dimgray"))
        ax.set_xticks(x, [f"{r:g}% / {n}" for r, n in zip(g["ratio"], g["samples"])], fontsize=7)
        ax.set_xlabel("staircase cell (ratio / samples)", fontsize=8)
        ax.set_ylabel("score ×100", fontsize=8)
        ax.set_title(f"{method_name(right)} vs {method_name(left)} on {task_name(TASK)} · {model}"
                     + (f" (reverse IRD: zero_fisher={mode})" if mode else ""), fontsize=9)
        ax.margins(y=0.15)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _save(fig, stem: Path, formats) -> list[Path]:
    paths = [stem.with_suffix(f".{ext}") for ext in formats]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def _zero_fisher_modes(df: pd.DataFrame) -> str:
    modes = ordered(df.loc[(df["method"] == "reverse_ird") & (df["task"] == TASK), "zero_fisher_mode"], ())
    return ", ".join(str(m) for m in modes)


def _reverse_markdown(t: pd.DataFrame) -> str:
    lines = ["| model | cell | seeds | IRD | reverse IRD | IRD − reverse IRD ×100 | 95 % CI | p | | reverse IRD "
             "entries with F = 0 | candidates with F > 0 |", "|---|---|---:|---:|---:|---:|---|---:|---|---:|---:|"]
    for r in t.itertuples():
        ci = f"[{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]" if r.n > 1 else MISSING
        diff = f"{100 * r.diff:+.2f}" if r.n else MISSING
        zero = getattr(r, "reverse_ird_zero_fisher", np.nan)
        total = getattr(r, "reverse_ird_trainable", np.nan)
        cand = getattr(r, "reverse_ird_positive_candidates", np.nan)
        zero_text = MISSING if np.isnan(zero) else f"{zero:,.0f}" + ("" if np.isnan(total) else f" of {total:,.0f}")
        lines.append(f"| {r.model} | {r.cell} | {r.n} | {fmt_score(r.ird_mean)} | {fmt_score(r.reverse_ird_mean)} | "
                     f"{diff} | {ci} | {r.p:.3g} | {r.arrow} | {zero_text} | "
                     f"{MISSING if np.isnan(cand) else f'{cand:,.0f}'} |")
    return "\n".join(lines) + "\n"


def write_case(df: pd.DataFrame, out: Path, formats=("png", "pdf")) -> tuple[list[Path], str]:
    """Write the case study's files into ``out``; return them and the README section (Markdown)."""
    written: list[Path] = []
    holdout = bool((df.loc[df["task"] == TASK, "selected_on"] == "holdout").any())
    kinds = ("score", "dev_best") if holdout else ("score",)

    def text(name: str, content: str) -> None:
        (out / name).write_text(content)
        written.append(out / name)

    t3 = pd.concat([table3(df, k).assign(score_kind=k) for k in kinds], ignore_index=True)
    text("case_table3.csv", t3.to_csv(index=False))
    verdict = pd.concat([case_verdicts(df, score=k).assign(score_kind=k) for k in kinds], ignore_index=True)
    text("case_verdicts.csv", verdict.to_csv(index=False))
    reverse = cell_tests(df, "reverse_ird", "ird")
    text("case_reverse.csv", reverse.to_csv(index=False))
    surface = grid_surface(df)
    text("case_grid.csv", surface.to_csv(index=False))

    name = {"score": "holdout-chosen", "dev_best": "best dev epoch"}
    md = [f"## The {task_name(TASK)} case study (the paper's §5.4.1 and §5.4.5)", "",
          "Which score: " + ("each run chose its epoch on its held-out training examples; the main tables show "
                             f"{SCORES['score']}, the second ones {SCORES['dev_best']}." if holdout else
                             "these runs chose their epoch on the dev set (no holdout), so every number is "
                             f"{SCORES['dev_best']}."), ""]
    t3md, vmd = [], []
    for k in kinds:
        label = f" ({name[k]})" if holdout else ""
        pair = fig2_pair(df, score=k)
        fig = draw_pair(pair)
        written += _save(fig, out / ("case_fig2" + ("" if k == "score" else f"_{k}")), formats)
        t3md.append(f"### Table 3{label}\n\n{table3_markdown(t3[t3['score_kind'] == k])}")
        vmd.append(f"### Verdicts{label}\n\n{case_verdicts_markdown(verdict[verdict['score_kind'] == k])}")
    text("case_table3.md", "\n".join(t3md))
    text("case_verdicts.md", "\n".join(vmd))
    md += ["\n".join(t3md), "Fig. 2: FISH (left) and IRD (right), mean over seeds; the staircase is the coloured "
           "cells, grey ones were not run; arrows as in Table 3; the best cell of the two framed in red.", "",
           "![Fig. 2](case_fig2.png)", ""]
    if holdout:
        md += ["![Fig. 2, best dev epoch](case_fig2_dev_best.png)", ""]
    md += ["\n".join(vmd), "Staircase rows: each seed's mean difference over the staircase cells both methods "
           "finished, then the paired test over seeds. Rows against dense: each seed's 0.5 % cell chosen on the "
           "holdout (FISH, IRD and reverse IRD have two at 0.5 %), dense and BitFit their one cell. The verdict "
           "is the 95 % t interval's; the sign-flip p is exact.", ""]
    if not surface.empty:
        written += _save(draw_surface(surface), out / "case_fig1", formats)
        md += ["### Fig. 1: FISH over the whole grid", "", "FISH Mask's score on every ratio × samples cell "
               f"(`sparsity=grid` runs; {SCORES['score']}), mean ± std over seeds; the data is case_grid.csv.", "",
               "![Fig. 1](case_fig1.png)", ""]
    else:
        md += ["### Fig. 1: FISH over the whole grid", "", "No FISH grid run has finished yet.", ""]
    if not reverse.empty and reverse["reverse_ird_n"].sum() and reverse["ird_n"].sum():
        mode = _zero_fisher_modes(df)
        written += _save(draw_reverse(reverse, mode=mode), out / "case_fig5", formats)
        reading = {"exclude": "reverse IRD's bottom-k ranges over entries with Fisher > 0 under its samples",
                   "include": "the literal reading: reverse IRD's bottom-k ranges over every entry, those with "
                              "Fisher 0 (never touched by its samples) first"}
        md += ["### Fig. 5: IRD vs reverse IRD along the staircase", "",
               f"Reverse IRD here: zero_fisher={mode or 'not recorded'} "
               f"({'; '.join(reading[m] for m in mode.split(', ') if m in reading) or 'reading not recorded'}). "
               f"{SCORES['score'].capitalize()}; mean ± std over seeds; the arrow is IRD − reverse IRD's paired "
               "test, as in Table 3.", "", "![Fig. 5](case_fig5.png)", "", _reverse_markdown(reverse)]
    else:
        md += ["### Fig. 5: IRD vs reverse IRD along the staircase", "", "No seed has both finished yet.", ""]
    return written, "\n".join(md)

"""Build the whole report of one or more result folders into one output folder.

`build_report(roots, out)` writes results.csv, status.csv, problems.csv, the ladder heatmaps (PNG + PDF per
task/model and combined), arrows.csv/.md, table2.md/.tex/.csv (with the majority-class row), the paper's
Table 2 beside ours (paper.md), the training curves (curves.csv + figure), the scaling plot when there are grid
runs, ird_vs_fish.csv (IRD against FISH paired over seeds, `stats`), above_majority.csv (each method against
the majority class, paired over seeds), the SST-2 case study (`case_page`: Table 3, Figs. 1, 2 and 5, its
verdicts) when the results hold SST-2 ladder runs of FISH and IRD, and a README.md that links them, opened by a
root's NOTES.md when it has one (the protocol, in words; every number comes from the results); it returns the
list of files written (the CLI and the Hydra callback print it). A folder of selection-only runs (no score,
``selection/*.json`` summaries) gets the masks page instead (`masks.write_masks_page`).
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # batch drawing (CLI, Hydra callback); the figures themselves are plain Figure objects

from .case import has_case  # noqa: E402
from .case_page import write_case  # noqa: E402
from .collect import TASK_ORDER, collect, ordered, problems, status_counts, task_name  # noqa: E402
from .curves import write_curves  # noqa: E402
from .heatmap import arrow_counts, arrows_markdown, ladder_pairs, write_heatmaps  # noqa: E402
from .masks import find_summaries, write_masks_page  # noqa: E402
from .paper import paper_beside_ours  # noqa: E402
from .scaling import scaling_data, write_scaling  # noqa: E402
from .stats import (  # noqa: E402
    PAIR,
    above_majority,
    above_majority_markdown,
    cell_differences,
    cell_differences_markdown,
    verdicts,
    verdicts_markdown,
)
from .table import lr_markdown, table2_csv, table2_data, table2_latex, table2_markdown  # noqa: E402


def build_report(roots, out: str | Path | None = None, formats=("png", "pdf")) -> list[Path]:
    """Read every result.json under ``roots`` (a path or a list of them) and write the report into ``out``
    (default ``<first root>/report``). Returns the files written, in order."""
    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    out = Path(out) if out is not None else roots[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    df = collect(*roots)
    if not df["score"].notna().any() and find_summaries(*roots):  # selection-only runs: the masks page
        return write_masks_page(roots, out, formats, problems(df))
    written: list[Path] = []

    def text(name: str, content: str) -> None:
        path = out / name
        path.write_text(content)
        written.append(path)

    text("results.csv", df.drop(columns=["run", "history"]).to_csv(index=False))
    counts = status_counts(df)
    text("status.csv", counts.to_csv(index=False))
    bad = problems(df)
    text("problems.csv", bad.to_csv(index=False))

    pairs = ladder_pairs(df)
    case = ""
    if has_case(df):
        files, case = write_case(df, out, formats)
        written += files
    written += write_heatmaps(pairs, out, formats)
    arrows = arrow_counts(pairs)
    text("arrows.csv", arrows.to_csv(index=False))
    text("arrows.md", arrows_markdown(arrows))

    long = table2_data(df)
    text("table2.md", table2_markdown(long))
    text("table2.tex", table2_latex(long))
    text("table2.csv", table2_csv(long))
    paper = "".join(f"### {model}\n\n{paper_beside_ours(long, model)}\n" for model in ordered(long["model"], ()))
    text("paper.md", paper)
    written += write_curves(df, out, formats=formats)

    written += write_scaling(scaling_data(df), out, formats=formats)
    verdict = verdicts(df, *PAIR)
    text("ird_vs_fish.csv", verdict.to_csv(index=False))
    learned = above_majority(df)
    text("above_majority.csv", learned.to_csv(index=False))
    seconds = time.perf_counter() - t0
    text("README.md", _readme(roots, df, counts, bad, arrows, long, written, seconds, verdict, paper, learned, case))
    return written


def where_it_ran(df) -> str:
    """Markdown: per task and device, the runs, the cells trained and their wall time (from result.json)."""
    df = df.assign(device=df["device"].fillna("not recorded"))
    runs = df.drop_duplicates("run")
    if runs.empty:
        return ""
    cells = df.groupby(["task", "device"]).size()
    lines = ["| task | device | runs | cells | wall time (min) |", "|---|---|---:|---:|---:|"]
    for (task, device), g in runs.groupby(["task", "device"]):
        minutes = g["run_seconds"].sum() / 60
        lines.append(f"| {task_name(task)} | {device} | {len(g)} | {cells[(task, device)]} | {minutes:.1f} |")
    total = runs["run_seconds"].sum() / 60
    lines.append(f"| all | | {len(runs)} | {len(df)} | {total:.1f} |")
    missing = [task_name(t) for t in TASK_ORDER if t not in set(df["task"])]
    if missing:
        lines += ["", f"GLUE tasks with no result here: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def which_score(df) -> str:
    """One sentence: which score the page's tables show (holdout-chosen or best dev epoch), from the results."""
    ok = df[(df["status"] == "ok") & df["score"].notna()]
    held = int((ok["selected_on"] == "holdout").sum())
    if not held:
        return ("Scores: each cell's best dev score over epochs (these runs chose their epoch on the dev set; no "
                "examples were held out).")
    return (f"Scores: the dev score at the epoch chosen on held-out training examples ({held} of {len(ok)} cells; "
            "the others, run without a holdout, their best dev epoch); each cell's best dev epoch (the paper's "
            "number) is `dev_best` in results.csv. Wherever the page picks one of several cells or repeats, it "
            "picks on the holdout score.")


def _readme(roots, df, counts, bad, arrows, long, written, seconds, verdict, paper, learned, case="") -> str:
    runs = df["run"].nunique()
    n = {s: int(counts[s].sum()) for s in ("ok", "skipped", "failed")} if not counts.empty else {}
    notes = [Path(r) / "NOTES.md" for r in roots if (Path(r) / "NOTES.md").is_file()]
    lines = [notes[0].read_text().rstrip("\n")] if notes else ["# fishtune report"]
    lines += ["", f"From {', '.join(str(r) for r in roots)}: {runs} runs "
              f"({', '.join(f'{v} {k}' for k, v in n.items())}), {len(df)} rows in results.csv; built in "
              f"{seconds:.1f} s.", "", which_score(df), ""]
    if case:
        lines += [case, ""]
    if not bad.empty:
        lines += ["## Not finished", "", "| task | model | method | sparsity | seed | cell | status | reason |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in bad.itertuples():
            lines.append(f"| {r.task} | {r.model} | {r.method} | {r.sparsity} | {r.seed} | {r.cell} | {r.status} | "
                         f"{str(r.reason or '').replace('|', '/')[:120]} |")
        lines.append("")
    pngs = [p for p in written if p.suffix == ".png" and not p.name.startswith("case_")]  # the case's are above
    if pngs:
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    if not arrows.empty:
        lines += ["## Arrow counts", "", "▲/▼: the right method's mean over seeds above/below the left's in a cell, "
                  "with no test (the paired tests over seeds follow).", "", arrows_markdown(arrows)]
    if not verdict.empty:
        per_cell = cell_differences_markdown(cell_differences(df, *PAIR), *PAIR)
        lines += [f"## {PAIR[1]} vs {PAIR[0]} beyond noise (paired over seeds)", "", verdicts_markdown(verdict, *PAIR),
                  "Per ladder cell:", "", per_cell]
    lines += ["## Table 2", "", table2_markdown(long)]
    if not learned.empty:
        lines += ["## Above the majority class? (paired over seeds)", "",
                  "Each seed's best dev score over the run's cells (×100) minus the majority-class score of its own "
                  "training subset; the best over cells leans optimistic, so a method whose interval reaches 0 has "
                  "not shown that it learned the task.", "", above_majority_markdown(learned)]
    if paper.strip():
        lines += ["## The paper's Table 2 beside ours (ours / paper)", "",
                  "The paper's rows are BERT-large, or BERT-base where marked (B); single runs on the full "
                  "training sets.", "", paper]
    if lrs := lr_markdown(df):
        lines += ["## Learning rates", "", "Dev score ×100 of each method at each learning rate it ran with; the last "
                  "column is the lr the sweep picks: on the holdout where the runs held examples out, else on dev.",
                  "",
                  lrs]
    if not df.empty:
        lines += ["## Where it ran", "", where_it_ran(df)]
    return "\n".join(lines).rstrip("\n") + "\n"

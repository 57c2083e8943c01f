"""Build the whole report of one or more result folders into one output folder.

`build_report(roots, out)` writes results.csv, status.csv, problems.csv, the ladder heatmaps (PNG + PDF per
task/model and combined), arrows.csv/.md, table2.md/.tex/.csv, the scaling plot when there are grid runs,
ird_vs_fish.csv (IRD against FISH paired over seeds, `stats`) and a README.md that links them; it returns the
list of files written (the CLI and the Hydra callback print it).
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # batch drawing (CLI, Hydra callback); the figures themselves are plain Figure objects

from .collect import collect, problems, status_counts  # noqa: E402
from .heatmap import arrow_counts, arrows_markdown, ladder_pairs, write_heatmaps  # noqa: E402
from .scaling import scaling_data, write_scaling  # noqa: E402
from .stats import PAIR, verdicts, verdicts_markdown  # noqa: E402
from .table import table2_csv, table2_data, table2_latex, table2_markdown  # noqa: E402


def build_report(roots, out: str | Path | None = None, formats=("png", "pdf")) -> list[Path]:
    """Read every result.json under ``roots`` (a path or a list of them) and write the report into ``out``
    (default ``<first root>/report``). Returns the files written, in order."""
    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    out = Path(out) if out is not None else roots[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    df = collect(*roots)
    written: list[Path] = []

    def text(name: str, content: str) -> None:
        path = out / name
        path.write_text(content)
        written.append(path)

    text("results.csv", df.drop(columns=["run"]).to_csv(index=False))
    counts = status_counts(df)
    text("status.csv", counts.to_csv(index=False))
    bad = problems(df)
    text("problems.csv", bad.to_csv(index=False))

    pairs = ladder_pairs(df)
    written += write_heatmaps(pairs, out, formats)
    arrows = arrow_counts(pairs)
    text("arrows.csv", arrows.to_csv(index=False))
    text("arrows.md", arrows_markdown(arrows))

    long = table2_data(df)
    text("table2.md", table2_markdown(long))
    text("table2.tex", table2_latex(long))
    text("table2.csv", table2_csv(long))

    written += write_scaling(scaling_data(df), out, formats=formats)
    verdict = verdicts(df, *PAIR)
    text("ird_vs_fish.csv", verdict.to_csv(index=False))
    seconds = time.perf_counter() - t0
    text("README.md", _readme(roots, df, counts, bad, arrows, long, written, seconds, verdict))
    return written


def _readme(roots, df, counts, bad, arrows, long, written, seconds, verdict) -> str:
    runs = df["run"].nunique()
    n = {s: int(counts[s].sum()) for s in ("ok", "skipped", "failed")} if not counts.empty else {}
    lines = ["# fishtune report", "",
             f"From {', '.join(str(r) for r in roots)}: {runs} runs ({', '.join(f'{v} {k}' for k, v in n.items())}), "
             f"{len(df)} rows in results.csv; built in {seconds:.1f} s.", ""]
    if not bad.empty:
        lines += ["## Not finished", "", "| task | model | method | sparsity | seed | cell | status | reason |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in bad.itertuples():
            lines.append(f"| {r.task} | {r.model} | {r.method} | {r.sparsity} | {r.seed} | {r.cell} | {r.status} | "
                         f"{str(r.reason or '').replace('|', '/')[:120]} |")
        lines.append("")
    pngs = [p for p in written if p.suffix == ".png"]
    if pngs:
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    if not arrows.empty:
        lines += ["## Arrow counts", "", arrows_markdown(arrows)]
    if not verdict.empty:
        lines += [f"## {PAIR[1]} vs {PAIR[0]} beyond noise (paired over seeds)", "", verdicts_markdown(verdict, *PAIR)]
    lines += ["## Table 2", "", table2_markdown(long)]
    return "\n".join(lines).rstrip("\n") + "\n"

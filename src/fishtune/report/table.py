"""Table 2 of the paper: methods × tasks at each parameter ratio, as Markdown, LaTeX and CSV.

Rows are (method, parameter ratio): Dense and BitFit get one row each at their measured trainable share,
every other method one row per ratio it ran at. A single-ratio job gives its score; a ladder or grid job gives,
at each of its ratios, its best cell there (IRD's choice over the staircase), used only where the method has no
single-ratio job at that ratio (a ladder's over a grid's). "Best" (of cells at a ratio, of a seed's repeats) ranks
by the holdout score where the runs recorded one (`collect.choice`), so no choice is made on the dev set the
table then shows. Cells show the headline metric ×100 with one decimal, "mean ± std" over seeds
when there are several, the best of each column in bold, "–" where nothing ran, and "failed"/"skipped" (or a
count of them beside the mean) where runs did not finish: nothing is dropped silently.

`table2_data(df)` is the data (one row per model, method, ratio and task); the renderers only format it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .collect import METHOD_ORDER, MISSING, TASK_ORDER, choice, fmt_ratio, majority, method_name, ordered, task_name

TOL = 1e-9
LONG_COLUMNS = ["model", "method", "ratio_key", "params_ratio", "task", "mean", "std", "n_ok", "n_failed",
                "n_skipped", "seeds", "reasons", "text", "best"]


def _ratio_key(ratio_fixed: bool, r: float, sparsity) -> object:
    if ratio_fixed:  # the method's own share (dense, BitFit): one row at the measured ratio
        return "intrinsic"
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return str(sparsity)  # a ladder job that failed before any cell: keep it, under its sparsity name
    return round(float(r), 6)


def _entries(df: pd.DataFrame) -> pd.DataFrame:
    """One entry per run and ratio: status, score, seed (ladder/grid runs: the best ok cell at each ratio)."""
    rows = []
    df = df.assign(_choice=choice(df))
    for _, g in df.groupby("run", sort=False):
        first = g.iloc[0]
        base = {"model": first["model"], "method": first["method"], "task": first["task"], "seed": first["seed"],
                "kind": first["kind"]}
        for r, cg in g.groupby(g["nominal_ratio"].fillna(-1.0), sort=False):
            r = math.nan if r == -1.0 else r
            ok = cg[(cg["status"] == "ok") & cg["score"].notna()]
            status = "ok" if not ok.empty else ("failed" if (cg["status"] != "skipped").any() else "skipped")
            reason = next((x for x in cg["reason"] if isinstance(x, str) and x), None)
            pick = ok.loc[ok["_choice"].idxmax()] if not ok.empty else None
            rows.append({**base, "ratio_key": _ratio_key(bool(first["ratio_fixed"]), r, first["sparsity"]),
                         "status": status, "score": pick["score"] if pick is not None else math.nan,
                         "choice": pick["_choice"] if pick is not None else math.nan,
                         "trainable_ratio": ok["trainable_ratio"].mean() if not ok.empty else math.nan,
                         "reason": None if status == "ok" else reason})
    e = pd.DataFrame(rows)
    if e.empty:
        return e
    # single-ratio jobs win over ladder best-at-ratio for the same method and ratio, a ladder over a grid
    rank = e["kind"].map({"single": 0, "ladder": 1}).fillna(2)
    e = e[rank == rank.groupby([e["model"], e["method"], e["task"], e["ratio_key"].astype(str)]).transform("min")]
    # one entry per seed: a repeat of the same seed (BitFit swept over sparsities, a learning-rate sweep) is
    # not a new seed; the best ok repeat stands for it (a sweep's row is its best lr, as the sweep chooses:
    # on the holdout when there is one)
    e = e.assign(_bad=(e["status"] != "ok"), _neg=-e["choice"].fillna(-math.inf))
    e = e.sort_values(["_bad", "_neg"], kind="stable")
    dup = e.duplicated(["model", "method", "task", "ratio_key", "seed"]) & e["seed"].notna()
    return e[~dup].drop(columns=["_bad", "_neg", "choice"]).sort_index()  # back in the order the runs were read


def _text(mean: float, std: float, n_ok: int, n_failed: int, n_skipped: int) -> str:
    if n_ok == 0:
        return "failed" if n_failed else "skipped" if n_skipped else MISSING
    s = f"{mean * 100:.1f}" + (f" ± {std * 100:.1f}" if n_ok > 1 else "")
    extra = [f"{n} {w}" for n, w in ((n_failed, "failed"), (n_skipped, "skipped")) if n]
    return s + (f" ({', '.join(extra)})" if extra else "")


def table2_data(df: pd.DataFrame) -> pd.DataFrame:
    """The long table behind Table 2: one row per model, method, ratio and task that has any run."""
    e = _entries(df)
    if e.empty:
        return pd.DataFrame(columns=LONG_COLUMNS)
    rows = []
    for (model, method, key, task), g in e.groupby(["model", "method", "ratio_key", "task"], sort=False):
        ok = g[g["status"] == "ok"]
        n_ok = len(ok)
        n_failed, n_skipped = int((g["status"] == "failed").sum()), int((g["status"] == "skipped").sum())
        mean = ok["score"].mean() if n_ok else math.nan
        std = ok["score"].std(ddof=1) if n_ok > 1 else math.nan
        rows.append({"model": model, "method": method, "ratio_key": key, "task": task, "mean": mean, "std": std,
                     "n_ok": n_ok, "n_failed": n_failed, "n_skipped": n_skipped,
                     "seeds": ",".join(str(s) for s in sorted(g["seed"].dropna().unique())),
                     "reasons": "; ".join(sorted({r for r in g["reason"] if isinstance(r, str) and r})),
                     "text": _text(mean, std, n_ok, n_failed, n_skipped), "_tr": ok["trainable_ratio"].mean()})
    out = pd.DataFrame(rows)
    # the ratio a row is shown at: measured for Dense/BitFit, nominal otherwise
    measured = out.groupby(["model", "method"])["_tr"].mean()
    out["params_ratio"] = [measured[(m, me)] if k == "intrinsic" else (k if isinstance(k, float) else math.nan)
                           for m, me, k in zip(out["model"], out["method"], out["ratio_key"])]
    out["best"] = False
    for _, g in out.groupby(["model", "task"]):
        if g["mean"].notna().any():
            out.loc[g.index[g["mean"] >= g["mean"].max() - TOL], "best"] = True
    return pd.concat([out[LONG_COLUMNS], _majority_rows(df)], ignore_index=True)


def _majority_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One "majority" row per model and task: the dev score of always predicting the training set's most
    frequent label (recorded by each run; the mean over runs, which differ only in their data subsets)."""
    rows = [{"model": r.model, "method": "majority", "ratio_key": "baseline", "params_ratio": math.nan,
             "task": r.task, "mean": r.mean, "std": math.nan, "n_ok": r.runs, "n_failed": 0, "n_skipped": 0,
             "seeds": "", "reasons": "", "text": f"{r.mean * 100:.1f}", "best": False}
            for r in majority(df).itertuples()]
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def _row_order(long: pd.DataFrame) -> list[tuple[str, object]]:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    keys = {(m, k) for m, k in zip(long["method"], long["ratio_key"])}

    def sort_key(mk):
        m, k = mk
        group = 0 if k == "intrinsic" else 1 if isinstance(k, float) else 2
        return (group, -k if isinstance(k, float) else 0, str(k), rank.get(m, len(rank)), m)

    return sorted(keys, key=sort_key)


def table2_frame(long: pd.DataFrame, model: str, average: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 of one model as (text, bold) frames: rows (method, ratio), columns tasks (and "Avg")."""
    sub = long[long["model"] == model]
    tasks = ordered(sub["task"], TASK_ORDER)
    order = _row_order(sub)
    text = pd.DataFrame(MISSING, index=range(len(order)), columns=["Method", "Params Ratio", *map(task_name, tasks)])
    bold = pd.DataFrame(False, index=text.index, columns=text.columns)
    means = pd.DataFrame(np.nan, index=text.index, columns=tasks)
    for i, (method, key) in enumerate(order):
        rows = sub[(sub["method"] == method) & (sub["ratio_key"] == key)]
        text.loc[i, "Method"] = method_name(method)
        pr = rows["params_ratio"].dropna()
        text.loc[i, "Params Ratio"] = fmt_ratio(pr.iloc[0]) if len(pr) else str(key)
        for r in rows.itertuples():
            text.loc[i, task_name(r.task)] = r.text
            bold.loc[i, task_name(r.task)] = bool(r.best)
            means.loc[i, r.task] = r.mean
    if average and len(tasks) > 1:
        avg = means.mean(axis=1, skipna=False)
        text["Avg"] = [MISSING if math.isnan(a) else f"{a * 100:.1f}" for a in avg]
        bold["Avg"] = (avg >= avg.max() - TOL) & avg.notna() if avg.notna().any() else False
    return text, bold


def _md_cell(s: str, b: bool) -> str:
    return f"**{s}**" if b and s != MISSING else s


def table2_markdown(long: pd.DataFrame, title: str = "Table 2") -> str:
    """Every model's Table 2 as Markdown, with the failed/skipped runs and their reasons below each."""
    parts = []
    for model in ordered(long["model"], ()):
        text, bold = table2_frame(long, model)
        parts.append(f"### {title}: {model}\n")
        parts.append("| " + " | ".join(text.columns) + " |")
        parts.append("|" + "|".join(["---", "---:"] + [":---:"] * (len(text.columns) - 2)) + "|")
        for i in text.index:
            parts.append("| " + " | ".join(_md_cell(text.loc[i, c], bold.loc[i, c]) for c in text.columns) + " |")
        bad = long[(long["model"] == model) & ((long["n_failed"] > 0) | (long["n_skipped"] > 0))]
        if not bad.empty:
            parts.append("\nNot finished:\n")
            for r in bad.itertuples():
                what = ", ".join(f"{n} {w}" for n, w in ((r.n_failed, "failed"), (r.n_skipped, "skipped")) if n)
                parts.append(f"- {method_name(r.method)} / {task_name(r.task)}: {what}"
                             + (f" ({r.reasons})" if r.reasons else ""))
        parts.append("")
    if not parts:
        return f"### {title}\n\nNo results.\n"
    parts.append("Scores ×100 (headline metric of each task); mean ± std over seeds; best per column in bold; "
                 f"{MISSING}: no run.\n")
    return "\n".join(parts)


def _tex(s: str) -> str:
    s = s.replace("\\", r"\textbackslash{}")
    for a, b in (("%", r"\%"), ("_", r"\_"), ("&", r"\&"), ("#", r"\#"), ("±", r"$\pm$"), (MISSING, "--")):
        s = s.replace(a, b)
    return s


def table2_latex(long: pd.DataFrame) -> str:
    """Every model's Table 2 as a LaTeX tabular (booktabs), best per column in \\textbf."""
    out = []
    for model in ordered(long["model"], ()):
        text, bold = table2_frame(long, model)
        out.append(f"% Table 2: {_tex(model)}")
        out.append(r"\begin{tabular}{l r " + "c " * (len(text.columns) - 2) + "}")
        out.append(r"\toprule")
        out.append(" & ".join(_tex(c) for c in text.columns) + r" \\")
        out.append(r"\midrule")
        for i in text.index:
            cells = [_tex(text.loc[i, c]) for c in text.columns]
            cells = [rf"\textbf{{{s}}}" if bold.loc[i, c] and s != "--" else s for s, c in zip(cells, text.columns)]
            out.append(" & ".join(cells) + r" \\")
        out.append(r"\bottomrule")
        out.append(r"\end{tabular}")
        out.append("")
    return "\n".join(out) + "\n"


def table2_csv(long: pd.DataFrame) -> str:
    """The long table as CSV (scores as fractions, not ×100; ``text`` is what the cell shows)."""
    return long.to_csv(index=False)


def lr_markdown(df: pd.DataFrame) -> str:
    """Markdown of a learning-rate sweep: the dev score of each method at each lr it ran with, per task and
    ratio (only where some method ran with more than one lr), and the lr the sweep picks: the best mean
    holdout score where the runs held examples out, else (older runs) the best mean dev score; empty
    otherwise."""
    ok = df[(df["status"] == "ok") & df["score"].notna() & df["lr"].notna()]
    ok = ok.assign(ratio_key=[_ratio_key(f, r, s) for f, r, s in zip(ok["ratio_fixed"], ok["nominal_ratio"],
                                                                     ok["sparsity"])], choice=choice(ok))
    swept = ok.groupby(["model", "task", "method", "ratio_key"])["lr"].transform("nunique") > 1
    if not swept.any():
        return ""
    sub = ok[ok.groupby(["model", "task"])["lr"].transform("nunique") > 1]
    index = ["model", "task", "method", "ratio_key"]
    table = sub.pivot_table(index=index, columns="lr", values="score", aggfunc="mean")
    chosen = sub.pivot_table(index=index, columns="lr", values="choice", aggfunc="mean")
    on = sub.groupby(index)["holdout_score"].agg(lambda h: "holdout" if h.notna().any() else "dev")
    lrs = list(table.columns)
    lines = ["| model | task | method | ratio | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | lr chosen (on) |",
             "|---|---|---|---|" + "---:|" * len(lrs) + "---|"]
    for (model, task, method, key), row in table.iterrows():
        ratio = key if isinstance(key, str) else fmt_ratio(key)
        pick = chosen.loc[(model, task, method, key)].idxmax()
        lines.append(f"| {model} | {task_name(task)} | {method_name(method)} | {ratio} | "
                     + " | ".join(MISSING if math.isnan(v) else f"{v * 100:.1f}" for v in row)
                     + f" | {pick:g} ({on[(model, task, method, key)]}) |")
    return "\n".join(lines) + "\n"

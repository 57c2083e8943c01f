"""The paper's SST-2 case study (§5.4.1 and §5.4.5): Table 3, the data of Figs. 1, 2 and 5, and one verdict table.

Every number is over seeds, each seed one pair (the same seed draws the same training subset, holdout, initial
Fisher samples and head for every method):

- `table3(df)`: per staircase cell (rows: sample counts, columns: ratios, as `table3_markdown` lays it out),
  FISH and IRD as mean ± std over seeds, and IRD − FISH's paired test over the seeds that finished both (95 %
  t interval, exact sign-flip p). The arrow is ▲/▼ only where the interval excludes 0, = where it does not,
  none below `stats.MIN_SEEDS` paired seeds. The paper's Table 3 (single runs, BERT) is beside it.
- `fig2_pair(df, left, right)`: Fig. 2's heatmap pair (`heatmap.LadderPair`) with these arrows.
- `grid_surface(df)`: Fig. 1, FISH over the whole ratio × samples grid (``sparsity=grid`` runs): mean, std.
- `cell_tests(df, "reverse_ird", "ird")`: Fig. 5, IRD against reverse IRD along the staircase, with the share of
  reverse IRD's selected entries that have Fisher 0 and which reading of reverse IRD the runs used.
- `case_verdicts(df)`: IRD vs FISH and IRD vs reverse IRD pooled over the staircase (each seed's mean
  difference over the cells both finished, as `stats.verdicts`), and each method against dense at 0.5 % (each
  seed's 0.5 % cell chosen on the holdout; dense and BitFit: their one cell).

``score`` picks the number shown: ``"score"`` (the dev score at the epoch chosen on the holdout; runs without a
holdout chose on dev) or ``"dev_best"`` (the best dev score over epochs, what the paper reports). Choices among
cells always rank by the holdout (`collect.choice`). Every function takes what has finished: missing seeds or
cells leave gaps (NaN, no arrow), never an error.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .collect import MISSING, choice, method_name, ordered
from .heatmap import LadderPair, make_pair
from .paper import paper_table3
from .stats import MIN_SEEDS, paired_test, side, verdicts

__all__ = ["STAIRCASE", "SCORES", "has_case", "table3", "table3_markdown", "fig2_pair", "cell_tests",
           "grid_surface", "case_verdicts", "case_verdicts_markdown"]

TASK = "sst2"
# IRD's staircase as the paper's Table 3 runs it, from (2.5 %, 128 samples) to (0.02 %, 1)
STAIRCASE = ((2.5, 128), (2.5, 32), (0.5, 32), (0.5, 16), (0.1, 16), (0.1, 1), (0.02, 1))
SCORES = {"score": "the dev score at the epoch chosen on the holdout (runs without a holdout: the best dev epoch)",
          "dev_best": "the best dev score over epochs (what the paper reports; chosen on dev, so optimistic)"}
ARROWS = {1: "▲", -1: "▼", 0: "="}


def scored(df: pd.DataFrame, score: str = "score") -> pd.DataFrame:
    """``df`` with ``score`` holding the column asked for (``score`` or ``dev_best``)."""
    if score not in SCORES:
        raise ValueError(f"score={score!r}: one of {', '.join(SCORES)}")
    return df if score == "score" else df.assign(score=df[score])


def _ok(df: pd.DataFrame, task: str, kind: str = "ladder") -> pd.DataFrame:
    return df[(df["task"] == task) & (df["kind"] == kind) & (df["status"] == "ok") & df["score"].notna()
              & df["ratio"].notna() & df["samples"].notna()]


def has_case(df: pd.DataFrame, task: str = TASK) -> bool:
    """True when ``df`` holds finished ladder cells of both FISH and IRD on ``task``: the case study applies."""
    return {"fish", "ird"} <= set(_ok(df, task)["method"])


def _cells(ok: pd.DataFrame) -> list[tuple[float, int]]:
    """The cells found, largest ratio first, then most samples first: the staircase's own order."""
    found = {(float(r), int(n)) for r, n in zip(ok["ratio"], ok["samples"])}
    return sorted(found, key=lambda c: (-c[0], -c[1]))


def _spread(s: pd.Series) -> dict[str, float]:
    return {"mean": s.mean() if len(s) else math.nan, "std": s.std(ddof=1) if len(s) > 1 else math.nan,
            "n": len(s)}


def cell_tests(df: pd.DataFrame, left: str = "fish", right: str = "ird", task: str = TASK,
               score: str = "score") -> pd.DataFrame:
    """Per model and ladder cell: each side's mean, std and seeds, and the paired test of right − left over
    the seeds both finished (``n``, ``diff``, ``ci_low``, ``ci_high``, ``p``, ``arrow``); reverse IRD's
    cells add the mean count of selected entries with Fisher 0 and of candidates with Fisher > 0."""
    ok = _ok(scored(df, score), task)
    ok = ok[ok["method"].isin([left, right])]
    rows = []
    for model in ordered(ok["model"], ()):
        sub = ok[ok["model"] == model]
        for r, n in _cells(sub):
            at = sub[np.isclose(sub["ratio"], r) & (sub["samples"] == n)]
            a = at[at["method"] == left].drop_duplicates("seed").set_index("seed")
            b = at[at["method"] == right].drop_duplicates("seed").set_index("seed")
            both = a.index.intersection(b.index)
            t = paired_test((b.loc[both, "score"] - a.loc[both, "score"]).values)
            row = {"model": model, "ratio": r, "samples": n, "cell": f"r{r:g}-n{n}"}
            for name, g in ((left, a), (right, b)):
                row |= {f"{name}_{k}": v for k, v in _spread(g["score"]).items()}
                if g["zero_fisher"].notna().any():
                    row |= {f"{name}_zero_fisher": g["zero_fisher"].mean(),
                            f"{name}_trainable": g["trainable_params"].mean(),
                            f"{name}_positive_candidates": g["positive_candidates"].mean()}
            row |= {"n": t["n"], "diff": t["mean"], "ci_low": t["ci_low"], "ci_high": t["ci_high"], "p": t["p"],
                    "arrow": ARROWS.get(side(t), "")}
            rows.append(row)
    return pd.DataFrame(rows)


def table3(df: pd.DataFrame, score: str = "score", task: str = TASK) -> pd.DataFrame:
    """Table 3's frame: `cell_tests` of FISH against IRD with the paper's two values and its arrow beside
    (``paper_fish``, ``paper_ird``, ``paper_arrow``; NaN/"" off the paper's staircase)."""
    t = cell_tests(df, "fish", "ird", task, score)
    if t.empty:
        return t
    t["paper_fish"] = [paper_table3("fish", r, n) for r, n in zip(t["ratio"], t["samples"])]
    t["paper_ird"] = [paper_table3("ird", r, n) for r, n in zip(t["ratio"], t["samples"])]
    t[["paper_fish", "paper_ird"]] = t[["paper_fish", "paper_ird"]].astype(float)
    d = t["paper_ird"] - t["paper_fish"]
    t["paper_arrow"] = ["" if math.isnan(x) else ARROWS[int(np.sign(round(x, 9)))] for x in d]
    return t


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return MISSING
    return f"{mean * 100:.1f}" + (f" ± {std * 100:.1f}" if not math.isnan(std) else "")


def table3_markdown(t: pd.DataFrame) -> str:
    """Table 3 as the paper lays it out: rows = FISH samples (128 to 1), columns = mask ratio (2.5 to 0.02 %),
    each staircase cell "FISH \\| IRD arrow" (×100, mean ± std over seeds) over the paper's "FISH \\| IRD arrow"."""
    if t.empty:
        return "No ladder cells of FISH and IRD yet.\n"
    parts = []
    for model, g in t.groupby("model", sort=False):
        ratios = sorted(set(g["ratio"]), reverse=True)  # the paper's: 2.5, 0.5, 0.1, 0.02
        samples = sorted(set(g["samples"]), reverse=True)  # the paper's: 128, 32, 16, 1
        lines = [f"**{model}** (ours: FISH \\| IRD, ×100; below: the paper's)", "",
                 "| samples \\ ratio | " + " | ".join(f"{r:g} %" for r in ratios) + " |",
                 "|---|" + ":---:|" * len(ratios)]
        for n in samples:
            cells = []
            for r in ratios:
                hit = g[np.isclose(g["ratio"], r) & (g["samples"] == n)]
                if hit.empty:
                    cells.append("")
                    continue
                x = hit.iloc[0]
                text = f"{_pm(x.fish_mean, x.fish_std)} \\| {_pm(x.ird_mean, x.ird_std)} {x.arrow}".rstrip()
                if not math.isnan(x.paper_fish):
                    text += f"<br>paper {x.paper_fish * 100:.2f} \\| {x.paper_ird * 100:.2f} {x.paper_arrow}"
                cells.append(text)
            lines.append(f"| **{n}** | " + " | ".join(cells) + " |")
        seeds = f"{int(g['n'].min())}–{int(g['n'].max())}" if g["n"].min() != g["n"].max() else f"{int(g['n'].max())}"
        lines += ["", f"Paired seeds per cell: {seeds}. ▲/▼: IRD − FISH's 95 % t interval over seeds lies above/below "
                  f"0; =: it contains 0; no arrow: fewer than {MIN_SEEDS} paired seeds. The paper's arrows compare "
                  "its single runs.", ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def fig2_pair(df: pd.DataFrame, left: str = "fish", right: str = "ird", task: str = TASK, model: str | None = None,
                score: str = "score") -> LadderPair:
    """Fig. 2's pair: `heatmap.make_pair` (mean over seeds, best cell framed) with the arrows of the paired test
    (`cell_tests`) in place of the sign of the difference of means."""
    data = scored(df, score)
    model = model or ordered(_ok(data, task)["model"], ())[0]
    pair = make_pair(data, task, model, left, right)
    tests = cell_tests(df, left, right, task, score)
    marks = np.full(pair.marks.shape, np.nan)
    for x in tests[tests["model"] == model].itertuples():
        if x.ratio in pair.ratios and x.samples in pair.samples and x.arrow:
            marks[pair.ratios.index(x.ratio), pair.samples.index(x.samples)] = {"▲": 1.0, "▼": -1.0, "=": 0.0}[x.arrow]
    pair.marks = marks
    return pair


def grid_surface(df: pd.DataFrame, method: str = "fish", task: str = TASK, score: str = "score") -> pd.DataFrame:
    """Fig. 1's data: per model and grid cell of ``method``'s grid runs, the mean, std, min, max and seeds."""
    ok = _ok(scored(df, score), task, kind="grid")
    ok = ok[ok["method"] == method]
    if ok.empty:
        return pd.DataFrame(columns=["model", "ratio", "samples", "mean", "std", "min", "max", "n"])
    g = ok.groupby(["model", "ratio", "samples"])["score"]
    out = g.agg(mean="mean", std=lambda s: s.std(ddof=1) if len(s) > 1 else math.nan, min="min", max="max",
                n="count").reset_index()
    out["samples"] = out["samples"].astype(int)
    return out


def _at_half(g: pd.DataFrame) -> pd.DataFrame:
    """A run's rows that stand for it at 0.5 %: its one cell (dense, BitFit) or its cells at that ratio."""
    return g if bool(g["ratio_fixed"].iloc[0]) else g[np.isclose(g["nominal_ratio"], 0.5)]


def _versus_dense(df: pd.DataFrame, task: str) -> list[dict]:
    ok = df[(df["task"] == task) & (df["status"] == "ok") & df["score"].notna() & (df["kind"] != "grid")]
    rows = []
    for model in ordered(ok["model"], ()):
        per_seed = {}
        for method, g in ok[ok["model"] == model].groupby("method"):
            at = pd.concat([_at_half(r) for _, r in g.groupby("run")]) if len(g) else g
            at = at[at["seed"].notna()]
            if not at.empty:
                picked = at.loc[choice(at).groupby(at["seed"]).idxmax()]  # each seed's cell the holdout picks
                per_seed[method] = picked.set_index("seed")["score"]
        if "dense" not in per_seed:
            continue
        for method in ordered(per_seed, ("bitfit", "lora", "random", "fish", "ird", "reverse_ird")):
            if method == "dense":
                continue
            d = (per_seed[method] - per_seed["dense"]).dropna()
            rows.append({"model": model, "comparison": f"{method_name(method)} − Dense (0.5 %)", "cells": 1,
                         **paired_test(d.values)})
    return rows


def case_verdicts(df: pd.DataFrame, task: str = TASK, score: str = "score") -> pd.DataFrame:
    """One row per comparison: IRD − FISH and IRD − reverse IRD over the staircase, each method − dense at
    0.5 %; seeds, mean difference, 95 % t interval, sign-flip p and the verdict the interval gives."""
    data = scored(df, score)
    data = data[data["task"] == task]
    rows = []
    for left, right in (("fish", "ird"), ("reverse_ird", "ird")):
        for v in verdicts(data, left, right).itertuples():
            rows.append({"model": v.model, "comparison": f"{method_name(right)} − {method_name(left)} (staircase)",
                         "cells": v.cells, "n": v.n, "mean": v.mean, "ci_low": v.ci_low, "ci_high": v.ci_high,
                         "p": v.p})
    rows += _versus_dense(data, task)
    out = pd.DataFrame(rows, columns=["model", "comparison", "cells", "n", "mean", "ci_low", "ci_high", "p"])
    out["verdict"] = [{1: "higher", -1: "lower", 0: "within noise"}.get(side(r), f"needs {MIN_SEEDS} seeds")
                      for r in out.to_dict("records")]
    out["min_p"] = [2.0 / 2 ** n if n else math.nan for n in out["n"]]
    return out


def case_verdicts_markdown(v: pd.DataFrame) -> str:
    if v.empty:
        return "No comparison has paired seeds yet.\n"
    lines = ["| model | comparison | cells | seeds | mean difference ×100 | 95 % CI | p (sign-flip) | verdict |",
             "|---|---|---:|---:|---:|---|---:|---|"]
    for r in v.itertuples():
        ci = f"[{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]" if r.n > 1 else MISSING
        note = f" (sign-flip p cannot go below {r.min_p:.2g})" if r.n and r.min_p >= 0.05 else ""
        lines.append(f"| {r.model} | {r.comparison} | {r.cells} | {r.n} | {100 * r.mean:+.2f} | {ci} | "
                     f"{r.p:.3g} | {r.verdict}{note} |")
    return "\n".join(lines) + "\n"

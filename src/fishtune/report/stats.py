"""Paired tests over seeds: IRD against FISH per ladder cell and per task, and each method against the
majority class (did it learn at all?).

The same seed gives FISH and IRD the same initial sample draw and the same head, so each seed is one pair.
Per cell, the difference right − left (IRD − FISH by default) over the seeds that finished both, with its 95 %
t interval; per task, each seed's mean difference over the cells both finished (cells of one seed are not
independent, seeds are), then a 95 % t interval of the mean (the paired t-test) and an exact two-sided
sign-flip permutation p-value (distribution-free). Verdict per task: ``better``/``worse`` when the t interval
excludes 0 over at least 3 seeds, else ``within noise``; with fewer than 6 seeds the sign-flip test cannot
reach 5 % (3 seeds: its smallest p is 0.25), and the table says that such a verdict rests on the t interval.
Against the majority class, each seed pairs a run's best dev score over its cells with the majority-class score
of that run's own training subset; the best over cells leans optimistic, so "not above" is the safe reading.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from .collect import PAIRS

__all__ = ["paired_cells", "paired_test", "verdicts", "verdicts_markdown", "cell_differences",
           "cell_differences_markdown", "above_majority", "above_majority_markdown", "side"]


MIN_SEEDS = 3  # below this the spread of the seeds' differences is itself a guess: no verdict


def paired_cells(df: pd.DataFrame, left: str = "fish", right: str = "ird") -> pd.DataFrame:
    """One row per (model, task, cell, seed) that both methods finished: ``left``, ``right``, ``diff``."""
    ok = df[(df["status"] == "ok") & df["score"].notna() & (df["kind"] == "ladder")]
    keys = ["model", "task", "cell", "seed"]
    a = ok[ok["method"] == left][keys + ["score"]].rename(columns={"score": "left"})
    b = ok[ok["method"] == right][keys + ["score"]].rename(columns={"score": "right"})
    out = a.merge(b, on=keys)
    out["diff"] = out["right"] - out["left"]
    return out.sort_values(keys).reset_index(drop=True)


def paired_test(diffs, rounds: int = 20000, seed: int = 0) -> dict[str, float]:
    """n, mean, 95 % t interval and the two-sided sign-flip permutation p of paired differences (exact up to
    16 pairs, else ``rounds`` seeded random flips)."""
    from scipy import stats

    d = np.asarray(list(diffs), dtype=float)
    n = len(d)
    if n == 0:
        return {"n": 0, "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    mean = float(d.mean())
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    else:
        half = math.inf
    observed = abs(d.sum())
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(rounds, n))
    p = float((np.abs(signs @ d) >= observed - 1e-12).mean())
    return {"n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half, "p": p}


def side(t: dict[str, float]) -> int | None:
    """Which side of 0 a `paired_test` puts the mean difference on: 1 or -1 when its t interval excludes 0, 0 when
    it does not, None below `MIN_SEEDS` seeds (no verdict)."""
    if t["n"] < MIN_SEEDS:
        return None
    return 1 if t["ci_low"] > 0 else -1 if t["ci_high"] < 0 else 0


def verdicts(df: pd.DataFrame, left: str = "fish", right: str = "ird", alpha: float = 0.05) -> pd.DataFrame:
    """One row per (model, task): the seeds' mean differences over shared cells, their test and a verdict."""
    pairs = paired_cells(df, left, right)
    rows = []
    for (model, task), g in pairs.groupby(["model", "task"], sort=True):
        per_seed = g.groupby("seed")["diff"].mean()
        t = paired_test(per_seed.values)
        verdict = {1: f"{right} better", -1: f"{right} worse"}.get(side(t), "within noise")
        floor = 2.0 / 2 ** t["n"] if t["n"] else math.nan  # the smallest exact two-sided p with n seeds
        rows.append({"model": model, "task": task, "cells": g["cell"].nunique(), **t, "verdict": verdict,
                     "min_p": floor})
    return pd.DataFrame(rows, columns=["model", "task", "cells", "n", "mean", "ci_low", "ci_high", "p", "verdict",
                                       "min_p"])


def verdicts_markdown(v: pd.DataFrame, left: str = "fish", right: str = "ird") -> str:
    if v.empty:
        return f"No ladder cells that both {left} and {right} finished with the same seed.\n"
    lines = [f"| model | task | cells | seeds | mean {right} − {left} | 95 % CI | p (sign-flip) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in v.itertuples():
        note = ""
        if r.min_p >= 0.05:  # the sign-flip test cannot reach 5 % with this few seeds
            note = (f" (t interval only: with {r.n} seeds the sign-flip p is ≥ {r.min_p:.2g})"
                    if r.verdict != "within noise" else f" (needs more seeds: sign-flip p ≥ {r.min_p:.2g})")
        ci = f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.n > 1 else "–"
        if r.n < MIN_SEEDS:
            note = f" (needs more seeds: a verdict takes at least {MIN_SEEDS})"
        lines.append(f"| {r.model} | {r.task} | {r.cells} | {r.n} | {r.mean:+.4f} | {ci} | {r.p:.3g} | "
                     f"{r.verdict}{note} |")
    return "\n".join(lines) + "\n"


def cell_differences(df: pd.DataFrame, left: str = "fish", right: str = "ird") -> pd.DataFrame:
    """Per (model, task, cell): the seeds both methods finished, the mean difference right − left and its 95 %
    t interval."""
    pairs = paired_cells(df, left, right)
    rows = [{"model": m, "task": t, "cell": c, **paired_test(g["diff"].values)}
            for (m, t, c), g in pairs.groupby(["model", "task", "cell"], sort=True)]
    return pd.DataFrame(rows, columns=["model", "task", "cell", "n", "mean", "ci_low", "ci_high", "p"])


def cell_differences_markdown(c: pd.DataFrame, left: str = "fish", right: str = "ird") -> str:
    if c.empty:
        return ""
    lines = [f"| model | task | cell | seeds | mean {right} − {left} | 95 % CI |", "|---|---|---|---|---|---|"]
    for r in c.itertuples():
        ci = f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.n > 1 else "–"
        lines.append(f"| {r.model} | {r.task} | {r.cell} | {r.n} | {r.mean:+.4f} | {ci} |")
    return "\n".join(lines) + "\n"


def above_majority(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, method) (and lr, named in the method when a method ran at several): each seed's best
    score over the run's cells minus its run's majority-class score, their paired test and a verdict
    (``above`` when the t interval over at least 3 seeds lies above 0, ``below`` when it lies under, else
    ``not above (within noise)``)."""
    ok = df[(df["status"] == "ok") & df["score"].notna() & df["majority"].notna()]
    ok = ok.assign(lr=ok["lr"].fillna(-1.0))  # runs at other lrs are not seeds (groupby drops a NaN key)
    # one entry per seed: a method's several runs of one seed (a ladder and a grid) are not more seeds
    best = ok.groupby(["model", "task", "method", "lr", "seed"], sort=True).agg(
        score=("score", "max"), majority=("majority", "first")).reset_index()
    several = best.groupby(["model", "task", "method"])["lr"].transform("nunique") > 1
    best["method"] = [f"{m} (lr {lr:g})" if many else m for m, lr, many in zip(best["method"], best["lr"], several)]
    rows = []
    for (model, task, method), g in best.groupby(["model", "task", "method"], sort=True):
        t = paired_test((g["score"] - g["majority"]).values)
        verdict = {1: "above", -1: "below", 0: "not above (within noise)"}.get(side(t), f"needs {MIN_SEEDS} seeds")
        rows.append({"model": model, "task": task, "method": method, **t, "majority": g["majority"].mean(),
                     "verdict": verdict})
    return pd.DataFrame(rows, columns=["model", "task", "method", "n", "mean", "ci_low", "ci_high", "p", "majority",
                                       "verdict"])


def above_majority_markdown(a: pd.DataFrame) -> str:
    if a.empty:
        return ""
    lines = ["| model | task | method | seeds | majority | best − majority | 95 % CI | verdict |",
             "|---|---|---|---|---:|---:|---|---|"]
    for r in a.itertuples():
        ci = f"[{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]" if r.n > 1 else "–"
        lines.append(f"| {r.model} | {r.task} | {r.method} | {r.n} | {100 * r.majority:.1f} | {100 * r.mean:+.1f} | "
                     f"{ci} | {r.verdict} |")
    return "\n".join(lines) + "\n"


PAIR = PAIRS[0]  # (fish, ird): the comparison the paper makes

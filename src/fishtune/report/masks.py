"""The masks page: what FISH, IRD and reverse IRD select, from the ``selection/<cell>.json`` summaries that
selection-only runs write (``select_only=true``; `fishtune.core.mask_summary`), never from the masks.

`load_summaries(*roots)` reads them into one table (a row per task, model, method, seed and cell, the sketch
decoded); `mask_shares(df, by="layer"|"kind")` the share of each mask's entries per layer or kind of
parameter, mean over seeds; `mask_overlaps(df)` the Jaccard of every compared pair of masks at the same cell:
two methods on the same task and seed (``methods``), one method across seeds of a task (``seeds``) and across
tasks at one seed (``tasks``), exact when both masks fit their sketches, else the MinHash estimate with its
standard error; `zero_fisher(df)` the share of selected entries with Fisher 0 under the cell's own samples.
`write_masks_page` draws them (figures, CSVs, README.md): `build_report` calls it for a folder of
selection-only runs.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..core.mask_summary import SKETCH_SIZE, decode_sketch, jaccard
from .collect import TASK_ORDER, method_name, ordered, task_name

__all__ = ["find_summaries", "load_summaries", "mask_shares", "mask_overlaps", "overlap_summary", "zero_fisher",
           "write_masks_page"]

METHODS = ("fish", "ird", "reverse_ird")
KEY = ["task", "model", "method", "seed", "cell"]


def find_summaries(*roots: str | Path) -> list[Path]:
    """Every ``selection/<cell>.json`` under ``roots``, sorted."""
    return sorted(p for r in roots for p in Path(r).rglob("selection/*.json"))


def load_summaries(*roots: str | Path) -> pd.DataFrame:
    """One row per summary: task, model, method (reverse IRD's literal reading, ``method.zero_fisher=include``
    or no rule recorded, as ``reverse_ird (F=0 incl.)``),
    seed, cell, ratio, samples, count, zero_fisher, positive_candidates, layers and kinds (dicts of counts),
    sketch (sorted uint64 hashes) and path (relative to its root). The first of duplicates (same task, model,
    method, seed and cell) is kept; ``df.attrs["duplicates"]`` counts the others."""
    rows = []
    for root in roots:
        for path in find_summaries(root):
            d = json.loads(path.read_text())
            method = d["method"]
            if method == "reverse_ird" and d.get("zero_fisher_rule", "include") == "include":
                method += " (F=0 incl.)"  # the literal reading (every reverse IRD before the rule was recorded)
            rows.append({"task": d["task"], "model": d["model"], "method": method, "seed": d["seed"],
                         "cell": d["cell"], "ratio": d["ratio"], "samples": d["samples"], "count": d["count"],
                         "universe": d["universe"], "zero_fisher": d.get("zero_fisher"),
                         "positive_candidates": d.get("positive_candidates"), "layers": d["layers"],
                         "kinds": d["kinds"], "sketch_k": d["sketch"]["k"],
                         "sketch": decode_sketch(d["sketch"]["values"]), "path": str(path.relative_to(root))})
    cols = [*KEY, "ratio", "samples", "count", "universe", "zero_fisher", "positive_candidates", "layers", "kinds",
            "sketch_k", "sketch", "path"]
    df = pd.DataFrame(rows, columns=cols)
    before = len(df)
    df = df.drop_duplicates(subset=KEY, keep="first").reset_index(drop=True)
    df.attrs["duplicates"] = before - len(df)
    return df


def _cells(df: pd.DataFrame) -> list[str]:
    """Cell names in staircase order: largest ratio first, then most samples first."""
    cells = df.drop_duplicates("cell")
    return list(cells.sort_values(["ratio", "samples"], ascending=False)["cell"])


def _methods(df: pd.DataFrame) -> list[str]:
    return ordered(df["method"], METHODS)


def _groups(df: pd.DataFrame, by: str) -> list[str]:
    """The layer or kind names present, in model order (embeddings, layer0.., pooler, head; kinds as listed)."""
    from ..core.mask_summary import KIND_ORDER

    names = {k for d in df[f"{by}s"] for k in d}
    if by == "kind":
        return ordered(names, KIND_ORDER)

    def rank(name: str) -> tuple[int, int]:
        if name.startswith("layer") and name[5:].isdigit():
            return 1, int(name[5:])
        return {"embeddings": 0, "pooler": 2, "head": 3}.get(name, 4), 0

    return sorted(names, key=rank)


def mask_shares(df: pd.DataFrame, by: str = "layer") -> pd.DataFrame:
    """Per task, model, method and cell, each layer's (``by="layer"``) or kind's (``"kind"``) share of the
    mask's entries: mean and std over seeds, and how many seeds. Each mask's shares add up to 1."""
    if by not in ("layer", "kind"):
        raise ValueError(f"by: layer|kind, got {by!r}")
    groups = _groups(df, by)
    rows = [{**{k: r[k] for k in KEY}, "ratio": r["ratio"], "samples": r["samples"], by: g,
             "share": r[f"{by}s"].get(g, 0) / r["count"]} for _, r in df.iterrows() for g in groups]
    long = pd.DataFrame(rows, columns=[*KEY, "ratio", "samples", by, "share"])
    out = (long.groupby(["task", "model", "method", "cell", "ratio", "samples", by], sort=False)["share"]
           .agg(share="mean", std="std", seeds="count").reset_index())
    return _sorted(out, df, by, groups)


def _sorted(out: pd.DataFrame, df: pd.DataFrame, col: str | None = None, values=()) -> pd.DataFrame:
    keys = {"task": ordered(df["task"], TASK_ORDER), "method": _methods(df), "cell": _cells(df)}
    if col:
        keys[col] = list(values)
    order = [c for c in ("task", "model", "method", "comparison", "cell", col) if c and c in out]
    rank = {c: {v: i for i, v in enumerate(keys[c])} for c in keys}
    return out.sort_values(order, key=lambda s: s.map(rank[s.name]) if s.name in rank else s,
                           kind="stable").reset_index(drop=True)


def mask_overlaps(df: pd.DataFrame) -> pd.DataFrame:
    """The Jaccard of each compared pair of masks at one cell (one row per pair): ``methods`` (two methods,
    same task and seed), ``seeds`` (one method, same task, two seeds), ``tasks`` (one method, same seed, two
    tasks). Columns: comparison, task, model, method, cell, ratio, samples, a, b (what differs), jaccard, se
    (0 when exact), exact."""
    rows = []
    comparisons = (("methods", ["task", "model", "seed", "cell"], "method"),
                   ("seeds", ["task", "model", "method", "cell"], "seed"),
                   ("tasks", ["model", "method", "seed", "cell"], "task"))
    order = {"method": _methods(df), "task": ordered(df["task"], TASK_ORDER)}
    for name, same, differs in comparisons:
        for key, g in df.groupby(same, sort=False):
            g = g.set_index(differs)
            members = ordered(g.index, order.get(differs, ()))
            for a, b in itertools.combinations(members, 2):
                ra, rb = g.loc[a], g.loc[b]
                k = min(int(ra["sketch_k"]), int(rb["sketch_k"]), SKETCH_SIZE)
                j, se, exact = jaccard(ra["sketch"], int(ra["count"]), rb["sketch"], int(rb["count"]), k)
                fixed = dict(zip(same, key))
                rows.append({"comparison": name, "task": fixed.get("task", f"{a} vs {b}" if differs == "task"
                                                                    else None),
                             "model": fixed["model"], "method": fixed.get("method", f"{a} vs {b}"),
                             "seed": fixed.get("seed"), "cell": fixed["cell"], "ratio": ra["ratio"],
                             "samples": ra["samples"], "a": a, "b": b, "jaccard": j, "se": se, "exact": exact})
    cols = ["comparison", "task", "model", "method", "seed", "cell", "ratio", "samples", "a", "b", "jaccard", "se",
            "exact"]
    return pd.DataFrame(rows, columns=cols)


def overlap_summary(pairs: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count of the Jaccards per comparison, task (pair of tasks: all pooled as ``all``), method
    and cell, with the largest standard error among the estimates (0: all exact)."""
    p = pairs.copy()
    p.loc[p["comparison"] == "tasks", "task"] = "all"
    out = (p.groupby(["comparison", "task", "model", "method", "cell", "ratio", "samples"], sort=False)
           .agg(jaccard=("jaccard", "mean"), std=("jaccard", "std"), pairs=("jaccard", "count"),
                max_se=("se", "max")).reset_index())
    return _sorted(out, df)


def zero_fisher(df: pd.DataFrame) -> pd.DataFrame:
    """Per task, model, method and cell: the share of the mask's entries with Fisher 0 under the cell's own
    samples (mean, min, max over seeds) and the entries with Fisher > 0 among the candidates (mean; recorded
    by IRD's walk)."""
    d = df.dropna(subset=["zero_fisher"]).assign(share=lambda x: x["zero_fisher"] / x["count"])
    d["positive_candidates"] = pd.to_numeric(d["positive_candidates"], errors="coerce")
    out = (d.groupby(["task", "model", "method", "cell", "ratio", "samples"], sort=False)
           .agg(zero_share=("share", "mean"), zero_min=("share", "min"), zero_max=("share", "max"),
                count=("count", "mean"), positive_candidates=("positive_candidates", "mean"),
                seeds=("share", "count")).reset_index())
    return _sorted(out, df)


def _mean_over_tasks(table: pd.DataFrame, value: str, by: list[str]) -> pd.DataFrame:
    """Each task's value (already a mean over seeds), then the mean over tasks."""
    return table.groupby(by, sort=False)[value].mean().reset_index()


def draw_shares(shares: pd.DataFrame, df: pd.DataFrame, by: str) -> Figure:
    """Stacked bars: rows = methods, columns = tasks, one bar per staircase cell, one colour per layer/kind."""
    methods, tasks, cells = _methods(df), ordered(df["task"], TASK_ORDER), _cells(df)
    groups = list(dict.fromkeys(shares[by]))
    colours = _colours(len(groups))
    fig = Figure(figsize=(2.3 * len(tasks) + 1.6, 2.2 * len(methods) + 0.6))
    axes = fig.subplots(len(methods), len(tasks), squeeze=False, sharey=True)
    for i, m in enumerate(methods):
        for j, t in enumerate(tasks):
            ax = axes[i, j]
            s = shares[(shares["method"] == m) & (shares["task"] == t)]
            bottom = np.zeros(len(cells))
            for g, c in zip(groups, colours):
                v = s[s[by] == g].set_index("cell")["share"].reindex(cells).fillna(0).to_numpy()
                ax.bar(range(len(cells)), v, bottom=bottom, color=c, width=0.85, label=g)
                bottom += v
            ax.set_xticks(range(len(cells)), cells, rotation=90, fontsize=6)
            ax.set_ylim(0, 1)
            if i == 0:
                ax.set_title(task_name(t), fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{method_name(m)}\nshare of entries", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, title=by)
    fig.suptitle(f"Where each mask's entries sit, per {by} (mean over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
    return fig


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def draw_overlaps(summary: pd.DataFrame, zero: pd.DataFrame, df: pd.DataFrame) -> Figure:
    """Four panels over the staircase cells: IRD vs FISH per task (mean over seeds), each method across seeds
    and across tasks (mean over tasks / task pairs), and the share of entries with Fisher 0."""
    cells, methods, tasks = _cells(df), _methods(df), ordered(df["task"], TASK_ORDER)
    fig = Figure(figsize=(16, 3.6))
    axes = fig.subplots(1, 4)
    x = range(len(cells))

    def line(ax, values: pd.Series, label: str, **kw) -> None:
        ax.plot(list(x), values.reindex(cells).to_numpy(dtype=float), marker="o", ms=3, label=label, **kw)

    pair = summary[(summary["comparison"] == "methods") & (summary["method"] == "fish vs ird")]
    for t in tasks:
        line(axes[0], pair[pair["task"] == t].set_index("cell")["jaccard"], task_name(t))
    axes[0].set_title("IRD vs FISH, same task and seed", fontsize=9)
    for ax, comparison, title in ((axes[1], "seeds", "each method across seeds"),
                                  (axes[2], "tasks", "each method across tasks")):
        s = summary[summary["comparison"] == comparison]
        for m in methods:
            line(ax, s[s["method"] == m].groupby("cell")["jaccard"].mean(), method_name(m))
        ax.set_title(f"{title}, same cell", fontsize=9)
    for m in methods:
        line(axes[3], zero[zero["method"] == m].groupby("cell")["zero_share"].mean(), method_name(m))
    axes[3].set_title("share of selected entries with F = 0", fontsize=9)
    for ax in axes:
        ax.set_xticks(list(x), cells, rotation=90, fontsize=7)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("Jaccard (mean)")
    fig.tight_layout()
    return fig


def _pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.1f}"


def _pivot_markdown(table: pd.DataFrame, rows: list[str], col: str, value: str, cols: list, fmt=_pct,
                    names=None) -> str:
    wide = table.pivot_table(index=rows, columns=col, values=value, aggfunc="first", sort=False)
    names = names or {}
    head = [*(r for r in rows), *(names.get(c, c) for c in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(rows) + "---:|" * len(cols)]
    for idx, r in wide.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        label = [method_name(v) if rows[i] == "method" else str(v) for i, v in enumerate(idx)]
        lines.append("| " + " | ".join(label + [fmt(r.get(c)) if pd.notna(r.get(c)) else "–" for c in cols]) + " |")
    return "\n".join(lines) + "\n"


def write_masks_page(roots, out: str | Path, formats=("png", "pdf"), problems: pd.DataFrame | None = None
                     ) -> list[Path]:
    """The masks page of the summaries under ``roots`` into ``out``: results.csv (one row per mask),
    shares_layer.csv, shares_kind.csv, overlaps.csv (every compared pair), overlap_summary.csv,
    zero_fisher.csv, the figures (shares_layer, shares_kind, overlaps) and README.md; returns the files."""
    roots = [Path(r) for r in ([roots] if isinstance(roots, (str, Path)) else roots)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = load_summaries(*roots)
    written: list[Path] = []

    def text(name: str, content: str) -> None:
        (out / name).write_text(content)
        written.append(out / name)

    def figure(fig: Figure, stem: str) -> None:
        for fmt in formats:
            fig.savefig(out / f"{stem}.{fmt}", dpi=130, bbox_inches="tight")
            written.append(out / f"{stem}.{fmt}")

    results = _sorted(df.drop(columns=["layers", "kinds", "sketch"]), df)
    text("results.csv", results.to_csv(index=False))
    shares = {by: mask_shares(df, by) for by in ("layer", "kind")}
    pairs = _sorted(mask_overlaps(df), df)
    summary = overlap_summary(pairs, df)
    zero = zero_fisher(df)
    for by, s in shares.items():
        text(f"shares_{by}.csv", s.to_csv(index=False))
    text("overlaps.csv", pairs.to_csv(index=False))
    text("overlap_summary.csv", summary.to_csv(index=False))
    text("zero_fisher.csv", zero.to_csv(index=False))
    if not df.empty:
        for by, s in shares.items():
            figure(draw_shares(s, df, by), f"shares_{by}")
        figure(draw_overlaps(summary, zero, df), "overlaps")
    notes = [r / "NOTES.md" for r in roots if (r / "NOTES.md").is_file()]
    text("README.md", _readme(df, shares, pairs, summary, zero, written, notes, problems))
    return written


def _readme(df, shares, pairs, summary, zero, written, notes, problems) -> str:
    lines = [notes[0].read_text().rstrip("\n")] if notes else ["# What the masks hold"]
    tasks = ordered(df["task"], TASK_ORDER)
    seeds = df.groupby("task")["seed"].nunique()
    lines += ["", f"{len(df)} masks from {df.drop_duplicates(['task', 'method', 'seed']).shape[0]} selection-only "
              f"runs: {', '.join(f'{task_name(t)} ({seeds[t]} seeds)' for t in tasks)}; methods "
              f"{', '.join(method_name(m) for m in _methods(df))}."
              + (f" {df.attrs['duplicates']} duplicate summaries left out." if df.attrs.get("duplicates") else ""),
              ""]
    if problems is not None and not problems.empty:
        lines += [f"Not finished: {len(problems)} runs ({', '.join(sorted(set(problems['status'])))}), listed in "
                  "problems.csv.", ""]
    if df.empty:
        return "\n".join(lines) + "\n"
    k = int(df["sketch_k"].min())
    n_est = int((~pairs["exact"]).sum())
    lines += ["Overlaps are Jaccard indices |A∩B| / |A∪B| computed from each mask's bottom-k MinHash sketch (the "
              f"k = {k} smallest 64-bit hashes of its entries, an entry being a parameter name and a flat index): "
              f"exact when both masks have at most {k} entries, otherwise estimates with standard error "
              f"sqrt(J(1-J)/k), at most {0.5 / np.sqrt(k):.4f} (overlaps.csv gives each pair's `se` and `exact`; "
              f"{n_est} of {len(pairs)} pairs are estimates, largest se {pairs['se'].max():.4f}).", ""]
    lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in written if p.suffix == ".png"] + [""]
    rows = ["method", "cell"]
    for by in ("layer", "kind"):
        mean = _mean_over_tasks(shares[by], "share", ["method", "cell", by])
        lines += [f"## Share of each mask's entries per {by} (%, mean over tasks and seeds)", "",
                  f"shares_{by}.csv has each task (mean, std over seeds).", "",
                  _pivot_markdown(mean, rows, by, "share", list(dict.fromkeys(mean[by])))]
    suffix = {"methods": "", "seeds": " seeds", "tasks": " tasks"}
    parts = [_mean_over_tasks(summary[summary["comparison"] == c].assign(col=lambda s, x=x: s["method"] + x),
                              "jaccard", ["col", "cell"]) for c, x in suffix.items()]
    both = pd.concat(parts)
    cols = list(dict.fromkeys(both["col"]))  # method pairs, then each method across seeds, across tasks
    labels = {c: " ".join(method_name(w) if w in METHODS else w for w in c.split(" ")) for c in cols}
    lines += ["## Overlaps (Jaccard ×100, mean over tasks, seeds and pairs)", "",
              "`a vs b`: two methods on the same task and seed; `<method> seeds`: one method, same task, two "
              "seeds; `<method> tasks`: one method, same seed, two tasks (their training subsets differ).", "",
              _pivot_markdown(both, ["cell"], "col", "jaccard", cols, names=labels)]
    across = pairs[pairs["comparison"] == "tasks"]
    if not across.empty:
        per_pair = across.groupby(["method", "task", "cell"], sort=False)["jaccard"].mean().reset_index()
        per_pair = per_pair.rename(columns={"task": "tasks"})
        lines += ["## Across tasks, per pair of tasks (Jaccard ×100, mean over the seeds both ran)", "",
                  "The seed draws the training subset, the Fisher samples' positions and the task head's random "
                  "initialisation; tasks whose heads have the same shape (2 labels; STS-B has 1) start from the "
                  "same head at the same seed.", "",
                  _pivot_markdown(per_pair, ["method", "tasks"], "cell", "jaccard", _cells(df))]
    pair = summary[(summary["comparison"] == "methods") & (summary["method"] == "fish vs ird")]
    if not pair.empty:
        cells = pair.assign(text=lambda s: [f"{100 * a:.1f} ± {100 * b:.1f}" if pd.notna(b) else f"{100 * a:.1f}"
                                            for a, b in zip(s["jaccard"], s["std"])])
        lines += ["## IRD vs FISH at the same cell, per task (Jaccard ×100, mean ± std over seeds)", "",
                  _pivot_markdown(cells, ["cell"], "task", "text", tasks, fmt=str,
                                  names={t: task_name(t) for t in tasks})]
    zt = zero.assign(text=lambda s: [_pct(v) for v in s["zero_share"]])
    lines += ["## Share of selected entries with Fisher 0 under the cell's own samples (%, mean over seeds)", "",
              "Fisher 0: no sample touches the entry (an embedding row of a token the samples do not contain, "
              "...). zero_fisher.csv also gives the candidates with F > 0 where the walk records them.", "",
              _pivot_markdown(zt, ["method", "cell"], "task", "text", tasks, fmt=str,
                              names={t: task_name(t) for t in tasks})]
    return "\n".join(lines).rstrip("\n") + "\n"

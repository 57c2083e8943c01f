"""The IRD paper's Table 2 (arXiv 2403.08484, dev set, single runs) and our Table 2 beside it.

Rows are BERT-large unless marked BERT-base ("(B)" in the paper). The numbers are the paper's, copied from
its Table 2 (the column order is the paper's: QNLI, SST-2, MNLI-m, MNLI-mm, CoLA, MRPC, STS-B, RTE, QQP).
`paper_beside_ours(long, model)` puts each of our Table 2 rows that has a counterpart next to it.

`TABLE3` is the paper's Table 3 (its §5.4.1 case study: BERT on SST-2, dev accuracy of FISH Mask and IRD at
each cell of IRD's staircase, single runs): (method, ratio %, samples) -> accuracy. The paper prints nine
digits, each a count of the 872 SST-2 dev sentences (0.922018349 = 804/872).
"""

from __future__ import annotations

import math

import pandas as pd

from .collect import MISSING, TASK_ORDER, fmt_ratio, method_name, ordered, task_name

COLUMNS = ("qnli", "sst2", "mnli_m", "mnli_mm", "cola", "mrpc", "stsb", "rte", "qqp")
# (method, ratio in percent or "intrinsic", paper model) -> the nine scores, in COLUMNS order
TABLE2 = {
    ("dense", "intrinsic", "bert-large"): (93.4, 94.9, 87.0, 86.1, 61.0, 86.6, 86.5, 70.9, 80.5),
    ("bitfit", "intrinsic", "bert-large"): (90.4, 94.5, 85.0, 84.8, 60.3, 86.3, 85.0, 69.6, 78.5),
    ("fish", 0.08, "bert-large"): (93.3, 94.0, 85.3, 84.9, 56.4, 86.2, 85.7, 70.2, 79.3),
    ("random", 0.5, "bert-large"): (89.8, 93.4, 83.7, 84.0, 43.2, 77.8, 87.7, 61.3, 77.2),
    ("diff_pruning", 0.5, "bert-large"): (91.9, 93.8, 86.0, 85.5, 61.0, 86.2, 85.6, 67.5, 80.1),
    ("lora", 0.5, "bert-large"): (93.5, 94.0, 86.7, 86.4, 65.5, 91.4, 89.7, 76.9, 89.4),
    ("fish", 0.5, "bert-large"): (93.1, 94.7, 86.5, 85.9, 61.6, 87.1, 86.5, 71.2, 80.2),
    ("ird", 0.5, "bert-large"): (93.3, 93.7, 86.3, 86.6, 62.1, 90.7, 89.9, 72.6, 88.4),
    ("lora", 0.1, "bert-base"): (90.2, 91.1, 81.7, 82.3, 59.3, 88.1, 84.8, 67.5, 86.9),
    ("fish", 0.1, "bert-base"): (89.9, 91.3, 79.6, 80.4, 60.8, 88.2, 88.4, 71.1, 85.6),
    ("ird", 0.1, "bert-base"): (90.4, 91.3, 82.1, 82.4, 61.3, 88.6, 88.8, 71.1, 86.1),
    ("lora", 0.04, "bert-base"): (88.8, 91.6, 79.7, 80.0, 54.6, 87.9, 84.5, 61.0, 85.2),
    ("lora", 0.02, "bert-base"): (90.6, 89.9, 77.8, 78.8, 50.8, 90.1, 83.9, 66.8, 83.7),
    ("fish", 0.02, "bert-base"): (89.4, 90.8, 73.9, 78.1, 53.6, 88.0, 87.8, 66.1, 82.8),
    ("ird", 0.02, "bert-base"): (89.1, 90.7, 79.1, 79.7, 54.7, 87.9, 87.9, 69.3, 83.9),
}


TABLE3 = {
    ("fish", 2.5, 128): 0.922018349, ("fish", 2.5, 32): 0.918577982, ("fish", 0.5, 32): 0.917431193,
    ("fish", 0.5, 16): 0.912844037, ("fish", 0.1, 16): 0.910550459, ("fish", 0.1, 1): 0.912844037,
    ("fish", 0.02, 1): 0.908256881,
    ("ird", 2.5, 128): 0.922018349, ("ird", 2.5, 32): 0.916284404, ("ird", 0.5, 32): 0.916284404,
    ("ird", 0.5, 16): 0.917431193, ("ird", 0.1, 16): 0.911697248, ("ird", 0.1, 1): 0.912844037,
    ("ird", 0.02, 1): 0.907110092,
}


def paper_table3(method: str, ratio: float, samples: int) -> float | None:
    """The paper's Table 3 accuracy (a fraction) of ``method`` at (``ratio`` %, ``samples``), or None."""
    return next((v for (m, r, n), v in TABLE3.items()
                 if m == method and math.isclose(r, ratio) and n == int(samples)), None)


def paper_score(method: str, ratio_key, task: str) -> tuple[float, str] | None:
    """(score ×100, paper model) of the paper's row for ``method`` at ``ratio_key`` on ``task`` (MNLI: the
    mean of matched and mismatched), or None when the paper has no such row."""
    for (m, key, model), scores in TABLE2.items():
        same = key == ratio_key if isinstance(key, str) or isinstance(ratio_key, str) else math.isclose(key, ratio_key)
        if m == method and same:
            by = dict(zip(COLUMNS, scores))
            value = (by["mnli_m"] + by["mnli_mm"]) / 2 if task == "mnli" else by.get(task)
            return (value, model) if value is not None else None
    return None


def paper_beside_ours(long: pd.DataFrame, model: str) -> str:
    """Markdown: each of our Table 2 rows (``model``) with a paper counterpart, "ours / paper" per task."""
    sub = long[(long["model"] == model) & (long["method"] != "majority")]
    tasks = ordered(sub["task"], TASK_ORDER)
    lines = [f"| Method | Ratio (ours) | Paper's model | {' | '.join(task_name(t) for t in tasks)} |",
             "|---|---:|---|" + ":---:|" * len(tasks)]
    keys = sorted({(m, k) for m, k in zip(sub["method"], sub["ratio_key"])},
                  key=lambda mk: (isinstance(mk[1], float), -mk[1] if isinstance(mk[1], float) else 0, mk[0]))
    for method, key in keys:
        found = [paper_score(method, key, t) for t in tasks]
        if not any(found):
            continue
        rows = sub[(sub["method"] == method) & (sub["ratio_key"] == key)]
        cells = []
        for t, p in zip(tasks, found):
            ours = rows.loc[rows["task"] == t, "text"]
            cells.append(f"{ours.iloc[0] if len(ours) else MISSING} / {p[0]:.1f}" if p else MISSING)
        ratio = rows["params_ratio"].dropna()
        paper_model = next(p[1] for p in found if p)
        lines.append(f"| {method_name(method)} | {fmt_ratio(ratio.iloc[0]) if len(ratio) else key} | "
                     f"{'BERT-large' if paper_model == 'bert-large' else 'BERT-base (B)'} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"

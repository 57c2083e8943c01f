"""``select_only=true``: a run that computes its method's masks and fine-tunes nothing.

Each plan's mask is saved as usual (``masks/<cell>.safetensors``, git-ignored) and summarised into
``selection/<cell>.json``, a few kilobytes meant to be committed: the mask's size, its entries per layer and
per kind of parameter, the selected entries with Fisher 0 under the cell's own samples, and a MinHash sketch
from which the report computes overlaps between masks of different runs (`fishtune.core.mask_summary`,
drawn by `fishtune.report.masks`). ``result.json`` is ``ok`` with ``selection_only: true``, no cell and no
score, so no table of fine-tuning scores reads it as one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import ConfigError, RunConfig
from ..core.mask_summary import summarise
from ..core.selection import Selector
from .results import RunResult, write_json

__all__ = ["write_selection"]

SUMMARY_SCHEMA = 1
_FROM_INFO = ("zero_fisher", "positive_candidates", "zero_fisher_rule", "nested")


def write_selection(rc: RunConfig, run: RunResult, selector: Selector, plans, out: Path, timings: dict,
                    peak_memory: dict) -> dict:
    """Write every masked plan's summary, then the run's selection-only result.json; return the result.
    ConfigError when the method selects no mask (dense, LoRA: nothing to summarise)."""
    masked = [p for p in plans if p.mask is not None]
    if not masked:
        raise ConfigError(f"select_only: method {run.method} selects no mask (nothing to summarise)")
    params = dict(selector.model.named_parameters())
    sizes = {n: params[n].numel() for n in selector.universe_names}
    head = list(selector.head)
    selected = []
    for plan in masked:
        plan.mask.save(out / "masks" / f"{plan.cell}.safetensors", {"cell": plan.cell})  # for mask.load
        path = out / "selection" / f"{plan.cell}.json"
        record = {"schema": SUMMARY_SCHEMA, "task": run.task, "model": run.model, "method": run.method,
                  "sparsity": run.sparsity, "seed": run.seed, "cell": plan.cell, "ratio": plan.ratio,
                  "samples": plan.samples, "config_hash": run.config_hash, "mask_sha256": plan.info["mask_sha256"],
                  **{k: plan.info.get(k) for k in _FROM_INFO if k in plan.info},
                  **summarise(plan.mask, sizes, head)}
        write_json(path, record)
        selected.append({"cell": plan.cell, "ratio": plan.ratio, "samples": plan.samples, "count": plan.mask.count,
                         "mask_sha256": plan.info["mask_sha256"], "summary": str(path.relative_to(out)),
                         "info": {k: v for k, v in plan.info.items() if k != "mask_sha256"}})
    result = replace(run, status="ok", selection_only=True, single=False, cells=[], timings=timings,
                     peak_memory=peak_memory).to_json()
    result["selected"] = selected
    write_json(out / "result.json", result)
    return result

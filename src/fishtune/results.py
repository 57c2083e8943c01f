"""result.json: the one contract between training and reporting.

Every run (and every ladder cell) writes one JSON file, last and atomically (temporary file + os.replace),
so a folder without a valid result did not finish. `read_result` validates one file; `load_results` turns a
folder tree of them into one tidy pandas DataFrame (pandas is imported only there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .files import atomic_path

SCHEMA = 1
STATUSES = ("ok", "skipped", "failed")
REQUIRED = ("schema", "status", "task", "model", "method")


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_result(path: str | Path) -> dict[str, Any] | None:
    """The result in ``path`` when it is complete and valid, else None (missing, truncated, wrong schema)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("status") not in STATUSES:
        return None
    if any(k not in data for k in REQUIRED):
        return None
    if data["status"] == "ok" and not _has_scores(data):
        return None  # an "ok" without its score is not a finished result: it is redone
    return data


def _has_scores(data: dict[str, Any]) -> bool:
    if data.get("cells"):
        return all(c.get("status") != "ok" or isinstance(c.get("score"), (int, float)) for c in data["cells"])
    return isinstance(data.get("score"), (int, float))


def is_complete(path: str | Path, config_hash: str | None = None) -> bool:
    """True when ``path`` holds a valid ``ok`` result (of the same config, when a hash is given)."""
    data = read_result(path)
    if data is None or data["status"] != "ok":
        return False
    return config_hash is None or data.get("config_hash") == config_hash


def find_results(root: str | Path, name: str = "result.json") -> list[Path]:
    """Every ``result.json`` under ``root``, sorted."""
    return sorted(Path(root).rglob(name))


def load_results(root: str | Path, cells: bool = True):
    """Read every result.json under ``root`` into one pandas DataFrame.

    One row per run, or with ``cells=True`` one row per ladder cell (runs without cells give one row with
    cell "main"). Columns: task, model, method, sparsity, seed, cell, ratio, samples, status, reason, score,
    trainable_params, trainable_ratio, mask_sha256, path, and one ``metric.<name>`` column per metric.
    Files that are not valid results are skipped (they did not finish).
    """
    import pandas as pd

    rows = []
    for path in find_results(root):
        data = read_result(path)
        if data is None:
            continue
        base = {
            "task": data["task"],
            "model": data["model"],
            "method": data["method"],
            "sparsity": data.get("sparsity"),
            "seed": data.get("seed"),
            "status": data["status"],
            "reason": data.get("reason"),
            "path": str(path.parent),
            "ratio_fixed": data.get("ratio_fixed", False),  # the method's own trainable share (dense, BitFit)
        }
        run_cells = data.get("cells") or []
        if cells and run_cells:
            for c in run_cells:
                rows.append({**base, **_cell_row(c), "status": c.get("status", data["status"])})
        else:
            rows.append({**base, **_cell_row({**data, "cell": data.get("best_cell") or "main"})})
    return pd.DataFrame(rows)


def _cell_row(c: dict[str, Any]) -> dict[str, Any]:
    row = {
        "cell": c.get("cell", "main"),
        "ratio": c.get("ratio"),
        "samples": c.get("samples"),
        "score": c.get("score"),
        "trainable_params": c.get("trainable_params"),
        "trainable_ratio": c.get("trainable_ratio"),
        "mask_sha256": c.get("mask_sha256"),
    }
    for k, v in (c.get("metrics") or {}).items():
        row[f"metric.{k}"] = v
    return row


def write_unless_ok(path: str | Path, data: dict[str, Any]) -> bool:
    """Write a result that is not ``ok`` (failed, skipped) unless ``path`` already holds an ``ok`` one: an
    error never replaces finished work. True when written."""
    if is_complete(path):
        return False
    write_json(path, data)
    return True


def write_status(path: str | Path, status: str, reason: str, cfg: Any) -> None:
    """Record a run that ended before training (``failed``/``skipped``) with the reason; never ``ok``, and
    never over an ``ok`` result."""
    assert status in ("failed", "skipped"), "write_status is for runs that did not finish"

    def name(group: str) -> Any:
        node = cfg.get(group) if hasattr(cfg, "get") else None
        return node.get("name") if node is not None and hasattr(node, "get") else None

    write_unless_ok(path, {"schema": SCHEMA, "status": status, "reason": reason, "task": name("task"),
                      "model": name("model"), "method": name("method"), "sparsity": name("sparsity"),
                      "seed": cfg.get("seed") if hasattr(cfg, "get") else None})


def format_result(result: dict[str, Any]) -> str:
    """A short human summary: the score, or the table of ladder cells (cell, samples, ratio, score)."""
    head = f"{result['task']} / {result['model']} / {result['method']}: {result['status']}"
    if result.get("reason"):
        head += f" ({result['reason']})"
    cells = result.get("cells")
    if not cells:
        if result.get("score") is None:
            return head
        speed = result.get("timings", {}).get("samples_per_second", 0)
        return (f"{head}\ndev score {result['score']:.4f}  trainable {result.get('trainable_params')} "
                f"({result.get('trainable_ratio', 0):.4f}%)  {speed:.1f} train samples/s")
    lines = [head, f"{'cell':<14}{'samples':>8}{'ratio %':>9}{'score':>9}"]
    for c in cells:
        score = f"{c['score']:.4f}" if c.get("score") is not None else c.get("status", "-")
        mark = "  *best" if c.get("cell") == result.get("best_cell") else ""
        lines.append(f"{c['cell']:<14}{c.get('samples') or '-':>8}{c.get('ratio') or 0:>9g}{score:>9}{mark}")
    return "\n".join(lines)

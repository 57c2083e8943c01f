"""result.json: the one contract between training and reporting, owned here.

A run is a `RunResult` (what ran, where, with which config and versions) holding its `CellResult`s (what each
cell trained and scored; a single-ratio run has one cell, "main"). Both are written only through this module
(`to_json`, atomically: temporary file + os.replace, so a folder without a valid result did not finish) and
read only through it (`from_json` validates: schema version, required fields, status, an ``ok`` with its
score). Layout: a single-ratio run's cell fields sit at the top level of result.json; a ladder's under
``cells``, with ``best_cell``/``score``/``metrics`` of the best one; each trained cell also lands in
``cells/<cell>.json`` (the run's header plus the cell), found again by the run's resume key.
`load_results` turns a folder tree of results into one tidy pandas DataFrame (pandas is imported only there).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core.files import atomic_path

SCHEMA = 2  # 2: written through RunResult/CellResult (1: hand-assembled dicts, not read any more)
STATUSES = ("ok", "skipped", "failed")
REQUIRED = ("schema", "status", "task", "model", "method")
log = logging.getLogger(__name__)


class ResultError(ValueError):
    """A file that is not a complete result of this schema; the message is one line saying why."""


# a field's declared type -> the JSON values it accepts (bool is no number here: `true` is no score)
_ACCEPTS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "dict": (dict,), "list": (list,)}


def _check_types(obj: Any) -> None:
    """ResultError naming the first field whose value has another type than the dataclass declares (a hand-
    edited or foreign file: metrics as a string, a score of ``true``, ...)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        kinds = [k.strip().split("[")[0] for k in str(f.type).split("|")]
        if value is None and "None" in kinds or not all(k in _ACCEPTS or k == "None" for k in kinds):
            continue  # None where allowed; a type not listed (the cells: read one by one) is checked elsewhere
        ok = any(isinstance(value, _ACCEPTS[k]) and not (k in ("int", "float") and isinstance(value, bool))
                 for k in kinds if k != "None")
        if not ok:
            raise ResultError(f"field {f.name!r} holds {type(value).__name__} {str(value)[:40]!r}, not {f.type}")


@dataclass
class CellResult:
    """One trained cell: what it trained (ratio, samples, count, mask) and how it scored."""

    cell: str
    status: str = "ok"  # ok | failed
    ratio: float | None = None
    samples: int | None = None
    trainable_params: int | None = None
    trainable_ratio: float | None = None
    mask_sha256: str | None = None
    info: dict = field(default_factory=dict)
    score: float | None = None  # the dev score at the evaluation chosen (on the holdout when there is one)
    metrics: dict = field(default_factory=dict)
    dev_best: float | None = None  # the best dev score over evaluations (what the paper reports)
    holdout_score: float | None = None  # the holdout score at the evaluation chosen
    selected_on: str | None = None  # holdout | dev: what chose the evaluation (and the best cell)
    best_epoch: int | None = None
    steps: int | None = None
    epochs_run: int | None = None
    stopped_early: bool | None = None
    history: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    peak_memory: dict = field(default_factory=dict)
    reason: str | None = None
    failed_step: int | None = None
    delta_bytes: int | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        if self.status not in ("ok", "failed"):
            raise ResultError(f"cell {self.cell}: status {self.status!r} is not ok|failed")
        if self.status == "ok" and not isinstance(self.score, (int, float)):
            raise ResultError(f"cell {self.cell}: ok without a score")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellResult:
        if not isinstance(data, dict) or "cell" not in data:
            raise ResultError("a cell without its name")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# the best cell's fields that a single-ratio run keeps at the top level of result.json
FLAT = ("score", "metrics", "dev_best", "holdout_score", "selected_on", "trainable_params", "trainable_ratio",
        "mask_sha256", "info", "best_epoch", "steps", "history")


@dataclass
class RunResult:
    """One job (model × task × method × sparsity × seed) and its cells."""

    task: str | None
    model: str | None
    method: str | None
    status: str = "failed"  # ok | failed | skipped: set when the run is summarised
    sparsity: str | None = None
    seed: int | None = None
    ratio: float | None = None
    ratio_fixed: bool = False  # the method's own trainable share (dense, BitFit): see methods.Method
    reason: str | None = None
    failed_step: int | None = None
    config: dict = field(default_factory=dict)
    config_hash: str | None = None
    inputs: dict = field(default_factory=dict)  # {name: size, mtime_ns, sha256} of each file read (resume key)
    versions: dict = field(default_factory=dict)
    device: str | None = None
    prompt: str | None = None
    majority: float | None = None  # the dev score of predicting the training set's majority label
    total_params: int | None = None
    head_params: int | None = None
    fisher_engine: str | None = None
    timings: dict = field(default_factory=dict)
    peak_memory: dict = field(default_factory=dict)
    cells: list[CellResult] = field(default_factory=list)
    single: bool = True  # one "main" cell, written flat
    selection_only: bool = False  # select_only=true: masks and their summaries, no cell trained, no score

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, (int, float)) and not isinstance(self.sparsity, bool):
            self.sparsity = str(self.sparsity)  # failed runs recorded the YAML's number before it was checked
        _check_types(self)
        if self.status not in STATUSES:
            raise ResultError(f"status {self.status!r} is not {'|'.join(STATUSES)}")
        if self.status == "ok" and None in (self.task, self.model, self.method):
            raise ResultError("ok without its task, model and method")

    @property
    def best(self) -> CellResult | None:
        """The best ok cell: by holdout score when every ok cell has one (the dev set only reports), else by
        dev score."""
        ok = [c for c in self.cells if c.status == "ok"]
        if not ok:
            return None
        if all(isinstance(c.holdout_score, (int, float)) for c in ok):
            return max(ok, key=lambda c: c.holdout_score)
        return max(ok, key=lambda c: c.score)

    def header(self) -> dict[str, Any]:
        """The run's own fields (what each cell file repeats), schema first."""
        out = {"schema": SCHEMA}
        out.update({f.name: getattr(self, f.name) for f in fields(self)
                    if f.name not in ("cells", "single", "selection_only")})
        if self.selection_only:
            out["selection_only"] = True
        return out

    def to_json(self) -> dict[str, Any]:
        out = self.header()
        best = self.best
        if self.single:
            if best is not None:
                out.update({k: getattr(best, k) for k in FLAT})
        else:
            out["cells"] = [c.to_json() for c in self.cells]
            if best is not None:
                out.update(best_cell=best.cell, score=best.score, metrics=best.metrics,
                           **({"holdout_score": best.holdout_score, "selected_on": best.selected_on}
                              if best.selected_on == "holdout" else {}))
        return out

    @classmethod
    def from_json(cls, data: Any) -> RunResult:
        """Validate and read a result.json's content; ResultError (one line) when it is not one."""
        if not isinstance(data, dict):
            raise ResultError("not a JSON object")
        if data.get("schema") != SCHEMA:
            raise ResultError(f"schema {data.get('schema')!r}, this fishtune reads {SCHEMA} (rerun to rewrite it)")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ResultError(f"no {missing[0]!r} field")
        single = "cells" not in data
        if single:
            cells = [CellResult.from_json({**data, "cell": "main"})] if data["status"] == "ok" else []
        else:
            cells = [CellResult.from_json(c) for c in data["cells"]]
        own = {f.name: data[f.name] for f in fields(cls) if f.name in data and f.name not in ("cells", "single")}
        run = cls(**own, cells=cells, single=single)
        if run.status == "ok" and run.best is None and not run.selection_only:
            raise ResultError("ok without an ok cell")
        return run


def cell_json(run: RunResult, cell: CellResult) -> dict[str, Any]:
    """A cell file's content: the run's header (its resume key included), then the cell."""
    return {**run.header(), **cell.to_json()}


def read_cell(path: str | Path) -> CellResult | None:
    """The cell in a cell file, or None when it is missing or not valid."""
    try:
        return CellResult.from_json(_read(path)[0])
    except ResultError:
        return None


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


def _read(path: str | Path) -> tuple[dict[str, Any], RunResult]:
    """The file's content and its `RunResult` (a cell file's cell validated too); ResultError, one line."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ResultError(f"{path}: cannot be read ({e.strerror or e})") from None
    except ValueError:
        raise ResultError(f"{path}: not JSON (truncated or corrupted)") from None
    try:
        run = RunResult.from_json(data)
        if "cell" in data and "cells" not in data:  # a cell file: the run's header plus one cell
            CellResult.from_json(data)
    except (ResultError, TypeError) as e:
        raise ResultError(f"{path}: {e}") from None
    return data, run


def load_run(path: str | Path) -> RunResult:
    """The `RunResult` in ``path``; ResultError with one line saying why it is not one."""
    return _read(path)[1]


def read_result(path: str | Path) -> dict[str, Any] | None:
    """The result in ``path`` as plain data when it is complete and valid (validated by `RunResult`, cell
    files by `CellResult`), else None: missing, truncated, another schema, an ``ok`` without its score."""
    try:
        return _read(path)[0]
    except ResultError:
        return None


def is_complete(path: str | Path, config_hash: str | None = None) -> bool:
    """True when ``path`` holds a valid ``ok`` result (of the same config, when a hash is given)."""
    data = read_result(path)
    if data is None or data["status"] != "ok":
        return False
    return config_hash is None or data.get("config_hash") == config_hash


def find_results(root: str | Path, name: str = "result.json") -> list[Path]:
    """Every ``result.json`` under ``root``, sorted."""
    return sorted(Path(root).rglob(name))


def load_results(root: str | Path, cells: bool = True, in_progress: bool = False):
    """Read every result.json under ``root`` into one pandas DataFrame.

    One row per run, or with ``cells=True`` one row per ladder cell (runs without cells give one row with
    cell "main"). Columns: task, model, method, sparsity, seed, cell, ratio, samples, status, reason, score
    (dev, at the evaluation chosen), dev_best, holdout_score, selected_on (holdout | dev), trainable_params,
    trainable_ratio, mask_sha256, path, and one ``metric.<name>`` column per metric.
    Files that are not valid results are skipped (they did not finish). ``in_progress``: also one row per
    finished cell (``cells/<cell>.json``) of a run folder with no result.json yet (a run still going, or
    trained as ``cell=`` jobs), with the same columns.
    """
    import pandas as pd

    rows = []
    for path in find_results(root):
        try:
            data = load_run(path).to_json()
        except ResultError as e:
            log.warning("skipped: %s", e)  # one line per file that is not a finished result
            continue
        base = _run_row(data, path.parent)
        run_cells = data.get("cells") or []
        if cells and run_cells:
            for c in run_cells:
                rows.append({**base, **_cell_row(c), "status": c.get("status", data["status"])})
        else:
            rows.append({**base, **_cell_row({**data, "cell": data.get("best_cell") or "main"})})
    if in_progress:
        for folder, data in unfinished_cells(root):
            rows.append({**_run_row(data, folder), **_cell_row(data), "run_seconds": None})  # not done
    return pd.DataFrame(rows)


def unfinished_cells(root: str | Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(run folder, content) of each valid cell file (``cells/<cell>.json``) under ``root`` whose run folder
    has no result.json yet: a run still going, or one trained as ``cell=`` jobs."""
    for path in find_results(root, "cells/*.json"):
        folder = path.parent.parent
        if not (folder / "result.json").exists() and (data := read_result(path)) is not None:
            yield folder, data


def _run_row(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The run's columns of a row: what a result.json (or a cell file) says of its task, model and job."""
    return {
        "task": data["task"],
        "model": data["model"],
        "method": data["method"],
        "sparsity": data.get("sparsity"),
        "seed": data.get("seed"),
        "status": data["status"],
        "reason": data.get("reason"),
        "path": str(folder),
        "ratio_fixed": data.get("ratio_fixed", False),  # the method's own trainable share (dense, BitFit)
        "majority": data.get("majority"),  # the dev score of predicting the majority label
        "device": data.get("device"),
        "run_seconds": (data.get("timings") or {}).get("total_seconds"),
        "selection_only": data.get("selection_only", False),  # masks only: no score (report.masks)
    }


def _cell_row(c: dict[str, Any]) -> dict[str, Any]:
    row = {
        "cell": c.get("cell", "main"),
        "ratio": c.get("ratio"),
        "samples": c.get("samples"),
        "score": c.get("score"),
        "dev_best": c.get("dev_best", c.get("score")),  # older results chose on dev: their score is the best
        "holdout_score": c.get("holdout_score"),
        "selected_on": c.get("selected_on") or "dev",
        "trainable_params": c.get("trainable_params"),
        "trainable_ratio": c.get("trainable_ratio"),
        "mask_sha256": c.get("mask_sha256"),
        "lr": (c.get("info") or {}).get("lr"),
        "history": c.get("history"),  # the dev evaluations during training (epoch, step, score)
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

    def name(group: str) -> str | None:  # as text (a sparsity's name is its ratio, a number in the YAML)
        node = cfg.get(group) if hasattr(cfg, "get") else None
        value = node.get("name") if node is not None and hasattr(node, "get") else None
        return None if value is None else str(value)

    seed = cfg.get("seed") if hasattr(cfg, "get") else None
    run = RunResult(task=name("task"), model=name("model"), method=name("method"), status=status, reason=reason,
                    sparsity=name("sparsity"), seed=seed if isinstance(seed, int) and not isinstance(seed, bool)
                    else None)
    write_unless_ok(path, run.to_json())


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

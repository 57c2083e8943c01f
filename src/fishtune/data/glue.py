"""GLUE data: the vendored TSV files (or the hub's `nyu-mll/glue`), as `datasets.Dataset`s, tokenised.

Columns and labels follow the hub's GLUE conversion (run_glue's names: ``sentence``, ``sentence1``/
``sentence2``, ``question``/``sentence``, ``premise``/``hypothesis``, ...; RTE/QNLI ``entailment``=0, MNLI
entailment/neutral/contradiction = 0/1/2), so local files and hub data give the same examples. Scores are
on the dev split(s), as the paper does (MNLI: matched and mismatched).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataConfig, TaskConfig

__all__ = ["DataUnavailable", "TaskData", "FILES", "default_data_dir", "load_task", "split_files", "tokenize",
           "format_text"]

HUB_ID = "nyu-mll/glue"


class DataUnavailable(RuntimeError):
    """The task's data cannot be found (offline and no local files): the run is recorded as skipped."""


@dataclass(frozen=True)
class FileFormat:
    """How one task's TSV files are laid out: header or not, and which file column gives each field."""

    columns: dict[str, str | int]  # field (hub name, "label") -> file column (name, or index without header)
    header: bool = True
    labels: tuple[str, ...] | None = None  # label strings in id order; None: numeric labels
    splits: tuple[tuple[str, str], ...] = (("train", "train.tsv"), ("validation", "dev.tsv"))


FILES: dict[str, FileFormat] = {
    "cola": FileFormat({"sentence": 3, "label": 1}, header=False),
    "sst2": FileFormat({"sentence": "sentence", "label": "label"}),
    "mrpc": FileFormat({"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
    "stsb": FileFormat({"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"}),
    "qqp": FileFormat({"question1": "question1", "question2": "question2", "label": "is_duplicate"}),
    "mnli": FileFormat(
        {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
        labels=("entailment", "neutral", "contradiction"),
        splits=(("train", "train.tsv"), ("validation_matched", "dev_matched.tsv"),
                ("validation_mismatched", "dev_mismatched.tsv")),
    ),
    "qnli": FileFormat({"question": "question", "sentence": "sentence", "label": "label"},
                       labels=("entailment", "not_entailment")),
    "rte": FileFormat({"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
                      labels=("entailment", "not_entailment")),
    "wnli": FileFormat({"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
}


@dataclass
class TaskData:
    """Raw or tokenised splits of one task: ``train`` and one dataset per evaluation split."""

    task: TaskConfig
    train: Any  # datasets.Dataset
    eval: dict[str, Any]
    source: str  # "local:<dir>" or "hub:nyu-mll/glue"
    holdout: Any = None  # training examples held out for model selection (data.holdout), or None


def default_data_dir() -> Path:
    """The repository's vendored GLUE folder (``data/glue`` beside ``src/``)."""
    return Path(__file__).resolve().parents[3] / "data" / "glue"


def _read_tsv(path: Path, task: TaskConfig, fmt: FileFormat) -> dict[str, list]:
    """Read one GLUE TSV into columns; ValueError naming the file and line for a malformed row."""
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                         encoding="utf-8-sig", header=0 if fmt.header else None, on_bad_lines="error")
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: malformed row ({str(e).strip().splitlines()[-1]})") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty (no header, no rows)") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); a binary or corrupted file?") from None
    out: dict[str, list] = {}
    for fld, col in fmt.columns.items():
        if col not in df.columns:
            raise ValueError(f"{path}: missing column {col!r} (needed for {task.name} field {fld!r})")
        out[fld] = df[col].tolist()
    out["label"] = [_parse_label(v, fmt, task, path, i) for i, v in enumerate(out["label"])]
    return out


def _parse_label(value: str, fmt: FileFormat, task: TaskConfig, path: Path, row: int):
    line = row + 1 + (1 if fmt.header else 0)
    try:
        if fmt.labels is not None:
            return fmt.labels.index(value)
        label = float(value) if task.num_labels == 1 else int(value)
    except ValueError:
        allowed = "|".join(fmt.labels) if fmt.labels else ("a number" if task.num_labels == 1 else "an integer")
        raise ValueError(f"{path}, line {line}: label {value!r} is not {allowed}") from None
    if task.num_labels == 1 and (bad := _bad_score(task, label)):
        raise ValueError(f"{path}, line {line}: label {value!r} {bad}")
    return label


def _bad_score(task: TaskConfig, label: float) -> str | None:
    """Why a regression label cannot be trained on (not finite, outside ``task.label_range``), or None."""
    if not math.isfinite(label):
        return "is not a finite number"
    if task.label_range is not None and not task.label_range[0] <= label <= task.label_range[1]:
        low, high = task.label_range
        return f"is outside task.label_range [{low:g}, {high:g}]"
    return None


def load_task(task: TaskConfig, data: DataConfig, seed: int = 0) -> TaskData:
    """Load train and eval splits for ``task`` (local files first with ``data.source=auto``).

    ``data.max_train_samples``/``max_eval_samples`` keep a seeded random subset. Raises DataUnavailable
    (one line: task and where it looked) when no source has the data.
    """
    from datasets import Dataset

    if task.name not in FILES:
        raise ValueError(f"task.name: unknown GLUE task {task.name!r}, pick one in {', '.join(FILES)}")
    fmt = FILES[task.name]
    folder = Path(data.dir) if data.dir else default_data_dir()
    folder = folder / task.glue_dir
    wanted = ["train", *task.eval_splits]
    files = dict(fmt.splits)
    unknown = [s for s in wanted if s not in files]
    if unknown:
        raise ValueError(f"task.eval_splits: {unknown[0]!r} is not a split of {task.name} ({', '.join(files)})")
    have_local = all((folder / files[s]).is_file() for s in wanted)
    if data.source == "local" or (data.source == "auto" and have_local):
        if not have_local:
            missing = [files[s] for s in wanted if not (folder / files[s]).is_file()]
            raise DataUnavailable(f"task {task.name}: no {', '.join(missing)} in {folder}")
        splits = {s: Dataset.from_dict(_read_tsv(folder / files[s], task, fmt)) for s in wanted}
        source = f"local:{folder}"
    else:
        splits = _load_hub(task, wanted, folder)
        source = f"hub:{HUB_ID}"
    for s, ds in splits.items():
        _check_split(task, ds, f"{source.split(':', 1)[1]} ({s})")
    train, holdout = _train_and_holdout(splits["train"], data.max_train_samples, data.holdout, seed)
    evals = {s: _subset(splits[s], data.max_eval_samples, seed) for s in task.eval_splits}
    return TaskData(task=task, train=train, eval=evals, source=source, holdout=holdout)


def _train_and_holdout(ds, max_train: int | None, holdout: float | None, seed: int):
    """The training subset and the holdout, disjoint: one seeded permutation of the training split, the
    training subset its first ``max_train`` examples (the same subset as without a holdout), the holdout its
    last ones (a count, or a share of the split). ValueError (one line) when nothing would be left to train."""
    if holdout is None:
        return _subset(ds, max_train, seed), None
    n = len(ds)
    n_hold = int(holdout) if holdout >= 1 else max(1, round(holdout * n))
    if n_hold >= n:
        raise ValueError(f"data.holdout={holdout:g} leaves no training example ({n} in the training split)")
    n_train = min(max_train or n, n - n_hold)
    shuffled = ds.shuffle(seed=seed)
    return shuffled.select(range(n_train)), shuffled.select(range(n - n_hold, n))


def split_files(task: TaskConfig, data: DataConfig) -> dict[str, Path]:
    """The local files `load_task` reads for ``task`` ({split: path}); empty when it would read the hub."""
    fmt = FILES.get(task.name)
    if fmt is None or data.source == "hub":
        return {}
    folder = (Path(data.dir) if data.dir else default_data_dir()) / task.glue_dir
    files = {s: folder / dict(fmt.splits)[s] for s in ["train", *task.eval_splits] if s in dict(fmt.splits)}
    return files if all(p.is_file() for p in files.values()) else {}


def _check_split(task: TaskConfig, ds, where: str) -> None:
    """ValueError naming the data when a split is empty, lacks a text field, or has labels the task's
    ``num_labels`` cannot hold (regression: a label that is not finite or lies outside ``label_range``)."""
    if len(ds) == 0:
        raise ValueError(f"task {task.name}: {where} has no examples")
    missing = [f for f in task.text_fields if f not in ds.column_names]
    if missing:
        raise ValueError(f"task.text_fields: no column {missing[0]!r} in {where} (columns: "
                         f"{', '.join(c for c in ds.column_names if c != 'label')})")
    if task.num_labels == 1:  # local files were checked line by line as they were read; this covers the hub's
        for row, y in enumerate(ds["label"]):
            number = isinstance(y, (int, float)) and not isinstance(y, bool)
            if bad := _bad_score(task, float(y)) if number else "is not a number":
                raise ValueError(f"task {task.name}: {where} row {row + 1}: label {y!r} {bad}")
    if task.num_labels > 1:
        labels = set(ds["label"])
        bad = sorted(y for y in labels if not (isinstance(y, int) and 0 <= y < task.num_labels))
        if bad:
            raise ValueError(f"task.num_labels={task.num_labels}: {where} has label {bad[0]!r}")
        if len(ds) >= 50 and max(labels) + 1 < task.num_labels:  # a full split shows every class
            raise ValueError(f"task.num_labels={task.num_labels}, but {where} has labels 0..{max(labels)} only")


def _load_hub(task: TaskConfig, wanted: list[str], folder: Path) -> dict:
    try:
        from datasets import load_dataset

        ds = load_dataset(HUB_ID, task.name)
        return {s: ds[s] for s in wanted}
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataUnavailable(
            f"task {task.name}: data not found in {folder} and the hub ({HUB_ID}) failed: {reason[:200]}"
        ) from None


def _subset(ds, n: int | None, seed: int):
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def format_text(task: TaskConfig, row: dict[str, Any]) -> tuple[str, str | None]:
    """The model's input text(s) for one example: the task's prompt template filled in (decoders), or
    the sentence pair as it is (``[CLS] s1 [SEP] s2`` is added by the tokenizer, paper §5.3)."""
    if task.prompt:
        return task.prompt.format(**{f: row[f] for f in task.text_fields}), None
    first = row[task.text_fields[0]]
    second = row[task.text_fields[1]] if len(task.text_fields) > 1 else None
    return first, second


def tokenize(data: TaskData, tokenizer, max_length: int | None = None, pad_to_max_length: bool = False) -> TaskData:
    """Tokenise every split (truncation at the task's max length; padding happens in the collator unless
    ``pad_to_max_length``); keeps ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``labels``."""
    task = data.task
    max_length = max_length or task.max_length

    def encode(batch: dict[str, list]) -> dict[str, list]:
        rows = [dict(zip(batch, vals)) for vals in zip(*batch.values())]
        pairs = [format_text(task, r) for r in rows]
        firsts = [p[0] for p in pairs]
        seconds = [p[1] for p in pairs] if pairs and pairs[0][1] is not None else None
        enc = tokenizer(firsts, seconds, truncation=True, max_length=max_length,
                        padding="max_length" if pad_to_max_length else False)
        enc["labels"] = batch["label"]
        return dict(enc)

    def run(ds):
        return ds.map(encode, batched=True, remove_columns=ds.column_names, desc=None)

    return TaskData(task=task, train=run(data.train), eval={k: run(v) for k, v in data.eval.items()},
                    source=data.source, holdout=None if data.holdout is None else run(data.holdout))

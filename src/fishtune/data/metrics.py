"""GLUE metrics with scikit-learn and SciPy (paper §5.2, as Sung et al.): the headline score per task.

Accuracy is the share of equal labels (what `sklearn.metrics.accuracy_score` computes) without importing
scikit-learn: its metrics module adds ~38 MiB to a training process's resident memory, and the accuracy
tasks need nothing else from it. The other kinds import scikit-learn or SciPy when first asked for.

- accuracy: SST-2, QNLI, RTE, WNLI, MNLI (per split: matched, mismatched)
- matthews: CoLA (Matthews correlation)
- f1_accuracy: MRPC, QQP (F1 and accuracy; headline their mean)
- pearson_spearman: STS-B (Pearson and Spearman; headline their mean)
"""

from __future__ import annotations

import numpy as np

__all__ = ["compute_metrics", "headline", "majority_score"]


def compute_metrics(kind: str, predictions, labels) -> dict[str, float]:
    """All metrics of one kind for ``predictions`` (class ids, or floats for regression) vs ``labels``."""
    preds, refs = np.asarray(predictions), np.asarray(labels)
    if len(preds) != len(refs) or len(refs) == 0:
        raise ValueError(f"predictions ({len(preds)}) and labels ({len(refs)}) must be non-empty and equal in length")
    if kind == "accuracy":
        return {"accuracy": _accuracy(refs, preds)}
    if kind == "matthews":
        from sklearn.metrics import matthews_corrcoef

        return {"matthews_correlation": float(matthews_corrcoef(refs, preds))}
    if kind == "f1_accuracy":
        from sklearn.metrics import f1_score

        acc, f1 = _accuracy(refs, preds), float(f1_score(refs, preds))
        return {"accuracy": acc, "f1": f1, "combined": (acc + f1) / 2}
    if kind == "pearson_spearman":
        from scipy.stats import pearsonr, spearmanr

        if np.ptp(preds) == 0 or np.ptp(refs) == 0:  # constant predictions: correlation undefined, count as 0
            p = s = 0.0
        else:
            p, s = float(pearsonr(preds, refs)[0]), float(spearmanr(preds, refs)[0])
        return {"pearson": p, "spearmanr": s, "combined": (p + s) / 2}
    raise ValueError(f"task.metric must be accuracy|matthews|f1_accuracy|pearson_spearman, got {kind!r}")


def _accuracy(refs: np.ndarray, preds: np.ndarray) -> float:
    if refs.shape != preds.shape:
        raise ValueError(f"predictions {preds.shape} and labels {refs.shape} must have the same shape")
    return float(np.mean(refs == preds))


def headline(kind: str, metrics: dict[str, float]) -> float:
    """The single score a task is ranked by (paper §5.2)."""
    key = {"accuracy": "accuracy", "matthews": "matthews_correlation"}.get(kind, "combined")
    return metrics[key]


def majority_score(kind: str, train_labels, eval_labels) -> float:
    """The headline score of always predicting the training set's most frequent label (regression: its
    mean, whose correlation counts as 0): the floor a model must clear to have learned anything."""
    train = np.asarray(train_labels)
    if kind == "pearson_spearman":
        guess = float(train.mean())
    else:
        values, counts = np.unique(train, return_counts=True)
        guess = values[int(counts.argmax())]
    return headline(kind, compute_metrics(kind, np.full(len(eval_labels), guess), eval_labels))

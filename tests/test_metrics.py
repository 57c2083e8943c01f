"""GLUE metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from fishtune.data.metrics import compute_metrics, headline


def test_accuracy():
    m = compute_metrics("accuracy", [1, 0, 1, 1], [1, 1, 1, 0])
    assert m == {"accuracy": 0.5} and headline("accuracy", m) == 0.5


def test_matthews():
    # TP=2 TN=1 FP=1 FN=0: (2·1 − 1·0) / sqrt(3·2·1·2) = 2/sqrt(12)
    m = compute_metrics("matthews", [1, 1, 1, 0], [1, 1, 0, 0])
    assert m["matthews_correlation"] == pytest.approx(2 / math.sqrt(12))


def test_f1_accuracy():
    # TP=2 FP=1 FN=1 TN=1: precision 2/3, recall 2/3, F1 2/3; accuracy 3/5
    m = compute_metrics("f1_accuracy", [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(0.6)
    assert headline("f1_accuracy", m) == pytest.approx((2 / 3 + 0.6) / 2)


def test_pearson_spearman():
    # y = 2x + 1 exactly: Pearson 1; ranks identical: Spearman 1. Reversed order: Spearman −1.
    m = compute_metrics("pearson_spearman", [1.0, 2.0, 3.0, 4.0], [3.0, 5.0, 7.0, 9.0])
    assert m["pearson"] == pytest.approx(1.0) and m["spearmanr"] == pytest.approx(1.0)
    m = compute_metrics("pearson_spearman", [1.0, 2.0, 3.0], [1.0, 8.0, 27.0])  # monotone, not linear
    assert m["spearmanr"] == pytest.approx(1.0) and m["pearson"] < 1.0
    assert headline("pearson_spearman", m) == pytest.approx((m["pearson"] + 1.0) / 2)


def test_bad_input():
    with pytest.raises(ValueError, match="equal in length"):
        compute_metrics("accuracy", [1], [1, 0])


def test_accuracy_equals_sklearn_and_needs_no_sklearn_import():
    import subprocess
    import sys

    import numpy as np
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(0)
    preds, refs = rng.integers(0, 3, 101), rng.integers(0, 3, 101)
    assert compute_metrics("accuracy", preds, refs)["accuracy"] == accuracy_score(refs, preds)
    code = ("import sys; from fishtune.data.metrics import compute_metrics; "
            "compute_metrics('accuracy', [1, 0], [1, 1]); print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

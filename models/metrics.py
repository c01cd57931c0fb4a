"""Classification metrics shared by every model's validation report.

- accuracy and macro-F1 over the three classes (0 HOLD, 1 BUY, 2 SELL);
- ``call_hit_rate``: of the BUY/SELL calls, the share whose realised forward return went the
  called way by more than the label threshold (a call that would have paid its costs);
- ``calls``: how many BUY/SELL calls were made.

>>> y = np.array([0, 1, 2, 1]); p = np.array([0, 1, 1, 0])
>>> m = classification_report(y, p, forward_return=np.array([0, .01, -.01, .01]),
...                           threshold=np.full(4, .005))
>>> m["accuracy"], m["calls"], m["call_hit_rate"]
(0.5, 2, 0.5)
"""

from __future__ import annotations

import numpy as np

CLASSES = (0, 1, 2)


def macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    scores = []
    for c in CLASSES:
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(scores))


def classification_report(
    y: np.ndarray, p: np.ndarray, forward_return: np.ndarray, threshold: np.ndarray
) -> dict[str, float]:
    y = np.asarray(y)
    p = np.asarray(p)
    calls = (p == 1) | (p == 2)
    direction = np.where(p == 1, 1.0, -1.0)
    hits = calls & (direction * forward_return > threshold)
    n_calls = int(calls.sum())
    return {
        "accuracy": float(np.mean(y == p)) if len(y) else 0.0,
        "macro_f1": macro_f1(y, p),
        "calls": n_calls,
        "call_hit_rate": float(hits.sum() / n_calls) if n_calls else 0.0,
        "n": len(y),
    }


def constant_baseline(y_train: np.ndarray, y_eval: np.ndarray) -> dict[str, float]:
    """Macro-F1 of always predicting the training set's majority class."""
    majority = int(np.bincount(y_train, minlength=3).argmax())
    return {
        "majority_class": majority,
        "macro_f1": macro_f1(y_eval, np.full(len(y_eval), majority)),
    }

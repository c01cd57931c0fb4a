"""The promotion rule: a shadow challenger against production, on the same bars' realised labels.

Why macro-F1: the labels are mostly HOLD, so accuracy rewards a model that never trades; the
macro-F1 over HOLD/BUY/SELL (:func:`models.metrics.macro_f1`) weighs the three classes equally,
and it is the figure every model's validation report already uses. Accuracy is recorded beside
it for the ``clm_cycles`` table but decides nothing.

The rule (:meth:`ShadowComparison.compare`):

- Both models' predictions are scored over the **same bars**, against the labels realised
  afterwards; bars whose label is not realised yet (``-1``) are left out of both.
- ``ready``: at least ``min_predictions`` (``QT_CLM_SHADOW_MIN``, 100) scored bars.
- ``promote``: ready, and the challenger is **more than 2% better**, relatively
  (``QT_CLM_PROMOTE_MARGIN`` 0.02): ``challenger > production * (1 + margin)``. Exactly +2% is
  not more than 2% (the comparison ignores a float rounding difference of 1e-9 relative).
  When production scores 0 a relative gain is undefined; then the margin is read as an
  absolute score, so the challenger needs ``macro-F1 > 0.02``.
- ``QT_CLM_AUTO_PROMOTE`` is for the caller: with it off, a ``promote`` result is recorded, not
  acted on.

>>> y = np.array([0, 1, 2, 0, 1, 2])
>>> r = ShadowComparison.compare(y, np.zeros(6, dtype=int), y, min_predictions=6)
>>> r.ready, r.promote, r.decision, round(r.production_score, 3), r.challenger_score
(True, True, 'promote', 0.167, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.labels import UNLABELLED
from models.metrics import macro_f1
from schemas.signals import CLASS_OF, Action

METRIC = "macro_f1"
REL_TOL = 1e-9


def required_score(production: float, margin: float) -> float:
    """The score a challenger must exceed: ``production * (1 + margin)``; ``margin`` at 0."""
    return production * (1.0 + margin) if production > 0 else margin


def beats(challenger: float, production: float, margin: float) -> bool:
    """Strictly more than ``margin`` (relative) better; exactly at the boundary is not.

    >>> beats(0.51, 0.5, 0.02), beats(0.5101, 0.5, 0.02), beats(0.03, 0.0, 0.02)
    (False, True, True)
    """
    need = required_score(production, margin)
    return challenger > need and not math.isclose(challenger, need, rel_tol=REL_TOL)


def _classes(pred: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Class ids from ints or :class:`~schemas.signals.Action` values."""
    arr = np.asarray(pred)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    return np.array([CLASS_OF[Action(a)] for a in arr], dtype=np.int64)


@dataclass(frozen=True)
class ShadowComparison:
    """A challenger judged against production (see the module docstring for the rule)."""

    production_score: float
    challenger_score: float
    n: int
    ready: bool
    promote: bool
    margin: float
    min_predictions: int
    production_accuracy: float
    challenger_accuracy: float
    metric: str = METRIC

    @property
    def decision(self) -> str:
        """``promote``, ``retire`` (judged, not better enough) or ``wait`` (not ready)."""
        if not self.ready:
            return "wait"
        return "promote" if self.promote else "retire"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision": self.decision}

    @classmethod
    def compare(cls, y_true: Sequence[int] | np.ndarray,
                production_pred: Sequence[Any] | np.ndarray,
                challenger_pred: Sequence[Any] | np.ndarray, margin: float = 0.02,
                min_predictions: int = 100) -> ShadowComparison:
        """Score both on the bars with a realised label; promote by :func:`beats`."""
        y = np.asarray(y_true, dtype=np.int64)
        prod = _classes(production_pred)
        chal = _classes(challenger_pred)
        if not len(y) == len(prod) == len(chal):
            raise ValueError(f"not the same bars: {len(y)} labels, {len(prod)} production and "
                             f"{len(chal)} challenger predictions")
        if margin < 0 or min_predictions < 1:
            raise ValueError(f"margin {margin} must be >= 0, min_predictions "
                             f"{min_predictions} >= 1")
        known = y != UNLABELLED
        y, prod, chal = y[known], prod[known], chal[known]
        for name, arr in (("labels", y), ("production", prod), ("challenger", chal)):
            if len(arr) and (arr.min() < 0 or arr.max() > 2):
                raise ValueError(f"{name}: class ids must be 0 HOLD, 1 BUY, 2 SELL")
        n = len(y)
        p_score = macro_f1(y, prod) if n else 0.0
        c_score = macro_f1(y, chal) if n else 0.0
        ready = n >= min_predictions
        return cls(
            production_score=p_score, challenger_score=c_score, n=n, ready=ready,
            promote=ready and beats(c_score, p_score, margin), margin=margin,
            min_predictions=min_predictions,
            production_accuracy=float(np.mean(prod == y)) if n else 0.0,
            challenger_accuracy=float(np.mean(chal == y)) if n else 0.0,
        )

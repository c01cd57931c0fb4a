"""Feature drift as the Population Stability Index (PSI), per feature, against the training data.

Why PSI: it is cheap, needs no model, and compares whole distributions (not only means), so a
feature that keeps its mean but changes its spread is still seen. The statistic:

- **Reference** (:meth:`FeatureReference.fit`, on the training matrix): per feature, the
  interior decile edges of its finite values (``np.quantile`` at 10%, ..., 90%; repeated edges
  collapse). A constant feature ``c`` gets three bins: below ``c``, ``c``, above ``c``; a
  feature with no finite value only the NaN bin and one empty finite bin. Bins are right-closed,
  ``(-inf, e1], (e1, e2], ..., (ek, +inf)``, plus a separate **NaN bin** (a feature that is NaN
  more or less often than in training is drift too). ``+-inf`` fall in the end bins. The
  reference keeps each bin's share of the training rows.
- **PSI** of a recent window: ``sum_i (a_i - e_i) * ln(a_i / e_i)`` over the bins, ``e`` the
  reference shares and ``a`` the recent ones. **Epsilon smoothing**: every share is floored at
  ``epsilon`` (1e-4) before the sum, so a bin empty on one side adds a large but finite term
  (at most about ``ln(1/epsilon)`` = 9.2) instead of infinity; a bin empty on both sides adds 0.
- **Drift score** (:meth:`FeatureReference.drift_score`): the mean PSI over the *scored*
  features, compared with ``QT_CLM_DRIFT_THRESHOLD`` (0.05): drift when the score exceeds it.
  Calendar features (``tod_*``, ``dow_*``) are binned but not scored by default: they are
  functions of the clock, and a one-day recent window against a 90-day reference would show a
  day-of-week "drift" at every check.

Sampling noise: two samples of one distribution give ``PSI ~ (bins - 1) * (1/n_ref + 1/n_recent)``
on average, so the recent window needs a few hundred rows or more before 0.05 means anything
(24 hours of 1-minute bars is 1440 rows per symbol, noise ~0.006).

The reference is published in the registry as model ``feature_reference`` (one plain JSON file,
``reference.json``)::

    registry.publish("feature_reference", ref.save, stage=Stage.PRODUCTION,
                     feature_set=FEATURE_SET_VERSION)

>>> rng = np.random.default_rng(0)
>>> ref = FeatureReference.fit(rng.normal(size=(5000, 2)), names=("a", "b"), scored=("a", "b"))
>>> same = ref.psi(rng.normal(size=(5000, 2)))
>>> bool(max(same.values()) < 0.01)
True
>>> shifted = ref.psi(rng.normal(size=(5000, 2)) + [1.0, 0.0])
>>> bool(shifted["a"] > 0.5 > 0.01 > shifted["b"])
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from operators.features import FEATURE_NAMES

MODEL_NAME = "feature_reference"
REFERENCE_FILE = "reference.json"
FORMAT = "qt-psi-reference/1"
CALENDAR_FEATURES: tuple[str, ...] = ("tod_sin", "tod_cos", "dow_sin", "dow_cos")
DEFAULT_SCORED: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n not in CALENDAR_FEATURES)


@dataclass(frozen=True)
class FeatureBins:
    """One feature's bin edges and reference shares (``len(edges) + 1`` finite bins, then NaN)."""

    name: str
    edges: tuple[float, ...]
    shares: tuple[float, ...]

    def counts(self, column: np.ndarray) -> np.ndarray:
        """Rows per bin: right-closed finite bins by ``searchsorted``, the NaN bin last."""
        nan = np.isnan(column)
        finite_bins = len(self.edges) + 1
        idx = np.searchsorted(np.asarray(self.edges, dtype=np.float64), column[~nan], side="left")
        out = np.bincount(idx, minlength=finite_bins).astype(np.float64)
        return np.append(out, float(nan.sum()))


def psi_of_shares(expected: np.ndarray, actual: np.ndarray, epsilon: float) -> float:
    """``sum (a - e) ln(a / e)`` with both shares floored at ``epsilon``.

    >>> psi_of_shares(np.array([0.5, 0.5]), np.array([0.5, 0.5]), 1e-4)
    0.0
    >>> round(psi_of_shares(np.array([1.0, 0.0]), np.array([0.0, 1.0]), 1e-4), 2)
    18.42
    """
    e = np.maximum(expected, epsilon)
    a = np.maximum(actual, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class FeatureReference:
    """Per-feature decile bins and shares of a training matrix (columns in ``names`` order)."""

    features: tuple[FeatureBins, ...]
    scored: tuple[str, ...]
    rows: int
    bins: int = 10
    epsilon: float = 1e-4

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @classmethod
    def fit(cls, X: np.ndarray, names: Sequence[str] = FEATURE_NAMES,
            scored: Sequence[str] | None = None, bins: int = 10,
            epsilon: float = 1e-4) -> FeatureReference:
        """Bins from ``X`` (rows x ``names``); ``scored`` defaults to all but calendar features."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(names):
            raise ValueError(f"X has shape {X.shape}, expected (rows, {len(names)})")
        if len(X) == 0:
            raise ValueError("cannot fit a drift reference on zero rows")
        if bins < 2 or not 0 < epsilon < 1:
            raise ValueError(f"bins={bins}, epsilon={epsilon}: need bins >= 2, 0 < epsilon < 1")
        scored = tuple(n for n in names if n not in CALENDAR_FEATURES) if scored is None \
            else tuple(scored)
        unknown = sorted(set(scored) - set(names))
        if unknown:
            raise ValueError(f"scored features {unknown} are not columns of X")
        qs = np.arange(1, bins) / bins
        features = []
        for j, name in enumerate(names):
            col = X[:, j]
            finite = col[np.isfinite(col)]
            edges = tuple(float(e) for e in np.unique(np.quantile(finite, qs))) \
                if len(finite) else ()
            if len(edges) == 1:  # constant: below / equal / above, so a lower value shows too
                edges = (float(np.nextafter(edges[0], -np.inf)), edges[0])
            fb = FeatureBins(name, edges, ())
            shares = fb.counts(col) / len(col)
            features.append(FeatureBins(name, edges, tuple(float(s) for s in shares)))
        return cls(tuple(features), scored, len(X), bins, epsilon)

    def psi(self, X_recent: np.ndarray) -> dict[str, float]:
        """PSI of every feature (scored or not) between the reference and ``X_recent``."""
        X = np.asarray(X_recent, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"X_recent has shape {X.shape}, expected (rows, "
                             f"{len(self.features)})")
        if len(X) == 0:
            raise ValueError("PSI of an empty window is undefined")
        return {f.name: psi_of_shares(np.asarray(f.shares), f.counts(X[:, j]) / len(X),
                                      self.epsilon)
                for j, f in enumerate(self.features)}

    def drift_score(self, X_recent: np.ndarray) -> float:
        """Mean PSI over the scored features; compare with ``QT_CLM_DRIFT_THRESHOLD``."""
        per_feature = self.psi(X_recent)
        if not self.scored:
            return 0.0
        return float(np.mean([per_feature[n] for n in self.scored]))

    # --- persistence (plain JSON; a registry artifact) ---------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "rows": self.rows, "bins": self.bins, "epsilon": self.epsilon,
            "scored": list(self.scored),
            "features": [{"name": f.name, "edges": list(f.edges), "shares": list(f.shares)}
                         for f in self.features],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureReference:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a drift reference: format {d.get('format')!r}, "
                             f"expected {FORMAT!r}")
        features = tuple(FeatureBins(f["name"], tuple(float(e) for e in f["edges"]),
                                     tuple(float(s) for s in f["shares"]))
                         for f in d["features"])
        for f in features:
            if len(f.shares) != len(f.edges) + 2 or not math.isclose(sum(f.shares), 1.0):
                raise ValueError(f"drift reference feature {f.name}: shares do not fit edges")
        return cls(features, tuple(d["scored"]), int(d["rows"]), int(d["bins"]),
                   float(d["epsilon"]))

    def to_json(self) -> str:
        # allow_nan=False: edges come from finite values, so this is strict JSON
        return json.dumps(self.to_dict(), allow_nan=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> FeatureReference:
        return cls.from_dict(json.loads(text))

    def save(self, directory: Path) -> list[Path]:
        """Write ``reference.json`` into ``directory`` (the registry's ``write`` callback)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / REFERENCE_FILE
        path.write_text(self.to_json())
        return [path]

    @classmethod
    def load(cls, directory: Path) -> FeatureReference:
        return cls.from_json((Path(directory) / REFERENCE_FILE).read_text())

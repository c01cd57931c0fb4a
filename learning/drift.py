"""Feature drift as the Population Stability Index (PSI), corrected for sampling noise.

A :class:`FeatureReference` is fitted on the training features (decile bins per feature, a NaN
bin, and an empirical null: the 95% level same-size windows of the training data reach against
the rest of it). A check scores a recent window (seasonal PSI when bar times are given) and
compares ``corrected = score - null`` with ``QT_CLM_DRIFT_THRESHOLD``. The statistic, why the
raw PSI cannot be compared with 0.05, the corrections tried and their measured false-alarm and
detection rates: ``docs/drift.md``.

>>> rng = np.random.default_rng(0)
>>> ref = FeatureReference.fit(rng.normal(size=(5000, 2)), names=("a", "b"), scored=("a", "b"))
>>> same = ref.psi(rng.normal(size=(5000, 2)))
>>> bool(max(same.values()) < 0.01)
True
>>> shifted = ref.psi(rng.normal(size=(5000, 2)) + [1.0, 0.0])
>>> bool(shifted["a"] > 0.5 > 0.01 > shifted["b"])
True

A slowly wandering feature (AR(1), ``phi`` 0.98: a new independent value every ~100 rows) and a
fast one, a week of 1-minute rows as reference, the next day as the check: the raw score is
above 0.05, the corrected one is not; the same day shifted by one standard deviation is drift.

>>> rng = np.random.default_rng(7)
>>> def wander(n: int, phi: float = 0.98) -> np.ndarray:
...     x, e = np.zeros(n), rng.normal(size=n) * np.sqrt(1 - phi**2)
...     for i in range(1, n):
...         x[i] = phi * x[i - 1] + e[i]
...     return x
>>> X = np.column_stack([wander(8 * 1440), rng.normal(size=8 * 1440)])
>>> ts = np.arange(8 * 1440) * 60_000
>>> ref = FeatureReference.fit(X[:-1440], names=("slow", "fast"), ts_ms=ts[:-1440])
>>> day = ref.drift_check(X[-1440:], ts[-1440:])
>>> round(day.raw, 3), round(day.null, 3), round(day.corrected, 3), day.method
(0.104, 0.213, -0.109, 'seasonal')
>>> ref.drift_check(X[-1440:] + [1.0, 0.0], ts[-1440:]).drifted(0.05)
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from schemas.features import FEATURE_NAMES

MODEL_NAME = "feature_reference"
REFERENCE_FILE = "reference.json"
FORMAT_V1 = "qt-psi-reference/1"
FORMAT = "qt-psi-reference/2"
CALENDAR_FEATURES: tuple[str, ...] = ("tod_sin", "tod_cos", "dow_sin", "dow_cos")
DEFAULT_SCORED: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n not in CALENDAR_FEATURES)

HOUR_MS = 3_600_000
CHUNK_MS = 15 * 60_000  # null windows are runs of whole 15-minute chunks of the reference
NULL_QUANTILE = 0.95  # the noise level subtracted: this quantile of the null windows
NULL_WINDOWS = 96  # windows measured per window size, evenly spaced
NULL_STEP = math.sqrt(2)  # ratio between consecutive window sizes of the null tables


@dataclass(frozen=True)
class FeatureBins:
    """One feature's bin edges and reference shares (``len(edges) + 1`` finite bins, then NaN).

    ``hourly`` (scored features of a reference fitted with times) holds the reference's bin
    counts per UTC hour of day, 24 rows of ``len(shares)`` counts: the seasonal expectation.
    """

    name: str
    edges: tuple[float, ...]
    shares: tuple[float, ...]
    hourly: tuple[tuple[int, ...], ...] = ()

    def index(self, column: np.ndarray) -> np.ndarray:
        """Bin of every value: right-closed finite bins by ``searchsorted``, NaN last."""
        idx = np.searchsorted(np.asarray(self.edges, dtype=np.float64), column, side="left")
        idx[np.isnan(column)] = len(self.edges) + 1
        return idx

    def counts(self, column: np.ndarray) -> np.ndarray:
        """Rows per bin: right-closed finite bins by ``searchsorted``, the NaN bin last."""
        return np.bincount(self.index(column), minlength=len(self.edges) + 2).astype(np.float64)


def psi_of_shares(expected: np.ndarray, actual: np.ndarray, epsilon: float) -> float:
    """``sum (a - e) ln(a / e)`` with both shares floored at ``epsilon``.

    >>> psi_of_shares(np.array([0.5, 0.5]), np.array([0.5, 0.5]), 1e-4)
    0.0
    >>> round(psi_of_shares(np.array([1.0, 0.0]), np.array([0.0, 1.0]), 1e-4), 2)
    18.42
    """
    return float(_psi(expected, actual, epsilon))


def _psi(expected: np.ndarray, actual: np.ndarray, epsilon: float) -> np.ndarray:
    """PSI over the last axis (broadcasting), the vectorised form of :func:`psi_of_shares`."""
    e = np.maximum(expected, epsilon)
    a = np.maximum(actual, epsilon)
    return np.sum((a - e) * np.log(a / e), axis=-1)


def _shares(counts: np.ndarray) -> np.ndarray:
    """Counts -> shares over the last axis (all-zero rows stay zero)."""
    total = counts.sum(axis=-1, keepdims=True)
    return counts / np.maximum(total, 1)


@dataclass(frozen=True)
class NullPoint:
    """The score of same-size windows of the reference against the rest of it (no drift)."""

    rows: int  # window size, rows
    windows: int  # windows measured
    mean: float  # their mean score: the expected score without drift
    level: float  # their NULL_QUANTILE quantile: the noise level subtracted


@dataclass(frozen=True)
class NullTable:
    """Null points over window sizes; :meth:`at` interpolates in log(rows), log(score)."""

    points: tuple[NullPoint, ...]

    def at(self, rows: int) -> tuple[float, float]:
        """``(mean, level)`` for a window of ``rows`` rows.

        Between two measured sizes: log-log interpolation (the noise falls about like a power
        of the size). Below the smallest: as ``1 / rows`` from it (independent rows; noise of
        autocorrelated ones falls slower, so this overstates it). Above the largest (a window
        longer than half the reference): the last segment's power, kept in ``[-1, 0]``.

        >>> t = NullTable((NullPoint(100, 96, 0.4, 0.8), NullPoint(400, 96, 0.1, 0.2)))
        >>> [tuple(round(v, 3) for v in t.at(n)) for n in (50, 100, 200, 1600)]
        [(0.8, 1.6), (0.4, 0.8), (0.2, 0.4), (0.025, 0.05)]
        """
        pts = self.points
        if rows <= pts[0].rows:
            return _power(pts[0], max(rows, 1) / pts[0].rows, -1.0)
        if rows >= pts[-1].rows:
            if len(pts) == 1:
                return pts[-1].mean, pts[-1].level
            a, b = pts[-2], pts[-1]
            return _power(b, rows / b.rows, _slope(a, b))
        k = int(np.searchsorted([p.rows for p in pts], rows))
        a, b = pts[k - 1], pts[k]
        t = math.log(rows / a.rows) / math.log(b.rows / a.rows)
        return tuple(
            x + t * (y - x) if min(x, y) <= 0 else x * (y / x) ** t  # type: ignore
            for x, y in ((a.mean, b.mean), (a.level, b.level))
        )


def _slope(a: NullPoint, b: NullPoint) -> float:
    """Log-log slope of the level between two null points, kept in ``[-1, 0]``."""
    if min(a.level, b.level) <= 0:
        return 0.0
    return min(max(math.log(b.level / a.level) / math.log(b.rows / a.rows), -1.0), 0.0)


def _power(p: NullPoint, ratio: float, slope: float) -> tuple[float, float]:
    """``p``'s mean and level at ``ratio`` times its size, following ``size ** slope``."""
    f = ratio**slope
    return p.mean * f, p.level * f


@dataclass(frozen=True)
class DriftScore:
    """One drift check. ``corrected`` is what ``QT_CLM_DRIFT_THRESHOLD`` is compared with.

    ``raw``: mean PSI of the scored features against the pooled reference (the old score).
    ``score``: the statistic the null was measured for (the seasonal PSI when the check had
    times and the reference hourly counts, otherwise ``raw``). ``expected``: the mean
    ``score`` of same-size windows of the reference (no drift). ``null``: their
    ``NULL_QUANTILE`` quantile. ``corrected = score - null``: drift beyond sampling noise.
    """

    raw: float
    score: float
    expected: float
    null: float
    corrected: float
    rows: int
    method: str  # "seasonal", "pooled" (empirical nulls) or "iid" (no null: old reference)
    per_feature: dict[str, float] = field(default_factory=dict)

    def drifted(self, threshold: float) -> bool:
        """True when the drift beyond sampling noise exceeds ``threshold``."""
        return self.corrected > threshold

    def to_dict(self) -> dict[str, Any]:
        """Flat record of the check (what to store beside a cycle or in a log)."""
        return {
            "raw": self.raw,
            "score": self.score,
            "expected": self.expected,
            "null": self.null,
            "corrected": self.corrected,
            "rows": self.rows,
            "method": self.method,
        }

    def summary(self) -> str:
        """One line for a cycle's reason: both scores and the noise level between them.

        >>> DriftScore(0.31, 0.3, 0.1, 0.2, 0.1, 1440, "seasonal").summary()
        'drift 0.1000 beyond noise (score 0.3000 - null 0.2000; raw PSI 0.3100, 1440 rows)'
        """
        return (
            f"drift {self.corrected:.4f} beyond noise (score {self.score:.4f} - null "
            f"{self.null:.4f}; raw PSI {self.raw:.4f}, {self.rows} rows)"
        )


@dataclass(frozen=True)
class FeatureReference:
    """Per-feature decile bins and shares of a training matrix (columns in ``names`` order),
    with, when fitted with times, hourly counts and the null tables of the drift score."""

    features: tuple[FeatureBins, ...]
    scored: tuple[str, ...]
    rows: int
    bins: int = 10
    epsilon: float = 1e-4
    hour_rows: tuple[int, ...] = ()
    null_pooled: NullTable | None = None
    null_seasonal: NullTable | None = None
    null_quantile: float = NULL_QUANTILE

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        names: Sequence[str] = FEATURE_NAMES,
        scored: Sequence[str] | None = None,
        bins: int = 10,
        epsilon: float = 1e-4,
        ts_ms: np.ndarray | Sequence[int] | None = None,
        quantile: float = NULL_QUANTILE,
    ) -> FeatureReference:
        """Bins from ``X`` (rows x ``names``); ``scored`` defaults to all but calendar features.

        ``ts_ms``: each row's bar close time (ms; rows in any order, all symbols; symbols
        themselves are not needed). With it the reference also keeps hourly counts and
        measures its null tables (``quantile``: the level subtracted), which
        :meth:`drift_check` needs to correct for sampling noise; without it only the weak
        independent-rows correction is available. About 0.3 s for 130,000 rows.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(names):
            raise ValueError(f"X has shape {X.shape}, expected (rows, {len(names)})")
        if len(X) == 0:
            raise ValueError("cannot fit a drift reference on zero rows")
        if bins < 2 or not 0 < epsilon < 1:
            raise ValueError(f"bins={bins}, epsilon={epsilon}: need bins >= 2, 0 < epsilon < 1")
        scored = (
            tuple(n for n in names if n not in CALENDAR_FEATURES)
            if scored is None
            else tuple(scored)
        )
        unknown = sorted(set(scored) - set(names))
        if unknown:
            raise ValueError(f"scored features {unknown} are not columns of X")
        qs = np.arange(1, bins) / bins
        features = []
        for j, name in enumerate(names):
            col = X[:, j]
            finite = col[np.isfinite(col)]
            edges = (
                tuple(float(e) for e in np.unique(np.quantile(finite, qs))) if len(finite) else ()
            )
            if len(edges) == 1:  # constant: below / equal / above, so a lower value shows too
                edges = (float(np.nextafter(edges[0], -np.inf)), edges[0])
            fb = FeatureBins(name, edges, ())
            shares = fb.counts(col) / len(col)
            features.append(FeatureBins(name, edges, tuple(float(s) for s in shares)))
        ref = cls(tuple(features), scored, len(X), bins, epsilon)
        if ts_ms is None:
            return ref
        ts = np.asarray(ts_ms, dtype=np.int64)
        if ts.shape != (len(X),):
            raise ValueError(f"ts_ms has shape {ts.shape}, expected ({len(X)},)")
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile={quantile}: need 0 < quantile <= 1")
        return _with_nulls(ref, X, ts, quantile)

    # --- the statistic ---------------------------------------------------------------------
    def _check_shape(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"X_recent has shape {X.shape}, expected (rows, {len(self.features)})")
        if len(X) == 0:
            raise ValueError("PSI of an empty window is undefined")
        return X

    def psi(self, X_recent: np.ndarray) -> dict[str, float]:
        """PSI of every feature (scored or not) between the reference and ``X_recent``."""
        X = self._check_shape(X_recent)
        return {
            f.name: psi_of_shares(np.asarray(f.shares), f.counts(X[:, j]) / len(X), self.epsilon)
            for j, f in enumerate(self.features)
        }

    def drift_score(self, X_recent: np.ndarray) -> float:
        """Mean PSI over the scored features: the raw score, sampling noise included."""
        per_feature = self.psi(X_recent)
        if not self.scored:
            return 0.0
        return float(np.mean([per_feature[n] for n in self.scored]))

    def seasonal_psi(self, X_recent: np.ndarray, ts_ms: np.ndarray) -> dict[str, float]:
        """PSI of each scored feature against the reference's shares at the same hours of day
        (the hourly shares mixed in the window's own proportions of rows per hour)."""
        X = self._check_shape(X_recent)
        if not self.hour_rows:
            raise ValueError("this reference has no hourly counts (fit it with ts_ms)")
        hod = _hour_of_day(np.asarray(ts_ms, dtype=np.int64))
        if hod.shape != (len(X),):
            raise ValueError(f"ts_ms has shape {hod.shape}, expected ({len(X)},)")
        weights = np.bincount(hod, minlength=24) / len(X)
        seen = np.asarray(self.hour_rows) > 0
        out = {}
        for j, f in enumerate(self.features):
            if f.name not in self.scored:
                continue
            hourly = _shares(np.asarray(f.hourly, dtype=np.float64))
            pooled = np.asarray(f.shares)
            expected = weights[seen] @ hourly[seen] + weights[~seen].sum() * pooled
            out[f.name] = float(_psi(expected, f.counts(X[:, j]) / len(X), self.epsilon))
        return out

    def drift_check(
        self, X_recent: np.ndarray, ts_ms: np.ndarray | Sequence[int] | None = None
    ) -> DriftScore:
        """One drift check: the raw score, its no-drift null at this size, the corrected score.

        ``X_recent``: the recent window's warm feature rows (all symbols, ``names`` order);
        ``ts_ms``: their bar close times (ms), which select the seasonal score. The null is
        read at ``len(X_recent)`` rows, so any window length works; it assumes the window holds
        the reference's symbols (rows per hour of event time as in training). Fire when
        ``check.drifted(QT_CLM_DRIFT_THRESHOLD)``; record ``check.to_dict()`` (raw, null,
        corrected) or ``check.summary()``.
        """
        per_feature = self.psi(X_recent)
        n = len(X_recent)
        raw = float(np.mean([per_feature[k] for k in self.scored])) if self.scored else 0.0
        if not self.scored:
            return DriftScore(0.0, 0.0, 0.0, 0.0, 0.0, n, "pooled", per_feature)
        if ts_ms is not None and self.hour_rows and self.null_seasonal is not None:
            seasonal = self.seasonal_psi(X_recent, np.asarray(ts_ms))
            score = float(np.mean([seasonal[k] for k in self.scored]))
            mean, level = self.null_seasonal.at(n)
            return DriftScore(raw, score, mean, level, score - level, n, "seasonal", per_feature)
        if self.null_pooled is not None:
            mean, level = self.null_pooled.at(n)
            return DriftScore(raw, raw, mean, level, raw - level, n, "pooled", per_feature)
        level = iid_expected_psi(self, n)
        return DriftScore(raw, raw, level, level, raw - level, n, "iid", per_feature)

    # --- persistence (plain JSON; a registry artifact) ---------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def table(t: NullTable | None) -> list[list[float]] | None:
            return None if t is None else [[p.rows, p.windows, p.mean, p.level] for p in t.points]

        return {
            "format": FORMAT,
            "rows": self.rows,
            "bins": self.bins,
            "epsilon": self.epsilon,
            "scored": list(self.scored),
            "hour_rows": list(self.hour_rows),
            "null": {
                "chunk_ms": CHUNK_MS,
                "quantile": self.null_quantile,
                "pooled": table(self.null_pooled),
                "seasonal": table(self.null_seasonal),
            },
            "features": [
                {
                    "name": f.name,
                    "edges": list(f.edges),
                    "shares": list(f.shares),
                    "hourly": [list(h) for h in f.hourly],
                }
                for f in self.features
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureReference:
        if d.get("format") not in (FORMAT, FORMAT_V1):
            raise ValueError(
                f"not a drift reference: format {d.get('format')!r}, "
                f"expected {FORMAT!r} or {FORMAT_V1!r}"
            )
        features = tuple(
            FeatureBins(
                f["name"],
                tuple(float(e) for e in f["edges"]),
                tuple(float(s) for s in f["shares"]),
                tuple(tuple(int(c) for c in h) for h in f.get("hourly", ())),
            )
            for f in d["features"]
        )
        for f in features:
            if len(f.shares) != len(f.edges) + 2 or not math.isclose(sum(f.shares), 1.0):
                raise ValueError(f"drift reference feature {f.name}: shares do not fit edges")
            if f.hourly and (len(f.hourly) != 24 or any(len(h) != len(f.shares) for h in f.hourly)):
                raise ValueError(f"drift reference feature {f.name}: hourly counts do not fit")
        null = d.get("null") or {}

        def table(rows: list[list[float]] | None) -> NullTable | None:
            if not rows:
                return None
            return NullTable(
                tuple(NullPoint(int(r[0]), int(r[1]), float(r[2]), float(r[3])) for r in rows)
            )

        return cls(
            features,
            tuple(d["scored"]),
            int(d["rows"]),
            int(d["bins"]),
            float(d["epsilon"]),
            tuple(int(h) for h in d.get("hour_rows", ())),
            table(null.get("pooled")),
            table(null.get("seasonal")),
            float(null.get("quantile", NULL_QUANTILE)),
        )

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


def iid_expected_psi(ref: FeatureReference, rows: int) -> float:
    """Mean over the scored features of ``(bins - 1) * (1/n_ref + 1/n)`` (``bins``: those with
    reference rows): the expected PSI of independent rows without drift, the fallback of a
    reference without null tables (a floor: autocorrelated rows give far more)."""
    k = [sum(s > 0 for s in f.shares) for f in ref.features if f.name in ref.scored]
    return float(np.mean([(b - 1) * (1 / ref.rows + 1 / rows) for b in k])) if k else 0.0


def _hour_of_day(ts_ms: np.ndarray) -> np.ndarray:
    return (ts_ms // HOUR_MS % 24).astype(np.int64)


def _with_nulls(
    ref: FeatureReference, X: np.ndarray, ts: np.ndarray, quantile: float
) -> FeatureReference:
    """Hourly counts and the null tables of a reference fitted on ``X`` at times ``ts``."""
    scored_idx = [ref.names.index(n) for n in ref.scored]
    if not scored_idx:
        return ref
    nb = max(len(ref.features[j].shares) for j in scored_idx)
    chunk_ids, chunk = np.unique(ts // CHUNK_MS, return_inverse=True)
    M = len(chunk_ids)
    # C[chunk, scored feature, bin]: rows per bin of every 15-minute chunk
    C = np.empty((M, len(scored_idx), nb), dtype=np.int64)
    for k, j in enumerate(scored_idx):
        flat = chunk * nb + ref.features[j].index(X[:, j])
        C[:, k, :] = np.bincount(flat, minlength=M * nb).reshape(M, nb)
    chunk_hod = _hour_of_day(chunk_ids * CHUNK_MS)
    hourly = np.zeros((24, *C.shape[1:]), dtype=np.int64)
    np.add.at(hourly, chunk_hod, C)
    features = list(ref.features)
    for k, j in enumerate(scored_idx):
        f = features[j]
        features[j] = FeatureBins(
            f.name,
            f.edges,
            f.shares,
            tuple(tuple(int(c) for c in hourly[h, k, : len(f.shares)]) for h in range(24)),
        )
    pooled, seasonal = [], []
    for n, windows, pooled_scores, seasonal_scores in _null_scores(C, chunk_hod, ref.epsilon):
        pooled.append(
            NullPoint(
                n, windows, float(pooled_scores.mean()), float(np.quantile(pooled_scores, quantile))
            )
        )
        seasonal.append(
            NullPoint(
                n,
                windows,
                float(seasonal_scores.mean()),
                float(np.quantile(seasonal_scores, quantile)),
            )
        )
    return FeatureReference(
        tuple(features),
        ref.scored,
        ref.rows,
        ref.bins,
        ref.epsilon,
        tuple(int(r) for r in hourly[:, 0, :].sum(axis=1)),
        NullTable(tuple(pooled)) if pooled else None,
        NullTable(tuple(seasonal)) if seasonal else None,
        quantile,
    )


def _null_scores(
    C: np.ndarray, hod: np.ndarray, epsilon: float
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Scores of same-size windows of the reference against the rest of it (the null).

    For each size of a geometric grid (one chunk's rows, then x sqrt(2), up to half the
    reference), ``NULL_WINDOWS`` evenly spaced windows of consecutive whole chunks holding
    about that many rows; each is scored against the reference without it, pooled and
    seasonally (:meth:`FeatureReference.seasonal_psi`, with the pool's hourly counts). Yields
    ``(median rows of the windows, windows, pooled scores, seasonal scores)``.
    """
    M = len(C)
    zero = np.zeros((1, *C.shape[1:]), dtype=np.int64)
    chunk_rows = C[:, 0, :].sum(axis=1)
    cum_rows = np.concatenate([[0], np.cumsum(chunk_rows)])
    total_rows = int(cum_rows[-1])
    prefix = np.concatenate([zero, np.cumsum(C, axis=0)])
    total = prefix[-1]
    # per hour of day, prefix counts over that hour's chunks only: a window's hourly counts
    by_hour = [np.flatnonzero(hod == h) for h in range(24)]
    prefix_h = [np.concatenate([zero, np.cumsum(C[idx], axis=0)]) for idx in by_hour]
    hourly = np.stack([p[-1] for p in prefix_h])
    target = float(max(int(np.median(chunk_rows)), 1))
    last_size = 0
    while target <= total_rows / 2:
        want, target = int(target), target * NULL_STEP
        last = int(np.searchsorted(cum_rows, total_rows - want, side="right")) - 1
        starts = np.unique(np.linspace(0, max(last, 0), NULL_WINDOWS).astype(np.int64))
        ends = np.clip(
            np.searchsorted(cum_rows, cum_rows[starts] + want, side="left"), starts + 1, M
        )
        rows = (cum_rows[ends] - cum_rows[starts]).astype(np.float64)
        size = round(float(np.median(rows)))  # whole chunks: about ``want`` rows
        if size <= last_size:
            continue
        last_size = size
        window = prefix[ends] - prefix[starts]  # (K, S, bins)
        pool = total - window
        actual = window / rows[:, None, None]
        pooled_score = _psi(_shares(pool), actual, epsilon).mean(axis=-1)
        window_h = np.stack(
            [
                ph[np.searchsorted(idx, ends)] - ph[np.searchsorted(idx, starts)]
                for idx, ph in zip(by_hour, prefix_h, strict=True)
            ],
            axis=1,
        )
        pool_h = hourly[None] - window_h  # (K, 24, S, bins)
        weights = window_h[:, :, 0, :].sum(axis=-1) / rows[:, None]
        seen = pool_h[:, :, 0, :].sum(axis=-1) > 0
        expected = np.einsum("kh,khsb->ksb", weights * seen, _shares(pool_h)) + (
            weights * ~seen
        ).sum(axis=1)[:, None, None] * _shares(pool)
        seasonal_score = _psi(expected, actual, epsilon).mean(axis=-1)
        yield size, len(starts), pooled_score, seasonal_score

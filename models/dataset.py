"""Training data: the bars and feature vectors of a history (:class:`History`, filled by
:func:`training.history.history_from_ticks` with the live flow's own stage code), labelled and
split. :func:`build_training_set` labels the warm vectors (see :mod:`models.labels`) and
records when each label became known; :func:`purged_split` splits by time, never shuffled,
without leaks.

Splitting rules (why):

- **Cuts are times**, shared by all symbols: slice k holds the rows with
  ``cut_k <= ts < cut_{k+1}``, where ``cut_k`` is the time of the row at the fraction's rank
  (rows that share a timestamp never straddle a cut).
- **Purge by event time**: a row's label is known at ``label_end_ms``, not at ``ts``. For a
  feature row that is the close of the bar ``horizon`` bars later in the symbol's own series
  (exact, gaps in the series included); for a closed trade's entry row it is the trade's exit.
  A row of slice k is kept only if its label ends before the next slice starts:
  ``label_end_ms < cut_{k+1} - embargo_ms``. Otherwise a model would train on (or stop early
  on) prices that the next slice is scored on.
- **Embargo**: ``embargo_ms`` more of event time dropped before each cut. For feature rows the
  purge alone leaves a gap of a full horizon between a slice's last row and the next cut; the
  embargo widens it for every row, trade rows included.
- **Any number of slices**: train | early stopping | validation (| test): a model's training
  decisions (early stopping) see only their own slice, so the reported validation is clean.

A :class:`TrainingSet` built by hand without ``label_end_ms`` gets :data:`LABEL_END_UNKNOWN`
("never known"): such rows are purged at every cut until the caller supplies the real time
(:mod:`learning.trainer` assumes a bound for closed trades; see ``CycleConfig``).
:func:`time_split` (cuts in rows, a gap in rows) is kept for callers that have not moved.

>>> ts = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]) * 60_000
>>> end = ts + 2 * 60_000                    # labels known two bars later
>>> [s.tolist() for s in purged_split(ts, end, (0.5, 0.3, 0.2))]
[[0, 1, 2], [5], [8, 9]]
>>> [s.tolist() for s in purged_split(ts, end, (0.6, 0.4), embargo_ms=60_000)]
[[0, 1, 2], [6, 7, 8, 9]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter

import numpy as np

from models.labels import LabelConfig, label_symbol
from schemas.bars import Bar, BarStep
from schemas.features import FEATURE_NAMES, FeatureVector
from schemas.timeutil import to_ms

LABEL_END_UNKNOWN = np.iinfo(np.int64).max
"""``label_end_ms`` of a row whose label time nobody supplied: after every cut (purged)."""


@dataclass
class History:
    """Bars and feature vectors per symbol, in event-time order; with ``keep_ticks``, also the
    bar steps (ticks and where each bar closed) that execution replays (:mod:`training.env`)."""

    bars: dict[str, list[Bar]] = field(default_factory=dict)
    vectors: dict[str, list[FeatureVector]] = field(default_factory=dict)
    steps: dict[str, list[BarStep]] = field(default_factory=dict)
    rows_in: int = 0
    ticks: int = 0
    dead_letters: int = 0

    @property
    def symbols(self) -> list[str]:
        return sorted(self.vectors)

    def add(self, bar: Bar, vector: FeatureVector) -> None:
        self.bars.setdefault(bar.symbol, []).append(bar)
        self.vectors.setdefault(bar.symbol, []).append(vector)


def bar_ms(history: History) -> int:
    """The bar length in ms, read off a feature vector (close - bar start); 0 if empty."""
    for vectors in history.vectors.values():
        if vectors:
            return to_ms(vectors[0].ts) - to_ms(vectors[0].bar_start)
    return 0


@dataclass
class TrainingSet:
    """Labelled warm feature vectors of all symbols, ordered by (time, symbol).

    ``y`` holds class ids (0 HOLD, 1 BUY, 2 SELL); ``forward_return`` the realised log return
    over the horizon and ``threshold`` the label threshold it was compared with.
    ``label_end_ms`` is when each label became known (epoch ms): the close ``horizon`` bars
    later for feature rows, the exit for closed trades' rows; left out, it is
    :data:`LABEL_END_UNKNOWN` (see the module docstring).
    """

    X: np.ndarray
    y: np.ndarray
    ts_ms: np.ndarray
    symbols: np.ndarray
    forward_return: np.ndarray
    threshold: np.ndarray
    vectors: list[FeatureVector]
    feature_names: tuple[str, ...] = FEATURE_NAMES
    label_end_ms: np.ndarray = None  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        if self.label_end_ms is None:
            self.label_end_ms = np.full(len(self.ts_ms), LABEL_END_UNKNOWN, dtype=np.int64)
        else:
            self.label_end_ms = np.asarray(self.label_end_ms, dtype=np.int64)
            if self.label_end_ms.shape != (len(self.ts_ms),):
                raise ValueError(
                    f"label_end_ms has shape {self.label_end_ms.shape}, expected "
                    f"({len(self.ts_ms)},) like ts_ms"
                )

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> TrainingSet:
        return TrainingSet(
            self.X[idx],
            self.y[idx],
            self.ts_ms[idx],
            self.symbols[idx],
            self.forward_return[idx],
            self.threshold[idx],
            [self.vectors[i] for i in idx],
            self.feature_names,
            self.label_end_ms[idx],
        )


_IN_FEATURE_ORDER = itemgetter(*FEATURE_NAMES)


def feature_matrix(vectors: Sequence[FeatureVector]) -> np.ndarray:
    """Vectors -> (n, len(FEATURE_NAMES)) float64 matrix in the canonical column order (one
    C-level pass: each vector's values read by one ``itemgetter`` call; a missing feature
    is a KeyError naming it)."""
    n, width = len(vectors), len(FEATURE_NAMES)
    rows = map(_IN_FEATURE_ORDER, [v.values for v in vectors])
    return np.fromiter(chain.from_iterable(rows), np.float64, n * width).reshape(n, width)


def build_training_set(history: History, cfg: LabelConfig) -> TrainingSet:
    """Label every symbol's warm vectors; drop those without a full forward horizon.

    ``label_end_ms`` is the close of the bar ``horizon`` bars later in the symbol's series:
    the bar whose close the label reads, wherever the series has gaps.
    """
    picked: list[tuple[int, str, FeatureVector, int, float, float, int]] = []
    h = cfg.horizon
    for symbol in history.symbols:
        vectors = history.vectors[symbol]
        labels, fwd, thr = label_symbol(vectors, cfg)
        for i, (v, y, r, t) in enumerate(zip(vectors, labels, fwd, thr, strict=True)):
            if v.warm and y >= 0:
                picked.append(
                    (to_ms(v.ts), symbol, v, int(y), float(r), float(t), to_ms(vectors[i + h].ts))
                )
    picked.sort(key=lambda p: (p[0], p[1]))
    vectors = [p[2] for p in picked]
    return TrainingSet(
        X=feature_matrix(vectors),
        y=np.array([p[3] for p in picked], dtype=np.int64),
        ts_ms=np.array([p[0] for p in picked], dtype=np.int64),
        symbols=np.array([p[1] for p in picked], dtype=object),
        forward_return=np.array([p[4] for p in picked]),
        threshold=np.array([p[5] for p in picked]),
        vectors=vectors,
        label_end_ms=np.array([p[6] for p in picked], dtype=np.int64),
    )


def purged_split(
    ts_ms: np.ndarray, label_end_ms: np.ndarray, fractions: Sequence[float], embargo_ms: int = 0
) -> list[np.ndarray]:
    """Indices of consecutive slices of time, one per fraction, purged at every cut.

    ``fractions`` (non-negative, summing to 1) share out the rows before the purge. Slice k
    holds the rows with ``cut_k <= ts < cut_{k+1}`` whose label ends before the next non-empty
    slice starts, ``label_end_ms < cut_{k+1} - embargo_ms``; the last slice is not purged.
    Indices come in time order (stable for ties). E.g. train | early stopping | validation |
    test: ``purged_split(d.ts_ms, d.label_end_ms, (0.6, 0.1, 0.15, 0.15), embargo_ms)``.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    end = np.asarray(label_end_ms, dtype=np.int64)
    fracs = [float(f) for f in fractions]
    if not fracs or any(f < 0 or not np.isfinite(f) for f in fracs) or abs(sum(fracs) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
    if end.shape != ts.shape:
        raise ValueError(f"label_end_ms has shape {end.shape}, ts_ms {ts.shape}")
    if embargo_ms < 0:
        raise ValueError(f"embargo_ms must be >= 0, got {embargo_ms}")
    if np.any(end < ts):
        raise ValueError("a label cannot end before its row's time (label_end_ms < ts_ms)")
    order = np.argsort(ts, kind="stable")
    ts_sorted = ts[order]
    n = len(order)
    ranks = [min(n, int(n * sum(fracs[:k]) + 1e-9)) for k in range(1, len(fracs))]
    # Move every cut back to the first row of its timestamp: ties stay in one slice.
    starts = (
        [0]
        + [int(np.searchsorted(ts_sorted, ts_sorted[r], "left")) if r < n else n for r in ranks]
        + [n]
    )
    out = []
    for k in range(len(fracs)):
        idx = order[starts[k] : starts[k + 1]]
        nxt = starts[k + 1]
        if nxt < n:  # a later slice starts at ts_sorted[nxt]: purge against it
            idx = idx[end[idx] < ts_sorted[nxt] - embargo_ms]
        out.append(idx)
    return out


def time_split(
    ts_ms: np.ndarray, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), gap: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, validation and test rows: contiguous blocks of time, in that order.

    Cut points are row ranks: ``gap`` (in rows) is dropped after each cut so that a label
    horizon rarely straddles two splits (pass ``horizon x symbols``). That only approximates
    the horizon in time; :func:`purged_split` purges by when each label is known instead.
    """
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    order = np.argsort(ts_ms, kind="stable")
    n = len(order)
    a = int(n * fractions[0])
    b = int(n * (fractions[0] + fractions[1]))
    return order[:a], order[a + gap : b], order[b + gap :]

"""Training data from history, built by the live flow's own stage code.

:func:`history_from_ticks` replays tick files through exactly the classes the live dataflow
runs (:class:`~connectors.replay.ReplaySource`, :class:`~operators.validate.TickValidator`,
:class:`~operators.bars.BarBuilder`, :class:`~operators.features.FeatureEngine`), in plain
Python: there is no second feature implementation to drift from the first.
:func:`build_training_set` labels the warm vectors (see :mod:`models.labels`) and
:func:`time_split` splits by time, never shuffled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from connectors.replay import ReplaySource, expand_paths
from models.labels import LabelConfig, label_symbol
from operators.bars import BarBuilder
from operators.features import FEATURE_NAMES, FeatureEngine
from operators.validate import TickValidator
from schemas.bars import Bar
from schemas.features import FeatureVector
from schemas.timeutil import to_ms
from settings import Settings


@dataclass
class History:
    """Bars and feature vectors per symbol, in event-time order."""

    bars: dict[str, list[Bar]] = field(default_factory=dict)
    vectors: dict[str, list[FeatureVector]] = field(default_factory=dict)
    rows_in: int = 0
    ticks: int = 0
    dead_letters: int = 0

    @property
    def symbols(self) -> list[str]:
        return sorted(self.vectors)

    def add(self, bar: Bar, vector: FeatureVector) -> None:
        self.bars.setdefault(bar.symbol, []).append(bar)
        self.vectors.setdefault(bar.symbol, []).append(vector)


def history_from_ticks(spec: str, settings: Settings, progress: bool = False) -> History:
    """Replay ``spec`` (the ``QT_TICKS`` file forms) through validation, bars and features."""
    source = ReplaySource(expand_paths(spec), settings.candle_seconds,
                          settings.replay_block_bytes)
    history = History()
    bar_progress = None
    if progress:
        from tqdm import tqdm

        bar_progress = tqdm(desc="replaying history", unit=" rows", unit_scale=True)
    engines: dict[str, FeatureEngine] = {}  # partitions own disjoint symbols

    def emit(bars: Iterable[Bar]) -> None:
        for bar in bars:
            eng = engines.get(bar.symbol)
            if eng is None:
                eng = engines[bar.symbol] = FeatureEngine(
                    bar.symbol, settings.bar_seconds, settings.seq_window)
            history.add(bar, eng.update(bar))

    for part in source.list_parts():
        partition = source.build_part("history", part, None)
        validator = TickValidator(settings.max_backwards_ms, frozenset(settings.symbols))
        builders: dict[str, BarBuilder] = {}
        try:
            while True:
                for rows in partition.next_batch():
                    validated = validator.validate(rows)
                    history.rows_in += validated.rows_in
                    history.ticks += validated.ticks
                    history.dead_letters += len(validated.dead)
                    if bar_progress is not None:
                        bar_progress.update(validated.rows_in)
                    for symbol, ticks in sorted(validated.batches.items()):
                        builder = builders.get(symbol)
                        if builder is None:
                            builder = builders[symbol] = BarBuilder(symbol, settings.bar_seconds)
                        emit(builder.push_ticks(ticks)[0])
        except StopIteration:
            pass
        finally:
            partition.close()
        for symbol in sorted(builders):
            emit(builders[symbol].flush())
    if bar_progress is not None:
        bar_progress.close()
    return history


@dataclass
class TrainingSet:
    """Labelled warm feature vectors of all symbols, ordered by (time, symbol).

    ``y`` holds class ids (0 HOLD, 1 BUY, 2 SELL); ``forward_return`` the realised log return
    over the horizon and ``threshold`` the label threshold it was compared with.
    """

    X: np.ndarray
    y: np.ndarray
    ts_ms: np.ndarray
    symbols: np.ndarray
    forward_return: np.ndarray
    threshold: np.ndarray
    vectors: list[FeatureVector]
    feature_names: tuple[str, ...] = FEATURE_NAMES

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> TrainingSet:
        return TrainingSet(self.X[idx], self.y[idx], self.ts_ms[idx], self.symbols[idx],
                           self.forward_return[idx], self.threshold[idx],
                           [self.vectors[i] for i in idx], self.feature_names)


def feature_matrix(vectors: Sequence[FeatureVector]) -> np.ndarray:
    """Vectors -> (n, len(FEATURE_NAMES)) float64 matrix in the canonical column order."""
    out = np.empty((len(vectors), len(FEATURE_NAMES)), dtype=np.float64)
    for i, v in enumerate(vectors):
        vals = v.values
        out[i] = [vals[name] for name in FEATURE_NAMES]
    return out


def build_training_set(history: History, cfg: LabelConfig) -> TrainingSet:
    """Label every symbol's warm vectors; drop those without a full forward horizon."""
    picked: list[tuple[int, str, FeatureVector, int, float, float]] = []
    for symbol in history.symbols:
        vectors = history.vectors[symbol]
        labels, fwd, thr = label_symbol(vectors, cfg)
        for v, y, r, t in zip(vectors, labels, fwd, thr, strict=True):
            if v.warm and y >= 0:
                picked.append((to_ms(v.ts), symbol, v, int(y), float(r), float(t)))
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
    )


def time_split(ts_ms: np.ndarray, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
               gap: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, validation and test rows: contiguous blocks of time, in that order.

    Cut points are times, so all symbols share them. ``gap`` (in rows) is dropped after each
    cut so a label horizon cannot straddle two splits (pass ``horizon x symbols``).
    """
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    order = np.argsort(ts_ms, kind="stable")
    n = len(order)
    a = int(n * fractions[0])
    b = int(n * (fractions[0] + fractions[1]))
    return order[:a], order[a + gap:b], order[b + gap:]

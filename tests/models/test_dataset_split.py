"""Leak-free splits: :func:`models.dataset.purged_split` and ``TrainingSet.label_end_ms``.

On the bundled FXCM sample (real quotes, 2 symbols, 2 days) through the live flow's own stage
code, plus small hand-made cases for the edges (ties, empty slices, bad input).
"""

from __future__ import annotations

import numpy as np
import pytest

from models.dataset import LABEL_END_UNKNOWN, TrainingSet, build_training_set, purged_split
from models.labels import LabelConfig
from schemas.timeutil import to_ms
from settings import SAMPLE_TICKS, Settings
from training.history import history_from_ticks

LABELS = LabelConfig.from_settings(Settings.from_env({}))
MINUTE = 60_000


@pytest.fixture(scope="module")
def data() -> TrainingSet:
    return build_training_set(history_from_ticks(str(SAMPLE_TICKS), Settings.from_env({})), LABELS)


def test_label_end_is_the_close_a_horizon_later(data: TrainingSet) -> None:
    history = history_from_ticks(str(SAMPLE_TICKS), Settings.from_env({}))
    for symbol in history.symbols:
        vectors = history.vectors[symbol]
        index = {to_ms(v.ts): i for i, v in enumerate(vectors)}
        rows = np.flatnonzero(data.symbols == symbol)
        want = [to_ms(vectors[index[int(t)] + LABELS.horizon].ts) for t in data.ts_ms[rows]]
        assert data.label_end_ms[rows].tolist() == want
    # bars are a minute apart or more (no-tick gaps): a label ends a horizon later or more
    assert ((data.label_end_ms - data.ts_ms) >= LABELS.horizon * MINUTE).all()
    assert ((data.label_end_ms - data.ts_ms) > LABELS.horizon * MINUTE).any()  # real gaps


@pytest.mark.parametrize("embargo", [0, 10 * MINUTE])
def test_four_slices_are_ordered_disjoint_and_purged(data: TrainingSet, embargo: int) -> None:
    """The bootstrap's train | early stopping | validation | test, purged at every cut."""
    slices = purged_split(data.ts_ms, data.label_end_ms, (0.6, 0.1, 0.15, 0.15), embargo)
    assert len(slices) == 4 and all(len(s) for s in slices)
    flat = np.concatenate(slices)
    assert len(np.unique(flat)) == len(flat)  # disjoint
    starts = [int(data.ts_ms[s].min()) for s in slices]
    for k in range(3):
        cur, nxt = slices[k], starts[k + 1]
        assert data.ts_ms[cur].max() < nxt  # ordered in time
        assert data.label_end_ms[cur].max() < nxt - embargo  # no label reaches the next
        # and only what had to go went: every row of the slice's time range that is missing
        # has a label ending too late
        in_range = np.flatnonzero((data.ts_ms >= starts[k]) & (data.ts_ms < nxt))
        dropped = np.setdiff1d(in_range, cur)
        assert (data.label_end_ms[dropped] >= nxt - embargo).all()
        assert len(dropped) > 0
    last = slices[-1]
    assert len(last) == int((data.ts_ms >= starts[-1]).sum())  # the last slice keeps all
    for s in slices:
        assert (np.diff(data.ts_ms[s]) >= 0).all()  # time order


def test_ties_stay_in_one_slice_and_empty_slices_are_allowed() -> None:
    ts = np.repeat(np.arange(5) * MINUTE, 2)  # two symbols per bar
    end = ts + MINUTE
    # rank 5 is the second row of the bar at 2 min: the cut moves back to its first row, and
    # the rows of the bar at 1 min go (their labels end at the cut)
    a, b = purged_split(ts, end, (0.5, 0.5))
    assert a.tolist() == [0, 1] and b.tolist() == [4, 5, 6, 7, 8, 9]
    a, b = purged_split(ts, end, (0.3, 0.7))
    assert a.tolist() == [] and b.tolist() == list(range(2, 10))
    a, empty, c = purged_split(ts, end, (0.6, 0.0, 0.4))
    assert len(empty) == 0 and data_before(ts, end, a, int(ts[c].min()))
    assert [len(s) for s in purged_split(ts, end, (1.0, 0.0))] == [10, 0]


def data_before(ts: np.ndarray, end: np.ndarray, idx: np.ndarray, cut: int) -> bool:
    return bool((end[idx] < cut).all() and (ts[idx] < cut).all())


def test_unknown_label_ends_are_purged_and_bad_input_refused() -> None:
    ts = np.arange(10) * MINUTE
    end = ts + MINUTE
    end[2] = LABEL_END_UNKNOWN
    train, val = purged_split(ts, end, (0.5, 0.5))
    assert 2 not in train and 2 not in set(val)
    with pytest.raises(ValueError, match="sum to 1"):
        purged_split(ts, end, (0.5, 0.4))
    with pytest.raises(ValueError, match=">= 0"):
        purged_split(ts, end, (1.2, -0.2))
    with pytest.raises(ValueError, match="before its row"):
        purged_split(ts, ts - 1, (0.5, 0.5))
    with pytest.raises(ValueError, match="shape"):
        purged_split(ts, end[:-1], (0.5, 0.5))
    with pytest.raises(ValueError, match="embargo"):
        purged_split(ts, end, (0.5, 0.5), embargo_ms=-1)


def test_training_sets_built_without_label_ends_still_work(data: TrainingSet) -> None:
    """Old constructions (learning/clm.py builds trade rows by keyword) keep working; their
    label time is unknown until the caller gives it, and subsets carry it along."""
    old = TrainingSet(
        X=data.X[:5],
        y=data.y[:5],
        ts_ms=data.ts_ms[:5],
        symbols=data.symbols[:5],
        forward_return=data.forward_return[:5],
        threshold=data.threshold[:5],
        vectors=data.vectors[:5],
    )
    assert (old.label_end_ms == LABEL_END_UNKNOWN).all()
    sub = data.subset(np.array([3, 1]))
    assert sub.label_end_ms.tolist() == data.label_end_ms[[3, 1]].tolist()
    with pytest.raises(ValueError, match="label_end_ms"):
        TrainingSet(
            old.X,
            old.y,
            old.ts_ms,
            old.symbols,
            old.forward_return,
            old.threshold,
            old.vectors,
            label_end_ms=np.zeros(2, dtype=np.int64),
        )

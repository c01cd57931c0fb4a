"""Drift: PSI per feature, its bins (constant, NaN), the score, persistence, real sample days;
the noise correction (null tables, seasonal score) on synthetic and real rows."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import numpy as np
import pytest

import learning.drift
from learning.drift import (
    CALENDAR_FEATURES,
    FORMAT_V1,
    MODEL_NAME,
    DriftScore,
    FeatureReference,
    NullPoint,
    NullTable,
    iid_expected_psi,
)
from models.dataset import feature_matrix
from models.registry import ModelRegistry
from schemas.features import FEATURE_NAMES, FEATURE_SET_VERSION
from schemas.registry import ModelStage
from schemas.timeutil import to_ms
from settings import Settings
from training.history import history_from_ticks

THRESHOLD = Settings.from_env({}).clm_drift_threshold  # 0.05, QT_CLM_DRIFT_THRESHOLD
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000


def _normal(seed: int, rows: int = 20_000) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, len(FEATURE_NAMES)))


@pytest.fixture(scope="module")
def sample_rows(sample_ticks: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warm feature rows of both symbols of the bundled sample (2014-05-06/07), in time order,
    with their bar close times (ms) and symbols: what the CLM holds at a check."""
    history = history_from_ticks(str(sample_ticks), Settings.from_env({}))
    vectors = sorted(
        (v for s in history.symbols for v in history.vectors[s] if v.warm),
        key=lambda v: (to_ms(v.ts), v.symbol),
    )
    return (
        feature_matrix(vectors),
        np.array([to_ms(v.ts) for v in vectors]),
        np.array([v.symbol for v in vectors]),
    )


@pytest.fixture(scope="module")
def sample_days(sample_rows) -> tuple[np.ndarray, np.ndarray]:
    """The sample's first day (2014-05-06) and second day, both symbols."""
    X, ts, _ = sample_rows
    day = ts // DAY
    day1, day2 = X[day == day[0]], X[day == day[0] + 1]
    assert len(day1) > 2000 and len(day2) > 2000
    return day1, day2


def test_doctests() -> None:
    result = doctest.testmod(learning.drift)
    assert result.attempted >= 15 and result.failed == 0


def test_same_rows_give_zero_and_same_distribution_gives_noise_only() -> None:
    X = _normal(0)
    ref = FeatureReference.fit(X)
    assert all(v == 0.0 for v in ref.psi(X).values())
    other = ref.psi(_normal(1))
    # sampling noise is about (bins - 1) * (1/n + 1/m) = 9e-4 here
    assert max(other.values()) < 0.005
    assert ref.drift_score(_normal(1)) < THRESHOLD / 10


def test_shifted_or_scaled_feature_gives_large_psi_on_that_feature_only() -> None:
    ref = FeatureReference.fit(_normal(0))
    recent = _normal(1)
    j, k = FEATURE_NAMES.index("rsi_14"), FEATURE_NAMES.index("atr_14")
    recent[:, j] += 1.0  # mean shift of one standard deviation
    recent[:, k] *= 3.0  # same mean, three times the spread
    psi = ref.psi(recent)
    assert psi["rsi_14"] > 0.5
    assert psi["atr_14"] > 0.5
    assert max(v for n, v in psi.items() if n not in ("rsi_14", "atr_14")) < 0.005
    assert ref.drift_score(recent) > THRESHOLD
    assert ref.drift_score(recent) == pytest.approx(np.mean([psi[n] for n in ref.scored]))


@pytest.mark.parametrize("new_value", [2.0, 4.0])
def test_constant_feature_flags_a_new_value_above_or_below(new_value: float) -> None:
    X = np.column_stack([np.full(1000, 3.0), np.arange(1000.0)])
    ref = FeatureReference.fit(X, names=("c", "x"), scored=("c", "x"))
    assert ref.features[0].edges[1] == 3.0 and ref.features[0].edges[0] < 3.0
    assert ref.features[0].shares == (0.0, 1.0, 0.0, 0.0)  # below 3, 3, above 3, NaN
    assert ref.features[1].shares == pytest.approx([0.1] * 10 + [0.0])
    assert ref.psi(X)["c"] == 0.0
    moved = X.copy()
    moved[:, 0] = new_value
    # everything left a bin that held everything: ~ 2 * ln(1 / epsilon)
    assert ref.psi(moved)["c"] == pytest.approx(2 * math.log(1e4), rel=1e-3)
    assert ref.psi(moved)["x"] == 0.0


def test_nan_has_its_own_bin() -> None:
    rng = np.random.default_rng(3)
    col = rng.normal(size=10_000)
    col[:1000] = np.nan  # 10% NaN in training
    X = np.column_stack([col, np.full(10_000, np.nan)])
    ref = FeatureReference.fit(X, names=("f", "all_nan"), scored=("f", "all_nan"))
    assert ref.features[0].shares[-1] == pytest.approx(0.1)
    assert ref.features[1].edges == () and ref.features[1].shares == (0.0, 1.0)
    same = rng.normal(size=10_000)
    same[:1000] = np.nan
    more_nan = same.copy()
    more_nan[:5000] = np.nan  # the values keep their distribution; only NaN is more frequent
    all_nan = np.full(10_000, np.nan)
    assert ref.psi(np.column_stack([same, all_nan]))["f"] < 0.005
    assert ref.psi(np.column_stack([more_nan, all_nan]))["f"] > 0.5
    assert ref.psi(np.column_stack([same, all_nan]))["all_nan"] == 0.0
    # infinities are not NaN: they land in the end bins
    assert ref.features[0].counts(np.array([-np.inf, np.inf, np.nan])).tolist() == [1.0] + [
        0.0
    ] * 8 + [1.0, 1.0]


def test_calendar_features_are_binned_but_not_scored() -> None:
    ref = FeatureReference.fit(_normal(0))
    assert set(ref.scored) == set(FEATURE_NAMES) - set(CALENDAR_FEATURES)
    recent = _normal(1)
    recent[:, FEATURE_NAMES.index("dow_sin")] = 5.0  # one day of the week only
    assert ref.psi(recent)["dow_sin"] > 5
    assert ref.drift_score(recent) < THRESHOLD / 10


def test_wrong_shapes_and_empty_windows_are_refused() -> None:
    ref = FeatureReference.fit(_normal(0, 100))
    with pytest.raises(ValueError, match="expected"):
        ref.psi(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="empty"):
        ref.drift_score(np.zeros((0, len(FEATURE_NAMES))))
    with pytest.raises(ValueError, match="zero rows"):
        FeatureReference.fit(np.zeros((0, len(FEATURE_NAMES))))
    with pytest.raises(ValueError, match="not columns"):
        FeatureReference.fit(np.zeros((5, 1)), names=("a",), scored=("b",))


def test_real_sample_first_day_against_second_day(sample_days) -> None:
    day1, day2 = sample_days
    ref = FeatureReference.fit(day1)
    assert ref.drift_score(day1) == 0.0
    psi = ref.psi(day2)
    score = ref.drift_score(day2)
    assert all(math.isfinite(v) and v >= 0 for v in psi.values())
    assert math.isfinite(score) and score > 0
    # the quotes carry no volume (constant) and no depth (all NaN): neither shows drift
    assert psi["volume_z"] == 0.0 and psi["imbalance"] == 0.0
    # another day is a different market: more than sampling noise, ~9 * (1/n + 1/m)
    assert score > 9 * (1 / len(day1) + 1 / len(day2))


def test_json_round_trip_is_exact(sample_days) -> None:
    ref = FeatureReference.fit(sample_days[0])
    text = ref.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    back = FeatureReference.from_json(text)
    assert back == ref
    assert back.to_json() == text
    assert back.psi(sample_days[1]) == ref.psi(sample_days[1])


def test_registry_publish_and_load(tmp_path: Path, sample_days) -> None:
    ref = FeatureReference.fit(sample_days[0])
    reg = ModelRegistry(tmp_path)
    mv = reg.publish(
        MODEL_NAME, ref.save, stage=ModelStage.PRODUCTION, feature_set=FEATURE_SET_VERSION
    )
    directory = reg.verified_path(MODEL_NAME, mv.version)
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "reference.json"]
    assert FeatureReference.load(directory) == ref


def test_from_json_refuses_other_documents() -> None:
    with pytest.raises(ValueError, match="format"):
        FeatureReference.from_json('{"format": "something-else"}')
    doc = FeatureReference.fit(_normal(0, 50)).to_dict()
    doc["features"][0]["shares"] = doc["features"][0]["shares"][:-1]
    with pytest.raises(ValueError, match="shares"):
        FeatureReference.from_dict(doc)


# --- the noise correction ------------------------------------------------------------------


def _wander(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """AR(1) with unit variance: a slowly moving feature (a new value every ~2/(1-phi) rows)."""
    x, e = np.zeros(n), rng.normal(size=n) * math.sqrt(1 - phi**2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x


def test_null_of_independent_rows_is_the_textbook_expectation() -> None:
    rng = np.random.default_rng(0)
    n_ref = 20_000
    ref = FeatureReference.fit(
        rng.normal(size=(n_ref, 3)), names=("a", "b", "c"), ts_ms=np.arange(n_ref) * MINUTE
    )
    assert ref.null_pooled is not None and ref.null_seasonal is not None
    points = ref.null_pooled.points
    assert [p.rows for p in points] == sorted({p.rows for p in points})
    assert points[0].rows == 15 and points[-1].rows <= n_ref / 2  # 15-minute chunks
    for p in points:
        assert p.windows == 96 and p.level >= p.mean > 0
        if p.rows >= 200:  # PSI of n vs the other n_ref - n independent rows: 9 (1/n + 1/m)
            assert p.mean == pytest.approx(9 * (1 / p.rows + 1 / (n_ref - p.rows)), rel=0.2)
    means = [p.mean for p in points]
    assert means == sorted(means, reverse=True)  # noise falls with the window's size
    # and a check of fresh independent rows is within the noise
    check = ref.drift_check(rng.normal(size=(1440, 3)), np.arange(1440) * MINUTE)
    assert check.method == "seasonal" and not check.drifted(THRESHOLD)


def test_autocorrelated_rows_fire_raw_but_not_corrected() -> None:
    """The reason for the correction: a slow feature's day looks drifted to the raw score."""
    rng = np.random.default_rng(3)
    n = 11 * 1440
    X = np.column_stack([_wander(rng, n, 0.99), _wander(rng, n, 0.9), rng.normal(size=n)])
    ts = np.arange(n) * MINUTE
    ref = FeatureReference.fit(X[: 7 * 1440], names=("slow", "mid", "fast"), ts_ms=ts[: 7 * 1440])
    days = [
        ref.drift_check(X[d * 1440 : (d + 1) * 1440], ts[d * 1440 : (d + 1) * 1440])
        for d in range(7, 11)
    ]
    assert sum(d.raw > THRESHOLD for d in days) >= 3
    assert not any(d.drifted(THRESHOLD) for d in days)
    assert all(d.corrected == pytest.approx(d.score - d.null) for d in days)
    # the same days with the fast feature shifted by one standard deviation: drift
    step = np.array([0.0, 0.0, 1.0])
    shifted = [
        ref.drift_check(X[d * 1440 : (d + 1) * 1440] + step, ts[d * 1440 : (d + 1) * 1440])
        for d in range(7, 11)
    ]
    assert all(s.drifted(THRESHOLD) for s in shifted)


def test_seasonal_score_compares_a_window_with_the_same_hours() -> None:
    """An intraday pattern: a 6-hour window of quiet hours is not drift, a louder one is."""
    rng = np.random.default_rng(5)
    n = 10 * 1440
    ts = np.arange(n) * MINUTE
    hour = ts // HOUR % 24
    loud = np.where((hour >= 7) & (hour < 17), 3.0, 1.0)  # the trading day is louder
    X = np.column_stack([np.abs(rng.normal(size=n)) * loud, rng.normal(size=n)])
    ref = FeatureReference.fit(X[: 8 * 1440], names=("vol", "ret"), ts_ms=ts[: 8 * 1440])
    night = (ts >= 8 * DAY) & (ts < 8 * DAY + 6 * HOUR)  # 00:00-06:00, the quiet hours
    check = ref.drift_check(X[night], ts[night])
    assert check.raw > 0.1  # the pooled view: "drift"
    assert check.score < check.raw / 5 and not check.drifted(THRESHOLD)
    pooled = ref.drift_check(X[night])  # no times: pooled score + null
    assert pooled.method == "pooled" and pooled.score == check.raw
    louder = X[night] * [3.0, 1.0]
    assert ref.drift_check(louder, ts[night]).drifted(THRESHOLD)
    # hours the reference never saw fall back to the pooled shares
    psi_unseen = ref.seasonal_psi(X[:100], ts[:100] + 12 * HOUR)
    assert all(math.isfinite(v) for v in psi_unseen.values())
    with pytest.raises(ValueError, match="ts_ms"):
        ref.seasonal_psi(X[:100], ts[:99])


def test_iid_fallback_without_times_and_the_threshold_on_corrected() -> None:
    X = _normal(0, 5000)
    ref = FeatureReference.fit(X)
    assert ref.null_pooled is None and ref.hour_rows == ()
    check = ref.drift_check(_normal(1, 1000), np.arange(1000) * MINUTE)
    assert check.method == "iid"
    assert check.null == pytest.approx(iid_expected_psi(ref, 1000))
    assert check.null == pytest.approx(
        np.mean(
            [
                (sum(s > 0 for s in f.shares) - 1) * (1 / 5000 + 1 / 1000)
                for f in ref.features
                if f.name in ref.scored
            ]
        )
    )
    assert check.raw == ref.drift_score(_normal(1, 1000))
    assert DriftScore(0.2, 0.2, 0.1, 0.14, 0.06, 100, "pooled").drifted(THRESHOLD)
    assert not DriftScore(0.2, 0.2, 0.1, 0.16, 0.04, 100, "pooled").drifted(THRESHOLD)


def test_null_table_reads_any_window_size() -> None:
    table = NullTable(
        (NullPoint(100, 96, 0.4, 0.8), NullPoint(400, 96, 0.1, 0.2), NullPoint(1600, 96, 0.05, 0.1))
    )
    levels = [table.at(n)[1] for n in (10, 100, 150, 400, 800, 1600, 6400)]
    assert levels == sorted(levels, reverse=True)
    assert table.at(200) == pytest.approx((0.2, 0.4))  # log-log between points
    assert table.at(50) == pytest.approx((0.8, 1.6))  # 1/n below the smallest
    assert table.at(6400) == pytest.approx((0.025, 0.05))  # last slope above the largest
    rising = NullTable((NullPoint(100, 96, 0.1, 0.2), NullPoint(200, 96, 0.2, 0.4)))
    assert rising.at(800) == (0.2, 0.4)  # never grows with the size


def test_fit_refuses_bad_times_and_quantiles() -> None:
    X = _normal(0, 100)
    with pytest.raises(ValueError, match="ts_ms"):
        FeatureReference.fit(X, ts_ms=np.arange(99))
    with pytest.raises(ValueError, match="quantile"):
        FeatureReference.fit(X, ts_ms=np.arange(100) * MINUTE, quantile=0.0)


def test_real_sample_second_day_in_6h_checks_is_noise_not_drift(sample_rows) -> None:
    """The bundled sample: reference the first day, checks the second day's 6-hour windows.
    The raw score fires at each of them; the corrected one at none."""
    X, ts, _ = sample_rows
    day = ts // DAY
    first = day == day[0]
    ref = FeatureReference.fit(X[first], ts_ms=ts[first])
    assert sum(ref.hour_rows) == first.sum() and ref.null_seasonal is not None
    checks = []
    for quarter in range(4):
        m = (day == day[0] + 1) & (ts // HOUR % 24 // 6 == quarter)
        checks.append(ref.drift_check(X[m], ts[m]))
    assert all(c.raw > THRESHOLD for c in checks)
    assert not any(c.drifted(THRESHOLD) for c in checks)
    assert all(c.method == "seasonal" and c.rows > 600 for c in checks)


def test_real_sample_another_market_is_drift(sample_rows) -> None:
    """EURUSD's first day as reference, NZDUSD's second day in 6-hour checks: another market
    (wider spreads, twice the volatility) is found in most of them."""
    X, ts, symbol = sample_rows
    day = ts // DAY
    eur = (day == day[0]) & (symbol == "FXCM:EURUSD")
    ref = FeatureReference.fit(X[eur], ts_ms=ts[eur])
    fired = 0
    for quarter in range(4):
        m = (day == day[0] + 1) & (symbol == "FXCM:NZDUSD") & (ts // HOUR % 24 // 6 == quarter)
        fired += ref.drift_check(X[m], ts[m]).drifted(THRESHOLD)
    assert fired >= 3


def test_format_2_round_trip_and_format_1_still_loads(sample_rows) -> None:
    X, ts, _ = sample_rows
    ref = FeatureReference.fit(X, ts_ms=ts)
    text = ref.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    back = FeatureReference.from_json(text)
    assert back == ref and back.to_json() == text
    assert back.drift_check(X[-1440:], ts[-1440:]) == ref.drift_check(X[-1440:], ts[-1440:])
    assert len(text) < 200_000
    # a reference written before the correction existed: same bins, the iid fallback
    old = ref.to_dict()
    old["format"] = FORMAT_V1
    for key in ("hour_rows", "null"):
        del old[key]
    for f in old["features"]:
        del f["hourly"]
    v1 = FeatureReference.from_dict(old)
    assert v1 == FeatureReference.fit(X)
    assert v1.drift_check(X[-1440:], ts[-1440:]).method == "iid"
    doc = ref.to_dict()
    doc["features"][0]["hourly"] = doc["features"][0]["hourly"][:5]
    with pytest.raises(ValueError, match="hourly"):
        FeatureReference.from_dict(doc)

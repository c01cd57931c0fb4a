"""Drift: PSI per feature, its bins (constant, NaN), the score, persistence, real sample days."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import numpy as np
import pytest

import learning.drift
from learning.drift import CALENDAR_FEATURES, MODEL_NAME, FeatureReference
from models.dataset import feature_matrix, history_from_ticks
from models.registry import ModelRegistry
from operators.features import FEATURE_NAMES, FEATURE_SET_VERSION
from schemas.registry import Stage
from settings import Settings

THRESHOLD = Settings.from_env({}).clm_drift_threshold  # 0.05, QT_CLM_DRIFT_THRESHOLD


def _normal(seed: int, rows: int = 20_000) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, len(FEATURE_NAMES)))


@pytest.fixture(scope="module")
def sample_days(sample_ticks: Path) -> tuple[np.ndarray, np.ndarray]:
    """Warm feature rows of both symbols of the bundled sample: 2014-05-06 and 2014-05-07."""
    history = history_from_ticks(str(sample_ticks), Settings.from_env({}))
    vectors = [v for s in history.symbols for v in history.vectors[s] if v.warm]
    day1 = [v for v in vectors if v.ts.day == 6]
    day2 = [v for v in vectors if v.ts.day == 7]
    assert len(day1) > 2000 and len(day2) > 2000
    return feature_matrix(day1), feature_matrix(day2)


def test_doctests() -> None:
    result = doctest.testmod(learning.drift)
    assert result.attempted >= 5 and result.failed == 0


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
    recent[:, j] += 1.0   # mean shift of one standard deviation
    recent[:, k] *= 3.0   # same mean, three times the spread
    psi = ref.psi(recent)
    assert psi["rsi_14"] > 0.5
    assert psi["atr_14"] > 0.5
    assert max(v for n, v in psi.items() if n not in ("rsi_14", "atr_14")) < 0.005
    assert ref.drift_score(recent) > THRESHOLD
    assert ref.drift_score(recent) == pytest.approx(
        np.mean([psi[n] for n in ref.scored]))


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
    assert ref.features[0].counts(np.array([-np.inf, np.inf, np.nan])).tolist() == \
        [1.0] + [0.0] * 8 + [1.0, 1.0]


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
    mv = reg.publish(MODEL_NAME, ref.save, stage=Stage.PRODUCTION,
                     feature_set=FEATURE_SET_VERSION)
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

"""The promotion rule: macro-F1 on the same bars' realised labels, more than 2% better, ready."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest

import learning.shadow
from learning.shadow import ShadowComparison, beats, required_score
from models.dataset import build_training_set, history_from_ticks
from models.labels import UNLABELLED, LabelConfig
from models.metrics import macro_f1
from operators.features import FEATURE_NAMES
from schemas.signals import ACTION_OF
from settings import Settings

SETTINGS = Settings.from_env({})
MARGIN, SHADOW_MIN = SETTINGS.clm_promote_margin, SETTINGS.clm_shadow_min  # 0.02, 100


@pytest.fixture(scope="module")
def realised(sample_ticks: Path) -> tuple[np.ndarray, np.ndarray]:
    """Realised labels of the bundled sample and a plain production rule's calls on the same
    bars (follow the last 15-minute return when it is larger than the label threshold)."""
    data = build_training_set(history_from_ticks(str(sample_ticks), SETTINGS),
                              LabelConfig.from_settings(SETTINGS))
    r = data.X[:, FEATURE_NAMES.index("ret_15")]
    production = np.where(r > data.threshold, 1, np.where(r < -data.threshold, 2, 0))
    assert len(data) > 1000 and set(np.unique(data.y)) == {0, 1, 2}
    return data.y, production


def test_doctests() -> None:
    result = doctest.testmod(learning.shadow)
    assert result.attempted >= 3 and result.failed == 0


def test_forced_better_challenger_is_promoted(realised) -> None:
    y, production = realised
    r = ShadowComparison.compare(y, production, y.copy(), MARGIN, SHADOW_MIN)
    assert r.n == len(y) and r.ready
    assert r.challenger_score == 1.0 and 0 < r.production_score < 1 / 1.02
    assert r.production_score == macro_f1(y, production)
    assert r.promote and r.decision == "promote"
    assert r.challenger_accuracy == 1.0


def test_forced_worse_challenger_is_not_promoted(realised) -> None:
    y, production = realised
    always_wrong = (y + 1) % 3
    r = ShadowComparison.compare(y, production, always_wrong, MARGIN, SHADOW_MIN)
    assert r.ready and r.challenger_score == 0.0 and r.challenger_accuracy == 0.0
    assert not r.promote and r.decision == "retire"


def test_equal_challenger_is_not_promoted(realised) -> None:
    y, production = realised
    r = ShadowComparison.compare(y, production, production.copy(), MARGIN, SHADOW_MIN)
    assert r.ready and r.challenger_score == r.production_score
    assert not r.promote and r.decision == "retire"


def test_not_ready_below_min_predictions(realised) -> None:
    y, production = realised
    y, production = y[: SHADOW_MIN - 1], production[: SHADOW_MIN - 1]
    r = ShadowComparison.compare(y, production, y.copy(), MARGIN, SHADOW_MIN)
    assert r.n == SHADOW_MIN - 1 and r.challenger_score == 1.0
    assert not r.ready and not r.promote and r.decision == "wait"
    # one more labelled bar makes it ready
    y2, p2 = realised
    r = ShadowComparison.compare(y2[:SHADOW_MIN], p2[:SHADOW_MIN], y2[:SHADOW_MIN].copy(),
                                 MARGIN, SHADOW_MIN)
    assert r.ready


def test_unrealised_bars_count_for_neither(realised) -> None:
    y, production = realised
    y = y[:150].copy()
    y[100:] = UNLABELLED  # outcomes not known yet
    r = ShadowComparison.compare(y, production[:150], np.where(y < 0, 0, y), MARGIN, SHADOW_MIN)
    assert r.n == 100 and r.ready
    assert r.production_score == macro_f1(y[:100], production[:100])


def test_the_two_percent_boundary_exactly() -> None:
    assert required_score(0.5, 0.02) == pytest.approx(0.51)
    assert not beats(0.51, 0.5, 0.02)          # exactly +2% is not *more than* 2%
    assert beats(0.51 + 1e-6, 0.5, 0.02)
    assert not beats(0.5099, 0.5, 0.02)
    assert not beats(0.4, 0.4, 0.02)


def test_boundary_through_compare() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 600)
    production = np.where(rng.random(600) < 0.5, y, (y + 1) % 3)
    challenger = np.where(rng.random(600) < 0.6, y, (y + 1) % 3)
    p, c = macro_f1(y, production), macro_f1(y, challenger)
    gain = c / p - 1  # the challenger's relative gain, about 20%
    assert 0.1 < gain < 0.3
    at = ShadowComparison.compare(y, production, challenger, margin=gain)
    assert at.ready and not at.promote  # exactly at the margin
    below = ShadowComparison.compare(y, production, challenger, margin=gain - 1e-6)
    assert below.promote


def test_zero_production_score_reads_the_margin_as_absolute() -> None:
    y = np.tile([0, 1, 2], 100)
    production = (y + 1) % 3  # always wrong: macro-F1 0
    weak = production.copy()
    weak[0] = y[0]  # one right HOLD: a macro-F1 of about 0.002
    fair = np.where(np.arange(300) < 30, y, production)  # 10% right: about 0.1
    r_weak = ShadowComparison.compare(y, production, weak, MARGIN, SHADOW_MIN)
    r_fair = ShadowComparison.compare(y, production, fair, MARGIN, SHADOW_MIN)
    assert r_weak.production_score == 0.0 and 0 < r_weak.challenger_score < MARGIN
    assert not r_weak.promote
    assert r_fair.challenger_score > MARGIN and r_fair.promote


def test_actions_are_accepted_and_shapes_checked() -> None:
    y = np.tile([0, 1, 2], 40)
    as_actions = [ACTION_OF[int(c)] for c in y]
    r = ShadowComparison.compare(y, [ACTION_OF[0]] * len(y), as_actions)
    assert r.challenger_score == 1.0 and r.promote
    assert r.to_dict()["decision"] == "promote" and r.to_dict()["metric"] == "macro_f1"
    with pytest.raises(ValueError, match="same bars"):
        ShadowComparison.compare(y, y[:-1], y)
    with pytest.raises(ValueError, match="class ids"):
        ShadowComparison.compare(y, y + 1, y)
    with pytest.raises(ValueError, match="margin"):
        ShadowComparison.compare(y, y, y, margin=-0.1)

"""The learning ablation: the arithmetic of the comparison, the split of the input, and one
whole evaluation (learning off vs on) of the bundled sample."""

from __future__ import annotations

import gzip
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from cli.ablation import (
    MIN_DAYS,
    DailyPanel,
    changed_settings,
    compare,
    run_evaluation,
    split_ticks,
    store_evaluation,
    verdict,
)
from settings import Settings

LEARNED = {"rl_updates": 3, "clm_cycles": 1, "promotions": 1, "retirements": 7}


def panel(pnl: list[float], n: list[int] | None = None) -> DailyPanel:
    trades = np.array(n if n is not None else [1] * len(pnl))
    return DailyPanel(np.array(pnl, dtype=np.float64), trades, np.array([int(p > 0) for p in pnl]))


def test_a_consistent_gain_is_significant_and_noise_is_not() -> None:
    rng = np.random.default_rng(0)
    off = panel(list(rng.normal(0, 10, 20)))
    gain = panel(list(off.pnl + 5 + rng.normal(0, 1, 20)))
    rows = {r.metric: r for r in compare(off, gain, 100_000.0)}
    pnl = rows["net_pnl"]
    assert pnl.diff == pytest.approx(gain.pnl.sum() - off.pnl.sum())
    assert pnl.low > 0 and pnl.significant == 1  # +5 a day, every day
    assert verdict(list(rows.values()), LEARNED, 0.95).startswith(
        "Learning on earned more than learning off, significant at 95%"
    )
    noise = panel(list(off.pnl + rng.normal(0, 10, 20)))
    rows = {r.metric: r for r in compare(off, noise, 100_000.0)}
    assert rows["net_pnl"].low < 0 < rows["net_pnl"].high
    assert verdict(list(rows.values()), LEARNED, 0.95).startswith(
        "No significant difference in net PnL at 95%"
    )


def test_intervals_are_paired_by_day() -> None:
    """A common daily swing cancels: the same gain on wildly different days is significant."""
    swing = [300.0, -250.0, 120.0, -400.0, 90.0, 220.0, -180.0, 60.0]
    rows = {r.metric: r for r in compare(panel(swing), panel([x + 2 for x in swing]), 100_000.0)}
    assert rows["net_pnl"].low == pytest.approx(16.0) == rows["net_pnl"].high


def test_too_few_days_give_no_interval_and_say_so() -> None:
    rows = compare(panel([1.0] * (MIN_DAYS - 1)), panel([3.0] * (MIN_DAYS - 1)), 100_000.0)
    assert all(math.isnan(r.low) and math.isnan(r.high) for r in rows)
    assert verdict(rows, LEARNED, 0.95).startswith("Too few days of market data")


def test_nothing_learned_is_said_plainly() -> None:
    rows = compare(panel([1.0] * 6), panel([1.0] * 6), 100_000.0)
    text = verdict(rows, dict.fromkeys(LEARNED, 0), 0.95)
    assert "Nothing it learned changed a decision" in text
    sized = verdict(rows, LEARNED | {"promotions": 0}, 0.95, same_trades=True)
    assert "only the position sizes" in sized


def test_split_keeps_the_header_and_cuts_at_the_time(sample_ticks: Path, tmp_path: Path) -> None:
    until = datetime(2014, 5, 7, tzinfo=UTC)
    train, replay, days = split_ticks([sample_ticks], until, tmp_path)
    with gzip.open(sample_ticks, "rt") as f:
        header, *lines = f.readlines()
    with gzip.open(train[0], "rt") as a, gzip.open(replay[0], "rt") as b:
        head_a, *rows_a = a.readlines()
        head_b, *rows_b = b.readlines()
    assert head_a == head_b == header
    assert rows_a + rows_b == lines  # nothing lost, nothing reordered
    assert rows_a[-1] < "2014-05-07" <= rows_b[0]
    assert days == [int(until.timestamp() * 1000) // 86_400_000]
    with pytest.raises(ValueError, match="nothing to replay"):
        split_ticks([sample_ticks], datetime(2015, 1, 1, tzinfo=UTC), tmp_path / "x")


def test_the_report_names_the_settings_that_shape_both_arms() -> None:
    s = Settings.from_env(
        {"QT_RL_V3_UPDATE_INTERVAL": "20", "QT_HOME": "/elsewhere", "QT_LEARNING": "false"}
    )
    assert changed_settings(s) == {"QT_RL_V3_UPDATE_INTERVAL": "20"}


def test_a_whole_evaluation_of_the_sample(
    settings: Settings, sample_ticks: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Day one trains, day two is replayed with learning off and on: both arms trade the
    same ticks, only the learning arm learns, and the result is stored."""
    for k, v in {"QT_RL_V3_UPDATE_INTERVAL": "6", "QT_CLM_ENABLED": "false"}.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env(home=tmp_path)
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        e = run_evaluation(
            str(sample_ticks), datetime(2014, 5, 7, tzinfo=UTC), s, quick=True, log=out
        )
    text = e.render()
    assert "learning ablation" in text and e.verdict in text
    assert e.settings == {"QT_RL_V3_UPDATE_INTERVAL": "6", "QT_CLM_ENABLED": "False"}
    assert e.learned["off"]["rl_updates"] == 0 < e.learned["on"]["rl_updates"]
    rows = {r.metric: r for r in e.rows}
    assert rows["trades"].off > 5 and rows["trades"].on > 5
    assert e.verdict.startswith("Too few days")  # one day replayed: no interval, said so
    store_evaluation(e, settings)
    from storage.store import open_store

    store = open_store(settings)
    try:
        stored = store.query("analytics/evaluations")
    finally:
        store.close()
    assert {r["metric"] for r in stored} >= {"net_pnl", "rl_updates"}
    assert all(r["evaluation_id"] == e.evaluation_id for r in stored)

"""Triggers: event-time clocks over several periods, jumps, recovery; manual requests; perf rule."""

from __future__ import annotations

import doctest
import json
import threading
from pathlib import Path

import pytest

import learning.triggers
from learning.triggers import (
    Check,
    RetrainRequests,
    Trigger,
    TriggerConfig,
    TriggerSchedule,
    performance_degraded,
)
from settings import Settings

H = 3_600_000
T0 = 1_399_334_400_000  # 2014-05-06T00:00Z, the bundled sample's first day
BAR = 60_000


def _replay(
    schedule: TriggerSchedule, start: int, end: int, step: int = BAR
) -> dict[Check, list[float]]:
    """Feed bar-close event times; when each check fired, in hours after ``T0``."""
    fired: dict[Check, list[float]] = {c: [] for c in Check}
    for t in range(start, end + 1, step):
        for check in schedule.due(t):
            fired[check].append((t - T0) / H)
    return fired


def test_doctests() -> None:
    result = doctest.testmod(learning.triggers)
    assert result.attempted >= 8 and result.failed == 0


def test_defaults_are_the_audits() -> None:
    cfg = TriggerConfig.from_settings(Settings.from_env({}))
    assert cfg == TriggerConfig(168.0, 24.0, 6.0)
    assert cfg.period_ms(Check.TIME) == 168 * H
    assert {t.value for t in Trigger} == {"time", "drift", "performance", "manual"}
    shrunk = Settings.from_env({"QT_CLM_DRIFT_HOURS": "2", "QT_CLM_RETRAIN_HOURS": "0.5"})
    assert TriggerConfig.from_settings(shrunk).period_ms(Check.DRIFT) == 2 * H
    assert TriggerConfig.from_settings(shrunk).period_ms(Check.TIME) == 30 * 60_000


def test_events_over_several_periods_fire_at_the_right_event_times() -> None:
    s = TriggerSchedule(TriggerConfig(retrain_hours=48, drift_hours=24, perf_hours=6))
    fired = _replay(s, T0, T0 + 100 * H)  # 100 hours of one-minute bars
    assert fired[Check.PERFORMANCE] == [6.0 * k for k in range(1, 17)]
    assert fired[Check.DRIFT] == [24.0, 48.0, 72.0, 96.0]
    assert fired[Check.TIME] == [48.0, 96.0]  # no cycle recorded: stays on its grid


def test_first_event_starts_the_clocks_and_off_grid_events_fire_at_the_first_bar_after() -> None:
    s = TriggerSchedule(TriggerConfig(retrain_hours=0, drift_hours=1, perf_hours=0))
    start = T0 + 7 * BAR + 17  # not on a bar boundary
    assert s.due(start) == []
    assert s.next_due(Check.DRIFT) == start + H
    assert s.next_due(Check.TIME) is None and s.next_due(Check.PERFORMANCE) is None  # off
    fired = _replay(s, T0 + 8 * BAR, T0 + 3 * H)
    # due at start + k hours; the bar clock crosses it at the next whole minute
    assert fired[Check.DRIFT] == [(8 * BAR + k * H) / H for k in (1, 2)]
    assert fired[Check.TIME] == fired[Check.PERFORMANCE] == []


def test_a_jump_over_several_periods_fires_each_check_once() -> None:
    s = TriggerSchedule(TriggerConfig(retrain_hours=48, drift_hours=24, perf_hours=6))
    s.due(T0)
    assert s.due(T0 + 5 * H) == []
    assert s.due(T0 + 24 * 10 * H + 1) == [Check.TIME, Check.DRIFT, Check.PERFORMANCE]
    assert s.due(T0 + 24 * 10 * H + 2) == []  # not once per missed period
    # the grid keeps its phase: next due is the first grid point after the jump
    assert s.next_due(Check.DRIFT) == T0 + 24 * 11 * H
    assert s.next_due(Check.PERFORMANCE) == T0 + 6 * 41 * H
    assert s.next_due(Check.TIME) == T0 + 48 * 6 * H


def test_event_time_going_backwards_fires_nothing() -> None:
    s = TriggerSchedule(TriggerConfig(retrain_hours=48, drift_hours=24, perf_hours=6))
    s.due(T0)
    assert s.due(T0 + 24 * H) == [Check.DRIFT, Check.PERFORMANCE]
    assert s.due(T0 + 23 * H) == []
    assert s.due(T0 + 24 * H) == []


def test_record_cycle_restarts_the_time_trigger_only() -> None:
    s = TriggerSchedule(TriggerConfig(retrain_hours=48, drift_hours=24, perf_hours=0))
    s.due(T0)
    s.record_cycle(T0 + 30 * H)  # e.g. a drift or manual cycle
    assert s.last_cycle_ms == T0 + 30 * H
    fired = _replay(s, T0, T0 + 130 * H)
    assert fired[Check.TIME] == [78.0, 126.0]
    assert fired[Check.DRIFT] == [24.0, 48.0, 72.0, 96.0, 120.0]


def test_record_cycle_before_the_first_event() -> None:
    s = TriggerSchedule(TriggerConfig(retrain_hours=10, drift_hours=24, perf_hours=0))
    s.record_cycle(T0 - 5 * H)  # the production model was trained before the replay starts
    assert s.due(T0) == []
    assert s.due(T0 + 5 * H) == [Check.TIME]


def test_snapshot_restore_continues_exactly() -> None:
    cfg = TriggerConfig(retrain_hours=48, drift_hours=24, perf_hours=6)
    whole = TriggerSchedule(cfg)
    reference = _replay(whole, T0, T0 + 100 * H)

    first = TriggerSchedule(cfg)
    part1 = _replay(first, T0, T0 + 50 * H)
    first.record_cycle(T0 + 50 * H)  # a cycle recorded before the snapshot must survive
    state = json.loads(json.dumps(first.snapshot()))  # JSON-able, as a recovery store keeps it
    resumed = TriggerSchedule.restore(cfg, state)
    assert resumed.snapshot() == first.snapshot()
    part2 = _replay(resumed, T0 + 50 * H + BAR, T0 + 100 * H)
    assert {c: part1[c] + part2[c] for c in Check} == {
        Check.PERFORMANCE: reference[Check.PERFORMANCE],
        Check.DRIFT: reference[Check.DRIFT],
        Check.TIME: [48.0, 98.0],  # the restored cycle moved the time trigger from 96 h
    }


# --- manual requests ------------------------------------------------------------------------
def test_submit_then_claim_once(tmp_path: Path) -> None:
    req = RetrainRequests(tmp_path)
    path = req.submit("new data vendor")
    assert path.is_file() and path.parent == tmp_path / "requests"
    assert [r["reason"] for r in req.pending()] == ["new data vendor"]
    taken = req.claim()
    assert len(taken) == 1
    assert taken[0]["trigger"] == "manual" and taken[0]["reason"] == "new data vendor"
    assert taken[0]["id"] == path.stem and "claimed_at" in taken[0]
    assert req.claim() == [] and req.pending() == []
    # another instance on the same directory (a restarted flow) does not take it again
    assert RetrainRequests(tmp_path).claim() == []


def test_submit_is_idempotent_per_request_id(tmp_path: Path) -> None:
    req = RetrainRequests(tmp_path)
    first = req.submit("weekly review", request_id="review-2014-05-06")
    again = req.submit("retried CLI call", request_id="review-2014-05-06")
    assert first == again
    assert [r["reason"] for r in req.claim()] == ["weekly review"]
    req.submit("retried after the claim", request_id="review-2014-05-06")
    assert req.claim() == []
    assert not [p for p in (tmp_path / "requests").iterdir() if p.name.startswith(".")]


def test_requests_are_claimed_in_submission_order(tmp_path: Path) -> None:
    req = RetrainRequests(tmp_path)
    for reason in ("a", "b", "c"):
        req.submit(reason)
    assert [r["reason"] for r in req.claim()] == ["a", "b", "c"]


def test_concurrent_claims_never_take_the_same_request(tmp_path: Path) -> None:
    submitter = RetrainRequests(tmp_path)
    ids = {submitter.submit(f"r{i}").stem for i in range(40)}
    results: list[list[dict]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def worker(k: int) -> None:
        claimer = RetrainRequests(tmp_path)
        barrier.wait()
        results[k] = claimer.claim()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [r["id"] for rs in results for r in rs]
    assert sorted(claimed) == sorted(ids)  # each exactly once


def test_bad_request_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="request id"):
        RetrainRequests(tmp_path).submit("x", request_id="../escape")


# --- performance rule -----------------------------------------------------------------------
def test_performance_rule() -> None:
    # validation hit rate 0.55, tolerance 0.05: fires below a 0.50 win rate
    assert performance_degraded(9, 20, 0.55) is True  # 0.45
    assert performance_degraded(10, 20, 0.55) is False  # 0.50: not below
    assert performance_degraded(14, 20, 0.55) is False
    assert performance_degraded(0, 9, 0.55) is False  # fewer than min_trades
    assert performance_degraded(0, 10, 0.55) is True
    assert performance_degraded(0, 3, 0.55, min_trades=3) is True
    assert performance_degraded(5, 10, 0.55, tolerance=0.0) is True
    assert performance_degraded(0, 0, 0.55) is False
    # exactly at the limit, where 0.66 - 0.06 rounds up to 0.6000000000000001
    assert performance_degraded(6, 10, 0.66, tolerance=0.06) is False
    assert performance_degraded(59, 100, 0.66, tolerance=0.06) is True
    with pytest.raises(ValueError):
        performance_degraded(11, 10, 0.55)
    with pytest.raises(ValueError):
        performance_degraded(1, 10, 0.55, min_trades=0)

"""The bias window: the audit's own check of it, modes and bounds (its order across
symbols and workers is the decision engine's: tests/operators/test_engine.py)."""

from __future__ import annotations

import pytest

from operators.supervisor import BiasWindow, Supervisor, SupervisorConfig
from schemas.decisions import SupervisorMode
from schemas.features import FeatureVector
from schemas.signals import Action, Consensus, Signal
from schemas.timeutil import from_ms

B, S, H = Action.BUY, Action.SELL, Action.HOLD


def signal(i: int, action: Action, symbol: str = "X") -> tuple[Signal, FeatureVector]:
    ts = from_ms((i + 1) * 60_000)
    sig = Signal(
        symbol,
        ts,
        from_ms(i * 60_000),
        action,
        0.8,
        Consensus.STRONG,
        0.8,
        0.0,
        0.01,
        False,
        True,
        "fs",
        (),
        (),
    )
    return sig, FeatureVector(symbol, ts, from_ms(i * 60_000), "fs", True, 1.0, {}, ())


def run(mode: SupervisorMode, actions: list[Action]) -> list:
    sup = Supervisor(SupervisorConfig(mode=mode))
    return [sup.decide("X", i, *signal(i, a)) for i, a in enumerate(actions)]


def test_audit_check_biased_signals_are_blocked_after_20_samples_over_70_percent() -> None:
    """The audit's check (docs/audit.md): biased signals are blocked at > 70% bias."""
    actions = [B] * 30  # every signal a BUY: 100% long bias
    decisions = run(SupervisorMode.ENFORCED, actions)
    allowed = [d.verdict.allowed for d in decisions]
    assert allowed[:19] == [True] * 19  # fewer than 20 samples: no judgement yet
    assert allowed[19:] == [False] * 11  # the 20th BUY sees a 100% BUY window
    assert all(not d.tradable for d in decisions[19:])
    v = decisions[19].verdict
    assert (v.window_size, v.buy_share, v.biased) == (20, 1.0, True)
    assert v.reason.startswith("blocked: excessive LONG bias")


def test_blocking_starts_once_the_share_passes_the_threshold() -> None:
    # 14 BUY + 6 SELL = 70% BUY at 20 samples: not above 0.70; the next BUY makes 71.4%
    actions = [B] * 14 + [S] * 6 + [B]
    decisions = run(SupervisorMode.ENFORCED, actions)
    assert [d.verdict.allowed for d in decisions] == [True] * 20 + [False]
    assert decisions[20].verdict.buy_share == pytest.approx(15 / 21)
    # a SELL is not blocked by a LONG bias
    more = Supervisor(SupervisorConfig())
    for i, a in enumerate([B] * 25):
        more.decide("X", i, *signal(i, a))
    assert more.decide("X", 99, *signal(99, S)).verdict.allowed


def test_observe_records_but_does_not_block_and_off_ignores() -> None:
    observed = run(SupervisorMode.OBSERVE, [S] * 25)
    assert all(d.verdict.allowed for d in observed)
    assert [d.verdict.biased for d in observed] == [False] * 19 + [True] * 6
    assert observed[-1].verdict.reason.startswith("observed (not blocked): excessive SHORT")
    off = run(SupervisorMode.OFF, [S] * 25)
    assert all(d.verdict is None and d.tradable for d in off)


def test_hold_signals_are_not_judged() -> None:
    decisions = run(SupervisorMode.ENFORCED, [H] * 30 + [B])
    assert all(d.verdict is None for d in decisions[:30])
    assert decisions[30].verdict.window_size == 1


def test_the_window_is_bounded() -> None:
    w = BiasWindow(size=50, min_samples=20, threshold=0.7)
    for _ in range(1_000):
        w.judge(B)
    assert len(w.actions) == 50
    for _ in range(40):  # old BUYs fall out: 10 BUY + 40 SELL
        *_, n = w.judge(S)
    assert (w.buys, w.sells, n) == (10, 40, 50)
    biased, _, buy, sell, _ = w.judge(S)  # one more BUY falls out
    assert biased and (buy, sell) == (pytest.approx(9 / 50), pytest.approx(41 / 50))

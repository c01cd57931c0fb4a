"""SizingEnv: the live execution code replaying real ticks, one order per step.

The execution rules themselves (fills, exits, PnL) are tested in tests/operators/
test_portfolio.py; here: the environment's book-keeping, its rewards, and that its states are
the portfolio's (tests/rl/test_parity.py compares them with a live replay).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

from models.dataset import History
from rl.reward import trade_reward
from rl.state import map_action
from schemas.signals import Action
from schemas.timeutil import to_ms
from schemas.trades import ExitReason, Sizing
from settings import SAMPLE_TICKS, Settings
from training.env import EnvConfig, SignalEvent, SizingEnv, momentum_signals
from training.history import history_from_ticks

SETTINGS = Settings.from_env({})


@pytest.fixture(scope="module")
def sample_history() -> History:
    return history_from_ticks(str(SAMPLE_TICKS), SETTINGS, keep_ticks=True)


@pytest.fixture(scope="module")
def signals(sample_history: History) -> list[SignalEvent]:
    h = sample_history
    return [s for sym in h.symbols for s in momentum_signals(sym, h.vectors[sym], 1.5)]


def test_hold_is_not_a_signal() -> None:
    with pytest.raises(ValueError):
        SignalEvent("X", 0, Action.HOLD, 0.5, 0.01)


def test_the_env_needs_ticks(sample_history: History, signals: list[SignalEvent]) -> None:
    bare = History(bars=sample_history.bars, vectors=sample_history.vectors)
    with pytest.raises(ValueError, match="keep_ticks"):
        SizingEnv(bare, signals)


def test_momentum_signals_follow_documented_rule(sample_history: History) -> None:
    sym = sample_history.symbols[0]
    vectors = sample_history.vectors[sym]
    sigs = momentum_signals(sym, vectors, min_strength=1.5)
    assert len(sigs) > 50
    for s in sigs:
        v = vectors[s.bar_index]
        z = v.values["ret_5"] / (v.values["vol_ewma"] * math.sqrt(5))
        assert v.warm and abs(z) >= 1.5
        assert s.side == (Action.BUY if z > 0 else Action.SELL)
        assert s.confidence == pytest.approx(abs(z) / (1 + abs(z)))


def test_real_sample_episode_books_consistently(
    sample_history: History, signals: list[SignalEvent]
) -> None:
    cfg = EnvConfig.from_settings(SETTINGS)
    assert cfg.execution.equity == SETTINGS.subaccount_equity  # the live flow's split
    env = SizingEnv(sample_history, signals, cfg)
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(1)
    rewards, done = [], False
    while not done:
        state = env.request.state
        assert obs.tolist() == state.to_array().tolist()
        action = rng.uniform(-1.2, 1.2, 3).astype(np.float32)
        obs, r, done, _, info = env.step(action)
        assert env.observation_space.contains(obs)
        opened, closed = info["opened"], info["closed"]
        assert opened.entry.sizing is Sizing.RL
        size, tp, _, _ = map_action(action.astype(np.float64), state.equity_usd, env.bounds)
        assert opened.size_usd == size and opened.entry.rl.tp_pct == tp
        assert r == trade_reward(opened, closed, cfg.weights)
        rewards.append(r)
    assert len(env.trades) > 20 and all(math.isfinite(r) for r in rewards)
    by_symbol: dict[str, list] = {}
    for opened, closed in env.trades:
        by_symbol.setdefault(opened.symbol, []).append((opened, closed))
    for sym, trades in by_symbol.items():
        account = env.portfolio.books[sym].account
        booked = math.fsum(c.net_pnl for _, c in trades)
        assert account.equity == pytest.approx(cfg.execution.equity + booked, rel=1e-12)
        for (_, prev), (nxt, _) in itertools.pairwise(trades):
            assert to_ms(nxt.entry_ts) >= to_ms(prev.exit_ts)  # one position per symbol
    assert {c.exit_reason for _, c in env.trades} <= set(ExitReason)


def test_previewed_close_is_the_close_that_happens(
    sample_history: History, signals: list[SignalEvent]
) -> None:
    """The reward's close, found ahead on a copy, is the one the replay then books."""
    env = SizingEnv(sample_history, signals, EnvConfig.from_settings(SETTINGS))
    env.reset(seed=0)
    done = False
    while not done:
        _, _, done, _, _ = env.step(np.zeros(3, dtype=np.float32))
    previewed = {o.trade_id: c for o, c in env.trades}
    # replay the same orders through a portfolio that records what actually closed them
    from operators.portfolio import EventKind

    env.reset(seed=0)
    booked = {}
    pf, request = env.portfolio, env.request
    while request is not None:
        opened = pf.complete_fill(request, env.step.__self__ and _sized(env, request))
        pf.done(env._fill)
        env.request = request = None
        while (ev := pf.pop(math.inf)) is not None:
            if ev.kind is EventKind.DECIDE:
                bar = pf.bar(ev)
                pf.apply(ev, bar, env.decide(ev.symbol, bar.bar_end_ms))
            elif ev.kind is EventKind.FILL:
                closes, request = pf.begin_fill(ev)
                booked.update({c.event.trade_id: c.event for c in closes})
                if request is not None:
                    env._fill = ev
                    break
            else:
                booked.update({c.event.trade_id: c.event for c in pf.exit(ev)})
            pf.done(ev)
        assert opened
    booked.update({c.event.trade_id: c.event for c in pf.finish()})
    assert booked.keys() == previewed.keys() and len(booked) > 20
    for trade_id, closed in booked.items():
        # all of it, except the exit state's exposure: that is the whole portfolio's at the
        # close, which a preview of one symbol's future cannot know (the reward does not use it)
        seen = previewed[trade_id]
        assert (
            seen.exit_state[:5] + seen.exit_state[6:]
            == closed.exit_state[:5] + closed.exit_state[6:]
        )
        assert replace(seen, exit_state=()) == replace(closed, exit_state=())


def _sized(env: SizingEnv, request):
    from operators.sizing import sized_from
    from training.env import env_decision

    state = request.state
    d = env_decision(state.to_array(), np.zeros(3), env.bounds, state.equity_usd)
    return sized_from(d, env.config.sizing, env.bounds, state.equity_usd)


def test_env_passes_sb3_env_checker(sample_history: History, signals: list[SignalEvent]) -> None:
    check_env(
        SizingEnv(sample_history, signals[:40], EnvConfig.from_settings(SETTINGS)), warn=False
    )


def test_a_non_finite_action_places_no_order(
    sample_history: History, signals: list[SignalEvent]
) -> None:
    """As live: an order the policy cannot size finitely is skipped and counted."""
    env = SizingEnv(sample_history, signals, EnvConfig.from_settings(SETTINGS))
    env.reset()
    symbol = env.request.symbol
    _, r, _, _, info = env.step(np.array([np.nan, 0.0, 0.0], dtype=np.float32))
    assert "opened" not in info and r == 0.0
    assert env.portfolio.books[symbol].counts["orders_unsized"] == 1

"""SizingEnv: trade simulation on hand-built bar paths, book-keeping, and a real-data episode."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

from models.dataset import History, history_from_ticks
from rl.env import EnvConfig, SignalEvent, SizingEnv, momentum_signals, simulate_trade
from rl.reward import RewardWeights, reward_terms
from rl.state import ActionBounds, map_action
from schemas.bars import Bar
from schemas.signals import Action
from schemas.timeutil import from_ms
from settings import SAMPLE_TICKS, Settings

NAN = float("nan")


def bar(i: int, o: float, h: float, lo: float, c: float, symbol: str = "X") -> Bar:
    return Bar(symbol, 60, from_ms(i * 60_000), from_ms((i + 1) * 60_000), o, h, lo, c,
               0.0, 1, c, 0.0, 0.0, 0, NAN, NAN)


def path(rows: list[tuple[float, float, float, float]], symbol: str = "X") -> list[Bar]:
    return [bar(i, *r, symbol=symbol) for i, r in enumerate(rows)]


FLAT = (100.0, 100.0, 100.0, 100.0)


def test_long_take_profit_exact_arithmetic() -> None:
    # signal at bar 0; entry at bar 1 open 100 (+1 bp slippage) -> 100.01; TP 1% -> 101.0101
    bars = path([FLAT, (100.0, 100.5, 99.9, 100.2), (100.2, 101.2, 100.1, 101.1), FLAT])
    t = simulate_trade(bars, 0, 1.0, 1_000.0, tp_pct=1.0, sl_pct=0.5, fee_bps=2.0,
                       slippage_bps=1.0, max_holding_bars=3)
    assert t is not None and t.exit_reason == "tp" and (t.entry_index, t.exit_index) == (1, 2)
    entry = 100.0 * 1.0001
    exit_fill = entry * 1.01 * (1 - 0.0001)
    qty = 1_000.0 / entry
    fees = (1_000.0 + qty * exit_fill) * 0.0002
    assert t.entry_price == pytest.approx(entry, rel=1e-15)
    assert t.exit_price == pytest.approx(exit_fill, rel=1e-15)
    assert t.fees == pytest.approx(fees, rel=1e-12)
    assert t.gross_pnl == pytest.approx(qty * (exit_fill - entry), rel=1e-12)
    assert t.net_pnl == pytest.approx(t.gross_pnl - fees, rel=1e-12)
    assert t.entry_ms == 60_000 and t.exit_ms == 3 * 60_000


def test_long_stop_loss_and_gap_through_fills_at_open() -> None:
    bars = path([FLAT, (100.0, 100.1, 99.8, 99.9), (99.9, 100.0, 99.4, 99.5), FLAT])
    t = simulate_trade(bars, 0, 1.0, 1_000.0, 2.0, 0.5, 0.0, 0.0, 5)
    assert t is not None and t.exit_reason == "sl" and t.exit_index == 2
    assert t.exit_price == pytest.approx(99.5)
    assert t.net_pnl == pytest.approx(-5.0)
    gap = path([FLAT, FLAT, (98.0, 98.5, 97.0, 98.0)])
    t = simulate_trade(gap, 0, 1.0, 1_000.0, 2.0, 0.5, 0.0, 0.0, 5)
    assert t is not None and t.exit_reason == "sl" and t.exit_price == pytest.approx(98.0)


def test_both_levels_in_one_bar_assume_stop_first() -> None:
    bars = path([FLAT, FLAT, (100.0, 102.0, 98.0, 100.0)])
    for d, worse in ((1.0, 99.0), (-1.0, 101.0)):
        t = simulate_trade(bars, 0, d, 1_000.0, 1.0, 1.0, 0.0, 0.0, 5)
        assert t is not None and t.exit_reason == "sl" and t.exit_price == pytest.approx(worse)
        assert t.net_pnl < 0


def test_short_take_profit_and_stop() -> None:
    down = path([FLAT, FLAT, (100.0, 100.0, 99.0, 99.2)])
    t = simulate_trade(down, 0, -1.0, 1_000.0, 0.5, 0.5, 0.0, 0.0, 5)
    assert t is not None and t.exit_reason == "tp" and t.exit_price == pytest.approx(99.5)
    assert t.net_pnl == pytest.approx(5.0)
    up = path([FLAT, FLAT, (100.0, 100.7, 100.0, 100.6)])
    t = simulate_trade(up, 0, -1.0, 1_000.0, 0.5, 0.5, 0.0, 0.0, 5)
    assert t is not None and t.exit_reason == "sl" and t.net_pnl == pytest.approx(-5.0)


def test_max_holding_exit_at_close_with_exact_costs() -> None:
    bars = path([FLAT, FLAT, (100.0, 100.2, 99.9, 100.1), (100.1, 100.3, 100.0, 100.25),
                 (100.25, 101.0, 100.2, 100.9)])
    t = simulate_trade(bars, 0, -1.0, 2_000.0, 2.0, 1.0, fee_bps=1.0, slippage_bps=0.5,
                       max_holding_bars=3)
    assert t is not None and t.exit_reason == "time" and t.exit_index == 3
    entry = 100.0 * (1 - 0.00005)        # a sell fills lower
    exit_fill = 100.25 * (1 + 0.00005)   # buying back fills higher
    qty = 2_000.0 / entry
    fees = (2_000.0 + qty * exit_fill) * 0.0001
    assert t.net_pnl == pytest.approx(-qty * (exit_fill - entry) - fees, rel=1e-12)
    # the data ends before the holding time: close at the last bar
    t = simulate_trade(bars[:3], 0, 1.0, 2_000.0, 2.0, 1.0, 0.0, 0.0, 10)
    assert t is not None and t.exit_reason == "end" and t.exit_price == pytest.approx(100.1)
    assert simulate_trade(bars, 4, 1.0, 2_000.0, 2.0, 1.0, 0.0, 0.0, 3) is None


def test_hold_is_not_a_signal() -> None:
    with pytest.raises(ValueError):
        SignalEvent("X", 0, Action.HOLD, 0.5, 0.01)


def _two_symbol_env(cfg: EnvConfig) -> SizingEnv:
    a = path([FLAT] * 8, "A")
    b = path([FLAT, FLAT, (100.0, 100.0, 99.0, 99.0), FLAT, FLAT, FLAT, FLAT, FLAT], "B")
    sigs = [
        SignalEvent("A", 0, Action.BUY, 0.9, 0.01),    # A: held bars 1..3 (time exit)
        SignalEvent("B", 1, Action.SELL, 0.6, 0.02),   # B: TP at bar 2
        SignalEvent("A", 2, Action.SELL, 0.8, 0.01),   # A still open: skipped
        SignalEvent("A", 3, Action.BUY, 0.7, 0.01),    # A closed at bar 3's close: taken
        SignalEvent("B", 7, Action.BUY, 0.5, 0.02),    # last bar: cannot enter, skipped
    ]
    return SizingEnv({"A": a, "B": b}, sigs, cfg)


def test_env_steps_book_skip_and_reward() -> None:
    cfg = EnvConfig(start_equity=10_000.0, fee_bps=1.0, slippage_bps=0.0, max_holding_bars=3,
                    weights=RewardWeights(risk=0.1, drawdown=2.0, scale=100.0))
    env = _two_symbol_env(cfg)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["signal"].symbol == "A"
    assert obs.tolist() == pytest.approx([1.0, 0.01, 0.5, 0.0, 0.0, 0.0, 0.9, 1.0])

    action = np.array([1.0, 0.0, 0.0], dtype=np.float32)  # 25% of equity
    obs, r, term, trunc, info = env.step(action)
    trade = info["trade"]
    assert not term and not trunc and trade.exit_reason == "time" and trade.exit_index == 3
    fees = 2_500.0 * 2 * 0.0001
    assert trade.net_pnl == pytest.approx(-fees)
    expected = reward_terms(net_pnl=-fees, equity_at_entry=10_000.0, size_frac=0.25,
                            vol_daily=0.01, drawdown_before=0.0,
                            drawdown_after=fees / 10_000.0, weights=cfg.weights).total
    assert r == pytest.approx(expected)
    # B's signal: A's 2,500 is open at B's decision time; total equity excludes A's unclosed PnL
    assert info["signal"].symbol == "A" and obs[5] == pytest.approx(2_500.0 / 20_000.0)
    assert obs.tolist()[6:] == pytest.approx([0.6, -1.0])

    obs, r, term, _, info = env.step(np.array([-1.0, -1.0, -1.0], dtype=np.float32))
    trade = info["trade"]
    assert trade.symbol == "B" and trade.exit_reason == "tp" and trade.notional == 100.0
    assert trade.net_pnl > 0 and r == pytest.approx(
        100.0 * (trade.net_pnl / 10_000.0 - 0.1 * 0.01 * 0.02))  # a small win pays its risk
    # next: A at bar 3 (A at bar 2 was skipped); A's equity and record include trade 1
    assert env.skipped == 1 and env.signals[env._pos].bar_index == 3
    assert obs[0] == pytest.approx((10_000.0 - fees) / 10_000.0)
    assert obs[2] == 0.0 and obs[4] == pytest.approx(fees / 10_000.0)

    obs, r, term, _, info = env.step(np.array([0.0, 0.0, 0.0], dtype=np.float32))
    assert term and env.skipped == 2 and len(env.trades) == 3
    assert env.observation_space.contains(obs)
    with pytest.raises(RuntimeError):
        env.step(np.zeros(3, dtype=np.float32))
    # reset starts over with fresh sub-accounts
    obs2, _ = env.reset()
    assert obs2[0] == 1.0 and env.skipped == 0 and env.trades == []


def test_degenerate_action_trades_minimum_size() -> None:
    env = _two_symbol_env(EnvConfig(start_equity=10_000.0, max_holding_bars=3))
    env.reset()
    _, r, _, _, info = env.step(np.array([np.nan, 0.0, 0.0], dtype=np.float32))
    assert info["degenerate"] and info["trade"].notional == pytest.approx(100.0)
    assert math.isfinite(r)


def test_env_passes_sb3_env_checker() -> None:
    env = _two_symbol_env(EnvConfig(start_equity=10_000.0, max_holding_bars=3))
    check_env(env, warn=False)


@pytest.fixture(scope="module")
def sample_history() -> History:
    return history_from_ticks(str(SAMPLE_TICKS), Settings.from_env({}))


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


def test_real_sample_episode_books_consistently(sample_history: History) -> None:
    settings = Settings.from_env({})
    h = sample_history
    sigs = [s for sym in h.symbols for s in momentum_signals(sym, h.vectors[sym], 1.5)]
    cfg = EnvConfig.from_settings(settings, len(h.symbols))
    assert cfg.start_equity == settings.start_equity / 2 and cfg.max_holding_bars == 60
    env = SizingEnv(h.bars, sigs, cfg)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    rewards, done = [], False
    while not done:
        obs, r, done, _, _ = env.step(rng.uniform(-1.2, 1.2, 3).astype(np.float32))
        assert env.observation_space.contains(obs)
        rewards.append(r)
    assert len(env.trades) + env.skipped == len(sigs)
    assert len(env.trades) > 20 and all(math.isfinite(r) for r in rewards)
    for sym in h.symbols:
        trades = [t for t in env.trades if t.symbol == sym]
        booked = sum(t.net_pnl for t in trades)
        assert env.accounts[sym].equity == pytest.approx(cfg.start_equity + booked, rel=1e-12)
        # one open position per symbol: each trade enters after the previous one exited
        for prev, nxt in itertools.pairwise(trades):
            assert nxt.entry_ms >= prev.exit_ms
        for t in trades:
            assert t.notional <= cfg.bounds.max_frac * cfg.start_equity * 1.1
    assert {t.exit_reason for t in env.trades} <= {"tp", "sl", "time", "end"}


def test_map_action_and_env_agree_on_size() -> None:
    env = _two_symbol_env(EnvConfig(start_equity=10_000.0, max_holding_bars=3,
                                    bounds=ActionBounds(min_frac=0.05, max_frac=0.1)))
    env.reset()
    a = np.array([0.3, -0.2, 0.4], dtype=np.float32)
    _, _, _, _, info = env.step(a)
    size, tp, sl, _ = map_action(a.astype(np.float64), 10_000.0, env.bounds)
    assert (info["position_size_usd"], info["tp_pct"], info["sl_pct"]) == (size, tp, sl)
    assert info["trade"].notional == size

"""RL state vector, action mapping, sub-account book-keeping and the reward's terms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rl.reward import RewardWeights, reward, reward_terms
from rl.state import (
    NAMES,
    STATE_HIGH,
    STATE_LOW,
    ActionBounds,
    RLState,
    SizingDecision,
    SubAccount,
    direction_of,
    map_action,
)
from schemas.signals import Action

B = ActionBounds()
unit = st.floats(-1.0, 1.0, allow_nan=False)


def test_state_array_follows_names_and_is_float32() -> None:
    s = RLState(1.1, 0.004, 0.6, -0.02, 0.05, 0.3, 0.7, -1.0, equity_usd=11_000.0)
    arr = s.to_array()
    assert arr.dtype == np.float32 and arr.shape == (len(NAMES),) == (8,)
    assert [float(arr[i]) for i in range(8)] == pytest.approx(
        [getattr(s, n) for n in NAMES], rel=1e-6
    )
    back = RLState.from_array(arr, 11_000.0)
    assert np.array_equal(back.to_array(), arr)


def test_state_nan_becomes_neutral_and_extremes_are_clipped() -> None:
    nan = float("nan")
    s = RLState(nan, nan, nan, nan, nan, nan, nan, nan, equity_usd=1.0)
    assert s.to_array().tolist() == [1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    inf = float("inf")
    hi = RLState(inf, 5.0, 2.0, 1e9, 3.0, inf, 7.0, 4.0, equity_usd=1.0).to_array()
    lo = RLState(-inf, -1.0, -1.0, -1e9, -1.0, -1.0, -1.0, -4.0, equity_usd=1.0).to_array()
    assert np.array_equal(hi, STATE_HIGH) and np.array_equal(lo, STATE_LOW)


def test_direction_only_for_buy_and_sell() -> None:
    assert direction_of(Action.BUY) == 1.0 and direction_of("SELL") == -1.0
    assert direction_of(-1) == -1.0
    for bad in (Action.HOLD, 0, 0.5, True):
        with pytest.raises(ValueError):
            direction_of(bad)


def test_action_extremes_and_middle_hit_the_bounds() -> None:
    assert map_action((-1.0, -1.0, -1.0), 10_000.0, B) == (100.0, 0.05, 0.05, False)
    size, tp, sl, deg = map_action((1.0, 1.0, 1.0), 10_000.0, B)
    assert (size, tp, sl, deg) == (pytest.approx(2_500.0), 2.0, 1.0, False)
    size, tp, sl, _ = map_action((0.0, 0.0, 0.0), 10_000.0, B)
    assert size == pytest.approx(1_300.0) and tp == pytest.approx(1.025)
    assert sl == pytest.approx(0.525)
    # samples outside the box are clipped, not extrapolated
    assert map_action((7.0, -3.0, 1.5), 10_000.0, B) == map_action((1.0, -1.0, 1.0), 10_000.0, B)


@pytest.mark.parametrize(
    "raw", [(math.nan, 0.0, 0.0), (0.0, math.inf, 0.0), (0.0, 0.0, -math.inf), (0.0, 0.0)]
)
def test_degenerate_action_gives_safe_default(raw: tuple[float, ...]) -> None:
    size, tp, sl, deg = map_action(raw, 10_000.0, B)
    assert deg and size == pytest.approx(100.0)
    assert tp == pytest.approx((B.tp_min_pct + B.tp_max_pct) / 2)
    assert sl == pytest.approx((B.sl_min_pct + B.sl_max_pct) / 2)


@pytest.mark.parametrize("equity", [0.0, -5.0, math.nan])
def test_no_equity_sizes_zero(equity: float) -> None:
    size, _, _, deg = map_action((1.0, 0.0, 0.0), equity, B)
    assert deg and size == 0.0


@given(unit, unit, unit, unit)
def test_action_map_is_monotone_and_in_bounds(a: float, b: float, c: float, d: float) -> None:
    lo, hi = min(a, b), max(a, b)
    s_lo, tp_lo, sl_lo, _ = map_action((lo, lo, lo), 1_000.0, B)
    s_hi, tp_hi, sl_hi, _ = map_action((hi, hi, hi), 1_000.0, B)
    assert s_lo <= s_hi and tp_lo <= tp_hi and sl_lo <= sl_hi
    s, tp, sl, deg = map_action((c, d, a), 1_000.0, B)
    assert not deg
    assert 1_000.0 * B.min_frac - 1e-9 <= s <= 1_000.0 * B.max_frac + 1e-9
    assert B.tp_min_pct - 1e-12 <= tp <= B.tp_max_pct + 1e-12
    assert B.sl_min_pct - 1e-12 <= sl <= B.sl_max_pct + 1e-12


def test_bounds_validation_and_round_trip() -> None:
    with pytest.raises(ValueError):
        ActionBounds(min_frac=0.3, max_frac=0.2)
    with pytest.raises(ValueError):
        ActionBounds(max_frac=2.0)
    with pytest.raises(ValueError):
        ActionBounds(sl_min_pct=0.0)
    b = ActionBounds(tp_max_pct=0.5)
    assert ActionBounds.from_dict(b.to_dict()) == b


def test_decision_fractions_are_percent_over_100() -> None:
    d = SizingDecision(
        (0.0,) * 8, (0.0,) * 3, -1.0, 0.0, "ppo-ab-v0", 100.0, 0.5, 0.25, False, True
    )
    assert d.tp_frac == pytest.approx(0.005) and d.sl_frac == pytest.approx(0.0025)


def test_sub_account_tracks_equity_peak_drawdown_and_recent_trades() -> None:
    acct = SubAccount(1_000.0, window=3)
    s0 = acct.state(vol_daily=0.01, confidence=0.9, direction=Action.SELL, exposure=0.2)
    assert (s0.equity_ratio, s0.win_rate, s0.mean_pnl_pct, s0.drawdown) == (1.0, 0.5, 0.0, 0.0)
    assert s0.direction == -1.0 and s0.equity_usd == 1_000.0
    acct.close_trade(100.0, 200.0)  # +50% of notional, new peak 1100
    acct.close_trade(-110.0, 100.0)  # -110%, equity 990, drawdown 10%
    assert acct.peak == 1_100.0 and acct.drawdown == pytest.approx(0.1)
    acct.close_trade(-10.0, 100.0)  # -10%
    acct.close_trade(20.0, 100.0)  # +20%; the first trade leaves the window of 3
    s = acct.state(vol_daily=0.01, confidence=0.9, direction=Action.BUY, exposure=0.0)
    assert s.equity_ratio == pytest.approx(1.0)
    assert s.win_rate == pytest.approx(1 / 3)
    assert s.mean_pnl_pct == pytest.approx((-110.0 - 10.0 + 20.0) / 3)
    assert s.drawdown == pytest.approx(1 - 1_000.0 / 1_100.0)
    back = SubAccount.restore(acct.snapshot())
    assert back.snapshot() == acct.snapshot()
    assert back.state(vol_daily=0.01, confidence=0.9, direction=1, exposure=0.0) == s


# --------------------------------------------------------------------------------- reward
def _r(**kw: float) -> float:
    args = {
        "net_pnl": 0.0,
        "equity_at_entry": 10_000.0,
        "size_frac": 0.1,
        "vol_daily": 0.005,
        "drawdown_before": 0.0,
        "drawdown_after": 0.0,
    }
    args.update(kw)
    return reward(weights=RewardWeights(), **args)


def test_reward_formula_exact() -> None:
    w = RewardWeights(risk=0.2, drawdown=3.0, scale=10.0)
    t = reward_terms(
        net_pnl=-50.0,
        equity_at_entry=10_000.0,
        size_frac=0.2,
        vol_daily=0.01,
        drawdown_before=0.01,
        drawdown_after=0.015,
        weights=w,
    )
    assert t.pnl == pytest.approx(-0.005) and t.risk == pytest.approx(0.002)
    assert t.drawdown == pytest.approx(0.005)
    assert t.total == pytest.approx(10.0 * (-0.005 - 0.2 * 0.002 - 3.0 * 0.005))


def test_actions_beyond_the_box_cost_their_squared_excess() -> None:
    w = RewardWeights()
    inside = reward_terms(
        net_pnl=5.0,
        equity_at_entry=10_000.0,
        size_frac=0.1,
        vol_daily=0.01,
        drawdown_before=0.0,
        drawdown_after=0.0,
        weights=w,
        raw_action=(1.0, -0.3, 0.9),
    )
    outside = reward_terms(
        net_pnl=5.0,
        equity_at_entry=10_000.0,
        size_frac=0.1,
        vol_daily=0.01,
        drawdown_before=0.0,
        drawdown_after=0.0,
        weights=w,
        raw_action=(-2.5, 1.5, 0.0),
    )
    assert inside.bound == 0.0 and outside.bound == pytest.approx(1.5**2 + 0.5**2)
    assert inside.total - outside.total == pytest.approx(w.bound * (2.25 + 0.25))


def test_pnl_term_sign_and_monotonicity() -> None:
    zero_risk = {"size_frac": 0.0, "vol_daily": 0.0}
    assert _r(net_pnl=10.0, **zero_risk) > 0 > _r(net_pnl=-10.0, **zero_risk)
    assert _r(net_pnl=0.0, **zero_risk) == 0.0
    pnls = [-50.0, -1.0, 0.0, 3.0, 40.0]
    rewards = [_r(net_pnl=p) for p in pnls]
    assert rewards == sorted(rewards) and len(set(rewards)) == len(rewards)
    # the same dollars matter less to a bigger account
    assert _r(net_pnl=10.0, equity_at_entry=20_000.0) < _r(net_pnl=10.0)


def test_risk_term_penalises_size_and_volatility() -> None:
    by_size = [_r(net_pnl=5.0, size_frac=f) for f in (0.01, 0.1, 0.25)]
    by_vol = [_r(net_pnl=5.0, vol_daily=v) for v in (0.0, 0.005, 0.05)]
    assert by_size == sorted(by_size, reverse=True) and by_size[0] > by_size[-1]
    assert by_vol == sorted(by_vol, reverse=True) and by_vol[0] > by_vol[-1]
    assert _r(size_frac=0.1, vol_daily=0.01) < 0  # risk costs even a flat trade


def test_drawdown_term_only_charges_new_drawdown() -> None:
    base = _r(net_pnl=-20.0, drawdown_before=0.01, drawdown_after=0.01)
    deeper = _r(net_pnl=-20.0, drawdown_before=0.01, drawdown_after=0.02)
    deepest = _r(net_pnl=-20.0, drawdown_before=0.01, drawdown_after=0.05)
    assert base > deeper > deepest
    # recovering from a drawdown earns no bonus beyond its PnL
    assert _r(net_pnl=20.0, drawdown_before=0.05, drawdown_after=0.04) == _r(net_pnl=20.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"net_pnl": math.nan},
        {"equity_at_entry": 0.0},
        {"vol_daily": math.inf},
        {"size_frac": -0.1},
        {"drawdown_after": math.nan},
    ],
)
def test_reward_refuses_bad_inputs(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        _r(**bad)
    with pytest.raises(ValueError):
        RewardWeights(risk=-1.0)

"""Paper execution: invariants as properties over random tick paths and signal sequences.

A plain tick-by-tick reference loop, written from the documented rules, is compared with the
event-driven portfolio fed the same ticks in random batches, processed up to each batch's
clock as the engine does. Across symbols: one event order whatever the arrival order, and the
RL state's exposure is every open position over total equity.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.bars import BarBuilder
from operators.portfolio import EventKind, ExecConfig, Portfolio
from operators.sizing import Sizer, SizingConfig
from rl.state import ActionBounds, RLState
from schemas.decisions import BarDecision
from schemas.features import FeatureVector
from schemas.rl import SizingDecision
from schemas.signals import Action, Consensus, Signal, Vote
from schemas.ticks import ORIGIN_CODE, BlockTag, SymbolTicks, TickBatch, TickOrigin
from schemas.timeutil import from_ms, to_ms
from schemas.trades import ExitReason, Side, TradeClosed, TradeOpened

SIZE, TP, SL = 1_000.0, 0.2, 0.1  # USD, percent, percent
VOTES = tuple(Vote(n, "v1", Action.HOLD, 0.5) for n in ("xgboost", "lightgbm", "nhits", "patchtst"))


class FixedPolicy:
    """Stands in for the PPO runtime: a fixed size and TP/SL, with a complete RL record."""

    bounds = ActionBounds()

    def __init__(self, size: float = SIZE, tp: float = TP, sl: float = SL) -> None:
        self.size, self.tp, self.sl = size, tp, sl

    def current(self) -> FixedPolicy:
        return self

    def act(self, state: RLState, stochastic: bool, noise=None) -> SizingDecision:
        return SizingDecision(
            tuple(float(x) for x in state.to_array()),
            (0.1, 0.2, 0.3),
            -1.5,
            0.25,
            "ppo-test-v0",
            self.size,
            self.tp,
            self.sl,
            False,
            stochastic,
        )


SIZER = Sizer(SizingConfig(training=False), FixedPolicy())


def quotes(ts: list[int], mid: list[float], spread: float, symbol: str = "X") -> TickBatch:
    n = len(ts)
    m = np.array(mid)
    return TickBatch(
        symbol,
        np.array(ts, dtype=np.int64),
        m,
        m - spread / 2,
        m + spread / 2,
        np.full(n, np.nan),
        np.zeros(n, np.int8),
        np.full(n, ORIGIN_CODE[TickOrigin.QUOTE], np.int8),
    )


def decision(end_ms: int, action: Action, symbol: str = "X", verdict=None) -> BarDecision:
    sig = Signal(
        symbol,
        from_ms(end_ms),
        from_ms(end_ms - 60_000),
        action,
        0.9,
        Consensus.UNANIMOUS,
        0.0,
        0.0,
        0.01,
        False,
        True,
        "fs",
        VOTES,
        (0.25, 0.25, 0.3, 0.2),
    )
    vec = FeatureVector(
        symbol,
        from_ms(end_ms),
        from_ms(end_ms - 60_000),
        "fs",
        True,
        1.0,
        {"vol_daily": 0.01, "ret_1": 0.0},
        (0.0,) * 4,
    )
    return BarDecision(symbol, end_ms, end_ms, sig, vec, verdict)


class Driver:
    """The engine's loop over a portfolio: decisions come from ``decide(symbol, bar end)``."""

    def __init__(self, cfg: ExecConfig, decide) -> None:
        self.portfolio = Portfolio(cfg)
        self.decide = decide
        self.events: list = []
        self.states: list[tuple[str, tuple[float, ...]]] = []

    def add(self, step) -> None:
        bars = [
            (ci, clock, to_ms(b.end), None)
            for ci, clock, b in zip(step.close_index, step.clocks, step.bars, strict=True)
        ]
        self.portfolio.add(step.symbol, step.ticks, bars)

    def run(self, horizon: float) -> None:
        pf = self.portfolio
        while (ev := pf.pop(horizon)) is not None:
            if ev.kind is EventKind.DECIDE:
                bar = pf.bar(ev)
                pf.apply(ev, bar, self.decide(ev.symbol, bar.bar_end_ms))
            elif ev.kind is EventKind.FILL:
                closes, req = pf.begin_fill(ev)
                self.events += closes
                if req is not None:
                    self.states.append((req.symbol, tuple(req.state.to_array().tolist())))
                    sized = SIZER.size(req.symbol, req.bar_end_ms, req.state)
                    self.events += pf.complete_fill(req, sized)
            else:
                self.events += pf.exit(ev)
            pf.done(ev)
        pf.trim()

    def finish(self) -> list:
        self.run(math.inf)
        self.events += self.portfolio.finish()
        return [e.event for e in self.events]


@dataclass
class Path:
    ticks: TickBatch
    actions: dict[int, Action]  # bar end -> action


def bar_steps(path: Path, cuts: list[int]) -> list:
    """The bar step's outputs for the path cut into batches at ``cuts``."""
    builder = BarBuilder(path.ticks.symbol, 60)
    steps = []
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(path.ticks)}), len(path.ticks)]
    for seq, (a, b) in enumerate(itertools.pairwise(bounds)):
        tag = BlockTag("p", seq, 1, int(path.ticks.ts_ms[b - 1]))
        steps += builder.push(SymbolTicks(tag, path.ticks.take(np.arange(a, b))))
    steps += builder.finish()
    return steps


def _bar_closes(steps: list) -> dict[int, list[int]]:
    """Tick index (over all steps) -> the end times of the bars that close at that tick."""
    closes: dict[int, list[int]] = {}
    offset = 0
    for step in steps:
        for bar, ci in zip(step.bars, step.close_index, strict=True):
            closes.setdefault(offset + ci, []).append(to_ms(bar.end))
        offset += len(step.ticks)
    return closes


def _signal(
    path: Path, ends: list[int], pos: tuple | None, pending: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The entry pending after the bars ending at ``ends`` close: the last BUY/SELL that
    is not the open position's side (HOLD changes nothing)."""
    for end in ends:
        a = path.actions.get(end, Action.HOLD)
        if a is Action.HOLD:
            continue
        side = 1 if a is Action.BUY else -1
        if pos is not None and pos[0] == side:
            continue
        pending = (end, side)
    return pending


def _entry(t: TickBatch, g: int, side: int, slip: float) -> tuple:
    """The position opened at tick ``g``: (side, qty, entry, entry ms, take-profit, stop)."""
    base = t.ask[g] if side > 0 else t.bid[g]
    entry = base * (1 + side * slip)
    qty = SIZE / entry
    return (
        side,
        qty,
        entry,
        int(t.ts_ms[g]),
        entry * (1 + side * TP / 100),
        entry * (1 - side * SL / 100),
    )


def _exit_reason(pos: tuple, px: float, ts_ms: int, cfg: ExecConfig) -> ExitReason | None:
    """Why the position closes at a tick quoting ``px`` (stop first, then take-profit, then
    holding time), or None."""
    side, _, _, entry_ms, tp, sl = pos
    if (px <= sl) if side > 0 else (px >= sl):
        return ExitReason.STOP_LOSS
    if (px >= tp) if side > 0 else (px <= tp):
        return ExitReason.TAKE_PROFIT
    if ts_ms >= entry_ms + cfg.max_holding_ms:
        return ExitReason.MAX_HOLDING
    return None


def reference(path: Path, steps: list, cfg: ExecConfig) -> list[tuple]:
    """Tick by tick, straight from the documented rules."""
    t = path.ticks
    closes = _bar_closes(steps)
    out: list[tuple] = []
    pos = pending = None
    slip, fee = cfg.slippage_bps / 1e4, cfg.fee_bps / 1e4

    def close(g: int, reason: ExitReason) -> None:
        nonlocal pos
        side, qty, entry, _entry_ms, _, _ = pos
        base = t.bid[g] if side > 0 else t.ask[g]
        exit_px = base * (1 - side * slip)
        net = side * qty * (exit_px - entry) - fee * qty * (entry + exit_px)
        out.append(("close", int(t.ts_ms[g]), reason, float(exit_px), float(net)))
        pos = None

    for g in range(len(t) + 1):
        pending = _signal(path, closes.get(g, []), pos, pending)
        if g == len(t):
            break
        if pending is not None and t.ts_ms[g] >= pending[0] + cfg.latency_ms:
            _, side = pending
            pending = None
            if pos is not None:
                close(g, ExitReason.OPPOSITE_SIGNAL)
            pos = _entry(t, g, side, slip)
            out.append(("open", int(t.ts_ms[g]), side, float(pos[2])))
            continue
        if pos is not None:
            px = t.bid[g] if pos[0] > 0 else t.ask[g]
            reason = _exit_reason(pos, px, t.ts_ms[g], cfg)
            if reason is not None:
                close(g, reason)
    if pos is not None:
        close(len(t) - 1, ExitReason.END_OF_INPUT)
    return out


def run_broker(path: Path, steps: list, cfg: ExecConfig, rng: random.Random) -> list:
    """Steps arrive one by one; after each, events up to its clock run (as in the engine)."""
    driver = Driver(cfg, lambda sym, end: decision(end, path.actions.get(end, Action.HOLD)))
    for step in steps:
        driver.add(step)
        if len(step.ticks) and rng.random() < 0.7:
            driver.run(int(step.ticks.clock_at(len(step.ticks) - 1)))
    return driver.finish()


def as_tuples(events: list) -> list[tuple]:
    out = []
    for e in events:
        if isinstance(e, TradeOpened):
            out.append(("open", to_ms(e.entry_ts), int(e.side.sign), e.entry_price))
        else:
            out.append(("close", to_ms(e.exit_ts), e.exit_reason, e.exit_price, e.net_pnl))
    return out


def same(ours: list[tuple], ref: list[tuple]) -> bool:
    """Event lists equal: times, sides and reasons exactly, prices and PnL to 1e-12."""
    if len(ours) != len(ref):
        return False
    for a, b in zip(ours, ref, strict=True):
        exact = [x for x in a if not isinstance(x, float)]
        if exact != [x for x in b if not isinstance(x, float)]:
            return False
        for x, y in zip(a, b, strict=True):
            if isinstance(x, float) and not math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-12):
                return False
    return True


PATHS = st.builds(
    lambda n, seed, spread: (n, seed, spread),
    st.integers(20, 400),
    st.integers(0, 10**6),
    st.sampled_from([0.0, 0.0002, 0.001]),
)


@settings(max_examples=120, deadline=None)
@given(
    PATHS,
    st.lists(st.integers(1, 399), max_size=5),
    st.sampled_from([0, 2_500]),
    st.sampled_from([300_000, 3_600_000]),
)
def test_broker_matches_the_tick_by_tick_rules(spec, cuts, latency, max_hold) -> None:
    n, seed, spread = spec
    rng = random.Random(seed)
    # whole seconds, so ticks often land exactly on bar ends and holding-time limits
    ts = np.cumsum([rng.randint(0, 40) * 1_000 for _ in range(n)]) + 1_700_000_040_000
    mid = 1.0 + np.cumsum([rng.gauss(0, 0.0008) for _ in range(n)])
    ticks = quotes(ts.tolist(), mid.tolist(), spread)
    bars_end = sorted({(int(x) // 60_000 + 1) * 60_000 for x in ts})
    actions = {e: rng.choice([Action.BUY, Action.SELL, Action.HOLD]) for e in bars_end}
    path = Path(ticks, actions)
    cfg = ExecConfig(
        fee_bps=0.5, slippage_bps=0.7, max_holding_ms=max_hold, latency_ms=latency, equity=10_000.0
    )
    steps = bar_steps(path, cuts)
    events = run_broker(path, steps, cfg, rng)
    ours, ref = as_tuples(events), reference(path, steps, cfg)
    assert same(ours, ref), (ours, ref)

    # invariants, straight on the events
    open_now: TradeOpened | None = None
    closed_ids: set[str] = set()
    for e in events:
        if isinstance(e, TradeOpened):
            assert open_now is None, "never two positions (long and short) at once"
            open_now = e
        else:
            assert isinstance(e, TradeClosed)
            assert open_now is not None and e.trade_id == open_now.trade_id
            assert e.trade_id not in closed_ids, "a trade is closed at most once"
            closed_ids.add(e.trade_id)
            qty, entry = open_now.quantity, open_now.entry_price
            gross = e.side.sign * qty * (e.exit_price - entry)
            fees = cfg.fee_bps / 1e4 * qty * (entry + e.exit_price)
            assert e.gross_pnl == pytest.approx(gross, rel=1e-12, abs=1e-12)
            assert e.fees == pytest.approx(fees, rel=1e-12)
            assert e.net_pnl == pytest.approx(gross - fees, rel=1e-12, abs=1e-12)
            if e.exit_reason is ExitReason.TAKE_PROFIT:
                base = e.exit_price / (1 - e.side.sign * cfg.slippage_bps / 1e4)
                assert (base - open_now.tp_price) * e.side.sign >= -1e-12
            open_now = None
    assert open_now is None, "end of input closes the open position"


def test_opposite_signal_closes_then_opens_at_the_same_tick() -> None:
    ts = [0, 30_000, 61_000, 90_000, 121_000, 150_000]
    path = Path(
        quotes(ts, [1.0, 1.0, 1.0001, 1.0001, 1.0, 1.0], 0.0),
        {60_000: Action.BUY, 120_000: Action.SELL},
    )
    cfg = ExecConfig(equity=10_000.0)
    steps = bar_steps(path, [])
    events = run_broker(path, steps, cfg, random.Random(0))
    kinds = [
        (type(e).__name__, to_ms(e.entry_ts if isinstance(e, TradeOpened) else e.exit_ts))
        for e in events
    ]
    assert kinds == [
        ("TradeOpened", 61_000),
        ("TradeClosed", 121_000),
        ("TradeOpened", 121_000),
        ("TradeClosed", 150_000),
    ]
    assert events[1].exit_reason is ExitReason.OPPOSITE_SIGNAL
    assert events[2].side is Side.SHORT
    assert events[3].exit_reason is ExitReason.END_OF_INPUT
    opened = events[0]
    assert opened.trade_id == "X@1970-01-01T00:01:00.000Z"
    assert opened.entry.rl.policy_version == "ppo-test-v0" and opened.entry.features


def test_blocked_and_hold_decisions_do_not_trade() -> None:
    from schemas.decisions import SupervisorMode, Verdict

    ts = [0, 61_000, 121_000]
    path = Path(quotes(ts, [1.0, 1.0, 1.0], 0.0), {})
    steps = bar_steps(path, [])
    blocked = Verdict(
        "X",
        from_ms(60_000),
        Action.BUY,
        SupervisorMode.ENFORCED,
        "global",
        False,
        True,
        "blocked",
        1.0,
        0.0,
        20,
        0,
    )

    def decide(symbol: str, end: int) -> BarDecision:
        if end == 60_000:
            return decision(end, Action.BUY, verdict=blocked)
        return decision(end, Action.HOLD)

    driver = Driver(ExecConfig(), decide)
    for step in steps:
        driver.add(step)
    assert driver.finish() == []
    assert driver.portfolio.counts()["signals_blocked"] == 1


def test_portfolio_state_survives_a_snapshot() -> None:
    import pickle

    rng = random.Random(7)
    n = 300
    ts = (np.cumsum([rng.randint(1, 20_000) for _ in range(n)]) + 1_700_000_000_000).tolist()
    mid = (1.0 + np.cumsum([rng.gauss(0, 0.0008) for _ in range(n)])).tolist()
    path = Path(quotes(ts, mid, 0.0002), {})
    path.actions = {(t // 60_000 + 1) * 60_000: rng.choice([Action.BUY, Action.SELL]) for t in ts}
    cfg = ExecConfig()
    steps = bar_steps(path, [100, 200])

    def decide(symbol: str, end: int) -> BarDecision:
        return decision(end, path.actions[end])

    whole = Driver(cfg, decide)
    for step in steps:
        whole.add(step)
        whole.run(step.ticks.clock_at(len(step.ticks) - 1) if len(step.ticks) else math.inf)
    ref = whole.finish()
    first = Driver(cfg, decide)
    first.add(steps[0])
    first.run(steps[0].ticks.clock_at(len(steps[0].ticks) - 1))
    before_snapshot = [e.event for e in first.events]
    snap = first.portfolio.snapshot()
    frozen = pickle.dumps(snap)
    first.add(steps[1])  # processing after the snapshot must not change it
    first.run(math.inf)
    assert pickle.dumps(snap) == frozen
    resumed = Driver(cfg, decide)
    resumed.portfolio = Portfolio.restore(cfg, pickle.loads(frozen))
    for step in steps[1:]:
        resumed.add(step)
    assert before_snapshot + resumed.finish() == ref and len(ref) > 4
    assert all(math.isfinite(e.net_pnl) for e in ref if isinstance(e, TradeClosed))


def two_symbol_steps(seed: int) -> tuple[dict[str, list], dict[tuple[str, int], Action]]:
    rng = random.Random(seed)
    steps, actions = {}, {}
    for sym in ("A", "B"):
        ts = np.cumsum([rng.randint(200, 9_000) for _ in range(400)]) + 1_700_000_000_000
        mid = 1.0 + np.cumsum([rng.gauss(0, 0.0008) for _ in range(400)])
        path = Path(quotes(ts.tolist(), mid.tolist(), 0.0002, sym), {})
        steps[sym] = bar_steps(path, sorted(rng.sample(range(1, 399), 4)))
        for step in steps[sym]:
            for b in step.bars:
                actions[(sym, to_ms(b.end))] = rng.choice(
                    [Action.BUY, Action.SELL, Action.HOLD, Action.HOLD]
                )
    return steps, actions


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_events_across_symbols_do_not_depend_on_arrival_order(seed: int, order: int) -> None:
    """Two symbols' steps interleaved in any order (each symbol's own in sequence), processed
    as far as the clocks allow after each: the same trades and the same RL states."""
    steps, actions = two_symbol_steps(seed)

    def decide(symbol: str, end: int) -> BarDecision:
        return decision(end, actions.get((symbol, end), Action.HOLD), symbol)

    def run(arrival: list[str]) -> Driver:
        d = Driver(ExecConfig(equity=10_000.0, start_equity=20_000.0), decide)
        cursor = {"A": 0, "B": 0}
        clock = {"A": -math.inf, "B": -math.inf}
        for sym in arrival:
            step = steps[sym][cursor[sym]]
            cursor[sym] += 1
            d.add(step)
            if len(step.ticks):
                clock[sym] = step.ticks.clock_at(len(step.ticks) - 1)
            d.run(min(clock.values()))  # two partitions: the smaller clock is safe
        d.finish()
        return d

    rng = random.Random(order)
    arrival = ["A"] * len(steps["A"]) + ["B"] * len(steps["B"])
    rng.shuffle(arrival)
    ref = run(["A"] * len(steps["A"]) + ["B"] * len(steps["B"]))
    got = run(arrival)
    assert [e.event for e in got.events] == [e.event for e in ref.events]
    assert got.states == ref.states and len(ref.states) > 3


def test_exposure_is_every_open_position_over_total_equity() -> None:
    steps, actions = two_symbol_steps(11)

    def decide(symbol: str, end: int) -> BarDecision:
        return decision(end, actions.get((symbol, end), Action.HOLD), symbol)

    d = Driver(ExecConfig(equity=10_000.0, start_equity=20_000.0), decide)
    for sym in ("A", "B"):
        for step in steps[sym]:
            d.add(step)
    d.finish()
    # replay the event stream: before each fill, the open notional over realised equity
    open_notional: dict[str, float] = {}
    realised = 0.0
    fills = iter(d.states)
    checked = 0
    for e in (x.event for x in d.events):
        if isinstance(e, TradeOpened):
            symbol, state = next(fills)
            assert symbol == e.symbol
            expected = sum(open_notional.values()) / (20_000.0 + realised)
            assert state[5] == pytest.approx(np.float32(expected), rel=1e-6)
            checked += expected > 0
            open_notional[e.symbol] = e.size_usd
        else:
            realised += e.net_pnl
            open_notional.pop(e.symbol)
    assert checked > 0, "some order was sized while the other symbol held a position"


def test_a_tape_restored_from_a_snapshot_is_not_a_view() -> None:
    """Validation hands each symbol views of its block's arrays, which the tape copies once
    the symbol goes quiet. Arrays restored from a snapshot have the unpickled ``bytes`` as
    their base: they are not views to copy (that read ``bytes.size`` and stopped the engine
    on the first trim after a kill -9 and resume)."""
    import pickle

    from operators.portfolio import TickTape

    n = 50
    ts = (np.arange(n, dtype=np.int64) * 1_000 + 1_700_000_000_000).tolist()
    block = quotes(ts, [1.0 + i * 1e-4 for i in range(n)], 0.0002)
    fields = ("ts_ms", "price", "bid", "ask", "size", "side", "origin")
    view = TickBatch(block.symbol, *(getattr(block, f)[:10] for f in fields))
    tape = TickTape()
    tape.append(view)
    assert tape.holds_views()
    restored = pickle.loads(pickle.dumps(tape, protocol=5))  # as Bytewax snapshots
    assert all(t.ts_ms.base is not None for t in restored.blocks)  # the case fixed here
    assert not restored.holds_views()
    restored.compact()  # nothing to copy, no error
    tape.compact()  # the view is copied
    assert not tape.holds_views()
    assert (
        [t.ts_ms.tolist() for t in restored.blocks]
        == [ts[:10]]
        == [t.ts_ms.tolist() for t in tape.blocks]
    )

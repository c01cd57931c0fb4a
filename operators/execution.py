"""Paper execution: one sub-account per symbol, fills by event time, exits on every tick.

Inputs, keyed by symbol: the bar step's validated ticks (with the position of the tick that
closed each bar) and the supervisor's :class:`~schemas.decisions.BarDecision` for every bar.
They arrive in whatever order the workers produce them; the broker processes them in event
time: ticks up to a bar's closing tick, then that bar's decision (waiting for it if needed),
then later ticks. So the same replay gives the same fills with any number of workers.

Rules
- **One position per symbol**, never long and short at once. A tradable BUY (SELL) opens a
  long (short) when flat, is ignored when already long (short), and when short (long) first
  closes that position (``opposite_signal``) and then opens the new one, at the same tick.
- **Fill**: at the first tick at or after ``bar end + QT_EXEC_LATENCY_MS`` (by default the tick
  that closed the bar, the first tick after the decision). Buys pay the ask when the tick is a
  quote, else its price; sells receive the bid, else the price; plus ``QT_SLIPPAGE_BPS``
  against the trader. Fees ``QT_FEE_BPS`` of notional on each fill. A newer decision before
  the fill replaces the pending one.
- **Size, TP, SL** from :mod:`operators.sizing`; ``tp = entry x (1 +- tp_pct/100)``,
  ``sl = entry x (1 -+ sl_pct/100)``.
- **Exits**, checked on every tick after the entry tick: stop-loss, take-profit, holding time
  ``QT_MAX_HOLDING_SECONDS``, in that priority when several hit on one tick (stop first is
  the conservative assumption). A long exits at the bid (a short at the ask), or the trade
  price, with slippage, so a gap through a level fills at the tick, not the level. A candle
  tick checks its low/high against the levels and fills at the level.
- **End of input** closes an open position at the last tick (``end_of_input``).
- PnL: ``gross = sign x qty x (exit - entry)``, ``fees = fee x qty x (entry + exit)``,
  ``net = gross - fees``; the sub-account's equity moves by ``net`` when a trade closes.

Every open produces ``trade.opened`` with the complete entry state (features, votes, supervisor
shares, RL record); every close ``trade.closed`` with the outcome and the RL next state.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream

from operators.sizing import Sizer
from operators.stage import stage_builder
from rl.state import SubAccount
from schemas.bars import BarStep
from schemas.decisions import BarDecision, SupervisorMode
from schemas.signals import Action
from schemas.ticks import ORIGIN_CODE, TickBatch, TickOrigin
from schemas.timeutil import from_ms, iso, to_ms
from schemas.trades import (
    EntryState,
    ExitReason,
    Side,
    SupervisorAtEntry,
    TradeClosed,
    TradeOpened,
    TradeRecord,
)

QUOTE = ORIGIN_CODE[TickOrigin.QUOTE]


@dataclass(frozen=True)
class ExecConfig:
    fee_bps: float = 0.5
    slippage_bps: float = 0.5
    max_holding_ms: int = 3_600_000
    latency_ms: int = 0
    equity: float = 10_000.0
    perf_window: int = 20

    @classmethod
    def from_settings(cls, s: Any) -> ExecConfig:
        return cls(s.fee_bps, s.slippage_bps, s.max_holding_seconds * 1000, s.exec_latency_ms,
                   s.subaccount_equity)

    @property
    def fee(self) -> float:
        return self.fee_bps / 1e4

    @property
    def slip(self) -> float:
        return self.slippage_bps / 1e4


@dataclass(frozen=True, slots=True)
class ExecEvent:
    """One execution output: the event for the stream and the trade row it updates."""

    event: TradeOpened | TradeClosed
    record: TradeRecord


@dataclass
class Position:
    opened: TradeOpened
    side: Side
    qty: float
    entry_price: float
    entry_ms: int
    tp: float
    sl: float
    notional: float


@dataclass
class Tick:
    ts_ms: int
    price: float
    bid: float
    ask: float


def _side_price(t: TickBatch, i: int, buy: bool) -> float:
    """The price a buy (sell) trades at on tick ``i``: the ask (bid) of a quote, else price."""
    if t.origin[i] == QUOTE:
        return float(t.ask[i] if buy else t.bid[i])
    return float(t.price[i])


@dataclass
class PaperBroker:
    """The execution state of one symbol (plain Python; see the module docstring)."""

    symbol: str
    cfg: ExecConfig
    sizer: Sizer | None = None
    account: SubAccount = field(init=False)
    position: Position | None = None
    queue: deque[BarStep] = field(default_factory=deque)
    cursor: int = 0
    bar_cursor: int = 0
    decisions: dict[int, BarDecision] = field(default_factory=dict)
    pending: BarDecision | None = None
    last_tick: Tick | None = None
    last_vol: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.account = SubAccount(self.cfg.equity, self.cfg.perf_window)

    # --- inputs ------------------------------------------------------------------------------
    def push(self, item: BarStep | BarDecision) -> list[ExecEvent]:
        if isinstance(item, BarDecision):
            self.decisions[item.bar_end_ms] = item
        else:
            self.queue.append(item)
        return self._run()

    def finish(self) -> list[ExecEvent]:
        out = self._run()
        if self.queue:  # a decision never came: impossible unless the graph is broken
            raise RuntimeError(f"execution {self.symbol}: {len(self.queue)} tick batches "
                               "still wait for decisions at end of input")
        if self.pending is not None:
            self._count("orders_unfilled")
            self.pending = None
        if self.position is not None and self.last_tick is not None:
            t = self.last_tick
            buy = self.position.side is Side.SHORT
            px = (t.ask if buy and math.isfinite(t.ask) else
                  t.bid if not buy and math.isfinite(t.bid) else t.price)
            out.append(self._close(t.ts_ms, px, ExitReason.END_OF_INPUT, at_level=False))
        return out

    # --- event-time processing -------------------------------------------------------------
    def _run(self) -> list[ExecEvent]:
        out: list[ExecEvent] = []
        while self.queue:
            step = self.queue[0]
            while self.bar_cursor < len(step.bars):
                close_at = step.close_index[self.bar_cursor]
                out += self._ticks(step.ticks, self.cursor, close_at)
                self.cursor = close_at
                end_ms = to_ms(step.bars[self.bar_cursor].end)
                decision = self.decisions.pop(end_ms, None)
                if decision is None:
                    return out  # wait for the decision of this bar
                self._decide(decision)
                self.bar_cursor += 1
            out += self._ticks(step.ticks, self.cursor, len(step.ticks))
            self.queue.popleft()
            self.cursor = self.bar_cursor = 0
        return out

    def _decide(self, d: BarDecision) -> None:
        vol = d.vector.values.get("vol_daily", math.nan)
        if math.isfinite(vol):
            self.last_vol = vol
        if d.verdict is not None and not d.verdict.allowed:
            self._count("signals_blocked")
        if not d.tradable:
            return
        if self.position is not None and self.position.side is _side_of(d.signal.action):
            self._count("signals_same_side")
            return
        if self.pending is not None:
            self._count("orders_superseded")
        self.pending = d

    def _ticks(self, t: TickBatch, a: int, b: int) -> list[ExecEvent]:
        out: list[ExecEvent] = []
        i = a
        while i < b:
            if self.pending is None:
                out += self._exits(t, i, b)
                break
            due = self.pending.bar_end_ms + self.cfg.latency_ms
            ready = np.flatnonzero(t.ts_ms[i:b] >= due)
            if len(ready) == 0:
                out += self._exits(t, i, b)
                break
            j = i + int(ready[0])
            out += self._exits(t, i, j)
            out += self._fill(t, j)
            i = j + 1
        if b > a:
            k = b - 1
            self.last_tick = Tick(int(t.ts_ms[k]), float(t.price[k]), float(t.bid[k]),
                                  float(t.ask[k]))
        return out

    def _exits(self, t: TickBatch, a: int, b: int) -> list[ExecEvent]:
        """Close the open position at the first exit among ticks ``a:b``."""
        p = self.position
        if p is None or b <= a:
            return []
        long = p.side is Side.LONG
        px = np.where(t.origin[a:b] == QUOTE, t.bid[a:b] if long else t.ask[a:b], t.price[a:b])
        hi = lo = px
        candle = t.candle is not None and not np.isnan(t.candle[1][a:b]).all()
        if candle:
            assert t.candle is not None
            is_c = ~np.isnan(t.candle[1][a:b])
            hi = np.where(is_c, t.candle[1][a:b], px)
            lo = np.where(is_c, t.candle[2][a:b], px)
        if long:
            sl, tp = lo <= p.sl, hi >= p.tp
        else:
            sl, tp = hi >= p.sl, lo <= p.tp
        late = t.ts_ms[a:b] >= p.entry_ms + self.cfg.max_holding_ms
        hits = np.flatnonzero(sl | tp | late)
        if len(hits) == 0:
            return []
        k = int(hits[0])
        is_candle = candle and not np.isnan(t.candle[1][a + k])  # type: ignore[index]
        if sl[k]:
            return [self._close(int(t.ts_ms[a + k]), p.sl if is_candle else float(px[k]),
                                ExitReason.STOP_LOSS, at_level=is_candle)]
        if tp[k]:
            return [self._close(int(t.ts_ms[a + k]), p.tp if is_candle else float(px[k]),
                                ExitReason.TAKE_PROFIT, at_level=is_candle)]
        return [self._close(int(t.ts_ms[a + k]), float(px[k]), ExitReason.MAX_HOLDING,
                            at_level=False)]

    def _fill(self, t: TickBatch, j: int) -> list[ExecEvent]:
        d, self.pending = self.pending, None
        assert d is not None
        out: list[ExecEvent] = []
        side = _side_of(d.signal.action)
        exposure = 0.0
        ts = int(t.ts_ms[j])
        if self.position is not None:
            if self.position.side is side:
                self._count("signals_same_side")
                return out
            exposure = self.position.notional / self.account.equity
            px = _side_price(t, j, buy=self.position.side is Side.SHORT)
            out.append(self._close(ts, px, ExitReason.OPPOSITE_SIGNAL, at_level=False))
        out += self._open(t, j, d, side, exposure)
        return out

    def _open(self, t: TickBatch, j: int, d: BarDecision, side: Side,
              exposure: float) -> list[ExecEvent]:
        if self.sizer is None:
            raise RuntimeError(f"execution {self.symbol}: no sizer to size an order")
        state = self.account.state(vol_daily=self.last_vol, confidence=d.signal.confidence,
                                   direction=d.signal.action, exposure=exposure)
        sized = self.sizer.size(self.symbol, d.bar_end_ms, state)
        if sized is None or not sized.size_usd > 0:
            self._count("orders_unsized")
            return []
        base = _side_price(t, j, buy=side is Side.LONG)
        entry = base * (1 + side.sign * self.cfg.slip)
        qty = sized.size_usd / entry
        tp = entry * (1 + side.sign * sized.tp_pct / 100)
        sl = entry * (1 - side.sign * sized.sl_pct / 100)
        v = d.verdict
        sup = (SupervisorAtEntry(v.mode, v.buy_share, v.sell_share, v.window_size, v.reason)
               if v is not None else SupervisorAtEntry(SupervisorMode.OFF, math.nan, math.nan,
                                                       0, "supervisor off"))
        entry_state = EntryState(
            features=dict(d.vector.values), feature_set=d.vector.feature_set,
            window=tuple(d.vector.window), votes=d.signal.votes,
            confidence=d.signal.confidence, consensus=d.signal.consensus,
            volatility=d.signal.volatility, supervisor=sup, rl=sized.decision,
            sizing=sized.sizing)
        ts = int(t.ts_ms[j])
        opened = TradeOpened(
            trade_id=f"{self.symbol}@{iso(from_ms(d.bar_end_ms))}", symbol=self.symbol,
            side=side, quantity=qty, entry_ts=from_ms(ts), entry_price=entry, tp_price=tp,
            sl_price=sl, size_usd=sized.size_usd, entry_fee=self.cfg.fee * qty * entry,
            entry=entry_state)
        self.position = Position(opened, side, qty, entry, ts, tp, sl, sized.size_usd)
        self._count("trades_opened")
        return [ExecEvent(opened, TradeRecord(opened))]

    def _close(self, ts: int, base: float, reason: ExitReason, at_level: bool) -> ExecEvent:
        p = self.position
        assert p is not None
        exit_px = base * (1 - p.side.sign * self.cfg.slip)
        gross = p.side.sign * p.qty * (exit_px - p.entry_price)
        fees = self.cfg.fee * p.qty * (p.entry_price + exit_px)
        net = gross - fees
        self.account.close_trade(net, p.notional)
        nxt = self.account.state(vol_daily=self.last_vol, confidence=0.0,
                                 direction=p.side.sign, exposure=0.0)
        closed = TradeClosed(
            trade_id=p.opened.trade_id, symbol=self.symbol, side=p.side, exit_ts=from_ms(ts),
            exit_price=exit_px, exit_reason=reason, gross_pnl=gross, fees=fees, net_pnl=net,
            pnl_pct=100.0 * net / (p.qty * p.entry_price),
            holding_seconds=(ts - p.entry_ms) / 1000.0,
            exit_state=tuple(float(x) for x in nxt.to_array()),
            equity_after=self.account.equity)
        self.position = None
        self._count("trades_closed")
        self._count(f"exits.{reason.value}")
        return ExecEvent(closed, TradeRecord(p.opened, closed))

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    # --- recovery --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        state = {k: v for k, v in vars(self).items() if k not in ("sizer", "account", "cfg")}
        state["account"] = self.account.snapshot()
        state["queue"] = list(self.queue)
        return state

    @classmethod
    def restore(cls, cfg: ExecConfig, sizer: Sizer | None, state: dict[str, Any]) -> PaperBroker:
        broker = cls(state["symbol"], cfg, sizer)
        for k, v in state.items():
            if k not in ("account", "queue"):
                setattr(broker, k, v)
        broker.account = SubAccount.restore(state["account"])
        broker.queue = deque(state["queue"])
        return broker


def _side_of(action: Action) -> Side:
    if action is Action.BUY:
        return Side.LONG
    if action is Action.SELL:
        return Side.SHORT
    raise ValueError(f"no side for {action}")


@operator
def execute(step_id: str, up: KeyedStream[BarStep | BarDecision], cfg: ExecConfig,
            sizer: Sizer) -> KeyedStream[ExecEvent]:
    """Paper-trade each symbol's decisions against its ticks (see the module docstring).

    One :class:`Sizer` serves all the worker threads of the process.
    """
    return op.stateful("brokers", up, stage_builder(
        lambda item: PaperBroker(item.symbol, cfg, sizer),
        lambda state: PaperBroker.restore(cfg, sizer, state)))

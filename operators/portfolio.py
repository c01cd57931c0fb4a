"""Paper execution of every symbol in one event-time order, and the portfolio the RL state sees.

One :class:`Portfolio` holds a :class:`SymbolBook` per symbol (its ticks, the bars waiting for
their decision, a pending order, the open position and its sub-account) and a :class:`Ledger`
of the whole account. Everything that happens is an **event** at one tick of one symbol, and
events are processed in the order of their key ``(clock, symbol, tick index, kind)``:

- ``clock`` is the input partition's clock at the tick (the running maximum of valid event
  times in input order, :mod:`operators.validate`): it never decreases along a partition, so
  once every partition's clock has passed ``H``, every event keyed below ``H`` has arrived and
  can be processed (:meth:`Portfolio.pop`). The order does not depend on how the input was cut
  into blocks, on worker count, or on arrival timing.
- kinds at one tick, in order: ``DECIDE`` (a bar of this symbol closed at this tick: its
  decision is applied before the tick counts), ``FILL`` (a pending order fills here),
  ``EXIT`` (the open position's stop, target or holding limit is hit here).

Rules
- **One position per symbol**, never long and short at once. A tradable BUY (SELL) becomes a
  pending order when flat or short (long); it is ignored while already long (short). A newer
  tradable decision before the fill replaces the pending one (``orders_superseded``).
- **Fill**: at the first tick at or after ``bar end + QT_EXEC_LATENCY_MS``, from the bar's
  closing tick on. An opposite position is first closed at that tick (``opposite_signal``),
  then the order is **sized** (the RL state is built here, :meth:`Portfolio.begin_fill`) and
  opened. Buys pay the ask of a quote (else the price), sells receive the bid, plus
  ``QT_SLIPPAGE_BPS`` against the trader; ``QT_FEE_BPS`` of notional per fill.
- **Exits**, on every tick after the entry tick: stop-loss, take-profit, holding time
  ``QT_MAX_HOLDING_SECONDS``, in that priority when several hit on one tick. A long exits at
  the bid (a short at the ask), or the trade price, with slippage; a candle tick checks its
  low/high against the levels and fills at the level.
- **End of input** closes open positions at their symbol's last tick (``end_of_input``), in
  symbol order; an order still pending is counted (``orders_unfilled``).
- PnL: ``gross = sign x qty x (exit - entry)``, ``fees = fee x qty x (entry + exit)``,
  ``net = gross - fees``; the sub-account's equity and the ledger move by ``net`` at the close.

The RL state of an order (:meth:`rl.state.SubAccount.state`) is built at the fill from the
symbol's sub-account (equity split ``QT_START_EQUITY / N``), the decision's confidence and
direction, the latest ``vol_daily``, and ``exposure`` = notional of **all** open positions at
that moment (the reversed one already closed) / total equity (``QT_START_EQUITY`` + realised
PnL of every sub-account). The gymnasium environment replays history through this same class
(:mod:`training.env`), so pretraining and live sizing see identical states.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np

from operators.sizing import Sized
from rl.state import STATE_HIGH, RLState, SubAccount
from schemas.decisions import NO_CLOCK, BarDecision, SupervisorMode
from schemas.signals import Action
from schemas.ticks import ORIGIN_CODE, TickBatch, TickOrigin
from schemas.timeutil import from_ms, iso
from schemas.trades import (
    EntryState,
    ExitReason,
    Side,
    SupervisorAtEntry,
    TradeClosed,
    TradeOpened,
    TradeRecord,
)
from settings import DEFAULTS, Settings

QUOTE = ORIGIN_CODE[TickOrigin.QUOTE]
EOF_CLOCK = NO_CLOCK  # the clock of bars closed at end of input: after every tick


@dataclass(frozen=True)
class ExecConfig:
    """Costs, limits and the equity split (see :class:`settings.Settings` for the defaults).

    ``equity`` is one symbol's sub-account (``QT_START_EQUITY / N``), ``start_equity`` the
    whole account (``QT_START_EQUITY``), against which exposure is measured.
    """

    fee_bps: float = DEFAULTS.fee_bps
    slippage_bps: float = DEFAULTS.slippage_bps
    max_holding_ms: int = DEFAULTS.max_holding_seconds * 1000
    latency_ms: int = DEFAULTS.exec_latency_ms
    equity: float = DEFAULTS.subaccount_equity
    start_equity: float = DEFAULTS.start_equity
    perf_window: int = 20  # closed trades in the recent win rate (not a setting)

    @classmethod
    def from_settings(cls, s: Settings) -> ExecConfig:
        return cls(
            s.fee_bps,
            s.slippage_bps,
            s.max_holding_seconds * 1000,
            s.exec_latency_ms,
            s.subaccount_equity,
            s.start_equity,
        )

    @property
    def fee(self) -> float:
        return self.fee_bps / 1e4

    @property
    def slip(self) -> float:
        return self.slippage_bps / 1e4


class EventKind(IntEnum):
    """What happens at a tick, in processing order when several happen at one tick."""

    DECIDE = 0
    FILL = 1
    EXIT = 2


class Event(NamedTuple):
    """One event, ready to process: its kind, symbol, tick index and clock (a named tuple:
    one is made per bar, and a tuple is the cheapest immutable record)."""

    kind: EventKind
    symbol: str
    index: int  # type: ignore[assignment]  # (a field named like tuple.index, which it hides)
    clock: int


KINDS = tuple(EventKind)  # by value: cheaper than EventKind(value) per event


@dataclass(frozen=True, slots=True)
class ExecEvent:
    """One execution output: the event for the stream and the trade row it updates."""

    event: TradeOpened | TradeClosed
    record: TradeRecord


class PendingBar(NamedTuple):
    """A closed bar waiting for its decision: where it closed in its symbol's ticks."""

    close_at: int
    clock: int
    bar_end_ms: int
    payload: Any


@dataclass(frozen=True, slots=True)
class SizingRequest:
    """An order at its fill, waiting for its size: the state the policy must see."""

    symbol: str
    bar_end_ms: int
    index: int
    state: RLState
    decision: BarDecision


@dataclass(slots=True)
class Position:
    opened: TradeOpened
    side: Side
    qty: float
    entry_price: float
    entry_ms: int
    entry_index: int
    tp: float
    sl: float
    notional: float


@dataclass(frozen=True, slots=True)
class ExitHit:
    """Where the open position will exit if nothing closes it first."""

    index: int
    reason: ExitReason
    price: float
    at_level: bool


@dataclass(frozen=True, slots=True)
class LastTick:
    ts_ms: int
    price: float
    bid: float
    ask: float


@dataclass(slots=True)
class Order:
    decision: BarDecision
    search_from: int
    fill_at: int | None = None


class TickTape:
    """One symbol's validated ticks in arrival order, addressed by a running index.

    Blocks are appended as they arrive and never modified; :meth:`trim` drops the ones before
    the symbol's processing point.
    """

    __slots__ = ("blocks", "end", "last", "starts")

    def __init__(self) -> None:
        self.blocks: list[TickBatch] = []
        self.starts: list[int] = []
        self.end = 0
        self.last: LastTick | None = None

    def append(self, ticks: TickBatch) -> int:
        """Add a block; returns the index of its first tick."""
        start = self.end
        n = len(ticks)
        if n:
            self.blocks.append(ticks)
            self.starts.append(start)
            self.end += n
            k = n - 1
            self.last = LastTick(
                int(ticks.ts_ms[k]), float(ticks.price[k]), float(ticks.bid[k]), float(ticks.ask[k])
            )
        return start

    def locate(self, i: int) -> tuple[TickBatch, int]:
        k = bisect.bisect_right(self.starts, i) - 1
        if k < 0 or i >= self.end:
            raise IndexError(f"tick {i} is not on the tape [{self.starts[:1]}, {self.end})")
        return self.blocks[k], i - self.starts[k]

    def clock(self, i: int) -> int:
        t, j = self.locate(i)
        return t.clock_at(j)

    def _from(self, start: int) -> Iterable[tuple[int, TickBatch, int]]:
        """(block start index, block, first local index) for every block from ``start``."""
        if start >= self.end:
            return
        k = max(0, bisect.bisect_right(self.starts, start) - 1)
        for b in range(k, len(self.blocks)):
            s = self.starts[b]
            yield s, self.blocks[b], max(0, start - s)

    def first_due(self, start: int, due_ms: int) -> int | None:
        """The first tick at or after index ``start`` whose time is at least ``due_ms``."""
        for s, t, a in self._from(start):
            hit = np.flatnonzero(t.ts_ms[a:] >= due_ms)
            if len(hit):
                return s + a + int(hit[0])
        return None

    def first_exit(self, start: int, p: Position, max_holding_ms: int) -> ExitHit | None:
        """The first exit of ``p`` at or after tick ``start`` (module docstring rules)."""
        for s, t, a in self._from(start):
            hit = _first_exit(t, a, p, max_holding_ms)
            if hit is not None:
                return replace(hit, index=s + hit.index)
        return None

    def side_price(self, i: int, buy: bool) -> float:
        t, j = self.locate(i)
        if t.origin[j] == QUOTE:
            return float(t.ask[j] if buy else t.bid[j])
        return float(t.price[j])

    def ts(self, i: int) -> int:
        t, j = self.locate(i)
        return int(t.ts_ms[j])

    def trim(self, keep_from: int) -> None:
        """Drop whole blocks that end at or before ``keep_from``."""
        drop = 0
        while drop < len(self.blocks) - 1 and self.starts[drop + 1] <= keep_from:
            drop += 1
        if drop:
            del self.blocks[:drop], self.starts[:drop]

    def compact(self) -> None:
        """Copy the blocks that are views of a larger block (validation hands each symbol a
        view of its block's arrays): a symbol that goes quiet must not keep a whole block of
        every symbol's ticks alive."""
        for k, t in enumerate(self.blocks):
            if _views_larger_block(t):
                self.blocks[k] = t.take(np.arange(len(t)))

    def holds_views(self) -> bool:
        return any(_views_larger_block(t) for t in self.blocks)

    def copy(self) -> TickTape:
        """A tape sharing the (never modified) blocks."""
        tape = TickTape()
        tape.blocks, tape.starts = list(self.blocks), list(self.starts)
        tape.end, tape.last = self.end, self.last
        return tape


def _views_larger_block(t: TickBatch) -> bool:
    """Whether ``t``'s arrays are views of a larger array. An array restored from a snapshot
    has a base too, the ``bytes`` it was unpickled from, but that holds only its own ticks."""
    base = t.ts_ms.base
    return isinstance(base, np.ndarray) and base.size > len(t)


def _first_exit(t: TickBatch, a: int, p: Position, max_holding_ms: int) -> ExitHit | None:
    """The first exit among ticks ``a:`` of one block (index local to the block)."""
    long = p.side is Side.LONG
    px = np.where(t.origin[a:] == QUOTE, t.bid[a:] if long else t.ask[a:], t.price[a:])
    hi = lo = px
    is_c = None
    if t.candle is not None:
        is_c = ~np.isnan(t.candle[1][a:])
        if is_c.any():
            hi = np.where(is_c, t.candle[1][a:], px)
            lo = np.where(is_c, t.candle[2][a:], px)
        else:
            is_c = None
    sl, tp = (lo <= p.sl, hi >= p.tp) if long else (hi >= p.sl, lo <= p.tp)
    late = t.ts_ms[a:] >= p.entry_ms + max_holding_ms
    hits = np.flatnonzero(sl | tp | late)
    if len(hits) == 0:
        return None
    k = int(hits[0])
    candle = is_c is not None and bool(is_c[k])
    if sl[k]:
        return ExitHit(a + k, ExitReason.STOP_LOSS, p.sl if candle else float(px[k]), candle)
    if tp[k]:
        return ExitHit(a + k, ExitReason.TAKE_PROFIT, p.tp if candle else float(px[k]), candle)
    return ExitHit(a + k, ExitReason.MAX_HOLDING, float(px[k]), False)


@dataclass
class Ledger:
    """The whole account: realised PnL and the notional of every open position."""

    start_equity: float
    realised: float = 0.0
    open_notional: dict[str, float] = field(default_factory=dict)

    @property
    def total_equity(self) -> float:
        return self.start_equity + self.realised

    def exposure(self) -> float:
        """Open notional / total equity (the RL state's ``exposure``; capped when broke)."""
        equity = self.total_equity
        if equity <= 0:
            return float(STATE_HIGH[5])
        return math.fsum(self.open_notional.values()) / equity

    def copy(self) -> Ledger:
        return Ledger(self.start_equity, self.realised, dict(self.open_notional))


@dataclass
class SymbolBook:
    """One symbol's execution state (ticks, bars waiting, order, position, sub-account)."""

    symbol: str
    cfg: ExecConfig
    tape: TickTape = field(default_factory=TickTape)
    account: SubAccount = field(init=False)
    closes: deque[PendingBar] = field(default_factory=deque)
    order: Order | None = None
    position: Position | None = None
    exit: ExitHit | None = None
    exit_scanned: int = 0
    last_vol: float = 0.0
    cursor: int = 0
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.account = SubAccount(self.cfg.equity, self.cfg.perf_window)

    def next_event(self) -> tuple[int, int, EventKind] | None:
        """(clock, tick index, kind) of this symbol's next event among arrived ticks."""
        best: tuple[int, int, EventKind] | None = None
        if self.closes:
            b = self.closes[0]
            best = (b.clock, b.close_at, EventKind.DECIDE)
        if self.order is not None and self.order.fill_at is not None:
            j = self.order.fill_at
            cand = (self.tape.clock(j), j, EventKind.FILL)
            best = cand if best is None or cand < best else best
        if self.exit is not None:
            j = self.exit.index
            cand = (self.tape.clock(j), j, EventKind.EXIT)
            best = cand if best is None or cand < best else best
        return best

    def rescan(self) -> None:
        """Look for the order's fill and the position's exit among newly arrived ticks."""
        o = self.order
        if o is not None and o.fill_at is None:
            due = o.decision.bar_end_ms + self.cfg.latency_ms
            o.fill_at = self.tape.first_due(o.search_from, due)
            if o.fill_at is None:
                o.search_from = max(o.search_from, self.tape.end)
        p = self.position
        if p is not None and self.exit is None and self.exit_scanned < self.tape.end:
            self.exit = self.tape.first_exit(self.exit_scanned, p, self.cfg.max_holding_ms)
            self.exit_scanned = self.tape.end

    def copy(self) -> SymbolBook:
        """An independent copy (ticks shared: they are never modified)."""
        book = replace(
            self,
            tape=self.tape.copy(),
            closes=deque(self.closes),
            order=None if self.order is None else replace(self.order),
            position=None if self.position is None else replace(self.position),
            counts=Counter(self.counts),
        )
        book.account = SubAccount.restore(self.account.snapshot())
        return book


Sizer = Callable[[SizingRequest], Sized | None]


class Portfolio:
    """All symbols' books, the ledger, and the event queue (see the module docstring)."""

    def __init__(self, cfg: ExecConfig) -> None:
        self.cfg = cfg
        self.books: dict[str, SymbolBook] = {}
        self.ledger = Ledger(cfg.start_equity)
        self._heap: list[tuple[int, str, int, int]] = []
        self._scheduled: dict[str, tuple[int, str, int, int]] = {}
        self._touched: set[str] = set()  # books whose tape or cursor moved since the last trim
        self._views: set[str] = set()  # books whose kept ticks are views of a larger block
        self.waiting = 0  # bars waiting for their decision (the decision queue)

    # --- input ------------------------------------------------------------------------------
    def book(self, symbol: str) -> SymbolBook:
        b = self.books.get(symbol)
        if b is None:
            b = self.books[symbol] = SymbolBook(symbol, self.cfg)
        return b

    def add(self, symbol: str, ticks: TickBatch, bars: Sequence[tuple[int, int, int, Any]]) -> None:
        """Add one symbol's ticks and the bars they closed: ``(close index in ticks, clock,
        bar end ms, payload)``; a close index of ``len(ticks)`` marks a bar closed at end of
        input (clock :data:`EOF_CLOCK`)."""
        b = self.book(symbol)
        start = b.tape.append(ticks)
        for close_index, clock, bar_end_ms, payload in bars:
            b.closes.append(PendingBar(start + close_index, clock, bar_end_ms, payload))
        self.waiting += len(bars)
        self._touched.add(symbol)
        b.rescan()
        self._schedule(symbol)

    def _schedule(self, symbol: str) -> None:
        nxt = self.books[symbol].next_event()
        if nxt is None:
            self._scheduled.pop(symbol, None)
            return
        key = (nxt[0], symbol, nxt[1], int(nxt[2]))
        if self._scheduled.get(symbol) != key:
            self._scheduled[symbol] = key
            heapq.heappush(self._heap, key)

    # --- the event loop -------------------------------------------------------------------
    def ready(self, horizon: float) -> bool:
        """Whether an event keyed below ``horizon`` is waiting (stale heap entries dropped)."""
        heap = self._heap
        while heap:
            key = heap[0]
            if self._scheduled.get(key[1]) == key:
                return key[0] < horizon
            heapq.heappop(heap)
        return False

    def pop(self, horizon: float) -> Event | None:
        """The next event whose clock is below ``horizon``, or None."""
        heap = self._heap
        while heap:
            key = heap[0]
            if key[0] >= horizon:
                return None
            heapq.heappop(heap)
            if self._scheduled.get(key[1]) != key:
                continue  # stale: the symbol's next event changed since
            del self._scheduled[key[1]]
            return Event(KINDS[key[3]], key[1], key[2], key[0])
        return None

    def done(self, event: Event) -> None:
        """The event was handled: move the symbol's cursor and schedule its next event."""
        b = self.books[event.symbol]
        b.cursor = max(b.cursor, event.index)
        self._touched.add(event.symbol)
        self._schedule(event.symbol)

    def bar(self, event: Event) -> PendingBar:
        """The bar a DECIDE event is about (taken off the symbol's queue)."""
        self.waiting -= 1
        return self.books[event.symbol].closes.popleft()

    def apply(self, event: Event, bar: PendingBar, decision: BarDecision) -> None:
        """Apply a bar's decision: remember ``vol_daily``; a tradable signal becomes the
        pending order unless a same-side position is already open."""
        b = self.books[event.symbol]
        vol = decision.vector.values.get("vol_daily", math.nan)
        if math.isfinite(vol):
            b.last_vol = vol
        if decision.verdict is not None and not decision.verdict.allowed:
            b.counts["signals_blocked"] += 1
        if not decision.tradable:
            return
        if b.position is not None and b.position.side is _side_of(decision.signal.action):
            b.counts["signals_same_side"] += 1
            return
        if b.order is not None:
            b.counts["orders_superseded"] += 1
        b.order = Order(decision, bar.close_at)
        b.rescan()

    def begin_fill(self, event: Event) -> tuple[list[ExecEvent], SizingRequest | None]:
        """At a FILL: close an opposite position, then build the order's sizing request."""
        b = self.books[event.symbol]
        order, b.order = b.order, None
        assert order is not None and order.fill_at == event.index
        side = _side_of(order.decision.signal.action)
        out: list[ExecEvent] = []
        if b.position is not None:
            if b.position.side is side:  # cannot happen: same-side orders are never made
                b.counts["signals_same_side"] += 1
                return out, None
            px = b.tape.side_price(event.index, buy=b.position.side is Side.SHORT)
            out.append(self._close(b, event.index, px, ExitReason.OPPOSITE_SIGNAL, False))
        d = order.decision
        state = b.account.state(
            vol_daily=b.last_vol,
            confidence=d.signal.confidence,
            direction=d.signal.action,
            exposure=self.ledger.exposure(),
        )
        return out, SizingRequest(event.symbol, d.bar_end_ms, event.index, state, d)

    def complete_fill(self, req: SizingRequest, sized: Sized | None) -> list[ExecEvent]:
        """Open the sized position (an unsized order is counted and dropped)."""
        b = self.books[req.symbol]
        if sized is None or not sized.size_usd > 0:
            b.counts["orders_unsized"] += 1
            return []
        d, cfg, j = req.decision, self.cfg, req.index
        side = _side_of(d.signal.action)
        entry = b.tape.side_price(j, buy=side is Side.LONG) * (1 + side.sign * cfg.slip)
        qty = sized.size_usd / entry
        tp = entry * (1 + side.sign * sized.tp_pct / 100)
        sl = entry * (1 - side.sign * sized.sl_pct / 100)
        v = d.verdict
        sup = (
            SupervisorAtEntry(v.mode, v.buy_share, v.sell_share, v.window_size, v.reason)
            if v is not None
            else SupervisorAtEntry(SupervisorMode.OFF, math.nan, math.nan, 0, "supervisor off")
        )
        entry_state = EntryState(
            features=dict(d.vector.values),
            feature_set=d.vector.feature_set,
            window=tuple(d.vector.window),
            votes=d.signal.votes,
            confidence=d.signal.confidence,
            consensus=d.signal.consensus,
            volatility=d.signal.volatility,
            supervisor=sup,
            rl=sized.decision,
            sizing=sized.sizing,
        )
        ts = b.tape.ts(j)
        opened = TradeOpened(
            trade_id=f"{req.symbol}@{iso(from_ms(d.bar_end_ms))}",
            symbol=req.symbol,
            side=side,
            quantity=qty,
            entry_ts=from_ms(ts),
            entry_price=entry,
            tp_price=tp,
            sl_price=sl,
            size_usd=sized.size_usd,
            entry_fee=cfg.fee * qty * entry,
            entry=entry_state,
        )
        b.position = Position(opened, side, qty, entry, ts, j, tp, sl, sized.size_usd)
        self.ledger.open_notional[req.symbol] = sized.size_usd
        b.exit, b.exit_scanned = None, j + 1
        b.rescan()
        b.counts["trades_opened"] += 1
        return [ExecEvent(opened, TradeRecord(opened))]

    def exit(self, event: Event) -> list[ExecEvent]:
        """At an EXIT: close the position at its stop, target or holding limit."""
        b = self.books[event.symbol]
        hit = b.exit
        assert hit is not None and hit.index == event.index
        return [self._close(b, hit.index, hit.price, hit.reason, hit.at_level)]

    def _close(
        self, b: SymbolBook, index: int, base: float, reason: ExitReason, at_level: bool
    ) -> ExecEvent:
        p = b.position
        assert p is not None
        closed = close_record(
            p, b.account, self.ledger, self.cfg, b.tape.ts(index), base, reason, b.last_vol
        )
        b.position, b.exit = None, None
        b.counts["trades_closed"] += 1
        b.counts[f"exits.{reason.value}"] += 1
        return ExecEvent(closed, TradeRecord(p.opened, closed))

    def finish(self) -> list[ExecEvent]:
        """End of input: count unfilled orders, close open positions at their last tick."""
        out: list[ExecEvent] = []
        for symbol in sorted(self.books):
            b = self.books[symbol]
            if b.order is not None:
                b.counts["orders_unfilled"] += 1
                b.order = None
            last = b.tape.last
            if b.position is not None and last is not None:
                buy = b.position.side is Side.SHORT
                px = (
                    last.ask
                    if buy and math.isfinite(last.ask)
                    else last.bid
                    if not buy and math.isfinite(last.bid)
                    else last.price
                )
                p = b.position
                closed = close_record(
                    p,
                    b.account,
                    self.ledger,
                    self.cfg,
                    last.ts_ms,
                    px,
                    ExitReason.END_OF_INPUT,
                    b.last_vol,
                )
                b.position, b.exit = None, None
                b.counts["trades_closed"] += 1
                b.counts[f"exits.{ExitReason.END_OF_INPUT.value}"] += 1
                out.append(ExecEvent(closed, TradeRecord(p.opened, closed)))
        return out

    def preview_close(
        self, symbol: str, decide: Callable[[str, int], BarDecision]
    ) -> TradeClosed | None:
        """How the open position of ``symbol`` will close, without changing anything: its own
        events are run on a copy (decisions from ``decide(symbol, bar end)``) until the
        position closes, by an exit, an opposite signal's fill, or the end of the input seen
        so far. The gymnasium environment rewards an order with this, at the order."""
        book = self.books[symbol]
        if book.position is None:
            return None
        solo = Portfolio(self.cfg)
        solo.books = {symbol: book.copy()}
        solo.ledger = self.ledger.copy()
        solo._schedule(symbol)
        while (ev := solo.pop(math.inf)) is not None:
            if ev.kind is EventKind.DECIDE:
                bar = solo.bar(ev)
                solo.apply(ev, bar, decide(symbol, bar.bar_end_ms))
            elif ev.kind is EventKind.FILL:
                closes, _ = solo.begin_fill(ev)
                if closes:
                    return closes[0].event  # type: ignore[return-value]
            else:
                return solo.exit(ev)[0].event  # type: ignore[return-value]
            solo.done(ev)
        return solo.finish()[0].event  # type: ignore[return-value]

    def trim(self) -> None:
        """Forget ticks no event can need again (before each symbol's processing point); only
        books that moved since the last trim can have anything to forget. A book that kept a
        view of a block (:meth:`TickTape.compact`) and did not move since gets its own copy:
        a busy symbol's ticks are replaced before that happens, a quiet one's copied once."""
        touched, self._touched = self._touched, set()
        for symbol in self._views - touched:
            self.books[symbol].tape.compact()
        self._views &= touched
        for symbol in touched:
            b = self.books[symbol]
            keep = b.cursor
            if b.position is not None:
                keep = min(keep, b.position.entry_index)
            if b.order is not None:
                keep = min(keep, b.order.search_from)
            b.tape.trim(keep)
            if b.tape.holds_views():
                self._views.add(symbol)

    def counts(self) -> Counter:
        total: Counter = Counter()
        for b in self.books.values():
            total.update(b.counts)
        return total

    # --- recovery ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """An independent copy of the state (later processing does not change it)."""
        return {
            "books": {s: b.copy() for s, b in self.books.items()},
            "ledger": self.ledger.copy(),
            "scheduled": dict(self._scheduled),
        }

    @classmethod
    def restore(cls, cfg: ExecConfig, state: dict[str, Any]) -> Portfolio:
        p = cls(cfg)
        p.books = {s: b.copy() for s, b in state["books"].items()}
        for b in p.books.values():
            b.cfg = cfg
        p.ledger = state["ledger"].copy()
        for symbol in sorted(p.books):
            p._schedule(symbol)
        p._touched = set(p.books)
        p.waiting = sum(len(b.closes) for b in p.books.values())
        return p


def close_record(
    p: Position,
    account: SubAccount,
    ledger: Ledger,
    cfg: ExecConfig,
    ts: int,
    base: float,
    reason: ExitReason,
    vol: float,
) -> TradeClosed:
    """Book the close of ``p`` at ``base`` (before slippage) into ``account`` and ``ledger``."""
    exit_px = base * (1 - p.side.sign * cfg.slip)
    gross = p.side.sign * p.qty * (exit_px - p.entry_price)
    fees = cfg.fee * p.qty * (p.entry_price + exit_px)
    net = gross - fees
    account.close_trade(net, p.notional)
    ledger.realised += net
    ledger.open_notional.pop(p.opened.symbol, None)
    nxt = account.state(
        vol_daily=vol, confidence=0.0, direction=p.side.sign, exposure=ledger.exposure()
    )
    return TradeClosed(
        trade_id=p.opened.trade_id,
        symbol=p.opened.symbol,
        side=p.side,
        exit_ts=from_ms(ts),
        exit_price=exit_px,
        exit_reason=reason,
        gross_pnl=gross,
        fees=fees,
        net_pnl=net,
        pnl_pct=100.0 * net / (p.qty * p.entry_price),
        holding_seconds=(ts - p.entry_ms) / 1000.0,
        exit_state=tuple(float(x) for x in nxt.to_array()),
        equity_after=account.equity,
    )


def _side_of(action: Action) -> Side:
    if action is Action.BUY:
        return Side.LONG
    if action is Action.SELL:
        return Side.SHORT
    raise ValueError(f"no side for {action}")

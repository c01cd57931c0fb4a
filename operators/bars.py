"""Bars: per-symbol event-time bars, built a whole tick batch at a time.

Event-time logic of our own (not Bytewax's EventClock, which busy-loops on replays of old
data): a tick belongs to the bar ``floor(ts / length)``; a bar closes when its symbol's event
time reaches its end (the first tick of a later bar) or at end of input. A late tick (older
than the newest, within ``QT_MAX_BACKWARDS_MS``, accepted by validation) goes into the open bar:
bars never reopen. Bars exist only for intervals with ticks.

Aggregation is vectorised: runs of equal bar start are reduced with ``np.*.reduceat`` (sums
position by position, in tick order: numpy's own sums are pairwise, another order); the open
bar carries over between batches in a few scalars (:class:`OpenBar`). In the flow the step is
keyed by shard (:func:`operators.validate.shard_of`): :class:`ShardBars` builds the bars of
all the symbols of a piece in one pass, runs split by symbol as well, the bars bit for bit
those of each symbol's own :class:`BarBuilder` (which training and the tests use).

>>> import numpy as np
>>> from schemas.ticks import TickBatch
>>> def batch(ts, px):
...     n = len(ts); nan = np.full(n, np.nan)
...     return TickBatch("X", np.array(ts), np.array(px, float), nan, nan,
...                      np.ones(n), np.zeros(n, np.int8), np.zeros(n, np.int8))
>>> b = BarBuilder("X", seconds=60)
>>> closed, idx = b.push_ticks(batch([0, 30_000, 61_000], [1.0, 3.0, 2.0]))
>>> [(x.open, x.high, x.low, x.close, x.tick_count) for x in closed], idx
([(1.0, 3.0, 1.0, 3.0, 2)], [2])
>>> [x.close for x in b.flush()]
[2.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field
from datetime import datetime
from typing import NamedTuple

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream

from operators.stage import stage_builder
from operators.summary import Counts, EventTime
from operators.validate import ShardTicks
from schemas.bars import Bar, BarStep
from schemas.decisions import NO_CLOCK
from schemas.ticks import SymbolTicks, TickBatch
from schemas.timeutil import from_ms, to_ms


@dataclass(slots=True)
class OpenBar:
    """Running aggregates of the bar that has not closed yet."""

    start_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    tick_count: int
    sized_pv: float  # sum(price * size) over ticks with a size
    sized_v: float  # sum(size) over ticks with a size
    unsized_p: float  # sum(price) over ticks without a size
    unsized_n: int
    buy_volume: float
    sell_volume: float
    quote_count: int
    spread_sum: float
    spread_max: float

    def merge(self, later: OpenBar) -> None:
        """Fold in a later segment of the same bar whose sums already include this one's."""
        self.high = max(self.high, later.high)
        self.low = min(self.low, later.low)
        self.close = later.close
        self.tick_count += later.tick_count
        self.unsized_n += later.unsized_n
        self.quote_count += later.quote_count
        self.spread_max = max(self.spread_max, later.spread_max)
        for name in SUM_FIELDS:
            setattr(self, name, getattr(later, name))

    def to_bar(self, symbol: str, seconds: int) -> Bar:
        return make_bar(
            symbol,
            seconds,
            self.start_ms,
            self.open,
            self.high,
            self.low,
            self.close,
            self.tick_count,
            self.unsized_n,
            self.quote_count,
            (
                self.volume,
                self.sized_pv,
                self.sized_v,
                self.unsized_p,
                self.buy_volume,
                self.sell_volume,
                self.spread_sum,
            ),
            self.spread_max,
        )


def make_bar(
    symbol: str,
    seconds: int,
    start_ms: int,
    open_: float,
    high: float,
    low: float,
    close: float,
    tick_count: int,
    unsized_n: int,
    quote_count: int,
    sums: Sequence[float],
    spread_max: float,
) -> Bar:
    """A closed bar from its aggregates (``sums`` in :data:`SUM_FIELDS` order)."""
    volume, sized_pv, sized_v, unsized_p, buy_volume, sell_volume, spread_sum = sums
    vwap = sized_pv / sized_v if sized_v > 0 else unsized_p / unsized_n if unsized_n else close
    q = quote_count
    start, end = _bar_times(start_ms, seconds)
    return Bar(
        symbol=symbol,
        seconds=seconds,
        start=start,
        end=end,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        tick_count=tick_count,
        vwap=vwap,
        buy_volume=buy_volume,
        sell_volume=sell_volume,
        quote_count=q,
        spread_mean=spread_sum / q if q else math.nan,
        spread_max=spread_max if q else math.nan,
    )


_TIMES: dict[tuple[int, int], tuple[datetime, datetime]] = {}


def _bar_times(start_ms: int, seconds: int) -> tuple[datetime, datetime]:
    """A bar's start and end datetimes; many symbols close the same minute, so the (immutable)
    datetimes of recent bar starts are kept and shared."""
    key = (start_ms, seconds)
    times = _TIMES.get(key)
    if times is None:
        if len(_TIMES) >= 4096:
            _TIMES.clear()
        times = _TIMES[key] = (from_ms(start_ms), from_ms(start_ms + seconds * 1000))
    return times


SUM_FIELDS = (
    "volume",
    "sized_pv",
    "sized_v",
    "unsized_p",
    "buy_volume",
    "sell_volume",
    "spread_sum",
)


class BarBuilder:
    """Builds the bars of one symbol: ``push_ticks`` a batch, ``flush`` at end of input."""

    def __init__(self, symbol: str, seconds: int, state: OpenBar | None = None) -> None:
        if seconds <= 0:
            raise ValueError(f"bar length must be positive, got {seconds}s")
        self.symbol = symbol
        self.seconds = seconds
        self.bar_ms = seconds * 1000
        self.open_bar = state

    def push_ticks(self, ticks: TickBatch) -> tuple[list[Bar], list[int]]:
        """Add a batch; return the bars it closed and, for each, the index of the closing tick."""
        n = len(ticks)
        if n == 0:
            return [], []
        starts = (ticks.ts_ms // self.bar_ms) * self.bar_ms
        if self.open_bar is not None:
            starts = np.maximum(starts, self.open_bar.start_ms)
        starts = np.maximum.accumulate(starts)  # a late tick joins the open bar
        cut = np.flatnonzero(starts[1:] != starts[:-1]) + 1
        first = np.concatenate(([0], cut))
        last = np.concatenate((cut - 1, [n - 1]))
        carry = self.open_bar
        continues = carry is not None and carry.start_ms == int(starts[0])
        agg = _aggregate(
            ticks, starts, first, last, [(0, carry)] if continues and carry is not None else ()
        )

        closed: list[Bar] = []
        close_at: list[int] = []
        k0 = 0
        if carry is not None:
            if continues:
                carry.merge(agg.open_bar(0))
                k0 = 1
                if len(first) > 1:  # the carried bar closes at the next segment's first tick
                    closed.append(carry.to_bar(self.symbol, self.seconds))
                    close_at.append(int(first[1]))
            else:
                closed.append(carry.to_bar(self.symbol, self.seconds))
                close_at.append(0)
        last_k = len(first) - 1
        if k0 < last_k:
            closed += agg.bars(self.symbol, self.seconds, k0, last_k)
            close_at += first[k0 + 1 : last_k + 1].tolist()
        self.open_bar = carry if continues and last_k == 0 else agg.open_bar(last_k)
        return closed, close_at

    def flush(self) -> list[Bar]:
        """Close the open bar (end of input)."""
        if self.open_bar is None:
            return []
        bar = self.open_bar.to_bar(self.symbol, self.seconds)
        self.open_bar = None
        return [bar]

    # --- as a stage (see operators.stage) --------------------------------------------------
    def push(self, item: SymbolTicks) -> list[BarStep]:
        bars, close_at = self.push_ticks(item.ticks)
        t = item.ticks
        clocks = (t.ts_ms if t.clock_ms is None else t.clock_ms)[close_at].tolist()
        return [BarStep(self.symbol, item.ticks, bars, close_at, item.tag, clocks)]

    def finish(self) -> list[BarStep]:
        bars = self.flush()
        if not bars:
            return []
        empty = _no_ticks(self.symbol)
        return [BarStep(self.symbol, empty, bars, [0], None, [NO_CLOCK])]

    def snapshot(self) -> tuple[str, int, tuple | None]:
        state = None if self.open_bar is None else astuple(self.open_bar)
        return self.symbol, self.seconds, state

    @classmethod
    def restore(cls, snapshot: tuple[str, int, tuple | None]) -> BarBuilder:
        symbol, seconds, state = snapshot
        return cls(symbol, seconds, None if state is None else OpenBar(*state))


def _no_ticks(symbol: str) -> TickBatch:
    e = np.zeros(0)
    return TickBatch(
        symbol, np.zeros(0, np.int64), e, e, e, e, np.zeros(0, np.int8), np.zeros(0, np.int8)
    )


class ShardSymbol(NamedTuple):
    """One symbol's part of a :class:`ShardBarStep`: its own ticks (a view of the step's), where
    they start in the step's ticks, and its bars' range in the step's bars."""

    symbol: str
    ticks: TickBatch
    offset: int
    bars_from: int
    bars_to: int


@dataclass(slots=True)
class ShardBarStep(BarStep):
    """The bars one piece of a shard closed (:class:`operators.validate.ShardTicks`): a
    :class:`BarStep` over the piece's ticks (symbol after symbol; ``symbol`` is the shard key,
    ``close_index`` indexes the piece's ticks), with each symbol's part in ``symbols``."""

    symbols: list[ShardSymbol] = field(default_factory=list)


class ShardBars:
    """Builds the bars of every symbol of one shard, a piece (several symbols) at a time: one
    pass of numpy over the piece's ticks, whatever the number of symbols, and the bars of
    each symbol exactly those of its own :class:`BarBuilder` (the same rules, the same sums in
    the same order; tests/operators/test_shards.py checks it)."""

    def __init__(self, seconds: int, open_bars: dict[str, OpenBar] | None = None) -> None:
        if seconds <= 0:
            raise ValueError(f"bar length must be positive, got {seconds}s")
        self.seconds = seconds
        self.bar_ms = seconds * 1000
        self.open_bars: dict[str, OpenBar] = dict(open_bars or {})

    def push(self, item: SymbolTicks) -> list[ShardBarStep]:
        t = item.ticks
        if isinstance(item, ShardTicks):
            spans, batches = item.symbols, item.batches
        else:  # one symbol's piece
            spans, batches = [(t.symbol, 0, len(t))], [t]
        n = len(t)
        if n == 0:
            return [
                ShardBarStep(
                    t.symbol,
                    t,
                    [],
                    [],
                    item.tag,
                    [],
                    [
                        ShardSymbol(sym, b, a, 0, 0)
                        for (sym, a, _), b in zip(spans, batches, strict=True)
                    ],
                )
            ]
        k = len(spans)
        lengths = np.array([b - a for _, a, b in spans], dtype=np.intp)
        sym_of = np.repeat(np.arange(k), lengths)
        opened = [self.open_bars.get(sym) for sym, _, _ in spans]
        floor = np.array([NEVER_MS if o is None else o.start_ms for o in opened], dtype=np.int64)
        starts = np.maximum((t.ts_ms // self.bar_ms) * self.bar_ms, floor[sym_of])
        starts = _running_max_by_group(starts, sym_of, k)  # a late tick joins the open bar
        cut = np.flatnonzero((starts[1:] != starts[:-1]) | (sym_of[1:] != sym_of[:-1])) + 1
        first = np.concatenate(([0], cut))
        last = np.concatenate((cut - 1, [n - 1]))
        seg_sym = sym_of[first]
        seg_lo = np.searchsorted(seg_sym, np.arange(k)).tolist()
        seg_hi = [*seg_lo[1:], len(first)]
        head_starts = starts[first[seg_lo]].tolist()
        continues = [
            o is not None and o.start_ms == st for o, st in zip(opened, head_starts, strict=True)
        ]
        agg = _aggregate(
            t,
            starts,
            first,
            last,
            [(seg_lo[i], o) for i, o in enumerate(opened) if continues[i] and o is not None],
        )
        firsts = first.tolist()
        bars: list[Bar] = []
        close_at: list[int] = []
        parts: list[ShardSymbol] = []
        for i, ((sym, off, _), batch) in enumerate(zip(spans, batches, strict=True)):
            lo, hi, carry = seg_lo[i], seg_hi[i], opened[i]
            b0 = len(bars)
            k0 = lo
            if carry is not None:
                if continues[i]:
                    carry.merge(agg.open_bar(lo))
                    k0 = lo + 1
                    if hi - lo > 1:  # the carried bar closes at the next run's first tick
                        bars.append(carry.to_bar(sym, self.seconds))
                        close_at.append(firsts[lo + 1])
                else:
                    bars.append(carry.to_bar(sym, self.seconds))
                    close_at.append(off)
            if k0 < hi - 1:
                bars += agg.bars(sym, self.seconds, k0, hi - 1)
                close_at += firsts[k0 + 1 : hi]
            self.open_bars[sym] = (
                carry
                if continues[i] and hi - lo == 1 and carry is not None
                else agg.open_bar(hi - 1)
            )
            parts.append(ShardSymbol(sym, batch, off, b0, len(bars)))
        clock = t.ts_ms if t.clock_ms is None else t.clock_ms
        return [
            ShardBarStep(t.symbol, t, bars, close_at, item.tag, clock[close_at].tolist(), parts)
        ]

    def finish(self) -> list[ShardBarStep]:
        """End of input: every symbol's open bar closes (symbols in order)."""
        if not self.open_bars:
            return []
        bars: list[Bar] = []
        parts: list[ShardSymbol] = []
        for sym in sorted(self.open_bars):
            parts.append(ShardSymbol(sym, _no_ticks(sym), 0, len(bars), len(bars) + 1))
            bars.append(self.open_bars[sym].to_bar(sym, self.seconds))
        self.open_bars = {}
        return [
            ShardBarStep(
                "", _no_ticks(""), bars, [0] * len(bars), None, [NO_CLOCK] * len(bars), parts
            )
        ]

    def snapshot(self) -> tuple[int, dict[str, tuple]]:
        return self.seconds, {sym: astuple(o) for sym, o in self.open_bars.items()}

    @classmethod
    def restore(cls, snapshot: tuple[int, dict[str, tuple]]) -> ShardBars:
        seconds, state = snapshot
        return cls(seconds, {sym: OpenBar(*s) for sym, s in state.items()})


NEVER_MS = -(2**62)


def _running_max_by_group(x: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """``np.maximum.accumulate`` restarted at every group (``group`` ascending): each group's
    values are lifted above the previous group's, accumulated once, and put back."""
    if groups == 1:
        return np.maximum.accumulate(x)
    lo = int(x.min())
    span = int(x.max()) - lo + 1
    offset = group.astype(np.int64) * span
    return np.maximum.accumulate(x - lo + offset) - offset + lo


@operator
def build_bars(step_id: str, up: KeyedStream[SymbolTicks], seconds: int) -> KeyedStream[BarStep]:
    """Event-time bars of ``seconds`` length (see the module docstring), per shard of symbols
    (:func:`operators.validate.shard_of`): a :class:`ShardBarStep` per piece."""
    if seconds <= 0:
        raise ValueError(f"{step_id}: bar length must be positive, got {seconds}s")
    return op.stateful("bars", up, stage_builder(lambda _: ShardBars(seconds), ShardBars.restore))


class _Aggregates:
    """The aggregates of each run of equal bar start in a batch, as columns."""

    __slots__ = (
        "closes",
        "counts",
        "highs",
        "lows",
        "opens",
        "spread_max",
        "starts",
        "sums",
    )

    def __init__(
        self,
        starts: list[int],
        opens: list[float],
        highs: list[float],
        lows: list[float],
        closes: list[float],
        counts: list[list[int]],
        sums: list[list[float]],
        spread_max: list[float],
    ) -> None:
        self.starts, self.opens, self.highs, self.lows = starts, opens, highs, lows
        self.closes, self.counts, self.sums, self.spread_max = closes, counts, sums, spread_max

    def open_bar(self, k: int) -> OpenBar:
        sm, ct = self.sums[k], self.counts[k]
        return OpenBar(
            start_ms=self.starts[k],
            open=self.opens[k],
            high=self.highs[k],
            low=self.lows[k],
            close=self.closes[k],
            volume=sm[0],
            tick_count=ct[0],
            sized_pv=sm[1],
            sized_v=sm[2],
            unsized_p=sm[3],
            unsized_n=ct[1],
            buy_volume=sm[4],
            sell_volume=sm[5],
            quote_count=ct[2],
            spread_sum=sm[6],
            spread_max=self.spread_max[k],
        )

    def bars(self, symbol: str, seconds: int, a: int, b: int) -> list[Bar]:
        """Bars of runs ``a .. b-1`` (closed, none of them carried over)."""
        return [
            make_bar(symbol, seconds, st, o, h, lo, c, ct[0], ct[1], ct[2], sm, mx)
            for st, o, h, lo, c, ct, sm, mx in zip(
                self.starts[a:b],
                self.opens[a:b],
                self.highs[a:b],
                self.lows[a:b],
                self.closes[a:b],
                self.counts[a:b],
                self.sums[a:b],
                self.spread_max[a:b],
                strict=True,
            )
        ]


def _carry_sums(carries: Sequence[tuple[int, OpenBar]]) -> np.ndarray:
    """The running sums of open bars, one row each, in :data:`SUM_FIELDS` order."""
    return np.array([[getattr(o, f) for f in SUM_FIELDS] for _, o in carries])


SEQUENTIAL_RUNS = 32  # runs up to this long are summed position by position, all at once


def _aggregate(
    t: TickBatch,
    starts: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    carries: Sequence[tuple[int, OpenBar]] = (),
) -> _Aggregates:
    """Aggregates of each run of equal bar start. Sums are sequential (left to right, starting
    from the sums of the open bar a run continues, ``carries``: (run, open bar)), so a bar's
    values do not depend on how its ticks were split into batches: a file replay and a Kafka
    feed give bit-identical bars.

    Sequential sums of many short runs (a candle is a run of one) are made for all runs at
    once, position by position (numpy's own reductions sum pairwise, in another order); a
    long run is summed with its own cumulative sum.
    """
    price = t.price
    if t.candle is None:
        opens = highs = lows = typical = price
    else:
        o, h, lo = t.candle
        is_candle = ~np.isnan(h)
        if is_candle.all():
            opens, highs, lows = o, h, lo
            typical = (h + lo + price) / 3.0
        else:
            opens = np.where(is_candle, o, price)
            highs = np.where(is_candle, h, price)
            lows = np.where(is_candle, lo, price)
            typical = np.where(is_candle, (h + lo + price) / 3.0, price)
    size = t.size
    sized = size > 0  # NaN compares False: unknown sizes are "unsized"
    size0 = np.where(sized, size, 0.0)
    quoted = np.isfinite(t.bid) & np.isfinite(t.ask)
    spread = np.where(quoted, t.ask - t.bid, 0.0)
    # columns in SUM_FIELDS order
    terms = np.column_stack(
        (
            size0,
            np.where(sized, typical * size0, 0.0),
            size0,
            np.where(sized, 0.0, typical),
            np.where(t.side > 0, size0, 0.0),
            np.where(t.side < 0, size0, 0.0),
            spread,
        )
    )
    lengths = last - first + 1
    longest = int(lengths.max())
    if longest <= SEQUENTIAL_RUNS:
        sums = terms[first]  # a copy: the first term of each run
        if carries:
            at = np.array([k for k, _ in carries], dtype=np.intp)
            sums[at] = _carry_sums(carries) + sums[at]
        for j in range(1, longest):
            more = np.flatnonzero(lengths > j)
            sums[more] += terms[first[more] + j]
    else:
        sums = np.empty((len(first), len(SUM_FIELDS)))
        carried = dict(carries)
        for k, (a, b) in enumerate(zip(first.tolist(), (last + 1).tolist(), strict=True)):
            seg = terms[a:b]
            if k in carried:
                seg = np.vstack((_carry_sums([(k, carried[k])]), seg))
            sums[k] = np.cumsum(seg, axis=0)[-1]
    if longest == 1:
        highs_k, lows_k = highs, lows
        unsized = (~sized).astype(np.int64)
        counts = np.column_stack((lengths, unsized, quoted.astype(np.int64)))
        spread_max = np.where(quoted, spread, -np.inf)
    else:
        highs_k = np.maximum.reduceat(highs, first)
        lows_k = np.minimum.reduceat(lows, first)
        counts = np.column_stack(
            (
                lengths,
                np.add.reduceat((~sized).astype(np.int64), first),
                np.add.reduceat(quoted.astype(np.int64), first),
            )
        )
        spread_max = np.maximum.reduceat(np.where(quoted, spread, -np.inf), first)
    return _Aggregates(
        starts[first].tolist(),
        opens[first].tolist(),
        highs_k.tolist(),
        lows_k.tolist(),
        price[last].tolist(),
        counts.tolist(),
        sums.tolist(),
        spread_max.tolist(),
    )


def bar_counts(
    bars: list[Bar],
    training: tuple[datetime, datetime] | None,
) -> list[Counts | EventTime]:
    """Bars closed (and how many fall in the models' training span), and the event time
    they reached, for the progress line."""
    if not bars:
        return []
    inside = (
        0
        if training is None
        else sum(training[0] <= b.start and b.end <= training[1] for b in bars)
    )
    counts = {"bars": len(bars), **({"bars.in_training": inside} if inside else {})}
    return [counts, EventTime(max(to_ms(b.end) for b in bars))]

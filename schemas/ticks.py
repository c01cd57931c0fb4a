"""Ticks: the pipeline's input events, one row form and two columnar forms.

- :class:`Tick` is one market event (a trade, a quote, or a candle replayed as a tick) and
  is the Kafka wire format (JSON, keyed by symbol).
- :class:`TickRows` is a decoded block of input rows, all symbols, straight from a source:
  typed columns plus the per-row decode errors and a way back to each row's raw text, so a
  rejected row can be dead-lettered with its original input.
- :class:`TickBatch` is a validated, per-symbol block: what flows through bars, features
  and execution. The hot path works on these arrays, never on per-tick Python objects.

Conventions: ``price`` is the trade price, the quote mid ``(bid+ask)/2`` or the candle close;
unknown floats are NaN; ``side`` is the aggressor (+1 buy, -1 sell, 0 unknown). A candle's
event time is the last millisecond of its interval (open + length - 1 ms), the first moment
its close is known, so a replay of candles cannot see a price before it happened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import codec
from schemas.timeutil import from_ms

NAN = math.nan
TS_MISSING = np.iinfo(np.int64).min

# Sane ranges of input values (documented with the other rules in operators/validate.py).
PRICE_MIN = 1e-12  # far below any quoted price (1 satoshi = 1e-8), far above denormals
PRICE_MAX = 1e12  # far above any price in any currency
SIZE_MAX = 1e15  # trade sizes and candle volumes (the largest in ../shared/data: 1.3e8)
# Epoch milliseconds a datetime can hold (0001-01-01 .. 9999-12-31T23:59:59.999Z): a time
# outside cannot be represented and is a decode error, not a crash further down.
MS_MIN = -62_135_596_800_000
MS_MAX = 253_402_300_799_999


class TickOrigin(StrEnum):
    TRADE = "trade"
    QUOTE = "quote"
    CANDLE = "candle"


ORIGIN_CODE: dict[TickOrigin, int] = {
    TickOrigin.TRADE: 0,
    TickOrigin.QUOTE: 1,
    TickOrigin.CANDLE: 2,
}
ORIGIN_BY_CODE: dict[int, TickOrigin] = {v: k for k, v in ORIGIN_CODE.items()}


class Aggressor(StrEnum):
    BUY = "buy"
    SELL = "sell"
    UNKNOWN = ""


SIDE_CODE = {Aggressor.BUY: 1, Aggressor.SELL: -1, Aggressor.UNKNOWN: 0}
SIDE_BY_CODE = {v: k for k, v in SIDE_CODE.items()}


@dataclass(frozen=True, slots=True)
class Tick:
    """One market event. ``open/high/low`` are set for candle ticks only."""

    ts: datetime
    symbol: str
    origin: TickOrigin
    price: float
    bid: float = NAN
    ask: float = NAN
    size: float = NAN
    side: Aggressor = Aggressor.UNKNOWN
    open: float = NAN
    high: float = NAN
    low: float = NAN

    def to_json(self) -> bytes:
        return codec.dumps(self)

    @classmethod
    def from_json(cls, payload: bytes | str) -> Tick:
        return codec.loads(cls, payload)


# ---------------------------------------------------------------------------------------------
# Input layouts (see ../shared/data/SOURCES.md)
# ---------------------------------------------------------------------------------------------

LAYOUTS: dict[TickOrigin, tuple[str, ...]] = {
    TickOrigin.TRADE: ("ts", "symbol", "price", "size", "side"),
    TickOrigin.QUOTE: ("ts", "symbol", "bid", "ask", "bid_size", "ask_size"),
    TickOrigin.CANDLE: ("ts", "symbol", "open", "high", "low", "close", "volume"),
}


def layout_of(columns: Sequence[str]) -> TickOrigin:
    """Identify a file's layout from its header; an unknown header is a clear error."""
    cols = tuple(c.strip().lower() for c in columns)
    for origin, layout in LAYOUTS.items():
        if cols == layout:
            return origin
    known = "; ".join(",".join(v) for v in LAYOUTS.values())
    raise ValueError(f"unrecognised columns {','.join(cols)!r}; expected one of: {known}")


@dataclass(slots=True)
class TickRows:
    """A decoded block of input rows, in source order, for one input partition.

    Each row knows where it came from (``sources[src[i]]``, row ``row_no[i]``), which makes
    dead-letter ids deterministic. ``errors`` maps a row index to the reason it could not be
    decoded; such rows carry placeholder values and must become dead letters.
    ``extra_dead`` holds input that never became a row at all (a line with the wrong number
    of fields), as (source, row number, raw text, reason).
    """

    sources: tuple[str, ...]
    src: np.ndarray
    row_no: np.ndarray
    ts_ms: np.ndarray
    symbol: np.ndarray
    origin: np.ndarray
    price: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    size: np.ndarray
    side: np.ndarray
    candle: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    errors: dict[int, str] = field(default_factory=dict)
    extra_dead: list[tuple[str, int, str, str]] = field(default_factory=list)
    raw_batch: pa.RecordBatch | None = None
    raw_text: list[str] | None = None
    # Set by the source: which input partition, this block's sequence number in it, whether
    # it is the partition's last block, and whether it only says the partition is idle (no
    # data for QT_IDLE_PARTITION_MS of wall time: it must not hold back the others).
    partition: str = ""
    seq: int = 0
    final: bool = False
    idle: bool = False
    input_bytes: int = 0  # bytes of input this block consumed (files: compressed bytes)

    def __len__(self) -> int:
        return len(self.ts_ms)

    @classmethod
    def end_of(cls, partition: str, seq: int) -> TickRows:
        """The empty last block a source emits when a partition is exhausted."""
        return cls.empty(partition, seq, final=True)

    @classmethod
    def idle_marker(cls, partition: str, seq: int) -> TickRows:
        """The empty block a live source emits when a partition has had nothing to read for
        ``QT_IDLE_PARTITION_MS``: the decision engine stops waiting for it until it has data
        again (:mod:`operators.clocks`)."""
        return cls.empty(partition, seq, idle=True)

    @classmethod
    def empty(cls, partition: str, seq: int, final: bool = False, idle: bool = False) -> TickRows:
        f, i = np.zeros(0), np.zeros(0, dtype=np.int8)
        return cls(
            sources=(),
            src=np.zeros(0, dtype=np.int16),
            row_no=np.zeros(0, np.int64),
            ts_ms=np.zeros(0, np.int64),
            symbol=np.zeros(0, dtype=object),
            origin=i,
            price=f,
            bid=f,
            ask=f,
            size=f,
            side=i,
            partition=partition,
            seq=seq,
            final=final,
            idle=idle,
        )

    @property
    def rows_in(self) -> int:
        """Input rows this block accounts for: decoded rows plus undecodable lines."""
        return len(self.ts_ms) + len(self.extra_dead)

    def raw(self, idx: np.ndarray | Sequence[int]) -> list[str]:
        """Original input text of the given rows (CSV line or JSON message)."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.raw_text is not None:
            return [self.raw_text[i] for i in idx]
        if self.raw_batch is None or len(idx) == 0:
            return [""] * len(idx)
        taken = self.raw_batch.take(pa.array(idx))
        cols = [pc.fill_null(c.cast(pa.string()), "") for c in taken.columns]
        return pc.binary_join_element_wise(*cols, ",").to_pylist()

    def tick(self, i: int) -> Tick:
        """Row ``i`` as a :class:`Tick` (for rows without a decode error)."""
        o, h, lo = (
            (NAN, NAN, NAN)
            if self.candle is None
            else (float(self.candle[0][i]), float(self.candle[1][i]), float(self.candle[2][i]))
        )
        return Tick(
            ts=from_ms(int(self.ts_ms[i])),
            symbol=str(self.symbol[i]),
            origin=ORIGIN_BY_CODE[int(self.origin[i])],
            price=float(self.price[i]),
            bid=float(self.bid[i]),
            ask=float(self.ask[i]),
            size=float(self.size[i]),
            side=SIDE_BY_CODE[int(self.side[i])],
            open=o,
            high=h,
            low=lo,
        )

    @staticmethod
    def concat(parts: Sequence[TickRows], order: np.ndarray) -> TickRows:
        """Rows of several blocks, reordered by ``order`` (indices into their concatenation).

        Used by the replay merge; raw text is materialised because the parts' layouts differ.
        """
        if len(parts) == 1 and np.array_equal(order, np.arange(len(parts[0]))):
            return parts[0]
        sources = tuple(dict.fromkeys(s for p in parts for s in p.sources))

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])[order]

        src = np.concatenate(
            [np.array([sources.index(s) for s in p.sources], dtype=np.int16)[p.src] for p in parts]
        )[order]
        candle = None
        if any(p.candle is not None for p in parts):
            candle = tuple(
                np.concatenate(
                    [p.candle[k] if p.candle is not None else np.full(len(p), NAN) for p in parts]
                )[order]
                for k in range(3)
            )
        raw = [t for p in parts for t in p.raw(np.arange(len(p)))]
        offsets = np.cumsum([0] + [len(p) for p in parts])
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        errors = {
            int(position[offsets[k] + i]): r
            for k, p in enumerate(parts)
            for i, r in p.errors.items()
        }
        return TickRows(
            sources=sources,
            src=src,
            row_no=cat("row_no"),
            ts_ms=cat("ts_ms"),
            symbol=cat("symbol"),
            origin=cat("origin"),
            price=cat("price"),
            bid=cat("bid"),
            ask=cat("ask"),
            size=cat("size"),
            side=cat("side"),
            candle=candle,
            errors=errors,
            extra_dead=[d for p in parts for d in p.extra_dead],
            raw_text=[raw[i] for i in order],
        )

    def slice(self, start: int, stop: int) -> TickRows:
        """Rows ``start:stop`` (used for pacing and the merge); errors are re-indexed."""
        sl = slice(start, stop)
        candle = None if self.candle is None else tuple(a[sl] for a in self.candle)
        return TickRows(
            sources=self.sources,
            src=self.src[sl],
            row_no=self.row_no[sl],
            ts_ms=self.ts_ms[sl],
            symbol=self.symbol[sl],
            origin=self.origin[sl],
            price=self.price[sl],
            bid=self.bid[sl],
            ask=self.ask[sl],
            size=self.size[sl],
            side=self.side[sl],
            candle=candle,  # type: ignore[arg-type]
            errors={i - start: r for i, r in self.errors.items() if start <= i < stop},
            extra_dead=self.extra_dead if start == 0 else [],
            raw_batch=None if self.raw_batch is None else self.raw_batch.slice(start, stop - start),
            raw_text=None if self.raw_text is None else self.raw_text[sl],
            partition=self.partition,
            seq=self.seq,
            final=self.final,
        )


@dataclass(slots=True)
class TickBatch:
    """Validated ticks of one symbol, in event-time order (within the late tolerance).

    ``clock_ms`` is the input partition's clock at each tick (the newest valid event time of
    any symbol of the partition so far): the time at which a decision triggered by that tick
    is made, used to order decisions across symbols. None outside a dataflow.
    """

    symbol: str
    ts_ms: np.ndarray
    price: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    size: np.ndarray
    side: np.ndarray
    origin: np.ndarray
    candle: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # open, high, low
    clock_ms: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ts_ms)

    def take(self, idx: np.ndarray) -> TickBatch:
        candle = None if self.candle is None else tuple(a[idx] for a in self.candle)
        return TickBatch(
            self.symbol,
            self.ts_ms[idx],
            self.price[idx],
            self.bid[idx],
            self.ask[idx],
            self.size[idx],
            self.side[idx],
            self.origin[idx],
            candle,
            None if self.clock_ms is None else self.clock_ms[idx],
        )

    def clock_at(self, i: int) -> int:
        """The partition clock at tick ``i`` (the tick's own time outside a dataflow)."""
        return int((self.ts_ms if self.clock_ms is None else self.clock_ms)[i])


@dataclass(frozen=True, slots=True)
class BlockTag:
    """Provenance of a per-symbol piece of an input block, for ordering across partitions.

    ``seq`` numbers the partition's blocks; ``parts`` is how many per-symbol pieces the block
    was split into (0 when none of its rows were valid ticks); ``clock_ms`` is the partition's
    clock (newest valid event time) after the block; ``final`` marks its last block, ``idle``
    an empty block saying the partition has nothing to read (:meth:`TickRows.idle_marker`).
    """

    partition: str
    seq: int
    parts: int
    clock_ms: int
    final: bool = False
    idle: bool = False


@dataclass(slots=True)
class SymbolTicks:
    """The keyed stream item after validation: one symbol's valid ticks from one block."""

    tag: BlockTag
    ticks: TickBatch

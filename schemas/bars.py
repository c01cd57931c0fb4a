"""Bars: per-symbol event-time OHLCV bars, and the unit a stateful step hands downstream."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.records import quick_init
from schemas.ticks import BlockTag, TickBatch


@quick_init
@dataclass(frozen=True, slots=True)
class Bar:
    """One closed bar ``[start, end)`` of ``seconds`` length.

    ``volume`` is traded size (trades) or candle volume, 0 when the feed has none (quotes);
    ``vwap`` weights by size where sizes are known, otherwise every tick weighs the same;
    spread statistics are NaN when the bar saw no quotes.
    """

    symbol: str
    seconds: int
    start: datetime
    end: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    tick_count: int
    vwap: float
    buy_volume: float
    sell_volume: float
    quote_count: int
    spread_mean: float
    spread_max: float


@dataclass(slots=True)
class BarStep:
    """What the bar step emits per input batch of one symbol.

    ``ticks`` are the batch's validated ticks; ``bars`` the bars this batch closed, and
    ``close_index[k]`` the position in ``ticks`` of the tick that closed ``bars[k]`` (the first
    tick of a later bar; ``len(ticks)`` for bars closed at end of input). Execution uses
    those positions so a decision made at a bar's close applies only to later ticks.
    ``clocks[k]`` is the partition clock when ``bars[k]`` closed (the decision time; see
    :class:`~schemas.ticks.TickBatch`), ``NO_CLOCK`` for bars closed at end of input.
    """

    symbol: str
    ticks: TickBatch
    bars: list[Bar]
    close_index: list[int]
    tag: BlockTag | None  # None for bars flushed at end of input
    clocks: list[int]

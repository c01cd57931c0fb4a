"""Events -> ClickHouse table blocks: the one mapping from event types to table rows.

A :class:`TableRows` is one stream item for the ClickHouse sink: a table name, its column
names and the data: row tuples, columns (bulk blocks), or events with the function that
encodes them as an Arrow table where they are inserted. Column names are the event's field
names (see :func:`schemas.codec.row_columns`) and match ``sql/ddl``.

Bars, feature vectors and signals, one each per bar of every symbol, go as Arrow. The widest
are feature vectors (a Map of 22 values and a 64-value window): as row tuples,
clickhouse-connect serialises every key and value in Python (~16 us of GIL per vector); as
Arrow, pyarrow converts the columns in C++ and ClickHouse reads the block with the GIL
released (~5 us of GIL in all).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import pyarrow as pa

from schemas import codec
from schemas.bars import Bar
from schemas.dead_letters import DeadLetters
from schemas.decisions import Verdict
from schemas.features import FEATURE_NAMES, FeatureVector
from schemas.learning import TradeOutcome
from schemas.signals import Signal
from schemas.trades import TRADE_COLUMNS, JoinedTrade, TradeRecord, trade_row

BARS = "bars"
FEATURES = "features"
DEAD_LETTERS = "dead_letters"
SIGNALS = "signals"
VERDICTS = "supervisor_verdicts"
TRADES = "trades"
RL_UPDATES = "rl_updates"
SHADOW_PREDICTIONS = "shadow_predictions"
CLM_CYCLES = "clm_cycles"
TRADE_OUTCOMES = "trade_outcomes"
DRIFT_CHECKS = "drift_checks"

# the run summary's counter of the rows handed to the store (by the flow's writer and by the
# continuous learner's feature archive); every one is stored when the summary is printed
ROWS_WRITTEN = "rows.written"


@dataclass(slots=True)
class TableRows:
    """Rows for ``table``: row tuples, columns when ``column_oriented``, or events that
    ``encode`` turns into a ``pa.Table`` (on the store's insert thread: :meth:`to_arrow`)."""

    table: str
    columns: tuple[str, ...]
    data: list[Any]
    column_oriented: bool = False
    encode: Callable[[Sequence[Any]], pa.Table] | None = None

    def to_arrow(self) -> pa.Table:
        """The Arrow table of an ``encode`` block. Called where the insert runs: the
        conversion then overlaps the flow's own work (numpy and torch release the GIL),
        instead of lengthening the step that emitted the events."""
        if self.encode is None:
            raise TypeError(f"{self.table}: a block of rows has no Arrow form")
        return self.encode(self.data)

    def __len__(self) -> int:
        if self.column_oriented:
            return len(self.data[0]) if self.data else 0
        return len(self.data)


def merge_blocks(blocks: Sequence[TableRows]) -> list[TableRows]:
    """Blocks of one table as few blocks as possible: one per column list and form, in
    order of first appearance (fewer, larger inserts)."""
    groups: dict[tuple[Any, ...], list[TableRows]] = {}
    for block in blocks:
        key = (block.columns, block.column_oriented, block.encode)
        groups.setdefault(key, []).append(block)
    merged = []
    for (columns, col_oriented, encode), group in groups.items():
        first = group[0]
        if len(group) == 1:
            merged.append(first)
        elif col_oriented:
            data = [[v for b in group for v in b.data[i]] for i in range(len(columns))]
            merged.append(TableRows(first.table, columns, data, column_oriented=True))
        else:
            rows = [r for b in group for r in b.data]
            merged.append(TableRows(first.table, columns, rows, encode=encode))
    return merged


def event_rows(table: str, events: Sequence[Any]) -> TableRows:
    """Rows of same-typed events whose fields are the table's columns."""
    if not events:
        return TableRows(table, (), [])
    return TableRows(table, codec.row_columns(type(events[0])), [codec.to_row(e) for e in events])


_UTC_MS = pa.timestamp("ms", tz="UTC")
BAR_ARROW = pa.schema(
    [
        ("symbol", pa.string()),
        ("seconds", pa.uint32()),
        ("start", _UTC_MS),
        ("end", _UTC_MS),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
        ("tick_count", pa.uint32()),
        ("vwap", pa.float64()),
        ("buy_volume", pa.float64()),
        ("sell_volume", pa.float64()),
        ("quote_count", pa.uint32()),
        ("spread_mean", pa.float64()),
        ("spread_max", pa.float64()),
    ]
)  # sql/ddl/010_bars.sql, in Bar's field order


def bar_rows(bars: Sequence[Bar]) -> TableRows:
    """Bars, stored as one Arrow block (one per bar of every symbol)."""
    return TableRows(BARS, tuple(BAR_ARROW.names), list(bars), encode=bar_arrow)


def bar_arrow(bars: Sequence[Bar]) -> pa.Table:
    return _arrow_table(BAR_ARROW, [[getattr(b, f) for b in bars] for f in BAR_ARROW.names])


FEATURE_ARROW = pa.schema(
    [
        ("symbol", pa.string()),
        ("ts", _UTC_MS),
        ("bar_start", _UTC_MS),
        ("feature_set", pa.string()),
        ("warm", pa.bool_()),
        ("close", pa.float64()),
        ("values", pa.map_(pa.string(), pa.float64())),
        ("window", pa.list_(pa.float32())),
    ]
)  # sql/ddl/020_features.sql; the window is rounded to float32 as the column stores it


def feature_rows(vectors: Sequence[FeatureVector]) -> TableRows:
    """Feature vectors, stored as one Arrow block (see the module docstring for why)."""
    return TableRows(FEATURES, tuple(FEATURE_ARROW.names), list(vectors), encode=feature_arrow)


def feature_arrow(vectors: Sequence[FeatureVector]) -> pa.Table:
    columns = (
        [v.symbol for v in vectors],
        [v.ts for v in vectors],
        [v.bar_start for v in vectors],
        [v.feature_set for v in vectors],
        [v.warm for v in vectors],
        [v.close for v in vectors],
        _values_map([v.values for v in vectors]),
        [v.window for v in vectors],
    )
    return _arrow_table(FEATURE_ARROW, columns)


# the feature names repeated, sliced per block; built at the first block (converting Python
# objects imports pandas into pyarrow, ~0.2 s that start-up does not need to pay)
_NAME_KEYS: list[pa.Array] = []


def _values_map(values: list[dict[str, float]]) -> pa.Array | list[dict[str, float]]:
    """The ``values`` column: when every vector has the feature set's names in order (the
    live feature step's), the keys are one repeated array and only the floats are converted
    (half the cost); any other mapping goes through pyarrow's general conversion."""
    if not values or any(tuple(d) != FEATURE_NAMES for d in values):
        return values
    n, width = len(values), len(FEATURE_NAMES)
    if not _NAME_KEYS:
        _NAME_KEYS.append(pa.array(FEATURE_NAMES, pa.string()))
    while len(_NAME_KEYS[0]) < n * width:  # grown by doubling, shared by every block
        _NAME_KEYS[0] = pa.concat_arrays([_NAME_KEYS[0], _NAME_KEYS[0]])
    floats = pa.array([x for d in values for x in d.values()], pa.float64())
    offsets = pa.array(range(0, (n + 1) * width, width), pa.int32())
    return pa.MapArray.from_arrays(offsets, _NAME_KEYS[0].slice(0, n * width), floats)


def dead_letter_rows(dead: DeadLetters) -> TableRows:
    cols = dead.columns()
    return TableRows(DEAD_LETTERS, tuple(cols), list(cols.values()), column_oriented=True)


SIGNAL_ARROW = pa.schema(
    [
        ("symbol", pa.string()),
        ("ts", _UTC_MS),
        ("bar_start", _UTC_MS),
        ("action", pa.string()),
        ("confidence", pa.float64()),
        ("consensus", pa.string()),
        ("buy_votes", pa.float64()),
        ("sell_votes", pa.float64()),
        ("volatility", pa.float64()),
        ("vol_blocked", pa.bool_()),
        ("warm", pa.bool_()),
        ("feature_set", pa.string()),
        ("models", pa.list_(pa.string())),
        ("versions", pa.list_(pa.string())),
        ("actions", pa.list_(pa.string())),
        ("confidences", pa.list_(pa.float64())),
        ("failed", pa.list_(pa.bool_())),
        ("weights", pa.list_(pa.float64())),
    ]
)  # sql/ddl/050_signals.sql


def signal_rows(signals: Sequence[Signal]) -> TableRows:
    """Signals with their votes as parallel arrays (see sql/ddl/050_signals.sql), stored as
    one Arrow block (one signal per bar of every symbol: the module docstring says why)."""
    return TableRows(SIGNALS, tuple(SIGNAL_ARROW.names), list(signals), encode=signal_arrow)


def signal_arrow(signals: Sequence[Signal]) -> pa.Table:
    """The vote and weight arrays are built from flat values and offsets: one conversion per
    column instead of one small list per signal (31,726 signals with four votes: 0.10 s
    instead of 0.13 s)."""
    votes = [v for s in signals for v in s.votes]
    offsets = pa.array(accumulate((len(s.votes) for s in signals), initial=0), pa.int32())

    def per_vote(values: list[Any], item: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, pa.array(values, item))

    columns = (
        pa.array([s.symbol for s in signals], pa.string()),
        pa.array([s.ts for s in signals], _UTC_MS),
        pa.array([s.bar_start for s in signals], _UTC_MS),
        pa.array([s.action for s in signals], pa.string()),  # StrEnum members are their values
        pa.array([s.confidence for s in signals], pa.float64()),
        pa.array([s.consensus for s in signals], pa.string()),
        pa.array([s.buy_votes for s in signals], pa.float64()),
        pa.array([s.sell_votes for s in signals], pa.float64()),
        pa.array([s.volatility for s in signals], pa.float64()),
        pa.array([s.vol_blocked for s in signals], pa.bool_()),
        pa.array([s.warm for s in signals], pa.bool_()),
        pa.array([s.feature_set for s in signals], pa.string()),
        per_vote([v.model for v in votes], pa.string()),
        per_vote([v.version for v in votes], pa.string()),
        per_vote([v.action for v in votes], pa.string()),
        per_vote([v.confidence for v in votes], pa.float64()),
        per_vote([v.failed for v in votes], pa.bool_()),
        pa.ListArray.from_arrays(
            pa.array(accumulate((len(s.weights) for s in signals), initial=0), pa.int32()),
            pa.array([w for s in signals for w in s.weights], pa.float64()),
        ),
    )
    return pa.Table.from_arrays(list(columns), schema=SIGNAL_ARROW)


def _arrow_table(schema: pa.Schema, columns: Sequence[Any]) -> pa.Table:
    arrays = [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)


def verdict_rows(verdicts: Sequence[Verdict]) -> TableRows:
    return event_rows(VERDICTS, verdicts)


def trade_rows(records: Sequence[TradeRecord]) -> TableRows:
    return TableRows(TRADES, TRADE_COLUMNS, [trade_row(r) for r in records])


def trade_outcome(j: JoinedTrade, reward: float) -> TradeOutcome:
    """The ``trade_outcomes`` record of a joined trade and the reward the learner gave it."""
    o, c = j.opened, j.closed
    return TradeOutcome(
        o.trade_id,
        o.symbol,
        o.side.value,
        o.entry_ts,
        c.exit_ts,
        c.exit_reason.value,
        c.net_pnl,
        c.pnl_pct,
        o.entry.sizing.value,
        o.entry.rl.policy_version,
        reward,
        j.source.value,
    )


def learning_rows(
    outcomes: Sequence[TradeOutcome],
    updates: Sequence[Any],
    cycles: Sequence[Any],
    drift: Sequence[Any],
) -> list[TableRows]:
    """Table blocks of what the learners recorded (the engine's inline learners and the
    learning flow's write the same four tables)."""
    blocks = []
    if outcomes:
        blocks.append(outcome_rows(outcomes))
    for table, events in ((RL_UPDATES, updates), (CLM_CYCLES, cycles), (DRIFT_CHECKS, drift)):
        if events:
            blocks.append(event_rows(table, events))
    return blocks


def outcome_rows(outcomes: Sequence[TradeOutcome]) -> TableRows:
    return event_rows(TRADE_OUTCOMES, outcomes)

"""Events -> ClickHouse table blocks: the one mapping from event types to table rows.

A :class:`TableRows` is one stream item for the ClickHouse sink: a table name, its column
names and the data (row tuples, or columns for bulk blocks). Column names are the event's
field names (see :func:`schemas.codec.row_columns`) and match ``sql/ddl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas import codec
from schemas.bars import Bar
from schemas.dead_letters import DeadLetters
from schemas.decisions import Verdict
from schemas.features import FeatureVector
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


@dataclass(slots=True)
class TableRows:
    table: str
    columns: tuple[str, ...]
    data: list[Any]
    column_oriented: bool = False

    def __len__(self) -> int:
        if self.column_oriented:
            return len(self.data[0]) if self.data else 0
        return len(self.data)


def event_rows(table: str, events: Sequence[Any]) -> TableRows:
    """Rows of same-typed events whose fields are the table's columns."""
    if not events:
        return TableRows(table, (), [])
    return TableRows(table, codec.row_columns(type(events[0])), [codec.to_row(e) for e in events])


def bar_rows(bars: Sequence[Bar]) -> TableRows:
    return event_rows(BARS, bars)


def feature_rows(vectors: Sequence[FeatureVector]) -> TableRows:
    return event_rows(FEATURES, vectors)


def dead_letter_rows(dead: DeadLetters) -> TableRows:
    cols = dead.columns()
    return TableRows(DEAD_LETTERS, tuple(cols), list(cols.values()), column_oriented=True)


SIGNAL_COLUMNS = (
    "symbol",
    "ts",
    "bar_start",
    "action",
    "confidence",
    "consensus",
    "buy_votes",
    "sell_votes",
    "volatility",
    "vol_blocked",
    "warm",
    "feature_set",
    "models",
    "versions",
    "actions",
    "confidences",
    "failed",
    "weights",
)


def signal_rows(signals: Sequence[Signal]) -> TableRows:
    """Signals with their votes as parallel arrays (see sql/ddl/050_signals.sql)."""
    return TableRows(
        SIGNALS,
        SIGNAL_COLUMNS,
        [
            (
                s.symbol,
                s.ts,
                s.bar_start,
                s.action.value,
                s.confidence,
                s.consensus.value,
                s.buy_votes,
                s.sell_votes,
                s.volatility,
                s.vol_blocked,
                s.warm,
                s.feature_set,
                [v.model for v in s.votes],
                [v.version for v in s.votes],
                [v.action.value for v in s.votes],
                [v.confidence for v in s.votes],
                [v.failed for v in s.votes],
                list(s.weights),
            )
            for s in signals
        ],
    )


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

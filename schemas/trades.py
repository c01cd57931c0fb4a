"""Trade events: ``trade.opened`` carries the complete entry state, ``trade.closed`` the outcome.

The audit found trades stored without their entry features and with the RL state and action
saved as ``None``, so the learning loop could not learn. Here a :class:`TradeOpened` cannot be
built without an :class:`EntryState`, and an ``EntryState`` refuses to exist without entry
features, all four votes, and a complete RL record (state vector, raw action, finite
log-probability and value, policy version): the defect is impossible by construction, not
checked after the fact. The ``trades`` table's entry columns are not Nullable either.

Kafka wire format: ``{"kind": "trade.opened" | "trade.closed" | "bar.decided", "seq": N,
"event": {...}}``. ``seq`` numbers the live flow's learning events in its decision engine's
order (:mod:`learning.learner` learns from them in that order; a repeated ``seq`` is a
duplicate). ``bar.decided`` is a :class:`~schemas.learning.ScoredBar`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from schemas import codec
from schemas.decisions import SupervisorMode
from schemas.learning import ScoredBar
from schemas.rl import SizingDecision
from schemas.signals import Action, Consensus, Vote


class Side(StrEnum):
    LONG = "long"
    SHORT = "short"

    @property
    def sign(self) -> float:
        return 1.0 if self is Side.LONG else -1.0


class ExitReason(StrEnum):
    TAKE_PROFIT = "take_profit"
    STOP_LOSS = "stop_loss"
    MAX_HOLDING = "max_holding"
    OPPOSITE_SIGNAL = "opposite_signal"
    END_OF_INPUT = "end_of_input"


class Sizing(StrEnum):
    """Which decision set the traded size: the PPO policy, or the fixed documented size
    (RL disabled or in shadow mode; the RL decision is still computed and recorded)."""

    RL = "rl"
    FIXED = "fixed"


class IncompleteEntryState(ValueError):
    """An entry state without features, votes or a complete RL record: never a trade."""


@dataclass(frozen=True, slots=True)
class SupervisorAtEntry:
    """The bias window when the trade's signal was judged (NaN shares when the supervisor was
    OFF and kept no window)."""

    mode: SupervisorMode
    buy_share: float
    sell_share: float
    window_size: int
    reason: str


@dataclass(frozen=True, slots=True)
class EntryState:
    """The state a trade was opened in: what the learning loop needs to learn from it."""

    features: dict[str, float]
    feature_set: str
    window: tuple[float, ...]
    votes: tuple[Vote, ...]
    confidence: float
    consensus: Consensus
    volatility: float
    supervisor: SupervisorAtEntry
    rl: SizingDecision
    sizing: Sizing

    def __post_init__(self) -> None:
        problems = []
        if not self.features:
            problems.append("no entry features")
        if not self.feature_set:
            problems.append("no feature-set version")
        if len(self.votes) < 4:
            problems.append(f"{len(self.votes)} votes, not 4")
        rl = self.rl
        if not rl.state or not all(math.isfinite(x) for x in rl.state):
            problems.append("RL state missing or not finite")
        if not rl.raw_action or not all(math.isfinite(x) for x in rl.raw_action):
            problems.append("RL action missing or not finite")
        if not (math.isfinite(rl.log_prob) and math.isfinite(rl.value)):
            problems.append("RL log-probability or value not finite")
        if not rl.policy_version:
            problems.append("no policy version")
        if problems:
            raise IncompleteEntryState("entry state refused: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class TradeOpened:
    trade_id: str
    symbol: str
    side: Side
    quantity: float
    entry_ts: datetime
    entry_price: float
    tp_price: float
    sl_price: float
    size_usd: float
    entry_fee: float
    entry: EntryState

    kind = "trade.opened"


@dataclass(frozen=True, slots=True)
class TradeClosed:
    """The outcome. ``exit_state`` is the RL next state (the sub-account after the close);
    PnL is in the quote currency: ``gross = sign x qty x (exit - entry)``, ``fees`` both fills,
    ``net = gross - fees``, ``pnl_pct = 100 x net / (qty x entry)``."""

    trade_id: str
    symbol: str
    side: Side
    exit_ts: datetime
    exit_price: float
    exit_reason: ExitReason
    gross_pnl: float
    fees: float
    net_pnl: float
    pnl_pct: float
    holding_seconds: float
    exit_state: tuple[float, ...]
    equity_after: float

    kind = "trade.closed"


TradeEvent = TradeOpened | TradeClosed
LearningEvent = TradeOpened | TradeClosed | ScoredBar
_KINDS: dict[str, type] = {
    TradeOpened.kind: TradeOpened,
    TradeClosed.kind: TradeClosed,
    ScoredBar.kind: ScoredBar,
}


def encode_event(event: LearningEvent, seq: int | None = None) -> bytes:
    doc: dict[str, Any] = {"kind": event.kind, "event": codec.to_json_dict(event)}
    if seq is not None:
        doc["seq"] = seq
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def decode_sequenced(payload: bytes | str) -> tuple[int | None, LearningEvent]:
    """Kafka JSON -> (seq, event); :class:`codec.SchemaError` (or IncompleteEntryState) if
    bad."""
    try:
        doc = json.loads(payload)
        cls = _KINDS[doc["kind"]]
        data = doc["event"]
        seq = doc.get("seq")
        if seq is not None and (not isinstance(seq, int) or seq < 0):
            raise ValueError(f"seq {seq!r} is not a sequence number")
    except (ValueError, KeyError, TypeError) as exc:
        raise codec.SchemaError(f"not a learning event: {exc!r}") from exc
    return seq, codec.from_json_dict(cls, data)


def decode_event(payload: bytes | str) -> LearningEvent:
    """Kafka JSON -> event (its ``seq`` dropped); see :func:`decode_sequenced`."""
    return decode_sequenced(payload)[1]


@dataclass(frozen=True, slots=True)
class TradeRecord:
    """A trade as the ``trades`` table stores it: opened, and closed once it is."""

    opened: TradeOpened
    closed: TradeClosed | None = None


def _exit(
    get: Callable[[TradeClosed], Any],
    while_open: Any = math.nan,
) -> Callable[[TradeRecord], Any]:
    """An exit column: ``get(closed)``, or ``while_open`` before the trade closed."""
    return lambda r: while_open if r.closed is None else get(r.closed)


# The one definition of the ``trades`` row (sql/ddl/070_trades.sql, ``written_at`` aside):
# each column with how a record gives it. Version 1 is the open row, 2 the closed one that
# supersedes it. tests/schemas/test_trades.py checks it against ``DESCRIBE TABLE trades``.
TRADE_FIELDS: tuple[tuple[str, Callable[[TradeRecord], Any]], ...] = (
    ("trade_id", lambda r: r.opened.trade_id),
    ("symbol", lambda r: r.opened.symbol),
    ("side", lambda r: r.opened.side.value),
    ("status", lambda r: "open" if r.closed is None else "closed"),
    ("version", lambda r: 1 if r.closed is None else 2),
    ("quantity", lambda r: r.opened.quantity),
    ("entry_ts", lambda r: r.opened.entry_ts),
    ("entry_price", lambda r: r.opened.entry_price),
    ("tp_price", lambda r: r.opened.tp_price),
    ("sl_price", lambda r: r.opened.sl_price),
    ("size_usd", lambda r: r.opened.size_usd),
    ("entry_fee", lambda r: r.opened.entry_fee),
    ("features", lambda r: r.opened.entry.features),
    ("feature_set", lambda r: r.opened.entry.feature_set),
    ("window", lambda r: list(r.opened.entry.window)),
    ("vote_models", lambda r: [v.model for v in r.opened.entry.votes]),
    ("vote_versions", lambda r: [v.version for v in r.opened.entry.votes]),
    ("vote_actions", lambda r: [v.action.value for v in r.opened.entry.votes]),
    ("vote_confidences", lambda r: [v.confidence for v in r.opened.entry.votes]),
    ("vote_failed", lambda r: [v.failed for v in r.opened.entry.votes]),
    ("confidence", lambda r: r.opened.entry.confidence),
    ("consensus", lambda r: r.opened.entry.consensus.value),
    ("volatility", lambda r: r.opened.entry.volatility),
    ("sup_mode", lambda r: r.opened.entry.supervisor.mode.value),
    ("sup_buy_share", lambda r: r.opened.entry.supervisor.buy_share),
    ("sup_sell_share", lambda r: r.opened.entry.supervisor.sell_share),
    ("sup_window_size", lambda r: r.opened.entry.supervisor.window_size),
    ("sup_reason", lambda r: r.opened.entry.supervisor.reason),
    ("rl_state", lambda r: list(r.opened.entry.rl.state)),
    ("rl_action", lambda r: list(r.opened.entry.rl.raw_action)),
    ("rl_log_prob", lambda r: r.opened.entry.rl.log_prob),
    ("rl_value", lambda r: r.opened.entry.rl.value),
    ("policy_version", lambda r: r.opened.entry.rl.policy_version),
    ("rl_stochastic", lambda r: r.opened.entry.rl.stochastic),
    ("rl_degenerate", lambda r: r.opened.entry.rl.degenerate),
    ("rl_size_usd", lambda r: r.opened.entry.rl.position_size_usd),
    ("rl_tp_pct", lambda r: r.opened.entry.rl.tp_pct),
    ("rl_sl_pct", lambda r: r.opened.entry.rl.sl_pct),
    ("sizing", lambda r: r.opened.entry.sizing.value),
    ("exit_ts", _exit(lambda c: c.exit_ts, None)),
    ("exit_price", _exit(lambda c: c.exit_price)),
    ("exit_reason", _exit(lambda c: c.exit_reason.value, "")),
    ("gross_pnl", _exit(lambda c: c.gross_pnl)),
    ("fees", lambda r: r.opened.entry_fee if r.closed is None else r.closed.fees),
    ("net_pnl", _exit(lambda c: c.net_pnl)),
    ("pnl_pct", _exit(lambda c: c.pnl_pct)),
    ("holding_seconds", _exit(lambda c: c.holding_seconds)),
    ("exit_state", _exit(lambda c: list(c.exit_state), [])),
    ("equity_after", _exit(lambda c: c.equity_after)),
)
TRADE_COLUMNS = tuple(name for name, _ in TRADE_FIELDS)


def trade_row(rec: TradeRecord) -> tuple[Any, ...]:
    """The ``trades`` row of ``rec``, in :data:`TRADE_COLUMNS` order."""
    return tuple(get(rec) for _, get in TRADE_FIELDS)


def opened_from_row(row: dict[str, Any]) -> TradeOpened:
    """The ``trade.opened`` a ``trades`` row was written from (the learning flow's fallback
    when the opened event is not in its stream). Raises :class:`IncompleteEntryState` when
    the stored entry state is incomplete."""
    votes = tuple(
        Vote(m, v, Action(a), float(c), bool(f))
        for m, v, a, c, f in zip(
            row["vote_models"],
            row["vote_versions"],
            row["vote_actions"],
            row["vote_confidences"],
            row["vote_failed"],
            strict=True,
        )
    )
    rl = SizingDecision(
        state=tuple(float(x) for x in row["rl_state"]),
        raw_action=tuple(float(x) for x in row["rl_action"]),
        log_prob=float(row["rl_log_prob"]),
        value=float(row["rl_value"]),
        policy_version=row["policy_version"],
        position_size_usd=float(row["rl_size_usd"]),
        tp_pct=float(row["rl_tp_pct"]),
        sl_pct=float(row["rl_sl_pct"]),
        degenerate=bool(row["rl_degenerate"]),
        stochastic=bool(row["rl_stochastic"]),
    )
    entry = EntryState(
        features={k: float(v) for k, v in row["features"].items()},
        feature_set=row["feature_set"],
        window=tuple(float(x) for x in row["window"]),
        votes=votes,
        confidence=float(row["confidence"]),
        consensus=Consensus(row["consensus"]),
        volatility=float(row["volatility"]),
        supervisor=SupervisorAtEntry(
            SupervisorMode(row["sup_mode"]),
            float(row["sup_buy_share"]),
            float(row["sup_sell_share"]),
            int(row["sup_window_size"]),
            row["sup_reason"],
        ),
        rl=rl,
        sizing=Sizing(row["sizing"]),
    )
    return TradeOpened(
        trade_id=row["trade_id"],
        symbol=row["symbol"],
        side=Side(row["side"]),
        quantity=float(row["quantity"]),
        entry_ts=row["entry_ts"],
        entry_price=float(row["entry_price"]),
        tp_price=float(row["tp_price"]),
        sl_price=float(row["sl_price"]),
        size_usd=float(row["size_usd"]),
        entry_fee=float(row["entry_fee"]),
        entry=entry,
    )


class JoinSource(StrEnum):
    STREAM = "stream"  # both halves came through the trade-events stream
    STORE = "store"  # the opened half was read back from the trades table


@dataclass(frozen=True, slots=True)
class JoinedTrade:
    """A closed trade with the state it was opened in: what the learners consume."""

    opened: TradeOpened
    closed: TradeClosed
    source: JoinSource

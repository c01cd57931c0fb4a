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
_KINDS: dict[str, type] = {TradeOpened.kind: TradeOpened, TradeClosed.kind: TradeClosed,
                           ScoredBar.kind: ScoredBar}


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


TRADE_COLUMNS = (
    "trade_id", "symbol", "side", "status", "version", "quantity", "entry_ts", "entry_price",
    "tp_price", "sl_price", "size_usd", "entry_fee", "features", "feature_set", "window",
    "vote_models", "vote_versions", "vote_actions", "vote_confidences", "vote_failed",
    "confidence", "consensus", "volatility", "sup_mode", "sup_buy_share", "sup_sell_share",
    "sup_window_size", "sup_reason", "rl_state", "rl_action", "rl_log_prob", "rl_value",
    "policy_version", "rl_stochastic", "rl_degenerate", "rl_size_usd", "rl_tp_pct",
    "rl_sl_pct", "sizing", "exit_ts", "exit_price", "exit_reason", "gross_pnl", "fees",
    "net_pnl", "pnl_pct", "holding_seconds", "exit_state", "equity_after",
)


def trade_row(rec: TradeRecord) -> tuple[Any, ...]:
    """The ``trades`` row (sql/ddl/070_trades.sql): version 1 open, 2 closed."""
    o, c, e = rec.opened, rec.closed, rec.opened.entry
    rl, sup = e.rl, e.supervisor
    nan = math.nan
    return (
        o.trade_id, o.symbol, o.side.value, "open" if c is None else "closed",
        1 if c is None else 2, o.quantity, o.entry_ts, o.entry_price, o.tp_price, o.sl_price,
        o.size_usd, o.entry_fee, e.features, e.feature_set, list(e.window),
        [v.model for v in e.votes], [v.version for v in e.votes],
        [v.action.value for v in e.votes], [v.confidence for v in e.votes],
        [v.failed for v in e.votes], e.confidence, e.consensus.value, e.volatility,
        sup.mode.value, sup.buy_share, sup.sell_share, sup.window_size, sup.reason,
        list(rl.state), list(rl.raw_action), rl.log_prob, rl.value, rl.policy_version,
        rl.stochastic, rl.degenerate, rl.position_size_usd, rl.tp_pct, rl.sl_pct,
        e.sizing.value,
        None if c is None else c.exit_ts, nan if c is None else c.exit_price,
        "" if c is None else c.exit_reason.value, nan if c is None else c.gross_pnl,
        o.entry_fee if c is None else c.fees, nan if c is None else c.net_pnl,
        nan if c is None else c.pnl_pct, nan if c is None else c.holding_seconds,
        [] if c is None else list(c.exit_state), nan if c is None else c.equity_after,
    )


def opened_from_row(row: dict[str, Any]) -> TradeOpened:
    """The ``trade.opened`` a ``trades`` row was written from (the learning flow's fallback
    when the opened event is not in its stream). Raises :class:`IncompleteEntryState` when
    the stored entry state is incomplete."""
    votes = tuple(
        Vote(m, v, Action(a), float(c), bool(f)) for m, v, a, c, f in zip(
            row["vote_models"], row["vote_versions"], row["vote_actions"],
            row["vote_confidences"], row["vote_failed"], strict=True))
    rl = SizingDecision(
        state=tuple(float(x) for x in row["rl_state"]),
        raw_action=tuple(float(x) for x in row["rl_action"]),
        log_prob=float(row["rl_log_prob"]), value=float(row["rl_value"]),
        policy_version=row["policy_version"], position_size_usd=float(row["rl_size_usd"]),
        tp_pct=float(row["rl_tp_pct"]), sl_pct=float(row["rl_sl_pct"]),
        degenerate=bool(row["rl_degenerate"]), stochastic=bool(row["rl_stochastic"]))
    entry = EntryState(
        features={k: float(v) for k, v in row["features"].items()},
        feature_set=row["feature_set"], window=tuple(float(x) for x in row["window"]),
        votes=votes, confidence=float(row["confidence"]),
        consensus=Consensus(row["consensus"]), volatility=float(row["volatility"]),
        supervisor=SupervisorAtEntry(SupervisorMode(row["sup_mode"]), float(row["sup_buy_share"]),
                                     float(row["sup_sell_share"]), int(row["sup_window_size"]),
                                     row["sup_reason"]),
        rl=rl, sizing=Sizing(row["sizing"]))
    return TradeOpened(
        trade_id=row["trade_id"], symbol=row["symbol"], side=Side(row["side"]),
        quantity=float(row["quantity"]), entry_ts=row["entry_ts"],
        entry_price=float(row["entry_price"]), tp_price=float(row["tp_price"]),
        sl_price=float(row["sl_price"]), size_usd=float(row["size_usd"]),
        entry_fee=float(row["entry_fee"]), entry=entry)


class JoinSource(StrEnum):
    STREAM = "stream"  # both halves came through the trade-events stream
    STORE = "store"    # the opened half was read back from the trades table


@dataclass(frozen=True, slots=True)
class JoinedTrade:
    """A closed trade with the state it was opened in: what the learners consume."""

    opened: TradeOpened
    closed: TradeClosed
    source: JoinSource

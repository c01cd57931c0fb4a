"""The trade join of the learning dataflow: ``trade.closed`` + its entry state -> JoinedTrade.

``op.join(..., emit_mode="complete")`` never expires an unmatched half (DESIGN.md section 4), so
the join is an ``op.stateful`` step keyed by trade id, with a time-to-live in event time.
:class:`TradeJoiner` is the state of one trade id as a plain class; :func:`join_trades` runs it.

Rules
- **One join per trade.** A trade whose two halves are seen, in either order, gives exactly one
  :class:`~schemas.trades.JoinedTrade` (``source=stream``). Both halves must agree (symbol,
  side, exit not before entry), else both become dead letters.
- **Duplicates** (the trade-events source is at-least-once) are dropped, also after the join:
  the key keeps a small "joined" marker until the TTL has passed since the later half's event
  time, then its state is discarded, so memory is bounded by the trades of one TTL. A replayed
  event is identical to the first; when two copies differ, the first one seen wins.
- **Orphan close.** A ``trade.closed`` whose opened half has not been seen is looked up at once
  with ``lookup(trade_id)`` (in the flow: the ``trades`` table via
  :func:`~schemas.trades.opened_from_row`; ``source=store``). If the store has nothing, the
  closed half waits for its opened half; when the TTL passes first the lookup is retried once,
  then the half becomes a dead letter. A stored entry state that is incomplete
  (``IncompleteEntryState``) is a dead letter at once. Any other lookup failure stops the flow
  with the step id in the message (a store outage must not turn trades into dead letters).
- **Orphan open.** A ``trade.opened`` not closed within the TTL is a dead letter ("never closed
  within TTL"). The TTL must therefore exceed the longest holding time
  (``QT_MAX_HOLDING_SECONDS``) plus the skew between trade-event partitions.
- **Late on arrival.** An event for a trade id with no state, already older than the clock by
  more than the TTL, is a dead letter at once: it is a duplicate of a trade whose state was
  already discarded, or an event delayed past the TTL; joining it could join a trade twice.
- **End of input** (``on_eof``) resolves pending halves the same way (a closed half is looked
  up; otherwise a dead letter with reason "end of input"); joined markers are kept, so a
  resumed execution still drops duplicates.

Dead letters: stage ``join``, ``source = "trade-join:<trade id>"``, ``row`` 0 for the opened half
and 1 for the closed half (deterministic ids, so a replay rewrites the same rows), ``raw`` the
event's Kafka JSON (:func:`~schemas.trades.encode_event`), and a reason naming the missing half.

Time. Keyed by trade id, a key sees only its own trade's events, so the TTL runs on one event
clock per operator instance: the newest ``entry_ts`` / ``exit_ts`` seen by the step, shared
(under a lock) by every key and worker thread of the process. With several processes each has
its own clock, advanced by the events routed to its workers. A key checks expiry whenever it
gets an item (after handling the item, so a half that arrives before the timer fires still
joins) and in ``on_notify``; while it holds a pending half it asks to be notified every
``poll`` of processing time (``notify_at`` = now + ``poll``; "now" would busy-loop), while it
holds only a joined marker every ``marker_poll``. A snapshot carries the clock, so a resumed
process starts from at least the clock its restored keys had seen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulLogic

from runtime import STOP
from schemas.dead_letters import DeadLetters, Stage
from schemas.timeutil import to_ms
from schemas.trades import (
    IncompleteEntryState,
    JoinedTrade,
    JoinSource,
    TradeClosed,
    TradeEvent,
    TradeOpened,
    encode_event,
)

NEVER = -(2**62)  # the clock before any event; far from int64 overflow when a TTL is added
OPENED_ROW, CLOSED_ROW = 0, 1
DEFAULT_POLL = timedelta(milliseconds=500)
DEFAULT_MARKER_POLL = timedelta(seconds=5)

Lookup = Callable[[str], TradeOpened | None]
JoinOut = JoinedTrade | DeadLetters


def event_ms(event: TradeEvent) -> int:
    """The event time of a trade event: entry time when opened, exit time when closed."""
    return to_ms(event.entry_ts if isinstance(event, TradeOpened) else event.exit_ts)


def dead_letter_source(trade_id: str) -> str:
    return f"trade-join:{trade_id}"


class JoinClock:
    """The event time the step judges lateness and TTLs by (thread-safe, monotonic).

    It follows the newest event time seen in this process, but settles on it only once
    ``settle_s`` of processing time has passed since it last moved: Bytewax hands a stateful
    step the events of one activation key by key, not in arrival order, so a replayed topic
    read in one poll would otherwise judge a symbol's early trades "late" against another
    symbol's later ones. Events that arrive together are judged against the same clock.
    """

    def __init__(self, ms: int = NEVER, settle_s: float = 0.0) -> None:
        self._ms = ms        # the settled clock
        self._newest = ms    # the newest event time seen
        self._settle_s = settle_s
        self._moved = time.monotonic()
        self._lock = threading.Lock()

    def _settle(self) -> None:
        if self._newest > self._ms and time.monotonic() - self._moved >= self._settle_s:
            self._ms = self._newest
            self._moved = time.monotonic()

    def advance(self, ms: int) -> int:
        """Note an event at ``ms``; returns the (settled) clock."""
        with self._lock:
            if ms > self._newest:
                self._newest = ms
            self._settle()
            return self._ms

    def now(self) -> int:
        with self._lock:
            self._settle()
            return self._ms


class TradeJoiner:
    """The join state of one trade id: a pending half, or a joined marker, or nothing.

    Plain Python: ``push`` an event with the current event clock, ``expire`` on a timer,
    ``finish`` at end of input; each returns the JoinedTrade / DeadLetters to emit. ``done``
    says the state can be discarded.
    """

    def __init__(self, trade_id: str, ttl_ms: int, lookup: Lookup) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"trade join TTL must be positive, got {ttl_ms} ms")
        self.trade_id, self.ttl_ms, self.lookup = trade_id, ttl_ms, lookup
        self.opened: TradeOpened | None = None
        self.closed: TradeClosed | None = None
        self.joined_ms: int | None = None  # the joined marker: event time of the later half
        self.duplicates = 0

    @property
    def pending(self) -> bool:
        """A half is waiting for its other half."""
        return self.joined_ms is None and (self.opened is not None or self.closed is not None)

    @property
    def done(self) -> bool:
        """Nothing left to remember: the key's state can be discarded."""
        return self.joined_ms is None and self.opened is None and self.closed is None

    # --- events ----------------------------------------------------------------------------
    def push(self, event: TradeEvent, now_ms: int) -> list[JoinOut]:
        """Take one event; ``now_ms`` is the step's event clock (already advanced by it)."""
        if event.trade_id != self.trade_id:
            raise ValueError(f"trade join state for {self.trade_id!r} got an event of trade "
                             f"{event.trade_id!r}")
        if self.joined_ms is not None:
            self.duplicates += 1
            return self.expire(now_ms)
        if self.done and now_ms - event_ms(event) > self.ttl_ms:
            return [self._dead(event, f"{event.kind} arrived {now_ms - event_ms(event)} ms "
                                      f"behind the event clock, past the TTL of {self.ttl_ms} "
                                      "ms (a late event, or a duplicate of a trade already "
                                      "joined and forgotten)")]
        out: list[JoinOut] = []
        if isinstance(event, TradeOpened):
            if self.opened is not None:
                self.duplicates += 1
            elif self.closed is not None:
                out += self._join(event, self.closed, JoinSource.STREAM)
            else:
                self.opened = event
        else:
            if self.closed is not None:
                self.duplicates += 1
            elif self.opened is not None:
                out += self._join(self.opened, event, JoinSource.STREAM)
            else:
                out += self._from_store(event, None)
        return out + self.expire(now_ms)

    def expire(self, now_ms: int) -> list[JoinOut]:
        """Apply the TTL at event clock ``now_ms``: resolve an expired half, drop a marker."""
        out: list[JoinOut] = []
        if self.opened is not None and now_ms - event_ms(self.opened) > self.ttl_ms:
            out = [self._dead(self.opened, f"trade.opened never closed within TTL "
                                           f"({self.ttl_ms} ms of event time)", clear=True)]
        elif self.closed is not None and now_ms - event_ms(self.closed) > self.ttl_ms:
            out = self._from_store(self.closed, f"trade.closed without its trade.opened (not "
                                                f"in the stream nor the trades table): TTL "
                                                f"({self.ttl_ms} ms of event time) expired")
        if self.joined_ms is not None and now_ms - self.joined_ms > self.ttl_ms:
            self.joined_ms = None
        return out

    def finish(self) -> list[JoinOut]:
        """End of input: resolve a pending half now; a joined marker is kept."""
        if self.opened is not None and self.joined_ms is None:
            return [self._dead(self.opened, "trade.opened never closed: end of input",
                               clear=True)]
        if self.closed is not None and self.joined_ms is None:
            return self._from_store(self.closed, "trade.closed without its trade.opened (not "
                                                 "in the stream nor the trades table): end of "
                                                 "input")
        return []

    # --- resolution ------------------------------------------------------------------------
    def _from_store(self, closed: TradeClosed, give_up: str | None) -> list[JoinOut]:
        """Join ``closed`` with the stored entry state; if none: wait (``give_up`` None) or
        dead-letter it with reason ``give_up``."""
        try:
            opened = self.lookup(self.trade_id)
        except IncompleteEntryState as exc:
            return [self._dead(closed, f"stored entry state of the trade is incomplete: {exc}",
                               clear=True)]
        if opened is not None:
            return self._join(opened, closed, JoinSource.STORE)
        if give_up is None:
            self.closed = closed
            return []
        return [self._dead(closed, give_up, clear=True)]

    def _join(self, opened: TradeOpened, closed: TradeClosed,
              source: JoinSource) -> list[JoinOut]:
        """The one join of this trade (or two dead letters when the halves disagree)."""
        self.opened = self.closed = None
        self.joined_ms = max(event_ms(opened), event_ms(closed))
        problems = []
        if opened.trade_id != closed.trade_id:
            problems.append(f"trade id {opened.trade_id} vs {closed.trade_id}")
        if opened.symbol != closed.symbol:
            problems.append(f"symbol {opened.symbol} vs {closed.symbol}")
        if opened.side is not closed.side:
            problems.append(f"side {opened.side.value} vs {closed.side.value}")
        if closed.exit_ts < opened.entry_ts:
            problems.append("exit before entry")
        if not problems:
            return [JoinedTrade(opened, closed, source)]
        why = f"trade.opened ({source.value}) and trade.closed disagree: " + "; ".join(problems)
        return [self._dead(opened, why), self._dead(closed, why)]

    def _dead(self, event: TradeEvent, reason: str, clear: bool = False) -> DeadLetters:
        if clear:
            self.opened = self.closed = None
        dead = DeadLetters()
        dead.add(dead_letter_source(self.trade_id),
                 OPENED_ROW if isinstance(event, TradeOpened) else CLOSED_ROW,
                 event_ms(event), event.symbol, Stage.JOIN, reason, encode_event(event).decode())
        return dead

    # --- recovery --------------------------------------------------------------------------
    def snapshot(self) -> tuple[str, TradeOpened | None, TradeClosed | None, int | None, int]:
        """Picklable, immutable state (the events are frozen dataclasses)."""
        return self.trade_id, self.opened, self.closed, self.joined_ms, self.duplicates

    @classmethod
    def restore(cls, ttl_ms: int, lookup: Lookup, state: tuple[Any, ...]) -> TradeJoiner:
        trade_id, opened, closed, joined_ms, duplicates = state
        joiner = cls(trade_id, ttl_ms, lookup)
        joiner.opened, joiner.closed, joiner.joined_ms = opened, closed, joined_ms
        joiner.duplicates = duplicates
        return joiner


class TradeJoinLogic(StatefulLogic[TradeEvent, JoinOut, Any]):
    """Runs one :class:`TradeJoiner` on the step's shared :class:`JoinClock`."""

    def __init__(self, ttl_ms: int, lookup: Lookup, clock: JoinClock, poll: timedelta,
                 marker_poll: timedelta, resume: Any | None) -> None:
        self.ttl_ms, self.lookup, self.clock = ttl_ms, lookup, clock
        self.poll, self.marker_poll = poll, marker_poll
        self.joiner: TradeJoiner | None = None
        if resume is not None:
            state, clock_ms = resume
            self.clock.advance(clock_ms)
            self.joiner = TradeJoiner.restore(ttl_ms, lookup, state)

    def _result(self, out: list[JoinOut]) -> tuple[list[JoinOut], bool]:
        assert self.joiner is not None
        return out, StatefulLogic.DISCARD if self.joiner.done else StatefulLogic.RETAIN

    def on_item(self, value: TradeEvent) -> tuple[list[JoinOut], bool]:
        now = self.clock.advance(event_ms(value))
        if self.joiner is None:
            self.joiner = TradeJoiner(value.trade_id, self.ttl_ms, self.lookup)
        return self._result(self.joiner.push(value, now))

    def on_notify(self) -> tuple[list[JoinOut], bool]:
        if self.joiner is None:
            return [], StatefulLogic.DISCARD
        return self._result(self.joiner.expire(self.clock.now()))

    def on_eof(self) -> tuple[list[JoinOut], bool]:
        if self.joiner is None:
            return [], StatefulLogic.DISCARD
        if STOP.requested:  # a stop, not the end: the pending half waits for the resume
            return [], StatefulLogic.RETAIN
        return self._result(self.joiner.finish())

    def notify_at(self) -> datetime | None:
        if self.joiner is None or self.joiner.done:
            return None
        return datetime.now(UTC) + (self.poll if self.joiner.pending else self.marker_poll)

    def snapshot(self) -> Any:
        return (None if self.joiner is None else self.joiner.snapshot()), self.clock.now()


@dataclass(frozen=True)
class JoinStreams:
    """The two outputs of :func:`join_trades`."""

    joined: Stream[JoinedTrade]
    dead: Stream[DeadLetters]


@operator
def join_trades(step_id: str, events: Stream[TradeOpened | TradeClosed], ttl_ms: int,
                lookup: Lookup, poll: timedelta = DEFAULT_POLL,
                marker_poll: timedelta = DEFAULT_MARKER_POLL) -> JoinStreams:
    """Join each trade's opened and closed halves (see the module docstring)."""
    if ttl_ms <= 0:
        raise ValueError(f"{step_id}: TTL must be positive, got {ttl_ms} ms")
    if poll <= timedelta(0) or marker_poll <= timedelta(0):
        raise ValueError(f"{step_id}: notification intervals must be positive, got {poll} and "
                         f"{marker_poll}")
    clock = JoinClock(settle_s=poll.total_seconds())

    def checked_lookup(trade_id: str) -> TradeOpened | None:
        try:
            return lookup(trade_id)
        except IncompleteEntryState:
            raise
        except Exception as exc:
            raise RuntimeError(f"{step_id}: looking up the entry state of trade {trade_id} "
                               f"failed: {exc!r}") from exc

    keyed = op.key_on("by_trade_id", events, lambda e: e.trade_id)
    out = op.stateful("join", keyed, lambda resume: TradeJoinLogic(
        ttl_ms, checked_lookup, clock, poll, marker_poll, resume))
    split = op.branch("split", op.key_rm("unkey", out),
                      lambda x: isinstance(x, JoinedTrade))
    return JoinStreams(split.trues, split.falses)

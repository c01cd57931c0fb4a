"""The trade join of the learning dataflow: ``trade.closed`` + its entry state -> JoinedTrade.

The learning flow of the two-process deployment (:mod:`learning.learner`) reads the live flow's
trade events in the live engine's order and joins each ``trade.closed`` with its entry state,
with a time-to-live in event time (a Bytewax ``op.join`` would never expire an unmatched half).
:class:`TradeJoiner` is the state of one trade id; :class:`TradeJoins` holds them all on one
event clock. (In embedded mode the engine has both halves in hand and joins them itself.)

Rules
- **One join per trade.** A trade whose two halves are seen, in either order, gives exactly one
  :class:`~schemas.trades.JoinedTrade` (``source=stream``). Both halves must agree (symbol,
  side, exit not before entry), else both become dead letters.
- **Duplicates** (the trade-events source is at-least-once) are dropped, also after the join:
  the key keeps a small "joined" marker until the TTL has passed since the later half's event
  time, then its state is discarded, so memory is bounded by the trades of one TTL. A replayed
  event is identical to the first; when two copies differ, the first one seen wins.
- **Orphan close.** A ``trade.closed`` whose opened half has not been seen (the learning flow
  started after it, or the topic lost it) is looked up at once with ``lookup(trade_id)`` (the
  ``trades`` table via :func:`~schemas.trades.opened_from_row`; ``source=store``). If the
  store has nothing, the closed half waits for its opened half; when the TTL passes first the
  lookup is retried once, then the half becomes a dead letter. A stored entry state that is
  incomplete (``IncompleteEntryState``) is a dead letter at once. Any other lookup failure
  stops the flow (a store outage must not turn trades into dead letters).
- **Orphan open.** A ``trade.opened`` not closed within the TTL is a dead letter ("never closed
  within TTL"). The TTL must therefore exceed the longest holding time
  (``QT_MAX_HOLDING_SECONDS``).
- **Late on arrival.** An event for a trade id with no state, already older than the clock by
  more than the TTL, is a dead letter at once: it is a duplicate of a trade whose state was
  already discarded, or an event delayed past the TTL; joining it could join a trade twice.
- **End of input** resolves pending halves the same way (a closed half is looked up;
  otherwise a dead letter with reason "end of input"); joined markers are kept, so a resumed
  execution still drops duplicates. A requested stop is not an end: nothing is resolved.

Dead letters: stage ``join``, ``source = "trade-join:<trade id>"``, ``row`` 0 for the opened half
and 1 for the closed half (deterministic ids, so a replay rewrites the same rows), ``raw`` the
event's Kafka JSON (:func:`~schemas.trades.encode_event`), and a reason naming the missing half.

Time: the newest ``entry_ts`` / ``exit_ts`` of the ordered stream; a TTL is checked after every
event, earliest deadline first.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from schemas.dead_letters import DeadLetters, RejectedAt
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

Lookup = Callable[[str], TradeOpened | None]
JoinOut = JoinedTrade | DeadLetters


def event_ms(event: TradeEvent) -> int:
    """The event time of a trade event: entry time when opened, exit time when closed."""
    return to_ms(event.entry_ts if isinstance(event, TradeOpened) else event.exit_ts)


def dead_letter_source(trade_id: str) -> str:
    return f"trade-join:{trade_id}"


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
            raise ValueError(
                f"trade join state for {self.trade_id!r} got an event of trade {event.trade_id!r}"
            )
        if self.joined_ms is not None:
            self.duplicates += 1
            return self.expire(now_ms)
        if self.done and now_ms - event_ms(event) > self.ttl_ms:
            return [
                self._dead(
                    event,
                    f"{event.kind} arrived {now_ms - event_ms(event)} ms "
                    f"behind the event clock, past the TTL of {self.ttl_ms} "
                    "ms (a late event, or a duplicate of a trade already "
                    "joined and forgotten)",
                )
            ]
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
            out = [
                self._dead(
                    self.opened,
                    f"trade.opened never closed within TTL ({self.ttl_ms} ms of event time)",
                    clear=True,
                )
            ]
        elif self.closed is not None and now_ms - event_ms(self.closed) > self.ttl_ms:
            out = self._from_store(
                self.closed,
                f"trade.closed without its trade.opened (not "
                f"in the stream nor the trades table): TTL "
                f"({self.ttl_ms} ms of event time) expired",
            )
        if self.joined_ms is not None and now_ms - self.joined_ms > self.ttl_ms:
            self.joined_ms = None
        return out

    def finish(self) -> list[JoinOut]:
        """End of input: resolve a pending half now; a joined marker is kept."""
        if self.opened is not None and self.joined_ms is None:
            return [self._dead(self.opened, "trade.opened never closed: end of input", clear=True)]
        if self.closed is not None and self.joined_ms is None:
            return self._from_store(
                self.closed,
                "trade.closed without its trade.opened (not "
                "in the stream nor the trades table): end of "
                "input",
            )
        return []

    # --- resolution ------------------------------------------------------------------------
    def _from_store(self, closed: TradeClosed, give_up: str | None) -> list[JoinOut]:
        """Join ``closed`` with the stored entry state; if none: wait (``give_up`` None) or
        dead-letter it with reason ``give_up``."""
        try:
            opened = self.lookup(self.trade_id)
        except IncompleteEntryState as exc:
            return [
                self._dead(
                    closed, f"stored entry state of the trade is incomplete: {exc}", clear=True
                )
            ]
        except Exception as exc:  # a store outage stops the flow; it must not lose the trade
            raise RuntimeError(
                f"trade join: looking up the entry state of trade {self.trade_id} failed: {exc}"
            ) from exc
        if opened is not None:
            return self._join(opened, closed, JoinSource.STORE)
        if give_up is None:
            self.closed = closed
            return []
        return [self._dead(closed, give_up, clear=True)]

    def _join(self, opened: TradeOpened, closed: TradeClosed, source: JoinSource) -> list[JoinOut]:
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
        dead.add(
            dead_letter_source(self.trade_id),
            OPENED_ROW if isinstance(event, TradeOpened) else CLOSED_ROW,
            event_ms(event),
            event.symbol,
            RejectedAt.JOIN,
            reason,
            encode_event(event).decode(),
        )
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


class TradeJoins:
    """Every trade's join state, judged by one event clock: the newest event time of the
    ordered learning stream (:mod:`learning.learner`), so a replay judges TTLs identically.

    ``push`` one event, ``finish`` at end of input; each returns the JoinedTrade /
    DeadLetters to emit, in a defined order. Expiry is checked after every event, earliest
    deadline first (a heap: the states kept are one per trade of the last TTL).
    """

    def __init__(self, ttl_ms: int, lookup: Lookup, state: dict[str, Any] | None = None) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"trade join TTL must be positive, got {ttl_ms} ms")
        self.ttl_ms, self.lookup = ttl_ms, lookup
        state = state or {}
        self.now_ms: int = state.get("now_ms", NEVER)
        self.joiners: dict[str, TradeJoiner] = {
            tid: TradeJoiner.restore(ttl_ms, lookup, s)
            for tid, s in state.get("joiners", {}).items()
        }
        self._deadlines: list[tuple[int, str]] = []
        for tid in sorted(self.joiners):
            self._schedule(self.joiners[tid])

    def push(self, event: TradeEvent) -> list[JoinOut]:
        self.now_ms = max(self.now_ms, event_ms(event))
        joiner = self.joiners.get(event.trade_id)
        if joiner is None:
            joiner = self.joiners[event.trade_id] = TradeJoiner(
                event.trade_id, self.ttl_ms, self.lookup
            )
        out = joiner.push(event, self.now_ms)
        self._settle(joiner)
        return out + self._expire()

    def _deadline(self, j: TradeJoiner) -> int | None:
        times = [event_ms(e) for e in (j.opened, j.closed) if e is not None]
        if j.joined_ms is not None:
            times.append(j.joined_ms)
        return min(times) + self.ttl_ms if times else None

    def _schedule(self, j: TradeJoiner) -> None:
        deadline = self._deadline(j)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, j.trade_id))

    def _settle(self, j: TradeJoiner) -> None:
        if j.done:
            self.joiners.pop(j.trade_id, None)
        else:
            self._schedule(j)

    def _expire(self) -> list[JoinOut]:
        out: list[JoinOut] = []
        while self._deadlines and self._deadlines[0][0] < self.now_ms:
            _, tid = heapq.heappop(self._deadlines)
            j = self.joiners.get(tid)
            if j is None or (self._deadline(j) or self.now_ms) >= self.now_ms:
                continue  # resolved since, or a later deadline is scheduled
            out += j.expire(self.now_ms)
            self._settle(j)
        return out

    def finish(self) -> list[JoinOut]:
        """End of input: resolve every pending half (trade id order); markers are kept."""
        out: list[JoinOut] = []
        for tid in sorted(self.joiners):
            out += self.joiners[tid].finish()
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "now_ms": self.now_ms,
            "joiners": {tid: j.snapshot() for tid, j in self.joiners.items()},
        }

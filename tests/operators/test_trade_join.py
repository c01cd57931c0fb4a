"""The trade join: both orders, duplicates, orphans from the store, TTL in event time, EOF.

Each rule is checked on :class:`TradeJoiner` as plain Python and again through a small
dataflow (TestingSource -> join_trades -> TestingSink). Expiry in the dataflow needs
processing time to pass while the source is idle, so those tests use ``TestingSource.PAUSE``
with a short notification interval.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from operators.trade_join import (
    JoinClock,
    TradeJoiner,
    TradeJoinLogic,
    join_trades,
)
from schemas.dead_letters import DeadLetter, DeadLetters, Stage
from schemas.decisions import SupervisorMode
from schemas.rl import SizingDecision
from schemas.signals import Action, Consensus, Vote
from schemas.tables import trade_rows
from schemas.timeutil import from_ms
from schemas.trades import (
    EntryState,
    ExitReason,
    IncompleteEntryState,
    JoinedTrade,
    JoinSource,
    Side,
    Sizing,
    SupervisorAtEntry,
    TradeClosed,
    TradeOpened,
    TradeRecord,
    decode_event,
    opened_from_row,
)

T0 = 1_399_334_400_000  # 2014-05-06T00:00:00Z
MIN = 60_000
TTL = 60 * MIN
FAST = timedelta(milliseconds=20)  # notification interval in the dataflow tests
MODELS = ("xgboost", "lightgbm", "nhits", "patchtst")


# --- realistic events --------------------------------------------------------------------
# Values are exact in float32, so an entry state read back from the trades table (window and
# RL arrays are Float32 there) compares equal to the event it was written from.

def opened(tid: str, at_ms: int, symbol: str = "EURUSD", side: Side = Side.LONG) -> TradeOpened:
    votes = tuple(Vote(m, f"{m}-v3", a, c) for m, a, c in zip(
        MODELS, (Action.BUY, Action.BUY, Action.BUY, Action.HOLD), (0.75, 0.625, 0.875, 0.5),
        strict=True))
    rl = SizingDecision(state=(10_000.0, 0.0625, 0.5, -0.25, 0.8125, 0.0),
                        raw_action=(0.125, -0.5, 0.25), log_prob=-2.3125, value=0.375,
                        policy_version="ppo-v7", position_size_usd=1_000.0, tp_pct=0.25,
                        sl_pct=0.125, degenerate=False, stochastic=True)
    entry = EntryState(
        features={"ret_1": 0.00012, "ret_5": -0.0004, "vol_daily": 0.0061, "rsi_14": 55.2},
        feature_set="fs-2", window=(1.375, 1.5, 1.25, 1.375), votes=votes, confidence=0.82,
        consensus=Consensus.STRONG, volatility=0.0061,
        supervisor=SupervisorAtEntry(SupervisorMode.ENFORCED, 0.55, 0.45, 40,
                                     "no bias detected"),
        rl=rl, sizing=Sizing.RL)
    price = 1.3875
    sign = side.sign
    return TradeOpened(tid, symbol, side, 1_000.0 / price, from_ms(at_ms), price,
                       price * (1 + sign * 0.0025), price * (1 - sign * 0.00125), 1_000.0, 0.05,
                       entry)


def closed(tid: str, at_ms: int, symbol: str = "EURUSD", side: Side = Side.LONG,
           held_ms: int = 5 * MIN) -> TradeClosed:
    return TradeClosed(tid, symbol, side, from_ms(at_ms), 1.3910, ExitReason.TAKE_PROFIT,
                       2.52, 0.1, 2.42, 0.242, held_ms / 1000, (10_002.42, 0.06, 0.5, 0.0),
                       10_002.42)


def pair(tid: str, at_ms: int, **kw: Any) -> tuple[TradeOpened, TradeClosed]:
    """A trade opened at ``at_ms`` and closed five minutes later."""
    return opened(tid, at_ms, **kw), closed(tid, at_ms + 5 * MIN, **kw)


class Lookups:
    """A store stand-in that records every lookup."""

    def __init__(self, known: Iterable[TradeOpened] = ()) -> None:
        self.known = {o.trade_id: o for o in known}
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, trade_id: str) -> TradeOpened | None:
        with self._lock:
            self.calls.append(trade_id)
        return self.known.get(trade_id)


def letters(out: Iterable[Any]) -> list[DeadLetter]:
    return [d for block in out if isinstance(block, DeadLetters) for d in block]


def joins(out: Iterable[Any]) -> list[JoinedTrade]:
    return [j for j in out if isinstance(j, JoinedTrade)]


# --- the plain class -----------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True], ids=["opened-first", "closed-first"])
def test_joins_either_order_once(reverse: bool) -> None:
    o, c = pair("T1", T0)
    lookup = Lookups()
    j = TradeJoiner("T1", TTL, lookup)
    first, second = (c, o) if reverse else (o, c)
    assert j.push(first, T0) == []
    assert j.pending
    out = j.push(second, T0 + 5 * MIN)
    assert out == [JoinedTrade(o, c, JoinSource.STREAM)]
    assert not j.pending and not j.done  # the joined marker stays until the TTL
    assert lookup.calls == (["T1"] if reverse else [])  # an orphan close is looked up at once


def test_duplicates_before_and_after_the_join_join_nothing_twice() -> None:
    o, c = pair("T1", T0)
    j = TradeJoiner("T1", TTL, Lookups())
    out = []
    for e, now in [(o, T0), (o, T0), (c, T0 + 5 * MIN), (c, T0 + 5 * MIN), (o, T0 + 6 * MIN),
                   (c, T0 + 30 * MIN)]:
        out += j.push(e, now)
    assert out == [JoinedTrade(o, c, JoinSource.STREAM)]
    assert j.duplicates == 4


def test_marker_expires_after_ttl_and_a_later_duplicate_is_not_rejoined() -> None:
    o, c = pair("T1", T0)
    lookup = Lookups([o])  # the store has the trade: a naive join would join it again
    j = TradeJoiner("T1", TTL, lookup)
    assert len(j.push(o, T0) + j.push(c, T0 + 5 * MIN)) == 1
    exit_ms = T0 + 5 * MIN
    assert j.expire(exit_ms + TTL) == [] and not j.done  # not past the TTL yet
    assert j.expire(exit_ms + TTL + 1) == [] and j.done  # state may be discarded
    fresh = TradeJoiner("T1", TTL, lookup)
    out = fresh.push(c, exit_ms + TTL + 1)
    assert joins(out) == [] and lookup.calls == []
    [d] = letters(out)
    assert (d.id, d.stage) == ("trade-join:T1#1", Stage.JOIN)
    assert "past the TTL" in d.reason and fresh.done


def test_orphan_close_found_in_store_joins_from_store() -> None:
    o, c = pair("T1", T0)
    lookup = Lookups([o])
    j = TradeJoiner("T1", TTL, lookup)
    assert j.push(c, T0 + 5 * MIN) == [JoinedTrade(o, c, JoinSource.STORE)]
    assert j.push(o, T0 + 6 * MIN) == []  # the opened half arriving later is a duplicate
    assert lookup.calls == ["T1"]


def test_orphan_close_waits_then_retries_lookup_once_then_dead_letter() -> None:
    _, c = pair("T1", T0)
    exit_ms = T0 + 5 * MIN
    lookup = Lookups()
    j = TradeJoiner("T1", TTL, lookup)
    assert j.push(c, exit_ms) == [] and j.pending
    assert j.expire(exit_ms + TTL) == [] and j.pending
    assert lookup.calls == ["T1"]
    out = j.expire(exit_ms + TTL + 1)
    assert lookup.calls == ["T1", "T1"]
    [d] = letters(out)
    assert d.id == "trade-join:T1#1" and d.row == 1 and d.symbol == "EURUSD"
    assert d.ts == c.exit_ts and d.stage is Stage.JOIN
    assert "trade.closed without its trade.opened" in d.reason and "TTL" in d.reason
    assert decode_event(d.raw) == c
    assert j.done


def test_orphan_close_found_in_store_at_expiry() -> None:
    o, c = pair("T1", T0)
    exit_ms = T0 + 5 * MIN
    lookup = Lookups()
    j = TradeJoiner("T1", TTL, lookup)
    j.push(c, exit_ms)
    lookup.known["T1"] = o  # the entry row was written meanwhile
    assert j.expire(exit_ms + TTL + 1) == [JoinedTrade(o, c, JoinSource.STORE)]
    assert j.done  # already past the TTL: no marker kept


def test_opened_never_closed_expires() -> None:
    o, _ = pair("T1", T0)
    j = TradeJoiner("T1", TTL, Lookups())
    j.push(o, T0)
    assert j.expire(T0 + TTL) == []
    [d] = letters(j.expire(T0 + TTL + 1))
    assert d.id == "trade-join:T1#0" and d.ts == o.entry_ts
    assert d.reason.startswith("trade.opened never closed within TTL")
    assert decode_event(d.raw) == o and j.done


def test_end_of_input_resolves_pending_halves() -> None:
    o1, _ = pair("T1", T0)
    _, c2 = pair("T2", T0)
    o3, c3 = pair("T3", T0)
    lookup = Lookups([o3])
    a, b, s = (TradeJoiner(t, TTL, lookup) for t in ("T1", "T2", "T3"))
    a.push(o1, T0)
    b.push(c2, T0 + 5 * MIN)
    s.push(c3, T0 + 5 * MIN)  # found at once: joined, keeps its marker
    [d1] = letters(a.finish())
    assert d1.reason == "trade.opened never closed: end of input" and d1.row == 0
    [d2] = letters(b.finish())
    assert d2.row == 1 and d2.reason.endswith("end of input")
    assert lookup.calls.count("T2") == 2  # looked up on arrival and again at end of input
    assert s.finish() == [] and not s.done  # a joined marker survives end of input


def test_end_of_input_joins_a_waiting_close_found_in_store() -> None:
    o, c = pair("T1", T0)
    lookup = Lookups()
    j = TradeJoiner("T1", TTL, lookup)
    j.push(c, T0 + 5 * MIN)
    lookup.known["T1"] = o
    assert j.finish() == [JoinedTrade(o, c, JoinSource.STORE)]


def test_halves_that_disagree_are_dead_letters_not_a_join() -> None:
    o, _ = pair("T1", T0)
    c = closed("T1", T0 + MIN, symbol="NZDUSD", side=Side.SHORT)
    j = TradeJoiner("T1", TTL, Lookups())
    out = j.push(o, T0) + j.push(c, T0 + MIN)
    assert joins(out) == []
    ds = letters(out)
    assert [d.row for d in ds] == [0, 1]
    assert all("symbol EURUSD vs NZDUSD" in d.reason and "side long vs short" in d.reason
               for d in ds)
    assert j.push(c, T0 + MIN) == []  # a replay of either half is still a duplicate


def test_incomplete_stored_entry_state_is_a_dead_letter() -> None:
    _, c = pair("T1", T0)

    def broken(_: str) -> TradeOpened | None:
        raise IncompleteEntryState("entry state refused: no entry features")

    j = TradeJoiner("T1", TTL, broken)
    [d] = letters(j.push(c, T0 + 5 * MIN))
    assert d.row == 1 and "incomplete" in d.reason and j.done


def test_snapshot_pickles_and_restores() -> None:
    o, c = pair("T1", T0)
    j = TradeJoiner("T1", TTL, Lookups())
    j.push(c, T0 + 5 * MIN)
    state = pickle.loads(pickle.dumps(j.snapshot()))
    back = TradeJoiner.restore(TTL, Lookups(), state)
    assert back.pending and back.closed == c
    assert back.push(o, T0 + 6 * MIN) == [JoinedTrade(o, c, JoinSource.STREAM)]
    marker = TradeJoiner.restore(TTL, Lookups(), pickle.loads(pickle.dumps(back.snapshot())))
    assert marker.push(c, T0 + 7 * MIN) == [] and marker.duplicates == 1


# --- the Bytewax logic: one shared event clock ---------------------------------------------

def test_logic_expires_on_notify_when_other_keys_advance_the_shared_clock() -> None:
    clock = JoinClock()
    lookup = Lookups()
    poll, marker_poll = timedelta(milliseconds=500), timedelta(seconds=5)
    orphan = TradeJoinLogic(TTL, lookup, clock, poll, marker_poll, None)
    other = TradeJoinLogic(TTL, lookup, clock, poll, marker_poll, None)
    assert orphan.notify_at() is None  # built, no item yet
    _, c = pair("A", T0)
    assert orphan.on_item(c) == ([], StatefulLogic.RETAIN)
    before = datetime.now(UTC)
    at = orphan.notify_at()
    assert at is not None and before + poll - timedelta(seconds=1) < at <= before + poll + \
        timedelta(seconds=1)  # processing time, a short interval ahead: not "now"
    assert orphan.on_notify() == ([], StatefulLogic.RETAIN)  # event clock has not moved
    o2, c2 = pair("B", T0 + 5 * MIN + TTL + 1)
    other.on_item(o2)
    out, discard = other.on_item(c2)
    assert len(joins(out)) == 1 and discard is StatefulLogic.RETAIN
    assert other.notify_at() is not None  # the marker: swept every marker_poll
    out, discard = orphan.on_notify()
    assert discard is StatefulLogic.DISCARD and "TTL" in letters(out)[0].reason
    assert clock.now() == int(c2.exit_ts.timestamp() * 1000)


def test_logic_snapshot_carries_the_clock() -> None:
    clock = JoinClock()
    logic = TradeJoinLogic(TTL, Lookups(), clock, FAST, FAST, None)
    o, _ = pair("A", T0)
    logic.on_item(o)
    snap = pickle.loads(pickle.dumps(logic.snapshot()))
    fresh = JoinClock()
    restored = TradeJoinLogic(TTL, Lookups(), fresh, FAST, FAST, snap)
    assert fresh.now() == T0 and restored.joiner is not None and restored.joiner.pending


def test_join_clock_is_the_max_over_threads() -> None:
    clock = JoinClock()

    def run(k: int) -> None:
        for i in range(2_000):
            clock.advance(i * 4 + k)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.now() == 1_999 * 4 + 3


# --- through a dataflow --------------------------------------------------------------------

def run_join(items: list[Any], lookup: Any, ttl_ms: int = TTL, workers: int = 1,
             ) -> tuple[list[JoinedTrade], list[DeadLetter]]:
    flow = Dataflow("trade_join_test")
    events = op.input("events", flow, TestingSource(items))
    out = join_trades("join", events, ttl_ms, lookup, poll=FAST, marker_poll=FAST)
    joined: list[JoinedTrade] = []
    dead: list[DeadLetters] = []
    op.output("joined_out", out.joined, TestingSink(joined))
    op.output("dead_out", out.dead, TestingSink(dead))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return joined, letters(dead)


def test_flow_any_order_with_duplicates_joins_each_trade_once() -> None:
    o1, c1 = pair("T1", T0)
    o2, c2 = pair("T2", T0 + MIN)
    o3, c3 = pair("T3", T0 + 2 * MIN)
    items = [o1, o1, c2, c1, o2, c2, o1, o3, c1, o2, c3, c3, o3]
    lookup = Lookups()
    joined, dead = run_join(items, lookup)
    assert dead == []
    assert sorted(joined, key=lambda j: j.opened.trade_id) == [
        JoinedTrade(o1, c1, JoinSource.STREAM), JoinedTrade(o2, c2, JoinSource.STREAM),
        JoinedTrade(o3, c3, JoinSource.STREAM)]
    assert lookup.calls == ["T2"]  # the one close that arrived before its opened half


def test_flow_orphan_close_resolved_from_the_trades_table(store: Any) -> None:
    o, c = pair("T-STORED", T0)
    rows = trade_rows([TradeRecord(o)])
    store.insert(rows.table, rows.columns, rows.data)

    def lookup(trade_id: str) -> TradeOpened | None:
        found = store.query("queries/trade_by_id", trade_id=trade_id)
        return opened_from_row(found[0]) if found else None

    o2, c2 = pair("T-STREAM", T0)
    joined, dead = run_join([o2, c, c2, c, o], lookup)
    assert dead == []
    by_id = {j.opened.trade_id: j for j in joined}
    assert len(joined) == 2
    assert by_id["T-STORED"].source is JoinSource.STORE
    assert by_id["T-STORED"].opened == o and by_id["T-STORED"].closed == c
    assert by_id["T-STREAM"].source is JoinSource.STREAM


def test_flow_orphan_close_expires_by_ttl_in_event_time() -> None:
    _, c = pair("ORPHAN", T0)
    later = pair("LATER", T0 + 5 * MIN + TTL)  # its close moves the clock past the TTL
    lookup = Lookups()
    joined, dead = run_join([c, *later, TestingSource.PAUSE(timedelta(milliseconds=300))],
                            lookup)
    assert [j.opened.trade_id for j in joined] == ["LATER"]
    [d] = dead
    assert d.id == "trade-join:ORPHAN#1" and d.stage is Stage.JOIN
    assert "TTL" in d.reason and "end of input" not in d.reason  # expired in on_notify
    assert decode_event(d.raw) == c
    assert lookup.calls == ["ORPHAN", "ORPHAN"]  # at arrival and once more at expiry


def test_flow_opened_never_closed_expires_by_ttl() -> None:
    o, _ = pair("OPEN", T0)
    later = pair("LATER", T0 + TTL)
    joined, dead = run_join([o, *later, TestingSource.PAUSE(timedelta(milliseconds=300))],
                            Lookups())
    assert len(joined) == 1
    [d] = dead
    assert d.id == "trade-join:OPEN#0"
    assert d.reason.startswith("trade.opened never closed within TTL")


def test_flow_not_expired_before_ttl_then_end_of_input() -> None:
    o, _ = pair("OPEN", T0)
    _, c = pair("ORPHAN", T0)
    later = pair("LATER", T0 + 30 * MIN)  # clock moves, but not past the TTL
    lookup = Lookups()
    joined, dead = run_join([o, c, *later, TestingSource.PAUSE(timedelta(milliseconds=200))],
                            lookup)
    assert [j.opened.trade_id for j in joined] == ["LATER"]
    assert sorted((d.id, d.reason) for d in dead) == [
        ("trade-join:OPEN#0", "trade.opened never closed: end of input"),
        ("trade-join:ORPHAN#1", "trade.closed without its trade.opened (not in the stream nor "
                                "the trades table): end of input")]
    assert lookup.calls == ["ORPHAN", "ORPHAN"]


def test_flow_late_duplicate_after_the_marker_expired_is_not_joined_again() -> None:
    o, c = pair("T1", T0)
    lookup = Lookups([o])  # even though the store could join it again
    much_later = pair("T2", T0 + 5 * MIN + TTL + 1)
    joined, dead = run_join(
        [o, c, *much_later, TestingSource.PAUSE(timedelta(milliseconds=200)), c], lookup)
    assert sorted(j.opened.trade_id for j in joined) == ["T1", "T2"]
    [d] = dead
    assert d.id == "trade-join:T1#1" and "past the TTL" in d.reason


def test_flow_two_workers_share_the_event_clock() -> None:
    orphans = [closed(f"ORPHAN-{i}", T0 + i) for i in range(6)]
    later = pair("LATER", T0 + TTL + 10)
    joined, dead = run_join(
        [*orphans, *later, TestingSource.PAUSE(timedelta(milliseconds=400))], Lookups(),
        workers=2)
    assert len(joined) == 1
    assert sorted(d.id for d in dead) == [f"trade-join:ORPHAN-{i}#1" for i in range(6)]
    assert all("TTL" in d.reason and "end of input" not in d.reason for d in dead)


def test_flow_lookup_failure_names_the_step() -> None:
    _, c = pair("T1", T0)

    def down(_: str) -> TradeOpened | None:
        raise ConnectionError("store unreachable")

    with pytest.raises(Exception) as info:  # Bytewax wraps the cause
        run_join([c], down)
    chain = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__
    assert any(m.startswith("trade_join_test.join: looking up the entry state of trade T1")
               for m in chain), chain


def test_flow_rejects_a_non_positive_ttl() -> None:
    flow = Dataflow("bad_ttl")
    events = op.input("events", flow, TestingSource([]))
    with pytest.raises(ValueError, match="join: TTL must be positive"):
        join_trades("join", events, 0, Lookups())


def test_events_are_realistic() -> None:
    """The helpers build events the schema accepts with a complete entry state."""
    o, c = pair("T1", T0)
    assert len(o.entry.votes) == 4 and o.entry.rl.policy_version
    assert c.exit_ts > o.entry_ts
    with pytest.raises(IncompleteEntryState):
        replace(o.entry, features={})

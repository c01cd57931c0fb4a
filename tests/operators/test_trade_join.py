"""The trade join: both orders, duplicates, orphans from the store, TTL in event time, EOF.

Each rule is checked on :class:`TradeJoiner` (one trade) and :class:`TradeJoins` (all trades
on one event clock) as plain Python, and again through the learning flow's ordered learner
(TestingSource -> learn_in_order -> TestingSink), fed numbered events as the live flow
publishes them.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from learning.learner import LearnedOutput, LearnerDeps, Sequenced, learn_in_order
from models.registry import ModelRegistry
from operators.trade_join import TradeJoiner, TradeJoins
from schemas.dead_letters import DeadLetter, DeadLetters, RejectedAt
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
    TradeEvent,
    TradeOpened,
    TradeRecord,
    decode_event,
    encode_event,
    opened_from_row,
)

T0 = 1_399_334_400_000  # 2014-05-06T00:00:00Z
MIN = 60_000
TTL = 60 * MIN
MODELS = ("xgboost", "lightgbm", "nhits", "patchtst")


# --- realistic events --------------------------------------------------------------------
# Values are exact in float32, so an entry state read back from the trades table (window and
# RL arrays are Float32 there) compares equal to the event it was written from.


def opened(tid: str, at_ms: int, symbol: str = "EURUSD", side: Side = Side.LONG) -> TradeOpened:
    votes = tuple(
        Vote(m, f"{m}-v3", a, c)
        for m, a, c in zip(
            MODELS,
            (Action.BUY, Action.BUY, Action.BUY, Action.HOLD),
            (0.75, 0.625, 0.875, 0.5),
            strict=True,
        )
    )
    rl = SizingDecision(
        state=(1.0, 0.0625, 0.5, -0.25, 0.0, 0.0, 0.8125, 1.0),
        raw_action=(0.125, -0.5, 0.25),
        log_prob=-2.3125,
        value=0.375,
        policy_version="ppo-v7",
        position_size_usd=1_000.0,
        tp_pct=0.25,
        sl_pct=0.125,
        degenerate=False,
        stochastic=True,
    )
    entry = EntryState(
        features={"ret_1": 0.00012, "ret_5": -0.0004, "vol_daily": 0.0061, "rsi_14": 55.2},
        feature_set="fs-2",
        window=(1.375, 1.5, 1.25, 1.375),
        votes=votes,
        confidence=0.82,
        consensus=Consensus.STRONG,
        volatility=0.0061,
        supervisor=SupervisorAtEntry(SupervisorMode.ENFORCED, 0.55, 0.45, 40, "no bias detected"),
        rl=rl,
        sizing=Sizing.RL,
    )
    price = 1.3875
    sign = side.sign
    return TradeOpened(
        tid,
        symbol,
        side,
        1_000.0 / price,
        from_ms(at_ms),
        price,
        price * (1 + sign * 0.0025),
        price * (1 - sign * 0.00125),
        1_000.0,
        0.05,
        entry,
    )


def closed(
    tid: str, at_ms: int, symbol: str = "EURUSD", side: Side = Side.LONG, held_ms: int = 5 * MIN
) -> TradeClosed:
    return TradeClosed(
        tid,
        symbol,
        side,
        from_ms(at_ms),
        1.3910,
        ExitReason.TAKE_PROFIT,
        2.52,
        0.1,
        2.42,
        0.242,
        held_ms / 1000,
        (1.0, 0.0625, 0.5, 0.25, 0.0, 0.0, 0.8125, 1.0),
        10_002.42,
    )


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
    for e, now in [
        (o, T0),
        (o, T0),
        (c, T0 + 5 * MIN),
        (c, T0 + 5 * MIN),
        (o, T0 + 6 * MIN),
        (c, T0 + 30 * MIN),
    ]:
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
    assert (d.id, d.stage) == ("trade-join:T1#1", RejectedAt.JOIN)
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
    assert d.ts == c.exit_ts and d.stage is RejectedAt.JOIN
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
    assert all(
        "symbol EURUSD vs NZDUSD" in d.reason and "side long vs short" in d.reason for d in ds
    )
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


# --- all trades on one event clock ---------------------------------------------------------


def test_joins_expire_a_trade_when_other_trades_advance_the_clock() -> None:
    lookup = Lookups()
    joins = TradeJoins(TTL, lookup)
    _, orphan = pair("A", T0)
    assert joins.push(orphan) == [] and lookup.calls == ["A"]
    o2, c2 = pair("B", T0 + TTL)  # its close brings the clock to the TTL exactly: not past
    assert joins.push(o2) == []
    out = joins.push(c2)
    assert [j.opened.trade_id for j in joins_of(out)] == ["B"] and letters(out) == []
    o3, _ = pair("C", T0 + 5 * MIN + TTL + 1)
    [d] = letters(joins.push(o3))
    assert d.id == "trade-join:A#1" and "TTL" in d.reason
    assert lookup.calls == ["A", "A"]  # at arrival and once more at expiry
    assert joins.now_ms == T0 + 5 * MIN + TTL + 1
    assert set(joins.joiners) == {"B", "C"}  # A is forgotten; B keeps its joined marker


def test_joins_expire_earliest_deadline_first() -> None:
    joins = TradeJoins(TTL, Lookups())
    for i, tid in enumerate(("LATE", "EARLY")):  # pushed in the other order
        joins.push(opened(tid, T0 + (1 - i) * MIN))
    out = joins.push(opened("NOW", T0 + TTL + 2 * MIN))
    assert [d.id for d in letters(out)] == ["trade-join:EARLY#0", "trade-join:LATE#0"]


def test_joins_forget_markers_so_memory_is_bounded_by_the_ttl() -> None:
    joins = TradeJoins(TTL, Lookups())
    for i in range(200):
        o, c = pair(f"T{i}", T0 + i * 10 * MIN)
        assert len(joins_of(joins.push(o) + joins.push(c))) == 1
    # a trade every 10 min, each remembered for the TTL after its close: about 6 of them
    assert len(joins.joiners) <= TTL // (10 * MIN) + 1


def test_joins_snapshot_restores_clock_halves_and_markers() -> None:
    lookup = Lookups()
    joins = TradeJoins(TTL, lookup)
    o1, c1 = pair("DONE", T0)
    _, c2 = pair("WAITING", T0)
    for e in (o1, c1, c2):
        joins.push(e)
    state = pickle.loads(pickle.dumps(joins.snapshot()))
    back = TradeJoins(TTL, lookup, state)
    assert back.now_ms == joins.now_ms
    assert back.push(c1) == []  # still a duplicate after the restore
    o2 = opened("WAITING", T0)
    assert back.push(o2) == [JoinedTrade(o2, c2, JoinSource.STREAM)]
    assert back.push(opened("X", T0 + 5 * MIN + TTL + 1)) == []
    assert set(back.joiners) == {"X"}  # the deadlines were rebuilt: both markers expired


def test_joins_finish_resolves_in_trade_id_order() -> None:
    joins = TradeJoins(TTL, Lookups())
    for tid in ("Z", "M", "A"):
        joins.push(opened(tid, T0))
    assert [d.id for d in letters(joins.finish())] == [
        "trade-join:A#0",
        "trade-join:M#0",
        "trade-join:Z#0",
    ]


def test_joins_reject_a_non_positive_ttl() -> None:
    with pytest.raises(ValueError, match="TTL must be positive"):
        TradeJoins(0, Lookups())


# --- through the learning flow's ordered learner -------------------------------------------


def numbered(events: Iterable[TradeEvent], start: int = 0) -> list[Sequenced]:
    """Events as the learning flow decodes them from the topic: numbered in publish order."""
    return [Sequenced(start + i, e) for i, e in enumerate(events)]


def run_learner(
    items: list[Any], lookup: Any, registry: Path, ttl_ms: int = TTL, workers: int = 1
) -> tuple[list[tuple[str, str]], list[DeadLetter], dict[str, int]]:
    """The ordered learner with learning off: the joins, the dead letters and the counts."""
    flow = Dataflow("trade_join_test")
    events = op.input("events", flow, TestingSource(items))
    deps = LearnerDeps(ModelRegistry(registry), ttl_ms, lookup)
    out: list[LearnedOutput] = []
    op.output("learned_out", learn_in_order("learn", events, deps), TestingSink(out))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    counts: dict[str, int] = {}
    for o in out:
        for k, v in o.counts.items():
            counts[k] = counts.get(k, 0) + v
    joined = [(r.trade_id, r.joined_from) for o in out for r in o.outcomes]
    return joined, letters(d for o in out for d in o.dead), counts


def test_flow_any_order_with_duplicates_joins_each_trade_once(trained_registry: Path) -> None:
    o1, c1 = pair("T1", T0)
    o2, c2 = pair("T2", T0 + MIN)
    o3, c3 = pair("T3", T0 + 2 * MIN)
    items = numbered([o1, c2, c1, o2, o3, c3])
    replayed = items[2:4]  # a resumed live flow republishes its last epoch
    lookup = Lookups()
    joined, dead, counts = run_learner(
        items + replayed + numbered([c1, o2], 6), lookup, trained_registry
    )
    assert dead == []
    assert joined == [("T1", "stream"), ("T2", "stream"), ("T3", "stream")]
    assert counts["learning.duplicates"] == 2  # the same numbers again: dropped unread
    assert lookup.calls == ["T2"]  # the one close that arrived before its opened half


def test_flow_orphan_close_resolved_from_the_trades_table(
    store: Any, trained_registry: Path
) -> None:
    o, c = pair("T-STORED", T0)
    rows = trade_rows([TradeRecord(o)])
    store.insert_block(rows)

    def lookup(trade_id: str) -> TradeOpened | None:
        found = store.query("queries/trade_by_id", trade_id=trade_id)
        return opened_from_row(found[0]) if found else None

    o2, c2 = pair("T-STREAM", T0)
    joined, dead, counts = run_learner(numbered([o2, c, c2, c, o]), lookup, trained_registry)
    assert dead == []
    assert sorted(joined) == [("T-STORED", "store"), ("T-STREAM", "stream")]
    assert counts["trades.joined.store"] == 1 and counts["trades.joined.stream"] == 1


def test_flow_expiry_and_end_of_input(trained_registry: Path) -> None:
    o, _ = pair("OPEN", T0)
    _, orphan = pair("ORPHAN", T0)
    _, still = pair("STILL", T0 + 30 * MIN)
    later = pair("LATER", T0 + 5 * MIN + TTL)  # its close moves the clock past OPEN, ORPHAN
    lookup = Lookups()
    joined, dead, counts = run_learner(
        numbered([o, orphan, still, *later]), lookup, trained_registry
    )
    assert joined == [("LATER", "stream")]
    assert [(d.id, d.reason) for d in dead] == [
        ("trade-join:OPEN#0", f"trade.opened never closed within TTL ({TTL} ms of event time)"),
        (
            "trade-join:ORPHAN#1",
            "trade.closed without its trade.opened (not in the stream nor "
            f"the trades table): TTL ({TTL} ms of event time) expired",
        ),
        (
            "trade-join:STILL#1",
            "trade.closed without its trade.opened (not in the stream nor "
            "the trades table): end of input",
        ),
    ]
    assert decode_event(dead[1].raw) == orphan
    assert counts["dead_letters.join"] == 3


def test_flow_gap_in_the_numbers_is_counted_not_fatal(trained_registry: Path) -> None:
    o1, c1 = pair("T1", T0)
    o2, c2 = pair("T2", T0 + MIN)
    items = [Sequenced(0, o1), Sequenced(1, c1), Sequenced(5, o2), Sequenced(6, c2)]
    joined, dead, counts = run_learner(items, Lookups(), trained_registry)
    assert [t for t, _ in joined] == ["T1", "T2"] and dead == []
    assert counts["learning.missing"] == 3


def test_flow_two_workers_learn_in_the_same_order(trained_registry: Path) -> None:
    events = []
    for i in range(6):
        events += [closed(f"ORPHAN-{i}", T0 + i), *pair(f"T{i}", T0 + i * MIN)]
    events += pair("LATER", T0 + TTL + 10 * MIN)
    one = run_learner(numbered(events), Lookups(), trained_registry)
    two = run_learner(numbered(events), Lookups(), trained_registry, workers=2)
    assert one == two
    assert len(one[0]) == 7 and [d.id for d in one[1]] == [
        f"trade-join:ORPHAN-{i}#1" for i in range(6)
    ]


def test_flow_undecodable_message_is_a_dead_letter(trained_registry: Path) -> None:
    bad = DeadLetters()
    bad.add("trade-events:0:17", 0, T0, "", RejectedAt.DECODE, "not JSON", "{oops")
    o, c = pair("T1", T0)
    joined, dead, _ = run_learner([bad, *numbered([o, c])], Lookups(), trained_registry)
    assert joined == [("T1", "stream")]
    assert [(d.stage, d.reason) for d in dead] == [(RejectedAt.DECODE, "not JSON")]


def test_flow_lookup_failure_stops_the_flow_naming_the_trade(trained_registry: Path) -> None:
    _, c = pair("T1", T0)

    def down(_: str) -> TradeOpened | None:
        raise ConnectionError("store unreachable")

    with pytest.raises(Exception) as info:  # Bytewax wraps the cause
        run_learner(numbered([c]), down, trained_registry)
    chain = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__
    assert any(
        "looking up the entry state of trade T1 failed: store unreachable" in m for m in chain
    ), chain
    assert any("trade_join_test.learn" in m for m in chain), chain  # the step is named


def test_published_events_round_trip() -> None:
    o, c = pair("T1", T0)
    assert [decode_event(encode_event(e, i)) for i, e in enumerate((o, c))] == [o, c]


def joins_of(out: Iterable[Any]) -> list[JoinedTrade]:
    return joins(out)


def test_events_are_realistic() -> None:
    """The helpers build events the schema accepts with a complete entry state."""
    o, c = pair("T1", T0)
    assert len(o.entry.votes) == 4 and o.entry.rl.policy_version
    assert c.exit_ts > o.entry_ts
    with pytest.raises(IncompleteEntryState):
        replace(o.entry, features={})

"""Validation: every rule, and the accounting property (every row is a tick or a dead letter)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.decode import decode_messages, tick_rows_from_ticks
from connectors.replay import ReplaySource
from operators.validate import PRICE_RANGE, SIZE_RANGE, TickValidator, validate_ticks
from schemas.dead_letters import RejectedAt
from schemas.ticks import Tick, TickOrigin, TickRows
from schemas.timeutil import from_ms, iso, parse_iso

T0 = 1_700_000_000_000
NAN = math.nan


def trade(ms: int, price: float, size: float = 1.0, symbol: str = "X") -> Tick:
    return Tick(from_ms(T0 + ms), symbol, TickOrigin.TRADE, price, size=size)


def quote(ms: int, bid: float, ask: float, symbol: str = "X") -> Tick:
    return Tick(from_ms(T0 + ms), symbol, TickOrigin.QUOTE, (bid + ask) / 2, bid=bid, ask=ask)


def candle(ms: int, o: float, h: float, lo: float, c: float) -> Tick:
    return Tick(from_ms(T0 + ms), "X", TickOrigin.CANDLE, c, size=1.0, open=o, high=h, low=lo)


@pytest.mark.parametrize(
    ("tick", "reason"),
    [
        (trade(0, 10.0), None),
        (trade(0, 0.0), "non-positive price"),
        (trade(0, -1.0), "non-positive price"),
        (trade(0, NAN), "non-finite price"),
        (trade(0, math.inf), "non-finite price"),
        (trade(0, 10.0, size=-2.0), "negative size"),
        (trade(0, 10.0, size=0.0), None),  # a zero-size print exists in real data
        (trade(0, 10.0, size=NAN), None),  # size unknown
        (quote(0, 1.0, 1.1), None),
        (quote(0, 1.0, 1.0), None),  # locked, not crossed
        (quote(0, 1.1, 1.0), "crossed quote (bid > ask)"),
        (quote(0, -1.0, 1.0), "non-positive price"),
        (quote(0, NAN, 1.0), "non-finite price"),
        (candle(0, 10, 12, 9, 11), None),
        (candle(0, 10, 9, 12, 11), "inconsistent candle"),
        (candle(0, 13, 12, 9, 11), "inconsistent candle"),
        (candle(0, 10, 12, 9, 8), "inconsistent candle"),
        # sane ranges (module docstring): absurd but finite values
        (trade(0, 1e-308), PRICE_RANGE),
        (trade(0, 1e13), PRICE_RANGE),
        (trade(0, 1e-12), None),
        (trade(0, 10.0, size=1e16), SIZE_RANGE),
        (quote(0, 1e300, 1e300), PRICE_RANGE),  # its mid would overflow: still the range
        (quote(0, 1e-300, 1.0), PRICE_RANGE),
        (candle(0, 10, 12, 1e-20, 11), PRICE_RANGE),
    ],
)
def test_each_rule(tick: Tick, reason: str | None) -> None:
    out = TickValidator().validate(tick_rows_from_ticks([tick]))
    got = [d.reason for d in out.dead]
    assert got == ([] if reason is None else [reason])
    assert out.ticks + len(out.dead) == 1


def test_unknown_symbol_only_when_a_universe_is_set() -> None:
    rows = tick_rows_from_ticks([trade(0, 1.0, symbol="A"), trade(0, 1.0, symbol="B")])
    assert TickValidator().validate(rows).ticks == 2
    out = TickValidator(universe=frozenset({"A"})).validate(rows)
    assert list(out.batches) == ["A"]
    assert [(d.symbol, d.reason, d.stage) for d in out.dead] == [
        ("B", "unknown symbol", RejectedAt.VALIDATE)
    ]


def test_time_going_backwards_beyond_tolerance_across_blocks() -> None:
    v = TickValidator(max_backwards_ms=500)
    v.validate(tick_rows_from_ticks([trade(10_000, 1.0)]))
    out = v.validate(
        tick_rows_from_ticks([trade(9_600, 1.0), trade(9_000, 1.0), trade(10_001, 1.0)])
    )
    # 400 ms late is tolerated, 1000 ms is not; the newest time is remembered across blocks
    assert out.batches["X"].ts_ms.tolist() == [T0 + 9_600, T0 + 10_001]
    assert [(d.stage, d.reason) for d in out.dead] == [
        (RejectedAt.ORDER, "time went backwards by 1000 ms")
    ]


def test_undecodable_message_keeps_raw_text() -> None:
    rows = decode_messages(
        [b'{"ts": "nope"}', b"\xff not json", trade(0, 1.0).to_json()], "kafka:ticks/0", [7, 8, 9]
    )
    out = TickValidator().validate(rows)
    assert out.ticks == 1
    dead = sorted(out.dead, key=lambda d: d.row)
    assert [d.id for d in dead] == ["kafka:ticks/0#7", "kafka:ticks/0#8"]
    assert all(d.stage is RejectedAt.DECODE for d in dead)
    assert dead[0].raw == '{"ts": "nope"}'
    assert "not JSON" in dead[1].reason


def test_validate_step_in_a_dataflow() -> None:
    blocks = [
        tick_rows_from_ticks([trade(0, 1.0), trade(1, -1.0)]),
        tick_rows_from_ticks([trade(2, 2.0), quote(3, 2.0, 1.0, symbol="Y")]),
    ]
    for i, b in enumerate(blocks):
        b.partition, b.seq = "p", i
    out: list = []
    flow = Dataflow("validate_test")
    validated = validate_ticks("validate", op.input("in", flow, TestingSource(blocks)), 1000)
    op.output("out", validated, TestingSink(out))
    run_main(flow)
    assert [v.ticks for v in out] == [1, 1]
    assert [[d.reason for d in v.dead] for v in out] == [
        ["non-positive price"],
        ["crossed quote (bid > ask)"],
    ]
    assert [v.tag.seq for v in out] == [0, 1]  # blocks with ticks are numbered per partition


# --- numbers and times outside what a tick can be -------------------------------------------


def _csv_rows(
    tmp_path: Path, lines: list[str], header: str = "ts,symbol,price,size,side"
) -> tuple[int, int, list]:
    path = tmp_path / "rows.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return _replay_accounting(path)


def test_numeric_overflow_is_named_and_an_inf_literal_stays_non_finite(tmp_path: Path) -> None:
    ts = "2024-01-01T00:00:00.000Z"
    ticks, _, dead = _csv_rows(
        tmp_path,
        [
            f"{ts},A,1e309,1,buy",
            f"{ts},A,-1e309,1,buy",
            f"{ts},A,inf,1,buy",
            f"{ts},A,5,1e999,buy",
            f"{ts},A,1e308,1,buy",
            f"{ts},A,1e-308,1,buy",
            f"{ts},A,5,1,buy",
        ],
    )
    assert ticks == 1
    assert [(d.row, d.stage, d.reason) for d in sorted(dead, key=lambda d: d.row)] == [
        (2, RejectedAt.DECODE, "numeric overflow in price: '1e309'"),
        (3, RejectedAt.DECODE, "numeric overflow in price: '-1e309'"),
        (4, RejectedAt.VALIDATE, "non-finite price"),
        (5, RejectedAt.DECODE, "numeric overflow in size: '1e999'"),
        (6, RejectedAt.VALIDATE, PRICE_RANGE),
        (7, RejectedAt.VALIDATE, PRICE_RANGE),
    ]
    q = _csv_rows(
        tmp_path, [f"{ts},A,1,2,1e400,", f"{ts},A,1,2,1e16,"], "ts,symbol,bid,ask,bid_size,ask_size"
    )[2]
    assert sorted(d.reason for d in q) == [
        "bid_size outside the sane range (above 1e+15)",
        "numeric overflow in bid_size: '1e400'",
    ]


def test_kafka_messages_overflow_and_unrepresentable_times_are_dead_letters() -> None:
    msgs = [
        b'{"ts": "2024-01-01T00:00:00Z", "symbol": "A", "origin": "trade", "price": 1e309}',
        b'{"ts": "9999-12-31T23:59:59.999-01:00", "symbol": "A", "origin": "trade", "price": 1}',
        b'{"ts": "0001-01-01T00:00:00+01:00", "symbol": "A", "origin": "trade", "price": 1}',
    ]
    out = TickValidator().validate(decode_messages(msgs, "kafka:t/0", [0, 1, 2]))
    assert out.ticks == 0
    assert [d.reason for d in sorted(out.dead, key=lambda d: d.row)] == [
        "numeric overflow in price: '1e309'",
        "ts out of range (cannot be represented): 9999-12-31T23:59:59.999-01:00",
        "ts out of range (cannot be represented): 0001-01-01T00:00:00+01:00",
    ]


def at(text: str, price: float = 10.0, symbol: str = "X") -> Tick:
    return Tick(parse_iso(text), symbol, TickOrigin.TRADE, price, size=1.0)


def _run(
    v: TickValidator, *blocks: list[Tick], final: bool = True
) -> tuple[list[int], list[tuple[RejectedAt, str]], int]:
    """Validate blocks in order (the last one final); accepted times, dead letters, rows_in."""
    times, dead, rows_in = [], [], 0
    for i, ticks in enumerate(blocks):
        rows = tick_rows_from_ticks(ticks) if ticks else TickRows.end_of("p", i)
        rows.final = final and i == len(blocks) - 1
        out = v.validate(rows)
        rows_in += out.rows_in
        times += [int(t) for b in out.batches.values() for t in b.ts_ms]
        dead += [(d.stage, d.reason) for d in out.dead]
    return sorted(times), dead, rows_in


def test_times_outside_the_sane_range_do_not_move_any_clock() -> None:
    now = parse_iso("2026-01-01T00:00:00Z")
    v = TickValidator(now_ms=lambda: int(now.timestamp() * 1000))
    times, dead, rows_in = _run(
        v,
        [
            at("2013-01-01T22:00:00Z"),
            at("9999-12-31T23:59:59.999Z"),
            at("9999-06-01T00:00:00Z"),
            at("1989-12-31T23:59:59Z"),
            at("2026-01-02T00:00:01Z"),
            at("2013-01-01T22:00:01Z"),
        ],
    )
    assert len(times) == 2 and rows_in == 6  # the real rows after the absurd ones are ticks
    assert dead == [
        (
            RejectedAt.VALIDATE,
            "time outside the sane range: 9999-12-31T23:59:59.999Z is more than "
            "1 day after the wall clock",
        ),
        (
            RejectedAt.VALIDATE,
            "time outside the sane range: 9999-06-01T00:00:00.000Z is more than "
            "1 day after the wall clock",
        ),
        (
            RejectedAt.VALIDATE,
            "time outside the sane range: 1989-12-31T23:59:59.000Z is before 1990-01-01",
        ),
        (
            RejectedAt.VALIDATE,
            "time outside the sane range: 2026-01-02T00:00:01.000Z is more than "
            "1 day after the wall clock",
        ),
    ]
    assert v.newest_ms == {"X": times[-1]} and v.clock_ms == times[-1]


def test_an_absurd_first_row_cannot_set_the_reference() -> None:
    times, dead, _ = _run(
        TickValidator(),
        [at("9999-06-01T00:00:00Z"), at("2013-01-01T22:00:00Z"), at("2013-01-01T22:00:01Z")],
    )
    assert len(times) == 2 and [s for s, _ in dead] == [RejectedAt.VALIDATE]


def test_a_time_jump_is_a_dead_letter_unless_the_rows_after_it_follow() -> None:
    # one row stamped years ahead of its feed: rejected, the feed's clock stays where it was
    times, dead, _ = _run(
        TickValidator(),
        [
            at("2013-01-01T22:00:00Z"),
            at("2020-01-01T00:00:00Z"),
            at("2013-01-01T22:00:01Z"),
            at("2013-01-01T22:00:02Z"),
        ],
    )
    assert len(times) == 3
    assert dead == [
        (
            RejectedAt.ORDER,
            "time jumped ahead: 2020-01-01T00:00:00.000Z is more than 1 "
            "day past the newest tick of its feed, "
            "2013-01-01T22:00:00.000Z, and the rows after it are not",
        )
    ]
    # a weekend (FX: Friday 21:00 to Sunday 21:00) is a real gap: the rows after it follow
    times, dead, _ = _run(
        TickValidator(),
        [
            at("2014-05-02T20:59:59Z"),
            at("2014-05-04T21:00:00Z"),
            at("2014-05-04T21:00:01Z"),
            at("2014-05-04T21:00:02Z"),
        ],
    )
    assert len(times) == 4 and dead == []


def test_a_jump_at_the_end_of_a_block_waits_for_the_next(tmp_path: Path) -> None:
    import pickle

    v = TickValidator()
    first = _run(v, [at("2014-05-02T20:59:59Z"), at("2014-05-04T21:00:00Z")], final=False)
    assert first == ([int(parse_iso("2014-05-02T20:59:59Z").timestamp() * 1000)], [], 1)
    assert v.held is not None and len(v.held) == 1  # neither a tick nor a dead letter yet
    v = TickValidator().restored(pickle.loads(pickle.dumps(v.snapshot())))  # recovery
    times, dead, rows_in = _run(
        v, [at("2014-05-04T21:00:01Z"), at("2014-05-04T21:00:02Z")], final=False
    )
    assert (len(times), dead, rows_in) == (3, [], 3)  # confirmed: the held row went out too
    # unconfirmed at the end of the input: judged on the rows there are
    v = TickValidator()
    _run(v, [at("2014-05-02T20:59:59Z"), at("2014-05-04T21:00:00Z")], final=False)
    times, dead, rows_in = _run(v, [])
    assert (times, rows_in) == ([], 1) and [s for s, _ in dead] == [RejectedAt.ORDER]


# --- the accounting property over files with hypothesis-generated broken rows --------------

GOOD_ROW = st.builds(
    lambda ms, px, size, side, sym: f"{iso(from_ms(T0 + ms))},{sym},{px},{size},{side}",
    st.integers(0, 10_000),
    st.floats(0.01, 1e5),
    st.floats(0, 100),
    st.sampled_from(["buy", "sell", ""]),
    st.sampled_from(["A:X", "B:Y"]),
)
BROKEN_ROW = st.one_of(
    st.just(""),  # blank line
    st.text(max_size=30).filter(lambda t: "\n" not in t and "\r" not in t),  # garbage
    st.just("2024-01-01T00:00:00.000Z,A:X,abc,1,buy"),  # unparseable price
    st.just("2024-01-01T00:00:00.000Z,A:X,-5,1,buy"),  # negative price
    st.just("2024-01-01T00:00:00.000Z,A:X,5,-1,buy"),  # negative size
    st.just("2024-01-01T00:00:00.000Z,A:X,NaN,1,buy"),  # NaN price
    st.just("2024-01-01T00:00:00.000Z,,5,1,buy"),  # missing symbol
    st.just("2024-01-01 00:00:00,A:X,5,1,buy"),  # no UTC offset
    st.just("not-a-time,A:X,5,1,buy"),
    st.just("2024-01-01T00:00:00.000Z,A:X,5,1,sideways"),
    st.just("2024-01-01T00:00:00.000Z,A:X,5,1,buy,extra"),  # too many fields
    st.just("9999-12-31T23:59:59.999Z,A:X,5,1,buy"),  # after the wall clock
    st.just("2024-06-01T00:00:00.000Z,B:Y,5,1,buy"),  # a time jump (held across blocks)
    st.just("2024-01-01T00:00:00.000Z,A:X,1e309,1,buy"),  # numeric overflow
    st.just("2024-01-01T00:00:00.000Z,A:X,1e-308,1,buy"),  # price outside the sane range
    st.just('"quoted,A:X,5,1,buy'),
    st.binary(min_size=1, max_size=12)
    .map(lambda b: b.decode("latin-1"))
    .filter(lambda t: "\n" not in t and "\r" not in t),  # odd bytes, invalid UTF-8
)


def _replay_accounting(path: Path) -> tuple[int, int, list]:
    src = ReplaySource([path], block_bytes=4096)
    v = TickValidator(max_backwards_ms=1000)
    ticks, dead = 0, []
    for part in src.list_parts():
        p = src.build_part("t", part, None)
        try:
            while True:
                for rows in p.next_batch():
                    out = v.validate(rows)
                    ticks += out.ticks
                    dead.extend(out.dead)
        except StopIteration:
            pass
    return ticks, len(dead), dead


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(GOOD_ROW, BROKEN_ROW), min_size=1, max_size=300))
def test_every_row_is_a_tick_or_a_dead_letter(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "mixed_trades.csv.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"ts,symbol,price,size,side\n")
        for line in lines:
            f.write(line.encode("latin-1", errors="replace") + b"\n")
    ticks, n_dead, dead = _replay_accounting(path)
    assert ticks + n_dead == len(lines)
    ids = [d.id for d in dead]
    assert len(ids) == len(set(ids))  # one dead letter per row, deterministic ids
    rows = {int(i.rsplit("#", 1)[1]) for i in ids}
    assert rows <= set(range(2, len(lines) + 2))  # ids are real line numbers of the file
    for d in dead:  # the dead letter keeps the row it came from
        if d.reason.startswith("not a row"):
            assert d.raw == lines[d.row - 2].encode("latin-1", "replace").decode("utf-8", "replace")


def test_real_quotes_file_crossed_quotes_are_dead_letters(shared_data: Path) -> None:
    path = shared_data / "quotes" / "truefx_USDJPY_2013-01-01_quotes.csv.gz"
    ticks, n_dead, dead = _replay_accounting(path)
    assert ticks + n_dead == 1000  # SOURCES.md: 1,000 rows, 1 with bid >= ask
    assert n_dead <= 1
    for d in dead:
        bid, ask = (float(x) for x in d.raw.split(",")[2:4])
        assert bid > ask and d.reason == "crossed quote (bid > ask)"


def test_decode_block_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes(
        b"ts,symbol,bid,ask,bid_size,ask_size\n"
        b"2024-01-01T00:00:00.000Z,S,1,2,,\n"
        b"\n"
        b"2024-01-01T00:00:01.000Z,S,1,2,-3,\n"
        b"2024-01-01T00:00:02.000Z,S,1,2\n"
        b"2024-01-01T00:00:03.000Z,S,1.5,2,1,1\n"
    )
    ticks, n_dead, dead = _replay_accounting(path)
    assert (ticks, n_dead) == (2, 3)
    assert sorted((d.row, d.reason.split(" (")[0]) for d in dead) == [
        (3, "missing ts"),
        (4, "negative bid_size"),
        (5, "not a row of the quotes layout"),
    ]

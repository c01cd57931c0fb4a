"""schemas.codec: events to Kafka JSON and ClickHouse rows and back, and the errors bad
payloads give."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

from schemas import codec
from schemas.signals import Action
from schemas.trades import TradeClosed, TradeOpened
from tests.operators.test_trade_join import T0, pair


@dataclass(frozen=True)
class Sample:
    at: datetime
    action: Action
    value: float
    path: tuple[float, ...]
    tags: dict[str, float]
    note: str = ""
    until: datetime | None = None


SAMPLE = Sample(
    datetime(2014, 5, 6, 10, 31, 0, 379_999, tzinfo=UTC),
    Action.BUY,
    1.5,
    (1.0, math.nan),
    {"a": 2.0},
    until=None,
)


def test_a_trade_event_survives_the_wire_exactly() -> None:
    opened, closed = pair("T-WIRE", T0)
    assert codec.loads(TradeOpened, codec.dumps(opened)) == opened
    assert codec.loads(TradeClosed, codec.dumps(closed)) == closed


def test_json_forms_of_times_enums_and_special_floats() -> None:
    d = codec.to_json_dict(SAMPLE)
    assert d["at"] == "2014-05-06T10:31:00.379Z"  # milliseconds, like every input file
    assert d["action"] == "BUY" and d["path"] == [1.0, None] and d["until"] is None
    back = codec.loads(Sample, codec.dumps(SAMPLE))
    assert back.at == SAMPLE.at.replace(microsecond=379_000) and back.action is Action.BUY
    assert math.isnan(back.path[1]) and back.tags == {"a": 2.0}
    inf = codec.loads(Sample, codec.dumps(Sample(SAMPLE.at, Action.SELL, math.inf, (), {})))
    assert inf.value == math.inf


def test_a_time_with_another_offset_is_the_same_instant_in_utc() -> None:
    plus2 = SAMPLE.at.astimezone(timezone(timedelta(hours=2)))
    text = codec.dumps(Sample(plus2, Action.BUY, 1.0, (), {}))
    assert b'"at":"2014-05-06T10:31:00.379Z"' in text


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "Sample: not JSON"),
        (b"[1, 2]", "Sample: expected a JSON object, got list"),
        (
            b'{"at": "2014-05-06T10:31:00Z", "action": "BUY"}',
            "Sample: missing field(s) ['path', 'tags', 'value']",
        ),
        (
            b'{"at": "2014-05-06T10:31:00", "action": "BUY", "value": 1, "path": [], "tags": {}}',
            "Sample.at: timestamp '2014-05-06T10:31:00' has no UTC offset",
        ),
        (
            b'{"at": "2014-05-06T10:31:00Z", "action": "HODL", "value": 1, "path": [], "tags": {}}',
            "Sample.action: 'HODL' is not a valid Action",
        ),
        (
            b'{"at": "2014-05-06T10:31:00Z", "action": "BUY", "value": "x", "path": [], '
            b'"tags": {}}',
            "Sample.value: could not convert string to float",
        ),
    ],
)
def test_bad_payloads_name_the_event_and_the_field(payload: bytes, reason: str) -> None:
    with pytest.raises(codec.SchemaError, match="^" + re.escape(reason)):
        codec.loads(Sample, payload)


def test_rows_in_column_order_and_back_by_name_or_position() -> None:
    assert codec.row_columns(Sample) == ("at", "action", "value", "path", "tags", "note", "until")
    row = codec.to_row(SAMPLE)
    assert row[1] == "BUY" and row[3] == [1.0, SAMPLE.path[1]] and row[6] is None
    naive = (SAMPLE.at.replace(tzinfo=None), *row[1:6], None)  # a store may return naive UTC
    for back in (
        codec.from_row(Sample, row),
        codec.from_row(Sample, naive),
        codec.from_row(Sample, dict(zip(codec.row_columns(Sample), row, strict=True))),
    ):
        assert back.at == SAMPLE.at.replace(microsecond=379_000) and back.action is Action.BUY
        assert back.path[0] == 1.0 and math.isnan(back.path[1]) and back.tags == {"a": 2.0}


@dataclass(frozen=True)
class Prices:
    symbol: str
    last: float
    bid: float | None
    ask: float
    side: Action


@pytest.mark.parametrize(
    "event",
    [
        SAMPLE,
        Sample(SAMPLE.at, Action.SELL, math.nan, (), {}, "x", SAMPLE.at),
        Prices("X", 1.0, 0.5, 1.5, Action.HOLD),
        Prices("X", None, None, math.inf, Action.BUY),  # type: ignore[arg-type]
    ],
)
def test_a_row_is_what_converting_field_by_field_gives(event: object) -> None:
    """to_row reads all fields at once and converts only where needed (a hot path): the
    same values and types as each field's conversion, a float field's None as NaN."""
    by_field = tuple(out(getattr(event, name)) for name, _, _, out, _ in codec._plan(type(event)))
    row = codec.to_row(event)
    assert [type(v) for v in row] == [type(v) for v in by_field]
    assert all(a == b or (a != a and b != b) for a, b in zip(row, by_field, strict=True))
    if isinstance(event, Prices) and event.last is None:
        assert math.isnan(row[1]) and math.isnan(row[2]) and row[4] == "BUY"


def test_only_dataclasses_have_a_codec() -> None:
    with pytest.raises(TypeError, match="is not an event dataclass"):
        codec.row_columns(dict)

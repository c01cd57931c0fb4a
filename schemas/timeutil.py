"""Event time: timezone-aware UTC datetimes at millisecond precision.

Inside hot loops time is an ``int`` of epoch milliseconds; at every boundary (events,
JSON, ClickHouse rows) it is a timezone-aware UTC :class:`datetime`.

>>> iso(from_ms(1399334400123))
'2014-05-06T00:00:00.123Z'
>>> to_ms(parse_iso('2014-05-06T00:00:00.123Z'))
1399334400123
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_ms(ms: int) -> datetime:
    """Epoch milliseconds -> aware UTC datetime."""
    return EPOCH + timedelta(milliseconds=int(ms))


def to_ms(dt: datetime) -> int:
    """Aware datetime -> epoch milliseconds (naive datetimes are refused, not guessed)."""
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: event times must be timezone-aware UTC")
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def utc_ms(dt: datetime) -> datetime:
    """Normalise an aware datetime to UTC, truncated to whole milliseconds."""
    return from_ms(to_ms(dt))


def iso(dt: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z`` suffix, the format of every input file."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse ISO-8601; a string without an offset is refused rather than assumed UTC."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return utc_ms(dt)

"""The one place events become JSON (Kafka) and ClickHouse rows, and come back.

Events are frozen dataclasses. Their field types drive the conversion:

- ``datetime`` -> ISO-8601 ``...Z`` string in JSON, an aware UTC datetime in a row;
- ``StrEnum`` -> its value;
- ``float`` -> a number, with NaN (unknown) as JSON ``null`` and infinities as strings;
- ``tuple[...]`` -> a list; ``dict`` -> an object / ClickHouse ``Map``;
- nested dataclasses -> nested objects (JSON) and are left to the event's own row layout.

>>> from dataclasses import dataclass
>>> from datetime import datetime, UTC
>>> @dataclass(frozen=True)
... class Ping:
...     at: datetime
...     value: float
>>> text = dumps(Ping(datetime(2024, 1, 1, tzinfo=UTC), float("nan")))
>>> text
b'{"at":"2024-01-01T00:00:00.000Z","value":null}'
>>> loads(Ping, text).at.isoformat()
'2024-01-01T00:00:00+00:00'
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any, TypeVar

from schemas.timeutil import iso, parse_iso, utc_ms

T = TypeVar("T")
Conv = Callable[[Any], Any]


class SchemaError(ValueError):
    """A payload does not match its event schema (missing field, wrong type)."""


def _identity(v: Any) -> Any:
    return v


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return hint, False


def _float_out(v: float) -> float | str | None:
    """NaN (unknown) -> null; +-inf -> "inf"/"-inf" (JSON has no infinities); else a number."""
    if v is None or math.isnan(v):
        return None
    return float(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _float_in(v: Any) -> float:
    return math.nan if v is None else float(v)


def _json_out(hint: Any) -> Conv:
    hint, _ = _strip_optional(hint)
    origin = typing.get_origin(hint)
    if hint is datetime:
        return lambda v: None if v is None else iso(v)
    if hint is float:
        return _float_out
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return lambda v: None if v is None else v.value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return lambda v: None if v is None else to_json_dict(v)
    if origin is tuple:
        args = typing.get_args(hint)
        item = _json_out(args[0]) if args else _identity
        return lambda v: None if v is None else [item(x) for x in v]
    if origin is dict:
        val = _json_out(typing.get_args(hint)[1])
        return lambda v: None if v is None else {k: val(x) for k, x in v.items()}
    return _identity


def _json_in(hint: Any) -> Conv:
    hint, _ = _strip_optional(hint)
    origin = typing.get_origin(hint)
    if hint is datetime:
        return lambda v: None if v is None else parse_iso(v)
    if hint is float:
        return _float_in
    if hint is int:
        return int
    if hint is str:
        return str
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return lambda v: None if v is None else hint(v)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return lambda v: None if v is None else from_json_dict(hint, v)
    if origin is tuple:
        args = typing.get_args(hint)
        item = _json_in(args[0]) if args else _identity
        return lambda v: () if v is None else tuple(item(x) for x in v)
    if origin is dict:
        key_in, val_in = (_json_in(a) for a in typing.get_args(hint))
        return lambda v: {} if v is None else {key_in(k): val_in(x) for k, x in v.items()}
    return _identity


def _row_out(hint: Any) -> Conv:
    hint, _ = _strip_optional(hint)
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return lambda v: v.value
    if hint is float:
        return lambda v: math.nan if v is None else v
    if origin is tuple:
        return list
    return _identity


def _row_in(hint: Any) -> Conv:
    hint, _ = _strip_optional(hint)
    origin = typing.get_origin(hint)
    if hint is datetime:  # a store may hand back naive UTC; NULL stays None
        return lambda v: (
            None if v is None else utc_ms(v) if v.tzinfo else utc_ms(v.replace(tzinfo=_UTC))
        )
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if hint is float:
        return _float_in
    if origin is tuple:
        return tuple
    if origin is dict:
        return dict
    return _identity


_UTC = parse_iso("1970-01-01T00:00:00Z").tzinfo


Plan = tuple[tuple[str, Conv, Conv, Conv, Conv], ...]
_PLANS: dict[type, Plan] = {}
_REQUIRED: dict[type, frozenset[str]] = {}


def _plan(cls: type) -> Plan:
    """Per field: name, JSON out/in and row out/in conversions (built once per class)."""
    plan = _PLANS.get(cls)
    if plan is None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not an event dataclass")
        hints = typing.get_type_hints(cls)
        plan = _PLANS[cls] = tuple(
            (
                f.name,
                _json_out(hints[f.name]),
                _json_in(hints[f.name]),
                _row_out(hints[f.name]),
                _row_in(hints[f.name]),
            )
            for f in dataclasses.fields(cls)
        )
    return plan


def _required(cls: type) -> frozenset[str]:
    """The fields without a default (a payload must have them)."""
    required = _REQUIRED.get(cls)
    if required is None:
        required = _REQUIRED[cls] = frozenset(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
    return required


def to_json_dict(event: Any) -> dict[str, Any]:
    return {name: out(getattr(event, name)) for name, out, _, _, _ in _plan(type(event))}


def from_json_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    if not isinstance(data, Mapping):
        raise SchemaError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    missing = _required(cls) - data.keys()
    if missing:
        raise SchemaError(f"{cls.__name__}: missing field(s) {sorted(missing)}")
    kwargs = {}
    for name, _, conv, _, _ in _plan(cls):
        if name in data:
            try:
                kwargs[name] = conv(data[name])
            except (TypeError, ValueError) as exc:
                raise SchemaError(f"{cls.__name__}.{name}: {exc}") from exc
    return cls(**kwargs)


def dumps(event: Any) -> bytes:
    """Event -> compact UTF-8 JSON (the Kafka wire format)."""
    return json.dumps(to_json_dict(event), separators=(",", ":"), allow_nan=False).encode()


def loads(cls: type[T], payload: bytes | str) -> T:
    """Kafka JSON -> event; raises :class:`SchemaError` with the reason on bad input."""
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{cls.__name__}: not JSON ({exc})") from exc
    return from_json_dict(cls, data)


def row_columns(cls: type) -> tuple[str, ...]:
    """Column names of an event's ClickHouse row: its field names, in order."""
    return tuple(name for name, *_ in _plan(cls))


def to_row(event: Any) -> tuple[Any, ...]:
    """Event -> ClickHouse row tuple, in :func:`row_columns` order."""
    make = _ROW_MAKERS.get(type(event))
    if make is None:
        make = _ROW_MAKERS[type(event)] = _row_maker(type(event))
    return make(event)


_ROW_MAKERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _row_maker(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """``to_row`` for one class, built once: every field read in one ``attrgetter`` call;
    only enum and tuple fields are converted, and a float field's None becomes NaN after a
    single check over the float fields (shadow predictions are rows of every bar with
    learning on). The same values as converting field by field (tests/schemas/test_codec.py)."""
    plan = _plan(cls)
    names = [name for name, *_ in plan]
    if len(names) < 2:  # attrgetter of one name returns the value, not a tuple
        return lambda e: tuple(out(getattr(e, name)) for name, _, _, out, _ in plan)
    read = attrgetter(*names)
    hints = typing.get_type_hints(cls)
    floats = [i for i, name in enumerate(names) if _strip_optional(hints[name])[0] is float]
    converted = [
        (i, out)
        for i, (_, _, _, out, _) in enumerate(plan)
        if out is not _identity and i not in floats
    ]
    read_floats = itemgetter(*floats) if len(floats) > 1 else None

    def make(event: Any) -> tuple[Any, ...]:
        row = read(event)
        has_none = (
            (None in read_floats(row)) if read_floats else any(row[i] is None for i in floats)
        )
        if not converted and not has_none:
            return row
        values = list(row)
        for i, out in converted:
            values[i] = out(values[i])
        if has_none:
            for i in floats:
                if values[i] is None:
                    values[i] = math.nan
        return tuple(values)

    return make


def from_row(cls: type[T], row: Mapping[str, Any] | Sequence[Any]) -> T:
    """ClickHouse row (mapping by column, or a tuple in column order) -> event."""
    plan = _plan(cls)
    if isinstance(row, Mapping):
        return cls(**{name: conv(row[name]) for name, _, _, _, conv in plan if name in row})
    return cls(**{name: conv(v) for (name, _, _, _, conv), v in zip(plan, row, strict=True)})

"""Dead letters: input that could not become a tick (or a later event), kept with a reason.

Nothing is dropped silently: every input row ends up as a tick or a dead letter. The id is
deterministic (``source#row``), so a replay after a crash rewrites the same rows and the
``dead_letters`` table (ReplacingMergeTree on ``id``) keeps one copy.

Bulk rejections (a feed with many crossed quotes) travel as a columnar
:class:`DeadLetters` block; :class:`DeadLetter` is the row view.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import numpy as np

from schemas.timeutil import from_ms

TS_UNKNOWN = np.iinfo(np.int64).min


class RejectedAt(StrEnum):
    """Where a record was rejected."""

    DECODE = "decode"  # not a row of the expected layout / not a valid JSON tick
    VALIDATE = "validate"  # a row, but its values are not a tradable tick
    ORDER = "order"  # time went backwards for its symbol beyond the tolerance
    JOIN = "join"  # a trade event that could not be joined (learning flow)


def dead_letter_id(source: str, row: int) -> str:
    return f"{source}#{row}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    source: str
    row: int
    ts: datetime | None
    symbol: str
    stage: RejectedAt
    reason: str
    raw: str


@dataclass(slots=True)
class DeadLetters:
    """Columnar block of dead letters (one stream item, one insert)."""

    source: list[str] = field(default_factory=list)
    row: list[int] = field(default_factory=list)
    ts_ms: list[int] = field(default_factory=list)
    symbol: list[str] = field(default_factory=list)
    stage: list[RejectedAt] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.row)

    def add(
        self,
        source: str,
        row: int,
        ts_ms: int | None,
        symbol: str,
        stage: RejectedAt,
        reason: str,
        raw: str,
    ) -> None:
        self.source.append(source)
        self.row.append(int(row))
        self.ts_ms.append(TS_UNKNOWN if ts_ms is None else int(ts_ms))
        self.symbol.append(symbol)
        self.stage.append(stage)
        self.reason.append(reason)
        self.raw.append(raw)

    def extend(
        self,
        source: Sequence[str],
        row: Sequence[int],
        ts_ms: Sequence[int],
        symbol: Sequence[str],
        stage: RejectedAt,
        reason: Sequence[str],
        raw: Sequence[str],
    ) -> None:
        """Append many rejections of one stage at once (vectorised validation)."""
        self.source.extend(source)
        self.row.extend(int(r) for r in row)
        self.ts_ms.extend(int(t) for t in ts_ms)
        self.symbol.extend(symbol)
        self.stage.extend([stage] * len(row))
        self.reason.extend(reason)
        self.raw.extend(raw)

    def __iter__(self) -> Iterator[DeadLetter]:
        for i in range(len(self)):
            ts = None if self.ts_ms[i] == TS_UNKNOWN else from_ms(self.ts_ms[i])
            yield DeadLetter(
                dead_letter_id(self.source[i], self.row[i]),
                self.source[i],
                self.row[i],
                ts,
                self.symbol[i],
                self.stage[i],
                self.reason[i],
                self.raw[i],
            )

    def columns(self) -> dict[str, list]:
        """Column-oriented data for the ``dead_letters`` table (see sql/ddl)."""
        return {
            "id": [dead_letter_id(s, r) for s, r in zip(self.source, self.row, strict=True)],
            "source": self.source,
            "row": self.row,
            "ts": [None if t == TS_UNKNOWN else t for t in self.ts_ms],
            "symbol": self.symbol,
            "stage": [s.value for s in self.stage],
            "reason": self.reason,
            "raw": self.raw,
        }

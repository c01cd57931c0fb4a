"""Kafka/Redpanda ticks as a Bytewax source, on top of Bytewax's own KafkaSource.

Messages on the ``ticks`` topic are JSON :class:`~schemas.ticks.Tick` objects keyed by symbol
(so a symbol lives in one Kafka partition, in order). Each poll of a partition (up to
``batch_size`` messages) becomes one :class:`TickRows` block, the same item the file replay
emits, so everything downstream is the same graph. A message that is not a valid tick stays
a row with a decode error and becomes a dead letter (source ``kafka:topic/partition``, row =
offset). Offsets live in Bytewax recovery snapshots, as with KafkaSource itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from schemas.ticks import TickRows, decode_messages


@dataclass(frozen=True)
class KafkaUrl:
    """``kafka://host:port[,host:port]/topic[?tail=false]``."""

    brokers: tuple[str, ...]
    topic: str
    tail: bool = True

    @classmethod
    def parse(cls, url: str) -> KafkaUrl:
        parsed = urlparse(url)
        if parsed.scheme != "kafka" or not parsed.netloc or not parsed.path.strip("/"):
            raise ValueError(f"{url!r}: expected kafka://host:port/topic[?tail=false]")
        query = parse_qs(parsed.query)
        tail = query.get("tail", ["true"])[0].lower() not in ("false", "0", "no")
        return cls(tuple(parsed.netloc.split(",")), parsed.path.strip("/"), tail)


class _KafkaTickPartition(StatefulSourcePartition[TickRows, tuple[Any, int]]):
    def __init__(self, inner: StatefulSourcePartition, name: str, seq: int) -> None:
        self._inner = inner
        self._name = name
        self._source = f"kafka:{name}"
        self._seq = seq
        self._ended = False

    def next_batch(self) -> list[TickRows]:
        if self._ended:
            raise StopIteration
        try:
            msgs = self._inner.next_batch()
        except StopIteration:  # the end of the topic when not tailing: say so downstream
            self._ended = True
            self._seq += 1
            return [TickRows.end_of(self._name, self._seq - 1)]
        if not msgs:
            return []
        values: list[bytes | None] = []
        offsets: list[int] = []
        errors: dict[int, str] = {}
        for i, m in enumerate(msgs):
            if isinstance(m, KafkaError):
                errors[i] = f"kafka error: {m.err}"
                m = m.msg
            assert isinstance(m, KafkaSourceMessage)
            values.append(m.value)
            offsets.append(-1 if m.offset is None else m.offset)
        rows = decode_messages(values, self._source, offsets)
        rows.errors.update(errors)
        rows.partition, rows.seq = self._name, self._seq
        self._seq += 1
        return [rows]

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> tuple[Any, int]:
        return self._inner.snapshot(), self._seq

    def close(self) -> None:
        self._inner.close()


class KafkaTickSource(FixedPartitionedSource[TickRows, tuple[Any, int]]):
    """JSON ticks from a Kafka topic, one :class:`TickRows` block per poll and partition."""

    def __init__(self, url: KafkaUrl, batch_size: int = 5000,
                 add_config: dict[str, str] | None = None) -> None:
        self.url = url
        self._inner = KafkaSource(list(url.brokers), [url.topic], tail=url.tail,
                                  batch_size=batch_size, add_config=add_config,
                                  raise_on_errors=False)

    def list_parts(self) -> list[str]:
        return [_part_name(p) for p in self._inner.list_parts()]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: tuple[Any, int] | None) -> _KafkaTickPartition:
        topic, idx = for_part.rsplit("/", 1)
        inner_state, seq = resume_state if resume_state is not None else (None, 0)
        inner = self._inner.build_part(step_id, f"{idx}-{topic}", inner_state)
        return _KafkaTickPartition(inner, for_part, seq)


def _part_name(bytewax_part: str) -> str:
    """Bytewax names Kafka partitions ``{idx}-{topic}``; ours are ``{topic}/{idx}``."""
    idx, topic = bytewax_part.split("-", 1)
    return f"{topic}/{idx}"

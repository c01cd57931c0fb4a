"""Kafka tick source without a broker: idle markers, the outage watch, resume points, dead
letters and snapshots, on a fake consumer, a scripted health probe and an injected clock.

The same behaviour against a real broker (Tansu), in the live flow, is in
tests/integration/test_kafka_live.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from connectors.kafka import (
    IdleTimer,
    KafkaTickSource,
    KafkaUrl,
    Probe,
    Timing,
    _KafkaTickPartition,
    resume_point,
)
from schemas.ticks import Tick, TickOrigin, TickRows

BROKER = "10.1.2.3:9092"
TOPIC = "ticks"
TIMING = Timing(
    probe_timeout_s=0.2, retry_s=1.0, quiet_probe_s=5.0, empty_poll_s=0.01, verify_s=0.1
)


class Clock:
    """Wall time the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Msg:
    """A confluent-kafka message, as far as the source looks at it."""

    val: bytes | None
    off: int
    err: KafkaError | None = None

    def value(self) -> bytes | None:
        return self.val

    def offset(self) -> int:
        return self.off

    def error(self) -> KafkaError | None:
        return self.err


@dataclass
class FakeConsumer:
    """Polls return the queued batches, then nothing; every assignment is recorded."""

    config: dict[str, Any]
    batches: list[list[Msg]] = field(default_factory=list)
    assigned: list[int] = field(default_factory=list)
    closed: bool = False

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned.extend(tp.offset for tp in partitions)

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        self.closed = True


class LazyFuture(Future[Probe]):
    """A probe that has run by the time the partition looks at it: it sees the broker as it is
    then (the real source runs it on a thread of its own)."""

    def __init__(self, fn: Callable[..., Probe], args: tuple[Any, ...]) -> None:
        super().__init__()
        self._call = (fn, args)

    def done(self) -> bool:
        if not super().done():
            fn, args = self._call
            self.set_result(fn(*args))
        return True

    def result(self, timeout: float | None = None) -> Probe:
        self.done()
        return super().result(timeout)


class InlineExecutor:
    def submit(self, fn: Callable[..., Probe], *args: Any) -> Future[Probe]:
        return LazyFuture(fn, args)

    def shutdown(self, wait: bool = True) -> None:
        pass


@dataclass
class Broker:
    """What the scripted health probe reports."""

    error: str | None = None
    broker_down: bool = False
    topic_id: str = "A"
    low: int = 0
    high: int = 0
    reaches: bool | None = None
    probes: list[tuple[int, bool]] = field(default_factory=list)

    def probe(self, offset: int, started: float, verify: bool) -> Probe:
        self.probes.append((offset, verify))
        return Probe(
            offset,
            started,
            self.error,
            self.broker_down,
            self.topic_id,
            self.low,
            self.high,
            self.reaches if verify else None,
        )


@dataclass
class Harness:
    clock: Clock
    broker: Broker
    consumers: list[FakeConsumer]
    source: KafkaTickSource

    @property
    def consumer(self) -> FakeConsumer:
        return self.consumers[-1]

    def part(self, resume: tuple[int, int] | None = None, idx: int = 0) -> _KafkaTickPartition:
        return self.source.build_part("ticks", f"{TOPIC}/{idx}", resume)

    def poll(self, part: _KafkaTickPartition, at: float) -> list[TickRows]:
        self.clock.t = at
        return part.next_batch()


def harness(idle_ms: float | None = 1000, outage_s: float = 30.0, tail: bool = True) -> Harness:
    clock, broker, consumers = Clock(), Broker(), []

    def factory(config: dict[str, Any]) -> FakeConsumer:
        consumers.append(FakeConsumer(config))
        return consumers[-1]

    url = KafkaUrl((BROKER,), TOPIC, tail)
    source = KafkaTickSource(
        url,
        100,
        idle_ms=idle_ms,
        outage_s=outage_s,
        timing=TIMING,
        clock=clock,
        consumer_factory=factory,
        probe_factory=lambda idx: broker.probe,
        executor_factory=InlineExecutor,
    )
    return Harness(clock, broker, consumers, source)


def tick(i: int) -> bytes:
    return Tick(
        ts=datetime(2014, 5, 6, 0, 0, i, tzinfo=UTC),
        symbol="FXCM:EURUSD",
        origin=TickOrigin.QUOTE,
        price=1.00005,
        bid=1.0,
        ask=1.0001,
    ).to_json()


def messages(first: int, n: int) -> list[Msg]:
    return [Msg(tick(i % 60), first + i) for i in range(n)]


T0 = 1000.0


# --- idle markers ------------------------------------------------------------------------------
def test_idle_timer_says_it_once_per_quiet_spell() -> None:
    timer = IdleTimer(2000, now=0.0)
    assert [timer.due(t) for t in (0.5, 1.999, 2.0, 2.5, 60.0)] == [
        False,
        False,
        True,
        False,
        False,
    ]
    timer.data(61.0)
    assert [timer.due(t) for t in (62.0, 62.999, 63.0, 100.0)] == [False, False, True, False]


def test_a_quiet_partition_emits_one_idle_marker_until_it_has_had_data_again() -> None:
    h = harness(idle_ms=1000)
    part = h.part()
    assert h.poll(part, T0 + 0.5) == []
    (marker,) = h.poll(part, T0 + 1.0)  # quiet since it started: idle after 1 s
    assert marker.idle and not marker.final and len(marker) == 0
    assert (marker.partition, marker.seq) == (f"{TOPIC}/0", 0)
    assert [h.poll(part, T0 + t) for t in (1.5, 3.0, 30.0)] == [[], [], []]  # only one
    h.consumer.batches.append(messages(0, 3))
    (block,) = h.poll(part, T0 + 31.0)
    assert (len(block), block.seq, block.idle) == (3, 1, False)
    assert h.poll(part, T0 + 31.9) == []
    (again,) = h.poll(part, T0 + 32.0)  # quiet again after its data: a new marker
    assert again.idle and again.seq == 2
    assert h.poll(part, T0 + 40.0) == []
    assert part.snapshot() == (3, 3)


def test_no_idle_markers_when_not_tailing_or_not_asked_for() -> None:
    for h in (harness(idle_ms=1000, tail=False), harness(idle_ms=None)):
        part = h.part()
        assert all(h.poll(part, T0 + t) == [] for t in (1.0, 5.0, 50.0))


def test_the_end_of_the_topic_when_not_tailing_is_a_final_block() -> None:
    h = harness(tail=False)
    part = h.part()
    eof = Msg(None, 2, KafkaError(KafkaError._PARTITION_EOF))
    h.consumer.batches.append([*messages(0, 2), eof])
    block, end = h.poll(part, T0 + 0.1)
    assert (len(block), block.seq, end.final, end.seq) == (2, 0, True, 1)
    with pytest.raises(StopIteration):
        part.next_batch()
    assert h.consumer.config["enable.partition.eof"] == "true"


# --- blocks, dead letters, snapshots -----------------------------------------------------------
def test_bad_messages_are_dead_letter_rows_and_partition_errors_are_not() -> None:
    h = harness()
    part = h.part()
    h.consumer.batches.append(
        [
            Msg(tick(1), 10),
            Msg(b"not json", 11),
            Msg(b"\x00garbage", 12, KafkaError(KafkaError._BAD_MSG, "crc mismatch")),
            Msg(None, -1, KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "unknown topic")),
            Msg(tick(2), 13),
        ]
    )
    (block,) = h.poll(part, T0 + 0.1)
    assert list(block.row_no) == [10, 11, 12, 13]  # row = offset
    assert block.sources == (f"kafka:{TOPIC}/0",)
    assert set(block.errors) == {1, 2}
    assert block.errors[2] == "kafka error: crc mismatch"
    assert part.snapshot() == (14, 1)


def test_a_resumed_partition_reads_on_from_its_snapshot() -> None:
    h = harness()
    part = h.part(resume=(42, 7))
    assert h.consumer.assigned == [42]
    h.consumer.batches.append(messages(42, 2))
    (block,) = h.poll(part, T0 + 0.1)
    assert h.broker.probes == [(42, True)]  # a resumed offset is checked against the log
    assert block.seq == 7 and list(block.row_no) == [42, 43]
    assert part.snapshot() == (44, 8)
    fresh = h.part()
    assert h.consumer.assigned == [OFFSET_BEGINNING] and fresh.snapshot() == (-2, 0)


# --- outages -----------------------------------------------------------------------------------
def lose_broker(h: Harness, part: _KafkaTickPartition, at: float) -> None:
    """The broker goes away: the consumer reports it through its error callback."""
    h.broker.error, h.broker.broker_down = "no answer within 0.2 s", True
    h.clock.t = at
    h.consumer.config["error_cb"](
        KafkaError(
            KafkaError._TRANSPORT,
            f"GroupCoordinator: {BROKER}: Connect to ipv4#{BROKER} failed: "
            "Connection refused (after 0ms in state CONNECT)",
        )
    )


def test_a_lost_broker_gets_one_warning_and_the_flow_reads_on_when_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.kafka")
    h = harness(idle_ms=None, outage_s=30.0)
    part = h.part()
    h.consumer.batches.append(messages(0, 5))
    h.poll(part, T0 + 0.1)
    lose_broker(h, part, T0 + 2.0)
    for t in range(2, 20):
        h.poll(part, T0 + t)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"Kafka broker {BROKER} unreachable (Connect to ipv4#{BROKER} failed: Connection refused; "
        f"topic {TOPIC}, partition 0 at offset 5): waiting up to 30 s for it, then reading on "
        f"from the last offsets"
    ]
    assert len(h.broker.probes) > 10  # it keeps trying (about once a second)
    assert h.consumers[0].closed and len(h.consumers) == 1  # no consumer while it is lost
    assert part.snapshot() == (5, 1)  # nor a lost offset
    # back, same topic: a new consumer at the last offset (librdkafka may never fetch again)
    h.broker.error, h.broker.broker_down, h.broker.high = None, False, 5
    h.poll(part, T0 + 21.0)
    assert h.consumers[0].closed and h.consumer.assigned == [5]
    assert caplog.records[-1].getMessage() == (
        f"Kafka topic {TOPIC} partition 0 readable again after 19.0 s (broker {BROKER}): "
        f"reading on at offset 5"
    )
    h.consumer.batches.append(messages(5, 2))
    (block,) = h.poll(part, T0 + 21.5)
    assert list(block.row_no) == [5, 6] and block.sources == (f"kafka:{TOPIC}/0",)


def test_an_outage_longer_than_outage_s_stops_the_flow_with_one_clear_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness(idle_ms=None, outage_s=10.0)
    part = h.part()
    h.poll(part, T0 + 0.1)
    lose_broker(h, part, T0 + 1.0)
    for t in range(1, 11):
        h.poll(part, T0 + t)
    with pytest.raises(RuntimeError) as err:
        h.poll(part, T0 + 11.0)
    line = str(err.value)
    assert line == (
        f"Kafka broker {BROKER} unreachable for 10 s (topic {TOPIC}; Connect to "
        f"ipv4#{BROKER} failed: Connection refused); the flow stopped; resume with "
        "the same command and -r to continue from the last snapshot"
    )
    assert caplog.records[-1].levelno == logging.ERROR and caplog.records[-1].getMessage() == line


def test_a_missing_partition_is_waited_for_and_named() -> None:
    h = harness(idle_ms=None, outage_s=5.0)
    part = h.part()
    h.poll(part, T0 + 0.1)
    h.broker.error = f"topic {TOPIC} has no partition 0"
    h.poll(part, T0 + 5.2)  # the quiet-partition check (a lost partition can be silent)
    h.poll(part, T0 + 5.3)
    h.poll(part, T0 + 10.1)
    with pytest.raises(
        RuntimeError,
        match=(
            f"Kafka topic {TOPIC} partition 0 unavailable on broker {BROKER} for 5 s "
            f"\\(topic {TOPIC} has no partition 0\\); the flow stopped"
        ),
    ):
        h.poll(part, T0 + 10.3)


def test_a_topic_recreated_during_an_outage_is_read_from_its_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tansu's memory storage comes back empty; the producer recreates the topic."""
    h = harness(idle_ms=None)
    part = h.part()
    h.consumer.batches.append(messages(0, 100))
    h.poll(part, T0 + 0.1)
    lose_broker(h, part, T0 + 1.0)
    h.poll(part, T0 + 1.0)
    h.broker.error, h.broker.broker_down = f"topic {TOPIC} does not exist", False
    h.poll(part, T0 + 3.0)
    h.broker.error, h.broker.topic_id, h.broker.high = None, "B", 40
    h.poll(part, T0 + 5.0)
    assert h.consumer.assigned == [0]
    assert any(
        "the topic was recreated (topic id A -> B)" in r.getMessage() for r in caplog.records
    )
    h.consumer.batches.append(messages(0, 40))
    (block,) = h.poll(part, T0 + 5.5)
    # offsets start again at 0: its dead letters must not take the old topic's ids
    assert block.sources == (f"kafka:{TOPIC}/0@B",) and part.snapshot() == (40, 2)


def test_an_offset_beyond_the_end_reads_on_from_what_is_there() -> None:
    h = harness()
    h.broker.high, h.broker.reaches = 30, False  # the broker lost the topic: 30 new messages
    part = h.part(resume=(100, 4))
    h.poll(part, T0 + 0.1)
    assert h.consumer.assigned == [100, 0]


def test_a_broker_understating_the_end_does_not_rewind() -> None:
    """Tansu reports the last batch's first offset + 1 as the end; reading back proves the
    log still reaches the offset, so nothing is read twice."""
    h = harness()
    h.broker.high, h.broker.reaches = 1, True
    part = h.part(resume=(100, 4))
    h.poll(part, T0 + 0.1)
    assert h.consumer.assigned == [100]


def test_a_consumer_that_stops_fetching_is_reassigned() -> None:
    h = harness()
    part = h.part()
    h.consumer.batches.append(messages(0, 10))
    h.poll(part, T0 + 0.1)
    h.poll(part, T0 + 4.0)
    assert h.consumer.assigned == [OFFSET_BEGINNING]  # all read: nothing to worry about
    h.broker.high = 50  # more to read, but the consumer gives nothing
    h.poll(part, T0 + 5.2)  # the quiet-partition check
    h.poll(part, T0 + 5.3)
    assert h.consumer.assigned == [OFFSET_BEGINNING, 10] and len(h.consumers) == 1


def test_a_probe_overtaken_by_data_is_not_taken_for_an_outage() -> None:
    h = harness()
    part = h.part()
    h.broker.error, h.broker.broker_down = "no answer within 0.2 s", True
    fut = part._probe_future
    assert fut is not None and fut.result().offset == OFFSET_BEGINNING  # it ran before the data
    h.consumer.batches.append(messages(0, 3))
    h.poll(part, T0 + 0.1)
    assert part._lost is None and part.snapshot() == (3, 1)


def test_partitions_of_one_source_share_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    h = harness()
    parts = [h.part(idx=0), h.part(idx=1)]
    consumers = list(h.consumers)
    h.broker.error, h.broker.broker_down = "no answer within 0.2 s", True
    h.clock.t = T0 + 1.0
    for c in consumers:
        c.config["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    for p in parts:
        p.next_batch()
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1


# --- resume points -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("offset", "changes", "known", "expected", "says"),
    [
        (500, {}, "A", 500, None),
        (-2, {"topic_id": "B"}, "A", -2, None),  # nothing read yet
        (500, {"topic_id": "B", "low": 0}, "A", 0, "recreated"),
        (500, {"high": 20, "reaches": False}, None, 0, "came back empty"),
        (500, {"high": 20, "reaches": False}, "A", 20, "lost messages 20..499"),
        (500, {"high": 20, "reaches": True}, "A", 500, None),  # understated end
        (500, {"high": 20, "reaches": None}, "A", 500, None),  # not verified: no claim
        (5, {"low": 40, "high": 90}, "A", 40, "deleted before they were read"),
    ],
)
def test_resume_point(
    offset: int, changes: dict[str, Any], known: str | None, expected: int, says: str | None
) -> None:
    probe = replace(Probe(offset, 0.0, topic_id="A", low=0, high=1000), **changes)
    got, note = resume_point(offset, probe, known)
    assert got == expected
    assert (note is None) if says is None else (says in (note or ""))


# --- listing partitions ------------------------------------------------------------------------
def test_listing_partitions_of_an_unreachable_broker_waits_then_names_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()

    def sleep(s: float) -> None:
        clock.t += s

    url = KafkaUrl(("127.0.0.1:1",), TOPIC)  # nothing listens there
    source = KafkaTickSource(url, outage_s=3.0, timing=TIMING, clock=clock, sleep=sleep)
    with pytest.raises(RuntimeError) as err:
        source.list_parts()
    assert str(err.value).startswith(
        f"Kafka broker 127.0.0.1:1 unreachable for 3 s (topic {TOPIC}; "
    )
    assert str(err.value).endswith(
        "resume with the same command and -r to continue from the last snapshot"
    )
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1

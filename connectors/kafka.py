"""Kafka/Redpanda ticks as a Bytewax source that holds up in live use.

Messages on the ``ticks`` topic are JSON :class:`~schemas.ticks.Tick` objects keyed by symbol
(so a symbol lives in one Kafka partition, in order). Each poll of a partition (up to
``batch_size`` messages) becomes one :class:`TickRows` block, the same item the file replay
emits, so everything downstream is the same graph. Each Kafka partition is one input
partition with a consumer of its own (manual assignment); its recovery snapshot is
``(offset, seq)``: the next Kafka offset to read and the next block number.

- Bad messages never stop the flow: they become dead letters (source
  ``kafka:topic/partition``, row = offset).
- A partition idle for ``QT_IDLE_PARTITION_MS`` emits one :meth:`TickRows.idle_marker`, so
  the decision engine stops waiting for it (:mod:`operators.clocks`).
- A lost broker or partition is noticed from the consumer's errors and a health probe, and
  read on from its last offset when it comes back; one lost for ``QT_KAFKA_OUTAGE_S`` stops
  the flow with an error.
- A resume (``-r``) reads on from the last snapshot's offsets.

Design notes: docs/kafka.md.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from connectors.decode import decode_messages
from errors import UserError, redact
from metrics import METRICS
from schemas.ticks import TickRows

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

Clock = Callable[[], float]
Snapshot = tuple[int, int]

# librdkafka error codes of one bad message (it becomes a dead letter, reading goes on); any
# other consumer error is about the broker or the partition and triggers a health probe.
_BAD_MESSAGE = frozenset(
    {
        KafkaError._BAD_MSG,
        KafkaError.INVALID_MSG,  # a corrupt message (CRC)
        KafkaError.INVALID_RECORD,
        KafkaError._KEY_DESERIALIZATION,
        KafkaError._VALUE_DESERIALIZATION,
    }
)
# metadata answers that mean "the broker answered: the topic is not there"
_NO_TOPIC = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.UNKNOWN_TOPIC_ID,
    }
)
_OUT_OF_RANGE = frozenset({KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET})
_STOPPED = (
    "the flow stopped; resume with the same command and -r to continue from the last snapshot"
)


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
            raise UserError(f"{redact(url)!r}: expected kafka://host:port/topic[?tail=false]")
        query = parse_qs(parsed.query)
        tail = query.get("tail", ["true"])[0].lower() not in ("false", "0", "no")
        return cls(tuple(parsed.netloc.split(",")), parsed.path.strip("/"), tail)

    @property
    def bootstrap(self) -> str:
        return ",".join(self.brokers)


@dataclass(frozen=True)
class Timing:
    """How often and how long the source checks on a partition (seconds)."""

    probe_timeout_s: float = 2.0  # one probe's metadata and offset requests
    retry_s: float = 1.0  # between probes of a lost partition
    quiet_probe_s: float = 5.0  # a quiet partition is checked this often (loss can be silent)
    empty_poll_s: float = 0.01  # pause after an empty poll: no busy loop on a quiet topic
    verify_s: float = 1.0  # reading back the last message read (offset past the end?)


class _RdkafkaLog:
    """librdkafka's own log lines go to DEBUG (logger ``connectors.kafka.librdkafka``): while a
    broker is down every client repeats a connection failure each second; the source says what
    happened once, in its own words."""

    def log(self, level: int, msg: str, *args: Any) -> None:
        _rdkafka_log.log(level if level >= logging.CRITICAL else logging.DEBUG, msg, *args)


RDKAFKA_LOG = _RdkafkaLog()


class IdleTimer:
    """When a quiet tail-mode partition says it is idle: once per quiet spell, after
    ``idle_ms`` of wall time without data (counted from the start for a partition that never
    had any)."""

    def __init__(self, idle_ms: float, now: float) -> None:
        self.idle_s = idle_ms / 1000.0
        self._quiet_since = now
        self._said = False

    def data(self, now: float) -> None:
        """The partition emitted a real block: its quiet spell (if any) is over."""
        self._quiet_since = now
        self._said = False

    def due(self, now: float) -> bool:
        """True exactly once per quiet spell, when it has lasted ``idle_ms``."""
        if self._said or now - self._quiet_since < self.idle_s:
            return False
        self._said = True
        return True


@dataclass(frozen=True)
class Probe:
    """What one health check of a partition found (on the probe thread)."""

    offset: int  # the partition's offset when the probe started
    started: float  # clock time it started
    error: str | None = None  # why the partition cannot be read now; None: it can
    broker_down: bool = False  # the error is the broker itself (not the topic) not answering
    topic_id: str | None = None
    low: int = -1  # first offset on the broker
    high: int = -1  # end of the log (Tansu may understate it: see ``reaches``)
    reaches: bool | None = None  # the log still holds ``offset - 1`` (checked if high < offset)


def resume_point(offset: int, probe: Probe, known_id: str | None) -> tuple[int, str | None]:
    """Where a partition reads on once it is readable again, and what to say when that is not
    simply its last offset (a recreated topic, an offset past the end or below the start)."""
    if offset < 0:  # nothing read yet: the logical start (OFFSET_BEGINNING) still applies
        return offset, None
    if known_id and probe.topic_id and probe.topic_id != known_id:
        return probe.low, (
            f"the topic was recreated (topic id {known_id} -> {probe.topic_id}): "
            f"what was in it is gone; reading on from its first offset "
            f"{probe.low} instead of {offset}"
        )
    if probe.reaches is False and probe.high < offset:
        if known_id and probe.topic_id == known_id:  # same topic, shorter log: new data from high
            return probe.high, (
                f"offset {offset} is beyond the end {probe.high} of the log (the "
                f"broker lost messages {probe.high}..{offset - 1}, which were "
                f"read); reading on from {probe.high}"
            )
        return probe.low, (
            f"offset {offset} is beyond the end {probe.high} of the topic (it came "
            f"back empty or was recreated); reading on from what is there, "
            f"offset {probe.low}"
        )
    if probe.low >= 0 and offset < probe.low:
        return probe.low, (
            f"offset {offset} is below the first offset {probe.low} on the broker "
            f"(messages {offset}..{probe.low - 1} were deleted before they were "
            f"read); reading on from {probe.low}"
        )
    return offset, None


class _Outages:
    """One warning line per outage of a source, however many of its partitions notice it, and
    one line when the last of them is back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lost: set[str] = set()

    def lost(self, part: str, line: str) -> None:
        with self._lock:
            first = not self._lost
            self._lost.add(part)
        log.log(logging.WARNING if first else logging.INFO, line)

    def back(self, part: str, line: str) -> None:
        with self._lock:
            self._lost.discard(part)
            last = not self._lost
        log.log(logging.WARNING if last else logging.INFO, line)


class ConsumerLike(Protocol):
    """The part of a confluent-kafka ``Consumer`` a partition uses (fakes in unit tests)."""

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def consume(self, num_messages: int, timeout: float) -> list[Any]: ...

    def close(self) -> None: ...


def _error_code(exc: BaseException) -> int | None:
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return err.code() if isinstance(err, KafkaError) else None


def _error_text(exc: BaseException) -> str:
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc) or type(exc).__name__


def _plain(text: str) -> str:
    """A librdkafka error without the client's prefixes and state suffix: ``GroupCoordinator:
    host:9092: Connect to ipv4#host:9092 failed: Connection refused (after 0ms in state
    CONNECT)`` -> ``Connect to ipv4#host:9092 failed: Connection refused``."""
    text = re.sub(r"^(?:[A-Za-z]+: )?[\w.-]+:\d+(?:/\w+)?: ", "", text)
    return re.sub(r" \(after \d+ms in state \w+\)$", "", text)


class _Prober:
    """Health checks of one partition. They block up to a timeout each, so they run on the
    partition's probe thread, never on the dataflow's worker."""

    def __init__(self, config: dict[str, Any], topic: str, idx: int, timing: Timing) -> None:
        self._config = config
        self._topic = topic
        self._idx = idx
        self._timing = timing
        self._admin: AdminClient | None = None

    def __call__(self, offset: int, started: float, verify: bool) -> Probe:
        """Is the partition readable, and (``verify``) does its log still reach ``offset``?"""
        t = self._timing.probe_timeout_s
        if self._admin is None:
            conf: dict[str, Any] = {**self._config, "logger": RDKAFKA_LOG}
            self._admin = AdminClient(conf)
        try:
            return self._check(offset, started, verify, t)
        finally:
            self._admin.poll(0)  # serve its queued log lines

    def _check(self, offset: int, started: float, verify: bool, t: float) -> Probe:
        topic = self._topic
        try:
            leaders, topic_id = self._describe(t)
            if self._idx not in leaders:
                return Probe(offset, started, f"topic {topic} has no partition {self._idx}")
            if leaders[self._idx] < 0:
                return Probe(offset, started, f"partition {self._idx} has no leader")
            low, high = self._offsets(t)
        except FutureTimeout:
            return Probe(offset, started, f"no answer within {t:g} s", broker_down=True)
        except KafkaException as exc:
            if _error_code(exc) in _NO_TOPIC:
                return Probe(offset, started, f"topic {topic} does not exist")
            return Probe(offset, started, _error_text(exc), broker_down=True)
        reaches = self._holds(offset - 1) if verify and offset > 0 and high < offset else None
        return Probe(offset, started, None, False, topic_id, low, high, reaches)

    def _describe(self, t: float) -> tuple[dict[int, int], str | None]:
        """The leader of each partition of the topic, and the topic's id (a recreated topic has
        another). Brokers without topic ids get a plain metadata request (no auto-creation)."""
        assert self._admin is not None
        topic = self._topic
        try:
            desc = self._admin.describe_topics(TopicCollection([topic]), request_timeout=t)[
                topic
            ].result(timeout=t + 1.0)
        except KafkaException as exc:
            if _error_code(exc) not in (
                KafkaError._UNSUPPORTED_FEATURE,
                KafkaError.UNSUPPORTED_VERSION,
            ):
                raise
            meta = self._admin.list_topics(timeout=t).topics.get(topic)
            if meta is None or meta.error is not None:
                raise KafkaException(
                    meta.error if meta is not None else KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)
                ) from exc
            return {i: p.leader for i, p in meta.partitions.items()}, None
        leaders = {p.id: (p.leader.id if p.leader is not None else -1) for p in desc.partitions}
        return leaders, str(desc.topic_id) if desc.topic_id is not None else None

    def _offsets(self, t: float) -> tuple[int, int]:
        """First and end offset of the partition (admin requests: no fetching client here)."""
        assert self._admin is not None
        tp = TopicPartition(self._topic, self._idx)
        out = []
        for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):
            fut = self._admin.list_offsets({tp: spec}, request_timeout=t)[tp]
            out.append(int(fut.result(timeout=t + 1.0).offset))
        return out[0], out[1]

    def _holds(self, offset: int) -> bool:
        """Whether the log still holds ``offset`` (or anything after it). The end a broker
        reports can understate it (Tansu's is the last batch's first offset + 1), so a resume
        point past that end is confirmed by reading back before it is trusted. A fresh consumer
        each time: librdkafka 2.16 crashed (SIGSEGV in its metadata cache) fetching with a
        consumer that had known the topic before it was recreated."""
        consumer = Consumer(
            {
                **self._config,
                "group.id": "BYTEWAX_IGNORED",
                "enable.auto.commit": "false",
                "enable.partition.eof": "false",
                "auto.offset.reset": "error",
                "logger": RDKAFKA_LOG,
            }
        )
        try:
            consumer.assign([TopicPartition(self._topic, self._idx, offset)])
            deadline = time.monotonic() + self._timing.verify_s
            while time.monotonic() < deadline:
                for m in consumer.consume(16, 0.05):
                    err = m.error()
                    at = m.offset()
                    if err is None and at is not None and at >= offset:
                        return True
                    if err is not None and err.code() in _OUT_OF_RANGE:
                        return False
            return False
        finally:
            consumer.close()


ProbeFn = Callable[[int, float, bool], Probe]


class _KafkaTickPartition(StatefulSourcePartition[TickRows, Snapshot]):
    """One Kafka partition: blocks of ticks, idle markers, and the outage watch (module doc)."""

    def __init__(
        self,
        *,
        url: KafkaUrl,
        idx: int,
        resume_state: Snapshot | None,
        consumer_config: dict[str, Any],
        batch_size: int,
        idle_ms: float | None,
        outage_s: float,
        timing: Timing,
        clock: Clock,
        outages: _Outages,
        consumer_factory: Callable[[dict[str, Any]], ConsumerLike] = Consumer,
        probe: ProbeFn | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.url = url
        self.idx = idx
        self.name = f"{url.topic}/{idx}"
        self._source = f"kafka:{self.name}"
        offset, seq = resume_state if resume_state is not None else (None, 0)
        self._offset: int = OFFSET_BEGINNING if offset is None else int(offset)
        self._seq = int(seq)
        self._batch_size = batch_size
        self._outage_s = outage_s
        self._timing = timing
        self._clock = clock
        self._outages = outages
        now = clock()
        self._idle = IdleTimer(idle_ms, now) if idle_ms is not None and url.tail else None
        self._ended = False
        self._awake: datetime | None = None
        # health
        self._last_data = now  # last real block (or the start)
        self._assigned_at = now  # last (re)assignment of the consumer
        self._last_probe = -float("inf")
        self._probe_future: Future[Probe] | None = None
        self._trouble: tuple[float, str] | None = None  # first sign of trouble since healthy
        self._lost: tuple[float, str, bool] | None = None  # (since, reason, broker down)
        self._topic_id: str | None = None
        self._prober = (
            probe
            if probe is not None
            else _Prober(
                {k: v for k, v in consumer_config.items() if k not in _CONSUMER_ONLY},
                url.topic,
                idx,
                timing,
            )
        )
        self._executor = (
            executor
            if executor is not None
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-probe-{self.name}")
        )
        self._verify = self._offset >= 0  # a resumed offset: is it still inside the log?
        self._consumer_factory = consumer_factory
        self._consumer_config = {
            **consumer_config,
            "error_cb": self._on_error,
            "logger": RDKAFKA_LOG,
        }
        self._consumer: ConsumerLike | None = self._new_consumer()
        self._request_probe(now)  # learn the topic id now; check a resumed offset at once

    def _new_consumer(self) -> ConsumerLike:
        consumer = self._consumer_factory(self._consumer_config)
        consumer.assign([TopicPartition(self.url.topic, self.idx, self._offset)])
        return consumer

    # --- the poll ----------------------------------------------------------------------------
    def next_batch(self) -> list[TickRows]:
        if self._ended:
            raise StopIteration
        msgs = self._consumer.consume(self._batch_size, 0.001) if self._consumer else []
        now = self._clock()
        out: list[TickRows] = []
        block, eof = self._decode(msgs, now)
        if block is not None:
            out.append(block)
            self._data(now)
        if eof:  # the end of the topic when not tailing: say so downstream
            self._ended = True
            out.append(TickRows.end_of(self.name, self._next_seq()))
            return out
        self._watch(now)
        if block is None and self._idle is not None and self._idle.due(now):
            out.append(TickRows.idle_marker(self.name, self._next_seq()))
        self._awake = (
            None if msgs else datetime.now(UTC) + timedelta(seconds=self._timing.empty_poll_s)
        )
        return out

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq - 1

    def _decode(self, msgs: Sequence[Any], now: float) -> tuple[TickRows | None, bool]:
        values: list[bytes | None] = []
        offsets: list[int] = []
        errors: dict[int, str] = {}
        eof = False
        for m in msgs:
            err = m.error()
            if err is not None:
                code = err.code()
                if code == KafkaError._PARTITION_EOF:
                    eof = True
                    break
                off = m.offset()
                if code in _BAD_MESSAGE and off is not None and off >= 0:
                    errors[len(values)] = f"kafka error: {err.str()}"
                else:  # about the broker or the partition, not a message: check on it
                    self._verify = self._verify or code in _OUT_OF_RANGE
                    self._signal(now, _plain(err.str()))
                    continue
            values.append(m.value())
            offsets.append(m.offset())
        if not values:
            return None, eof
        self._offset = offsets[-1] + 1  # read on from the next message, not this one
        rows = decode_messages(values, self._source, offsets)
        rows.errors.update(errors)
        rows.partition, rows.seq = self.name, self._next_seq()
        rows.input_bytes = sum(len(v) for v in values if v is not None)
        self._report_lag()
        return rows, eof

    def _report_lag(self) -> None:
        """Consumer lag for the metrics: the high watermark the last fetch brought (no broker
        round trip) minus the next offset to read."""
        if not METRICS.enabled:
            return
        watermarks = getattr(self._consumer, "get_watermark_offsets", None)
        if watermarks is None:
            return
        try:
            _, high = watermarks(TopicPartition(self.url.topic, self.idx), cached=True)
        except KafkaException:
            return
        if high >= 0:
            METRICS.consumer_lag(self.name, max(0, high - self._offset))

    def _data(self, now: float) -> None:
        self._last_data = now
        self._trouble = None
        if self._idle is not None:
            self._idle.data(now)
        if self._lost is not None:  # the consumer found its way back by itself
            self._back(now, None)

    # --- the outage watch --------------------------------------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (served inside ``consume``, on the worker)."""
        self._signal(self._clock(), _plain(err.str()))

    def _signal(self, now: float, reason: str) -> None:
        """A sign of trouble: probe soon (at most once per ``retry_s``: a cluster with one
        broker down keeps reporting it)."""
        if self._trouble is None:
            self._trouble = (now, reason)
        if now - self._last_probe >= self._timing.retry_s:
            self._request_probe(now)

    def _request_probe(self, now: float) -> None:
        if self._probe_future is None:
            verify = self._verify or self._lost is not None
            self._probe_future = self._executor.submit(self._prober, self._offset, now, verify)
            self._last_probe = now

    def _watch(self, now: float) -> None:
        fut = self._probe_future
        if fut is not None and fut.done():
            self._probe_future = None
            try:
                probe = fut.result()
            except Exception as exc:  # a failing probe must not look like a healthy partition
                probe = Probe(self._offset, now, f"health probe failed: {exc!r}", broker_down=True)
            self._apply(probe, now)
        if self._lost is not None:
            since, reason, broker_down = self._lost
            if now - since >= self._outage_s:
                line = self._stopped_line(now - since, reason, broker_down)
                log.error(line)
                raise RuntimeError(line)
        if self._lost is not None or self._trouble is not None:
            if now - self._last_probe >= self._timing.retry_s:
                self._request_probe(now)
        elif now - max(self._last_data, self._last_probe) >= self._timing.quiet_probe_s:
            self._request_probe(now)  # a lost partition can be silent: look now and then

    def _apply(self, probe: Probe, now: float) -> None:
        stale = probe.offset != self._offset  # data arrived while it ran: its offsets are old
        if probe.error is not None:
            if not stale:  # (data since then says more about the partition than the probe)
                self._lose(probe, now)
            return
        recreated = bool(self._topic_id and probe.topic_id and probe.topic_id != self._topic_id)
        if stale:
            self._apply_stale(probe, now, recreated)
        else:
            self._apply_fresh(probe, now, recreated)
        if recreated:  # new offsets: dead-letter ids must not collide with the old topic's
            self._source = f"kafka:{self.name}@{probe.topic_id}"
        self._topic_id = probe.topic_id or self._topic_id
        self._trouble = None

    def _apply_stale(self, probe: Probe, now: float, recreated: bool) -> None:
        """A probe overtaken by data: its offsets are old, but the data shows the partition
        is back, and a new topic id is still worth telling."""
        if recreated:
            log.warning(
                "Kafka topic %s partition %d was recreated (topic id %s -> %s) while "
                "it was read; reading on at offset %d",
                self.url.topic,
                self.idx,
                self._topic_id,
                probe.topic_id,
                self._offset,
            )
        if self._lost is not None:
            self._back(now, None)

    def _apply_fresh(self, probe: Probe, now: float, recreated: bool) -> None:
        """A current probe: move the consumer where the log says to resume, or wake it when
        it has read nothing for long though the log goes on."""
        offset, note = resume_point(self._offset, probe, self._topic_id)
        if note is not None:
            log.warning("Kafka topic %s partition %d: %s", self.url.topic, self.idx, note)
        if probe.reaches is not None:
            self._verify = False
        if self._lost is not None:  # librdkafka may never fetch again by itself
            self._reassign(offset, now, fresh=True)
            self._back(now, offset)
        elif offset != self._offset:
            self._reassign(offset, now, fresh=recreated)
        elif (
            probe.high > self._offset >= 0
            and probe.started - max(self._last_data, self._assigned_at)
            >= self._timing.quiet_probe_s
        ):
            log.warning(
                "Kafka topic %s partition %d: nothing read for %.0f s at offset %d "
                "though the log goes on to %d: re-assigned the consumer",
                self.url.topic,
                self.idx,
                now - self._last_data,
                self._offset,
                probe.high,
            )
            self._reassign(self._offset, now)

    def _lose(self, probe: Probe, now: float) -> None:
        if self._lost is None:
            since = min(probe.started, self._trouble[0]) if self._trouble else probe.started
            # the client's own error (e.g. "Connection refused") says more than a probe timeout
            reason = self._trouble[1] if self._trouble and probe.broker_down else probe.error
            probe = replace(probe, error=reason)
            self._lost = (since, probe.error or "", probe.broker_down)
            if probe.broker_down:
                line = (
                    f"Kafka broker {self.url.bootstrap} unreachable ({probe.error}; topic "
                    f"{self.url.topic}, partition {self.idx} at offset {self._offset}): "
                    f"waiting up to {self._outage_s:g} s for it, then reading on from the "
                    f"last offsets"
                )
            else:
                line = (
                    f"Kafka topic {self.url.topic} partition {self.idx} unavailable on "
                    f"broker {self.url.bootstrap} ({probe.error}): waiting up to "
                    f"{self._outage_s:g} s for it, then reading on from offset {self._offset}"
                )
            self._outages.lost(self.name, line)
            # No consumer while it is lost: one that knew the old topic fetching from a
            # recreated one is where librdkafka 2.16 crashed; a new one is made when it is back.
            self._drop_consumer()
        else:
            since, reason, was_down = self._lost
            if probe.broker_down and was_down:  # the first words for it were the clearest
                return
            if probe.error != reason:
                log.info(
                    "Kafka topic %s partition %d still unavailable: %s",
                    self.url.topic,
                    self.idx,
                    probe.error,
                )
            self._lost = (since, probe.error or reason, probe.broker_down)

    def _back(self, now: float, offset: int | None) -> None:
        assert self._lost is not None
        since = self._lost[0]
        self._lost = None
        at = "" if offset is None else f" at offset {offset}"
        self._outages.back(
            self.name,
            f"Kafka topic {self.url.topic} partition {self.idx} "
            f"readable again after {now - since:.1f} s (broker "
            f"{self.url.bootstrap}): reading on{at}",
        )

    def _reassign(self, offset: int, now: float, fresh: bool = False) -> None:
        """Read on at ``offset``; ``fresh``: with a new consumer (after an outage or a recreated
        topic, librdkafka's cached view of the old topic is better thrown away)."""
        self._offset = offset
        self._assigned_at = now
        if fresh or self._consumer is None:
            self._drop_consumer()
            self._consumer = self._new_consumer()
        else:
            self._consumer.assign([TopicPartition(self.url.topic, self.idx, offset)])

    def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def _stopped_line(self, secs: float, reason: str, broker_down: bool) -> str:
        if broker_down:
            what = (
                f"Kafka broker {self.url.bootstrap} unreachable for {secs:.0f} s "
                f"(topic {self.url.topic}; {reason})"
            )
        else:
            what = (
                f"Kafka topic {self.url.topic} partition {self.idx} unavailable on broker "
                f"{self.url.bootstrap} for {secs:.0f} s ({reason})"
            )
        return f"{what}; {_STOPPED}"

    # --- Bytewax -----------------------------------------------------------------------------
    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Snapshot:
        return self._offset, self._seq

    def close(self) -> None:
        self._drop_consumer()
        self._executor.shutdown(wait=False)  # a probe under way ends within its timeouts


# consumer settings that make no sense for the probe's admin client
_CONSUMER_ONLY = frozenset(
    {
        "group.id",
        "enable.auto.commit",
        "enable.partition.eof",
        "auto.offset.reset",
        "error_cb",
        "logger",
    }
)


class KafkaTickSource(FixedPartitionedSource[TickRows, Snapshot]):
    """JSON ticks from a Kafka topic, one :class:`TickRows` block per poll and partition, with
    idle markers (``idle_ms``, tail mode) and an outage watch (``outage_s``): module doc."""

    def __init__(
        self,
        url: KafkaUrl,
        batch_size: int = 5000,
        add_config: dict[str, str] | None = None,
        *,
        idle_ms: float | None = None,
        outage_s: float = 120.0,
        timing: Timing | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        consumer_factory: Callable[[dict[str, Any]], ConsumerLike] = Consumer,
        probe_factory: Callable[[int], ProbeFn] | None = None,
        executor_factory: Callable[[], Executor] | None = None,
    ) -> None:
        self.url = url
        self.batch_size = batch_size
        self.add_config = dict(add_config or {})
        self.idle_ms = idle_ms
        self.outage_s = outage_s
        self.timing = timing or Timing()
        self._clock = clock
        self._sleep = sleep
        self._consumer_factory = consumer_factory
        self._probe_factory = probe_factory
        self._executor_factory = executor_factory
        self._outages = _Outages()

    def _client_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.url.bootstrap, **self.add_config}

    def list_parts(self) -> list[str]:
        """The topic's partitions, ``topic/idx``; waits up to ``outage_s`` for an unreachable
        broker or a missing topic (one warning line), then fails naming them."""
        conf: dict[str, Any] = {**self._client_config(), "logger": RDKAFKA_LOG}
        admin = AdminClient(conf)
        topic = self.url.topic
        start = self._clock()
        warned = False
        while True:
            try:  # one topic: brokers with auto-create make it, as Bytewax's KafkaSource did
                md = admin.list_topics(topic, timeout=self.timing.probe_timeout_s)
                t = md.topics.get(topic)
                if t is not None and t.error is None and t.partitions:
                    return [f"{topic}/{i}" for i in sorted(t.partitions)]
                reason = t.error.str() if t is not None and t.error else "no partitions"
                what = f"Kafka topic {topic} unavailable on broker {self.url.bootstrap}"
            except KafkaException as exc:
                reason = _error_text(exc)
                what = f"Kafka broker {self.url.bootstrap} unreachable"
            finally:
                admin.poll(0)
            waited = self._clock() - start
            if waited >= self.outage_s:
                line = f"{what} for {waited:.0f} s (topic {topic}; {reason}); {_STOPPED}"
                log.error(line)
                raise RuntimeError(line)
            if not warned:
                log.warning(
                    "%s (topic %s; %s): waiting up to %g s for it",
                    what,
                    topic,
                    reason,
                    self.outage_s,
                )
                warned = True
            self._sleep(min(self.timing.retry_s, self.outage_s - waited))

    def build_part(
        self, step_id: str, for_part: str, resume_state: Snapshot | None
    ) -> _KafkaTickPartition:
        topic, idx = for_part.rsplit("/", 1)
        assert topic == self.url.topic, f"cannot resume {for_part!r} from topic {self.url.topic}"
        config = {
            # offsets live in Bytewax's recovery snapshots, not in a consumer group
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            "enable.partition.eof": str(not self.url.tail).lower(),
            # an offset out of range is reported (and handled: resume_point), not skipped over
            "auto.offset.reset": "error",
            **self._client_config(),
        }
        return _KafkaTickPartition(
            url=self.url,
            idx=int(idx),
            resume_state=resume_state,
            consumer_config=config,
            batch_size=self.batch_size,
            idle_ms=self.idle_ms,
            outage_s=self.outage_s,
            timing=self.timing,
            clock=self._clock,
            outages=self._outages,
            consumer_factory=self._consumer_factory,
            probe=self._probe_factory(int(idx)) if self._probe_factory else None,
            executor=self._executor_factory() if self._executor_factory else None,
        )

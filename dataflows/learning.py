"""The learning dataflow as its own process: ``python -m bytewax.run dataflows.learning``.

Consumes the live flow's trade events from Kafka (``QT_TRADE_EVENTS=kafka://host:port/topic``,
``?tail=false`` to stop at the end of the topic), joins each ``trade.closed`` with its entry
state and feeds the learners: the same graph (:func:`dataflows.graphs.learning`) the live flow
builds in-process when the store is embedded. Events that are not valid JSON trade events are
dead letters (source ``kafka:topic/partition``, row = offset).

Run it beside ``dataflows.live`` when both use a ClickHouse server (``QT_CLICKHOUSE_URL``) and
the same registry directory; with embedded chDB each process has its own store, so the join's
fallback to the ``trades`` table only sees what this process stored.
"""

from __future__ import annotations

import time

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow

from connectors.kafka import KafkaUrl
from dataflows import graphs
from runtime import install_stop_handlers
from schemas import codec
from schemas.dead_letters import DeadLetters, Stage
from schemas.tables import dead_letter_rows
from schemas.trades import TradeClosed, TradeOpened, decode_event
from settings import Settings


def decode(msg: object) -> TradeOpened | TradeClosed | DeadLetters:
    """A Kafka message -> a trade event, or a dead letter saying why not."""
    m = getattr(msg, "msg", msg)  # a KafkaError carries the message it failed on
    assert isinstance(m, KafkaSourceMessage)
    source = f"kafka:{m.topic}/{m.partition}"
    raw = (m.value or b"").decode("utf-8", errors="replace")
    if m is not msg:
        reason = f"kafka error: {msg.err}"  # type: ignore[attr-defined]
    else:
        try:
            return decode_event(m.value or b"")
        except (codec.SchemaError, ValueError) as exc:
            reason = str(exc)[:300]
    dead = DeadLetters()
    dead.add(source, m.offset if m.offset is not None else -1, None, "", Stage.DECODE, reason,
             raw)
    return dead


def build_learning_flow(settings: Settings | None = None) -> Dataflow:
    settings = settings or Settings.from_env()
    install_stop_handlers()
    if not settings.trade_events.startswith("kafka://"):
        raise ValueError("dataflows.learning reads QT_TRADE_EVENTS=kafka://host:port/topic; "
                         "with the embedded store the live flow runs the learning graph itself")
    url = KafkaUrl.parse(settings.trade_events)
    flow = Dataflow("learning")
    messages = op.input("trade_events", flow, KafkaSource(
        list(url.brokers), [url.topic], tail=url.tail, raise_on_errors=False))
    decoded = op.map("decode", messages, decode)
    split = op.branch("valid", decoded, lambda x: not isinstance(x, DeadLetters))
    ln = graphs.learning(split.trues, settings)
    rows = [*graphs.learning_rows(ln, settings),
            op.map("decode_dead_letter_rows", split.falses, dead_letter_rows)]
    graphs.store("clickhouse", rows, settings, graphs.LEARNING_TABLES)
    started = time.monotonic()
    counts = [*graphs.learning_counts(ln),
              op.map("count_decode_dead", split.falses, lambda d: {"dead_letters": len(d)})]
    graphs.print_summary(counts, started, "qt learning run summary",
                         always=graphs.LEARNING_SUMMARY)
    return flow


__getattr__ = graphs.lazy_flow(build_learning_flow)

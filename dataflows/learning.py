"""The learning dataflow as its own process: ``python -m bytewax.run dataflows.learning``.

Consumes the live flow's learning events from Kafka (``QT_TRADE_EVENTS=kafka://host:port/topic``,
``?tail=false`` to stop at the end of the topic): every decided bar and trade event, numbered
in the live decision engine's order, on one partition. :mod:`learning.learner` learns from them
in that order: joins each ``trade.closed`` with its entry state, updates the PPO policy, and
runs continuous learning (drift, retraining, shadow tests, promotions through the registry,
which the live flow follows). Messages that are not valid learning events are dead letters
(source ``kafka:topic/partition``, row = offset).

Run it beside ``dataflows.live`` with the same registry directory; with embedded chDB each
process has its own store (this one keeps the features it trains on and the learning tables;
the join's fallback to the ``trades`` table only sees a shared ClickHouse server's trades).
"""

from __future__ import annotations

import time

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow

import errors
from connectors.kafka import KafkaUrl
from connectors.stoppable import Stoppable
from dataflows import graphs
from errors import UserError
from learning.learner import LEARNER_KEY, Sequenced
from runtime import install_stop_handlers, tune_gc
from schemas import codec
from schemas.dead_letters import DeadLetters, RejectedAt
from schemas.trades import decode_sequenced
from settings import Settings


def decode(msg: object) -> Sequenced | DeadLetters:
    """A Kafka message -> a numbered learning event, or a dead letter saying why not."""
    m = getattr(msg, "msg", msg)  # a KafkaError carries the message it failed on
    assert isinstance(m, KafkaSourceMessage)
    source = f"kafka:{m.topic}/{m.partition}"
    raw = (m.value or b"").decode("utf-8", errors="replace")
    if m is not msg:
        reason = f"kafka error: {msg.err}"  # type: ignore[attr-defined]
    else:
        try:
            seq, event = decode_sequenced(m.value or b"")
            if seq is None:
                raise ValueError(
                    "no seq: a learning event carries its number in the live engine's order"
                )
            return Sequenced(seq, event)
        except (codec.SchemaError, ValueError) as exc:
            reason = str(exc)[:300]
    dead = DeadLetters()
    dead.add(
        source, m.offset if m.offset is not None else -1, None, "", RejectedAt.DECODE, reason, raw
    )
    return dead


def build_learning_flow(settings: Settings | None = None) -> Dataflow:
    settings = settings or Settings.from_env()
    install_stop_handlers()
    if not settings.trade_events.startswith("kafka://"):
        raise UserError(
            "dataflows.learning reads QT_TRADE_EVENTS=kafka://host:port/topic; "
            "with the embedded store the live flow runs the learning graph itself"
        )
    url = KafkaUrl.parse(settings.trade_events)
    flow = Dataflow("learning")
    messages = op.input(
        "trade_events",
        flow,
        Stoppable(
            KafkaSource(list(url.brokers), [url.topic], tail=url.tail, raise_on_errors=False)
        ),
    )
    decoded = op.map("decode", messages, decode)
    learned = graphs.learning(decoded, settings)
    stored = graphs.store(
        "clickhouse",
        [graphs.learned_rows(learned)],
        settings,
        graphs.LEARNING_TABLES,
        owner_key=LEARNER_KEY,
    )
    tune_gc()  # start-up's objects frozen, fewer collections (runtime.py says why)
    started = time.monotonic()
    counts = [
        graphs.learned_counts(learned),
        op.filter_map(
            "count_decode_dead",
            decoded,
            lambda d: {"dead_letters": len(d)} if isinstance(d, DeadLetters) else None,
        ),
        *stored,
    ]
    graphs.print_summary(
        counts, started, "qt learning run summary", settings, graphs.LEARNING_SUMMARY
    )
    return flow


errors.install()  # a user error ends the run in one line (errors.py)
__getattr__ = graphs.lazy_flow(build_learning_flow)

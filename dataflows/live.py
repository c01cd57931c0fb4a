"""The live dataflow: ``python -m bytewax.run dataflows.live``.

Ticks (files or Kafka, ``QT_TICKS``) -> validation (dead letters) -> per-symbol event-time
bars -> features -> the four-model ensemble -> the bias window -> PPO sizing and paper
execution -> ClickHouse (embedded chDB by default, ``QT_CLICKHOUSE_URL`` for a server), ending
with a one-screen summary when the input ends.

When the registry has no production models (a fresh clone), the flow first trains them on
``QT_BOOTSTRAP_TICKS`` (the bundled sample), saying so.
"""

from __future__ import annotations

import sys
import time

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from dataflows import graphs
from models.base import MODEL_NAMES, POLICY_NAME
from models.registry import open_registry
from operators.ensemble import EnsembleConfig
from operators.weights import DynamicWeights
from settings import Settings
from storage.store import open_store


def ensure_models(settings: Settings) -> None:
    """Bootstrap the registry when it lacks a production version of any model."""
    registry = open_registry(settings)
    if registry.has_production((*MODEL_NAMES, POLICY_NAME)):
        return
    print(f"model registry {settings.registry_dir} has no production models: bootstrapping "
          f"on {settings.bootstrap_ticks} first", file=sys.stderr)
    from models.bootstrap import bootstrap

    store = open_store(settings)
    try:
        bootstrap(settings, open_registry(settings, store), out=sys.stderr)
    finally:
        store.close()


def build_live_flow(settings: Settings | None = None) -> Dataflow:
    settings = settings or Settings.from_env()
    ensure_models(settings)
    flow = Dataflow("live")
    weights = (DynamicWeights(EnsembleConfig.from_settings(settings).weights)
               if settings.dynamic_weights else None)
    md = graphs.market_data(flow, settings)
    sig = graphs.signals(md, settings, weights)
    tr = graphs.trading(md, sig, settings)
    rows = [*graphs.market_data_rows(md), *graphs.signal_table_rows(sig),
            *graphs.trading_rows(tr)]
    counts = [*graphs.market_data_counts(md), graphs.signal_counts(sig),
              *graphs.trading_counts(tr)]
    tables = list(graphs.LIVE_TABLES)
    if settings.trade_events.startswith("kafka://"):
        # the learning flow runs in its own process: python -m bytewax.run dataflows.learning
        graphs.publish_trade_events(tr, settings.trade_events)
    elif settings.learning:
        events = op.map("trade_events", tr.events, lambda kv: kv[1].event)
        ln = graphs.learning(events, settings, weights, graphs.clm_clock(md))
        rows += graphs.learning_rows(ln, settings)
        counts += graphs.learning_counts(ln)
        tables += [t for t in graphs.LEARNING_TABLES if t not in tables]
    graphs.store("clickhouse", rows, settings, tables)
    started = time.monotonic()  # after the models are loaded: the summary measures streaming
    always = graphs.LEARNING_SUMMARY if settings.learning and not settings.trade_events else ()
    graphs.print_summary(counts, started, "qt live run summary", settings.start_equity,
                         always)
    return flow


__getattr__ = graphs.lazy_flow(build_live_flow)

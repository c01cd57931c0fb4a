"""The live dataflow: ``python -m bytewax.run dataflows.live``.

Ticks (files or Kafka, ``QT_TICKS``) -> validation (dead letters) -> per-symbol event-time
bars -> features -> ClickHouse (embedded chDB by default, ``QT_CLICKHOUSE_URL`` for a server),
ending with a one-screen summary when the input ends.
"""

from __future__ import annotations

import time

from bytewax.dataflow import Dataflow

from dataflows import graphs
from settings import Settings


def build_live_flow(settings: Settings | None = None) -> Dataflow:
    settings = settings or Settings.from_env()
    started = time.monotonic()
    flow = Dataflow("live")
    md = graphs.market_data(flow, settings)
    graphs.store("clickhouse", graphs.market_data_rows(md), settings,
                 graphs.MARKET_DATA_TABLES)
    graphs.print_summary(graphs.market_data_counts(md), started, "qt live run summary")
    return flow


_flow: Dataflow | None = None


def __getattr__(name: str) -> Dataflow:
    """``flow`` is built on first access, so importing this module has no side effects."""
    global _flow
    if name == "flow":
        if _flow is None:
            _flow = build_live_flow()
        return _flow
    raise AttributeError(name)

"""Prometheus metrics of a running flow (``QT_METRICS_PORT``; off by default).

The run's counters already meet on one key for the summary (:mod:`operators.summary`), so
that step feeds them here too: one mapping from counter keys to metric families, no second
way of counting. What is not a counter of the summary is observed where it happens: model
inference latency (the ensemble step), the decision queue (the engine), consumer lag (the
Kafka source). Every call is a no-op until :func:`serve` starts the endpoint, so stages
observe unconditionally and a run without metrics pays one attribute check.

Metrics are process-wide (Prometheus' convention); counters start at zero when the process
starts, a resumed run included.

>>> m = Metrics()
>>> m.count({"ticks": 5})  # not serving: ignored
>>> m.enabled
False
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PREFIX = "qt"

# Summary counter key -> (metric, help, label name, label value). Keys not listed go to
# ``qt_events_total{event=<key>}``, so no counter of the run is invisible.
COUNTERS: dict[str, tuple[str, str, str | None, str | None]] = {
    "rows_in": ("input_rows", "Input rows read (ticks plus dead letters).", None, None),
    "ticks": ("ticks", "Valid ticks.", None, None),
    "bars": ("bars", "Bars closed (event time).", None, None),
    "signals.buy": ("signals", "Ensemble signals by action.", "action", "buy"),
    "signals.sell": ("signals", "Ensemble signals by action.", "action", "sell"),
    "signals.hold": ("signals", "Ensemble signals by action.", "action", "hold"),
    "signals.blocked": ("supervisor_blocks", "Signals blocked by the bias window.", None, None),
    "trades.opened": ("trades_opened", "Positions opened.", None, None),
    "rl.updates": ("rl_updates", "PPO policy updates published.", None, None),
    "clm.cycles": ("clm_cycles", "Continuous-learning cycles started.", None, None),
    "clm.promoted": ("clm_promotions", "Challenger models promoted.", None, None),
    "clm.retired": ("clm_retirements", "Challenger models retired.", None, None),
}
MODEL_FAILURES = "model_failures."  # + model name: a model that raised and voted HOLD 0
DEAD_LETTER_REASON = "dead_letters.reason."  # + reason kind (see reason_kind)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def reason_kind(reason: str) -> str:
    """A dead letter's reason without its values, a label of bounded cardinality.

    >>> reason_kind("time went backwards by 1520 ms")
    'time went backwards by N ms'
    >>> reason_kind("numeric overflow in price: '1e309'")
    'numeric overflow in price'
    """
    head = reason.split(":", 1)[0]
    return re.sub(r"[-+]?\d[\d.eE+-]*", "N", head).strip()[:80]


class Metrics:
    """The metric families of one process, registered when serving starts."""

    def __init__(self) -> None:
        self.enabled = False
        self.port: int | None = None
        self._lock = threading.Lock()
        self._registry = CollectorRegistry()
        self._counters: dict[str, Counter] = {}

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Start the HTTP endpoint (``/metrics``) once per process; port 0 picks a free port
        (read it from :attr:`port`)."""
        with self._lock:
            if self.enabled:
                return
            r = self._registry
            self._events = Counter(
                f"{PREFIX}_events", "Every other counter of the run.", ["event"], registry=r
            )
            self._dead = Counter(
                f"{PREFIX}_dead_letters",
                "Dead letters by stage and reason.",
                ["stage", "reason"],
                registry=r,
            )
            self._failures = Counter(
                f"{PREFIX}_model_failures",
                "Model calls that raised (the model voted HOLD 0).",
                ["model"],
                registry=r,
            )
            self._trades_closed = Counter(
                f"{PREFIX}_trades_closed", "Positions closed.", registry=r
            )
            self._pnl = Gauge(
                f"{PREFIX}_net_pnl", "Net PnL of the closed trades (quote currency).", registry=r
            )
            self._latency = Histogram(
                f"{PREFIX}_inference_seconds",
                "Ensemble inference time per symbol block in the flow's process (sending the "
                "models' arithmetic to the forward process, and waiting for and taking the "
                "answers).",
                buckets=LATENCY_BUCKETS,
                registry=r,
            )
            self._queue = Gauge(
                f"{PREFIX}_decision_queue",
                "Bars waiting for the decision engine (every partition's clock must pass them).",
                registry=r,
            )
            self._lag = Gauge(
                f"{PREFIX}_consumer_lag",
                "Messages behind the newest offset, per topic partition.",
                ["partition"],
                registry=r,
            )
            self._event_lag = Gauge(
                f"{PREFIX}_event_time_lag_seconds",
                "Wall clock minus the newest event time decided.",
                registry=r,
            )
            for metric, doc, label, _ in COUNTERS.values():
                if metric not in self._counters:
                    self._counters[metric] = Counter(
                        f"{PREFIX}_{metric}", doc, [label] if label else [], registry=r
                    )
            server, _ = start_http_server(port, addr=addr, registry=r)
            self.port = server.server_port
            self.enabled = True

    def count(self, counts: Mapping[str, int]) -> None:
        """Add a block of the summary's counters."""
        if not self.enabled:
            return
        for key, n in counts.items():
            if n <= 0:
                continue
            if key in COUNTERS:
                metric, _, label, value = COUNTERS[key]
                c = self._counters[metric]
                (c.labels(value) if label else c).inc(n)
            elif key.startswith(MODEL_FAILURES):
                self._failures.labels(key[len(MODEL_FAILURES) :]).inc(n)
            elif key.startswith(DEAD_LETTER_REASON):
                stage, _, reason = key[len(DEAD_LETTER_REASON) :].partition(".")
                self._dead.labels(stage, reason).inc(n)
            elif not key.startswith("dead_letters"):  # stage totals: the labelled family
                self._events.labels(key).inc(n)

    def closed(self, net_pnl_total: float, trades: int = 1) -> None:
        if self.enabled:
            self._trades_closed.inc(trades)
            self._pnl.set(net_pnl_total)

    def inference(self, seconds: float) -> None:
        if self.enabled:
            self._latency.observe(seconds)

    def decision_queue(self, length: int) -> None:
        if self.enabled:
            self._queue.set(length)

    def consumer_lag(self, partition: str, messages: int) -> None:
        if self.enabled:
            self._lag.labels(partition).set(messages)

    def event_time_lag(self, seconds: float) -> None:
        if self.enabled:
            self._event_lag.set(seconds)


METRICS = Metrics()

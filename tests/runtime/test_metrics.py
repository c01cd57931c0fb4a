"""Prometheus metrics and the progress line, as plain Python (the scrape of a running flow is
in tests/integration/test_live_flow.py)."""

from __future__ import annotations

import io
import urllib.request
from collections import Counter

from metrics import Metrics, reason_kind
from operators.summary import EventTime, PnlPoint, ProgressLine, RunTotals

T0 = 1_399_334_400_000  # 2014-05-06T00:00:00Z


def scrape(m: Metrics) -> dict[str, float]:
    """``name{labels}`` -> value of every sample the endpoint serves."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5).read()
    samples = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_counts_become_labelled_metrics() -> None:
    m = Metrics()
    m.count({"ticks": 10})  # before serving: ignored, no error
    m.serve(0, addr="127.0.0.1")
    m.count(
        {
            "rows_in": 12,
            "ticks": 10,
            "bars": 3,
            "signals.buy": 2,
            "signals.hold": 1,
            "signals.blocked": 1,
            "model_failures.nhits": 1,
            "dead_letters": 2,
            "dead_letters.validate": 2,
            "dead_letters.reason.validate.crossed quote": 2,
            "execution.orders_unfilled": 4,
            "trades.opened": 0,
        }
    )
    m.count({"ticks": 5})
    m.closed(1.25)
    m.closed(-0.5)
    m.inference(0.003)
    m.decision_queue(7)
    m.consumer_lag("ticks/0", 42)
    s = scrape(m)
    assert s["qt_ticks_total"] == 15 and s["qt_input_rows_total"] == 12
    assert s['qt_signals_total{action="buy"}'] == 2 and s['qt_signals_total{action="hold"}'] == 1
    assert s["qt_supervisor_blocks_total"] == 1
    assert s['qt_model_failures_total{model="nhits"}'] == 1
    assert s['qt_dead_letters_total{reason="crossed quote",stage="validate"}'] == 2
    assert s['qt_events_total{event="execution.orders_unfilled"}'] == 4
    assert s["qt_trades_closed_total"] == 2 and s["qt_net_pnl"] == -0.5
    assert s["qt_inference_seconds_count"] == 1
    assert s['qt_inference_seconds_bucket{le="0.005"}'] == 1
    assert s["qt_decision_queue"] == 7 and s['qt_consumer_lag{partition="ticks/0"}'] == 42
    assert "qt_trades_opened_total" in s  # registered even before the first trade


def test_reason_kinds_drop_values() -> None:
    assert reason_kind("time went backwards by 61000 ms") == "time went backwards by N ms"
    assert (
        reason_kind("price outside the sane range (1e-12 to 1e+12)")
        == "price outside the sane range (N to N)"
    )
    assert (
        reason_kind("time outside the sane range: 9999-12-31T23:59:59.999Z is more")
        == "time outside the sane range"
    )


def test_progress_line_on_a_terminal_redraws_and_throttles() -> None:
    out = io.StringIO()
    line = ProgressLine(out, tty=True, every_s=1.0, input_bytes=4_000)
    totals = Counter({"rows_in": 1_000, "ticks": 900, "input.bytes": 1_000})
    first = line.update(totals, T0, 0, 0.0, started=0.0, now=1.0)
    assert (
        first == "1,000 rows (25%) | 900 ticks/s | at 2014-05-06 00:00 | 0 trades | net PnL +0.00"
    )
    assert line.update(totals, T0, 0, 0.0, started=0.0, now=1.5) is None  # too soon
    totals.update({"rows_in": 3_000, "ticks": 3_000, "input.bytes": 3_000})
    assert line.update(totals, T0 + 3_600_000, 3, -2.5, started=0.0, now=2.0).startswith(
        "4,000 rows (100%) | 1,950 ticks/s | at 2014-05-06 01:00 | 3 trades | net PnL -2.50"
    )
    line.done()
    assert out.getvalue().count("\r") == 2 and out.getvalue().endswith("\n")


def test_progress_line_in_tail_mode_shows_the_lag() -> None:
    out = io.StringIO()
    line = ProgressLine(out, tty=False, log_every_s=0.0, lag=True, wall=lambda: T0 / 1000 + 90.0)
    text = line.update(Counter({"rows_in": 10, "ticks": 10}), T0, 0, 0.0, started=0.0, now=1.0)
    assert "90 s behind the wall clock" in text and out.getvalue() == text + "\n"


def test_run_totals_feed_progress_and_restore_the_event_clock() -> None:
    out = io.StringIO()
    totals = RunTotals(0.0, 100.0, progress=ProgressLine(out, tty=False, log_every_s=0.0))
    totals.push({"rows_in": 5, "ticks": 5})
    totals.push(EventTime(T0))
    totals.push(EventTime(T0 - 60_000))  # another symbol behind: the newest time stays
    totals.push(PnlPoint(T0, "t1", 2.0))
    assert totals.event_ms == T0 and totals.net_pnl == 2.0
    assert out.getvalue().splitlines()[-1].endswith("1 trades | net PnL +2.00")
    back = RunTotals(
        0.0, 100.0, Counter(totals.snapshot()[0]), list(totals.snapshot()[1]), totals.snapshot()[2]
    )
    assert back.net_pnl == 2.0 and back.event_ms == T0
    [summary] = back.finish()
    assert summary.net_pnl == 2.0 and summary.counts["ticks"] == 5

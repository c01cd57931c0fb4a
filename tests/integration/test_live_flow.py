"""The live flow end to end: in process on the sample, and as the README runs it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from bytewax.testing import run_main

from dataflows.live import build_live_flow
from settings import PROJECT_ROOT
from storage.store import open_store

SAMPLE_ROWS = 398_283
FXCM_ROWS = 2_084_012


def summary_counts(text: str) -> dict[str, int]:
    return {
        m[1].strip(): int(m[2].replace(",", ""))
        for m in re.finditer(r"^\s+([a-z /]+?)\s{2,}([\d,]+)$", text, re.M)
    }


def test_sample_run_accounts_for_every_row_and_stores_it(
    settings, sample_ticks, capsys, trained_registry
) -> None:
    s = settings.replace(ticks=str(sample_ticks), registry_path=trained_registry, learning=False)
    run_main(build_live_flow(s))
    counts = summary_counts(capsys.readouterr().out)
    assert counts["input rows"] == SAMPLE_ROWS
    assert counts["ticks"] + counts["dead letters"] == SAMPLE_ROWS
    store = open_store(s)
    try:
        stored = store.query("queries/table_counts")[0]
        assert stored == {
            "bars": counts["bars"],
            "features": counts["feature vectors"],
            "dead_letters": counts["dead letters"],
            "signals": counts["signals"],
        }
        # the summary comes after the last insert and counts every row of every table; a
        # closed trade's row replaced its open row (same key)
        kept = store.query("queries/table_rows_total")[0]["rows"]
        assert counts["rows written to the store"] == kept + counts["trades closed"]
        assert kept > sum(stored.values())  # verdicts and trades too
        # a second replay of the same input rewrites the same keys: nothing duplicated
        run_main(build_live_flow(s))
        assert store.query("queries/table_counts")[0] == stored
    finally:
        store.close()


def test_with_learning_on_rows_written_include_the_features_the_learner_archives(
    live_settings, sample_ticks, capsys, registry_copy
) -> None:
    """With learning on, the continuous learner writes the features table itself: the
    summary's rows written count those too, and come after their last insert."""
    s = live_settings.replace(ticks=str(sample_ticks), registry_path=registry_copy, learning=True)
    run_main(build_live_flow(s))
    counts = summary_counts(capsys.readouterr().out)
    store = open_store(s)
    try:
        kept = store.query("queries/table_rows_total")[0]["rows"]
        features = store.query("queries/table_counts")[0]["features"]
    finally:
        store.close()
    assert features == counts["feature vectors"]
    assert counts["rows written to the store"] == kept + counts["trades closed"]


def _run_cli(tmp_path: Path, ticks: Path, registry: Path) -> str:
    env = {
        **os.environ,
        "QT_HOME": str(tmp_path / ".qt"),
        "QT_TICKS": str(ticks),
        "QT_REGISTRY_DIR": str(registry),
        "QT_LEARNING": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.live"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_fxcm_month_through_the_cli(
    tmp_path: Path, fxcm_quotes: Path, trained_registry: Path
) -> None:
    """The issue's acceptance run: all 2.08M quotes, ticks + dead letters = data rows, and a
    signal for every bar."""
    counts = summary_counts(_run_cli(tmp_path, fxcm_quotes, trained_registry))
    assert counts["input rows"] == FXCM_ROWS
    assert counts["ticks"] + counts["dead letters"] == FXCM_ROWS
    assert counts["bars"] == counts["feature vectors"] == counts["signals"] > 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    return {
        name: float(value)
        for name, value in (
            line.rsplit(" ", 1)
            for line in text.decode().splitlines()
            if line and not line.startswith("#")
        )
    }


def test_metrics_are_scraped_during_a_paced_run(
    tmp_path: Path, sample_ticks: Path, trained_registry: Path
) -> None:
    """QT_METRICS_PORT serves the run's metrics while it runs; QT_PROGRESS draws progress."""
    port = _free_port()
    env = {
        **os.environ,
        "QT_HOME": str(tmp_path / ".qt"),
        "QT_TICKS": str(sample_ticks),
        "QT_REGISTRY_DIR": str(trained_registry),
        "QT_LEARNING": "false",
        "QT_METRICS_PORT": str(port),
        "QT_PROGRESS": "always",
        "QT_REPLAY_SPEED": "5000",
    }  # the sample's 2 days in about 35 s: time to scrape
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.live"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, seen = time.monotonic() + 120, {}
        while time.monotonic() < deadline and proc.poll() is None:
            seen = _scrape(port)
            if seen.get("qt_bars_total", 0) >= 300 and seen.get("qt_inference_seconds_count"):
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert seen.get("qt_bars_total", 0) >= 300, seen  # scraped while running, not after
    assert seen["qt_ticks_total"] > 0 and seen["qt_input_rows_total"] >= seen["qt_ticks_total"]
    assert sum(v for k, v in seen.items() if k.startswith("qt_signals_total{")) > 0
    assert seen["qt_inference_seconds_count"] > 0
    assert "qt_decision_queue" in seen and "qt_net_pnl" in seen
    progress = [line for line in err.splitlines() if " rows" in line and "ticks/s" in line]
    assert len(progress) >= 2 and " | at 2014-05-06 " in progress[-1], err[-2000:]
    shares = [int(m[1]) for line in progress if (m := re.match(r"[\d,]+ rows \((\d+)%\)", line))]
    assert len(shares) == len(progress) and shares == sorted(shares), progress  # of the file
    counts = summary_counts(out)
    assert counts["bars"] >= seen["qt_bars_total"]  # the summary totals what was scraped
    assert "STOPPED by SIGINT" in out and "report: " in out

"""Stopping a flow: SIGINT or SIGTERM ends it within seconds with its summary and flushed
sinks, keeping its state, and a resume from recovery finishes exactly like a run that was
never stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from settings import PROJECT_ROOT
from tests.integration.test_trading import _env, _live, _query, _recovery


@pytest.mark.slow
def test_stop_with_sigint_then_sigterm_and_resume(
    tmp_path: Path, sample_ticks: Path, trained_registry: Path
) -> None:
    ticks = {"QT_TICKS": str(sample_ticks)}
    reference = tmp_path / "reference"
    _live(reference, trained_registry, **ticks)
    expected = _query(reference, trained_registry, "trades")

    home = tmp_path / "stopped"
    recovery = _recovery(home, trained_registry)
    args = [sys.executable, "-m", "bytewax.run", "dataflows.live", *recovery]
    # ~30 s of replay; the first progress line says the flow runs (its handlers are set)
    paced = _env(home, trained_registry, **ticks, QT_REPLAY_SPEED="6000", QT_PROGRESS="always")
    seen = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen(
            args,
            cwd=PROJECT_ROOT,
            env=paced,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda p=proc, out=lines: out.extend(p.stderr), daemon=True
        )
        reader.start()
        deadline = time.monotonic() + 120
        while proc.poll() is None and not any(" rows" in ln for ln in lines):
            assert time.monotonic() < deadline, "no progress line in 120 s"
            time.sleep(0.1)
        time.sleep(3.0)  # well into the replay
        assert proc.poll() is None, "the paced replay ended before it could be stopped"
        sent = time.monotonic()
        proc.send_signal(sig)
        out = proc.stdout.read()
        proc.wait(timeout=60)
        reader.join(timeout=10)
        took = time.monotonic() - sent
        err = "".join(lines)
        assert proc.returncode == 0, err[-2000:]
        assert took < 15.0, f"{sig.name}: stopped after {took:.1f} s"
        assert f"STOPPED by {sig.name}" in out and "trades opened" in out
        assert "Traceback" not in err
        seen.append(len(_query(home, trained_registry, "trades")))  # flushed before exit
    assert 0 < seen[0] <= seen[1] < len(expected)
    _live(home, trained_registry, *recovery, **ticks)
    assert _query(home, trained_registry, "trades") == expected

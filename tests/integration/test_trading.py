"""The trading flow end to end: complete entry states, analytics, determinism, crash + resume.

The CLI runs are separate processes with their own ``QT_HOME`` (chDB allows one data path per
process) and the session's trained registry; their stores are read back through the analytics
CLI, as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bytewax.testing import run_main

from cli.analytics import available
from dataflows.live import build_live_flow
from settings import PROJECT_ROOT
from storage.store import open_store


def test_every_trade_of_a_replay_has_its_complete_entry_state(live_settings, sample_ticks,
                                                              capsys) -> None:
    s = live_settings.replace(ticks=str(sample_ticks))
    run_main(build_live_flow(s))
    out = capsys.readouterr().out
    assert "trades opened" in out and "win rate" in out and "max drawdown" in out
    # the session's registry was trained on this very sample: the summary says so
    assert "in-sample: " in out and "of replayed bars were in the models' training data" in out
    store = open_store(s)
    try:
        (check,) = store.query("analytics/entry_state_completeness")
        trades = store.query("analytics/trades")
        verdicts = store.query("analytics/supervisor_blocks")
    finally:
        store.close()
    assert check["closed"] == check["trades"] > 0  # end of input closes what is open
    for gap in ("no_features", "no_rl_state", "no_rl_action", "no_log_prob",
                "no_policy_version", "not_four_votes"):
        assert check[gap] == 0, gap
    assert all(t["policy_version"].startswith("ppo-") and len(t["rl_action"]) == 3
               for t in trades)
    assert sum(v["verdicts"] for v in verdicts) > 0


def _env(home: Path, registry: Path, **extra: str) -> dict[str, str]:
    # learning off: its updates change the policy mid-run (and the shared registry), which is
    # not what these checks are about
    return {**os.environ, "QT_HOME": str(home), "QT_REGISTRY_DIR": str(registry),
            "QT_LEARNING": "false", **extra}


def _live(home: Path, registry: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.live", *args],
                          cwd=PROJECT_ROOT, env=_env(home, registry, **extra),
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _query(home: Path, registry: Path, name: str, *params: str) -> list[dict]:
    args = [a for p in params for a in ("--param", p)]
    proc = subprocess.run([sys.executable, "-m", "cli.analytics", name, "--json", *args],
                          cwd=PROJECT_ROOT, env=_env(home, registry), capture_output=True,
                          text=True, timeout=300, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.slow
def test_same_trades_with_one_and_two_workers(tmp_path: Path, sample_ticks: Path,
                                              trained_registry: Path) -> None:
    """Determinism: the same replay with the same registry gives identical trades."""
    one, two = tmp_path / "w1", tmp_path / "w2"
    ticks = {"QT_TICKS": str(sample_ticks)}
    _live(one, trained_registry, "-w", "1", **ticks)
    _live(two, trained_registry, "-w", "2", **ticks)
    trades = _query(one, trained_registry, "trades")
    assert len(trades) > 10
    assert _query(two, trained_registry, "trades") == trades
    assert (_query(two, trained_registry, "supervisor_blocks")
            == _query(one, trained_registry, "supervisor_blocks"))
    # and every analytics query answers on the result (the learning ones with no rows: the
    # learning graph is off here, tests/integration/test_learning.py covers them; and no
    # ablation was run, tests/learning/test_ablation.py covers that)
    learning = {"clm_cycles", "clm_cycles_per_week", "promotions", "rl_updates",
                "shadow_vs_production", "drift_checks", "evaluations"}
    for name in available():
        params = (f"trade_id={trades[0]['trade_id']}",) if name == "why_trade" else ()
        rows = _query(one, trained_registry, name, *params)
        assert rows or name in learning, name


@pytest.mark.slow
def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path: Path, sample_ticks: Path,
                                                     trained_registry: Path) -> None:
    """kill -9 midway through a recoverable run, resume, compare with an uninterrupted run."""
    ticks = {"QT_TICKS": str(sample_ticks)}
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    done = _live(reference, trained_registry, **ticks)
    startup = time.monotonic() - t0 - float(
        next(line.split()[1] for line in done.stdout.splitlines() if "elapsed" in line))

    home = tmp_path / "crashed"
    recovery = home / "recovery"
    recovery.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True,
                   cwd=PROJECT_ROOT, env=_env(home, trained_registry))
    args = [sys.executable, "-m", "bytewax.run", "dataflows.live", "-r", str(recovery),
            "-s", "1", "-b", "0"]
    paced = {**ticks, "QT_REPLAY_SPEED": "20000"}  # two days of quotes in about 9 s
    proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=_env(home, trained_registry, **paced),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(startup + 5.0)
    assert proc.poll() is None, "the paced run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = _query(home, trained_registry, "trades")
    resumed = _live(home, trained_registry, "-r", str(recovery), "-s", "1", "-b", "0", **ticks)
    assert "trades opened" in resumed.stdout

    expected = _query(reference, trained_registry, "trades")
    got = _query(home, trained_registry, "trades")
    assert 0 < len(partial) < len(expected) or len(partial) == 0 < len(expected)
    assert got == expected  # nothing lost, nothing duplicated (FINAL), same fills and PnL
    assert (_query(home, trained_registry, "entry_state_completeness")
            == _query(reference, trained_registry, "entry_state_completeness"))

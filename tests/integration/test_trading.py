"""The trading flow end to end: complete entry states, analytics, determinism, crash + resume.

The CLI runs are separate processes with their own ``QT_HOME`` (chDB allows one data path per
process) and the session's trained registry; their stores are read back through the analytics
CLI, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
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


def test_every_trade_of_a_replay_has_its_complete_entry_state(
    live_settings, sample_ticks, capsys
) -> None:
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
    for gap in (
        "no_features",
        "no_rl_state",
        "no_rl_action",
        "no_log_prob",
        "no_policy_version",
        "not_four_votes",
    ):
        assert check[gap] == 0, gap
    assert all(t["policy_version"].startswith("ppo-") and len(t["rl_action"]) == 3 for t in trades)
    assert sum(v["verdicts"] for v in verdicts) > 0


def _env(home: Path, registry: Path, **extra: str) -> dict[str, str]:
    # learning off: its updates change the policy mid-run (and the shared registry), which is
    # not what these checks are about
    return {
        **os.environ,
        "QT_HOME": str(home),
        "QT_REGISTRY_DIR": str(registry),
        "QT_LEARNING": "false",
        **extra,
    }


def _live(home: Path, registry: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.live", *args],
        cwd=PROJECT_ROOT,
        env=_env(home, registry, **extra),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _query(home: Path, registry: Path, name: str, *params: str) -> list[dict]:
    args = [a for p in params for a in ("--param", p)]
    proc = subprocess.run(
        [sys.executable, "-m", "cli.analytics", name, "--json", *args],
        cwd=PROJECT_ROOT,
        env=_env(home, registry),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


# Many analytics queries in one process (each separate CLI call pays Python's and chDB's
# start-up): the CLI's own run(), its rows as the CLI's --json prints them.
_MANY_QUERIES = """
import json, sys
from cli.analytics import _jsonable, run
from settings import Settings
asked, settings = json.load(sys.stdin), Settings.from_env()
json.dump({n: [_jsonable(r) for r in run(n, dict(p), settings)] for n, p in asked.items()},
          sys.stdout)
"""


def _queries(home: Path, registry: Path, asked: dict[str, dict[str, str]]) -> dict[str, list]:
    """``{name: rows}`` of ``cli.analytics`` for each ``{name: params}``, in one process."""
    proc = subprocess.run(
        [sys.executable, "-c", _MANY_QUERIES],
        input=json.dumps(asked),
        cwd=PROJECT_ROOT,
        env=_env(home, registry),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _recovery(home: Path, registry: Path) -> list[str]:
    """Set up ``home/recovery`` (one partition) and return the flow's arguments that snapshot
    into it every second and resume from it."""
    recovery = home / "recovery"
    recovery.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery), "1"],
        check=True,
        cwd=PROJECT_ROOT,
        env=_env(home, registry),
    )
    return ["-r", str(recovery), "-s", "1", "-b", "0"]


LEARNING_ON = {
    "QT_LEARNING": "true",
    "QT_RL_V3_UPDATE_INTERVAL": "6",
    "QT_CLM_RETRAIN_HOURS": "24",
    "QT_CLM_DRIFT_HOURS": "6",
    "QT_CLM_SHADOW_MIN": "50",
    "QT_CLM_SHADOW_MAX": "400",
    "QT_CLM_BLOCKING": "true",
    "QT_CLM_BUDGET": "quick",
}


def _outcome(home: Path, registry: Path) -> dict:
    """What a learning-on replay decided: trades, verdicts, PPO updates, CLM decisions, and
    the registry's versions and stages (wall-clock fields left out)."""
    out: dict = _queries(
        home,
        registry,
        {name: {} for name in ("trades", "rl_updates", "promotions", "supervisor_blocks")},
    )
    out["versions"] = sorted(str(p.relative_to(registry)) for p in registry.glob("*/v*"))
    out["stages"] = {
        p.parent.name: json.loads(p.read_text()) for p in registry.glob("*/stages.json")
    }
    for stages in out["stages"].values():
        for entry in stages.values():
            entry.pop("promoted_at", None)
    return out


@pytest.fixture(scope="module")
def learning_reference(
    tmp_path_factory: pytest.TempPathFactory, sample_ticks: Path, trained_registry: Path
) -> tuple[Path, Path, dict]:
    """One uninterrupted learning-on replay, one worker: ``(home, registry, outcome)``, the
    reference of the determinism and the crash tests."""
    home = tmp_path_factory.mktemp("learning_reference")
    registry = home / "registry"
    shutil.copytree(trained_registry, registry)
    _live(home, registry, QT_TICKS=str(sample_ticks), **LEARNING_ON)
    return home, registry, _outcome(home, registry)


@pytest.mark.slow
def test_a_learning_replay_is_the_same_twice_and_with_two_workers(
    tmp_path: Path,
    sample_ticks: Path,
    trained_registry: Path,
    learning_reference: tuple[Path, Path, dict],
) -> None:
    """Determinism with learning on: the same replay gives identical trades, verdicts, PPO
    updates, CLM decisions and registry versions, twice with 1 worker and once with 2 (the
    learners act inside the engine's event order); the second 1-worker run computes the
    models' arithmetic in the flow's own process instead of a forward process."""
    home, registry, first = learning_reference
    assert len(first["trades"]) > 10 and first["rl_updates"] and first["promotions"]
    for run, workers, forward_process in (("b", "2", "on"), ("c", "1", "off")):
        again = tmp_path / run / "registry"
        shutil.copytree(trained_registry, again)
        _live(
            tmp_path / run,
            again,
            "-w",
            workers,
            QT_TICKS=str(sample_ticks),
            QT_FORWARD_PROCESS=forward_process,
            **LEARNING_ON,
        )
        assert _outcome(tmp_path / run, again) == first, f"-w {workers} {forward_process}"
    # and every analytics query answers on the result (no ablation was run here:
    # tests/learning/test_ablation.py covers that one)
    trade = first["trades"][0]
    given = {
        "why_trade": {"trade_id": trade["trade_id"]},
        "price_bars": {"symbol": trade["symbol"]},
    }
    answers = _queries(home, registry, {name: given.get(name, {}) for name in available()})
    assert set(answers) == set(available())
    assert not [name for name, rows in answers.items() if not rows and name != "evaluations"]


def _new_ppo_version(registry: Path, before: set[str]) -> bool:
    return bool({p.name for p in (registry / "ppo").glob("v*")} - before)


def _cycle_training(home: Path) -> bool:
    return any(p.is_dir() for p in (home / "clm").glob("clm-*"))


@pytest.mark.slow
def test_kill_and_resume_with_learning_on_loses_and_repeats_nothing(
    tmp_path: Path,
    sample_ticks: Path,
    trained_registry: Path,
    learning_reference: tuple[Path, Path, dict],
) -> None:
    """kill -9 a recoverable learning-on replay at five points (early, right after a PPO
    update, while a CLM cycle trains, and twice more), resuming each time: the same trades,
    verdicts, PPO updates, CLM decisions and registry versions as an uninterrupted run; no
    update applied twice (its keyed publish is reused), no challenger left without a judge."""
    ticks = {"QT_TICKS": str(sample_ticks)}
    *_, expected = learning_reference
    assert expected["rl_updates"] and expected["promotions"]
    crashed = tmp_path / "crashed"
    shutil.copytree(trained_registry, crashed / "registry")

    registry = crashed / "registry"
    recovery = _recovery(crashed, registry)
    args = [sys.executable, "-m", "bytewax.run", "dataflows.live", *recovery]
    paced = {**ticks, **LEARNING_ON, "QT_REPLAY_SPEED": "6000"}  # two days in ~30 s
    kills: list[str] = []
    points = [
        ("early", lambda t, ppo: t > 4.0),
        ("after a PPO update", lambda t, ppo: _new_ppo_version(registry, ppo)),
        ("during a CLM cycle", lambda t, ppo: _cycle_training(crashed)),
        ("later", lambda t, ppo: t > 6.0),
        ("later again", lambda t, ppo: t > 6.0),
    ]
    for name, due in points:
        ppo = {p.name for p in (registry / "ppo").glob("v*")}
        proc = subprocess.Popen(
            args,
            cwd=PROJECT_ROOT,
            env=_env(crashed, registry, **paced),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t0 = time.monotonic()
        while proc.poll() is None and not due(time.monotonic() - t0, ppo):
            time.sleep(0.02)
        if proc.poll() is not None:
            break  # the replay ended before this point: no more kills
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(name)
    assert kills[:3] == ["early", "after a PPO update", "during a CLM cycle"], kills
    assert len(kills) == 5, kills
    _live(crashed, registry, *recovery, **ticks, **LEARNING_ON)
    got = _outcome(crashed, registry)
    assert got == expected  # trades, verdicts, updates, decisions, versions and stages
    policies = [u["policy_after"] for u in got["rl_updates"]]
    assert len(policies) == len(set(policies))  # every update once

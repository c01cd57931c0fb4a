"""The learners fed in-process (embedded, one process) and over Kafka (two processes) learn
the same: the same joined trades, drift checks and CLM cycles from the same replay."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from bytewax.testing import run_main
from confluent_kafka.admin import AdminClient, NewTopic

from dataflows.learning import build_learning_flow
from dataflows.live import build_live_flow
from settings import PROJECT_ROOT
from storage.store import open_store

pytestmark = pytest.mark.kafka
OUTCOME = (
    "trade_id",
    "symbol",
    "side",
    "entry_ts",
    "exit_ts",
    "exit_reason",
    "net_pnl",
    "pnl_pct",
    "sizing",
    "policy_version",
    "reward",
)
CYCLE = (
    "cycle_id",
    "trigger",
    "status",
    "started_ts",
    "data_from",
    "data_to",
    "rows",
    "versions",
    "decisions",
)
# learning that cannot change the live decisions (so both deployments see the same trades):
# no PPO update, no automatic promotion; a cycle every 12 h, a drift check every 6 h
LEARN = {
    "rl_update_interval": 10**9,
    "clm_enabled": True,
    "clm_auto_promote": False,
    "clm_retrain_hours": 12.0,
    "clm_drift_hours": 6.0,
    "clm_blocking": True,
    "clm_budget": "quick",
    "clm_shadow_min": 50,
    "clm_shadow_max": 400,
    "learning": True,
}
ENV = {
    "QT_RL_V3_UPDATE_INTERVAL": str(10**9),
    "QT_CLM_AUTO_PROMOTE": "false",
    "QT_CLM_RETRAIN_HOURS": "12",
    "QT_CLM_DRIFT_HOURS": "6",
    "QT_CLM_BLOCKING": "true",
    "QT_CLM_BUDGET": "quick",
    "QT_CLM_SHADOW_MIN": "50",
    "QT_CLM_SHADOW_MAX": "400",
}


def _learned(settings) -> dict[str, list[dict]]:
    store = open_store(settings)
    try:
        return {
            "outcomes": [
                {k: r[k] for k in OUTCOME} for r in store.query("queries/trade_outcomes_all")
            ],
            "cycles": [{k: r[k] for k in CYCLE} for r in store.query("analytics/clm_cycles")],
            "drift": store.query("analytics/drift_checks"),
        }
    finally:
        store.close()


def test_embedded_and_kafka_learners_learn_the_same(
    live_settings, kafka_broker: str, sample_ticks: Path, registry_copy: Path, tmp_path: Path
) -> None:
    import shutil

    kafka_registry = tmp_path / "kafka-registry"
    shutil.copytree(registry_copy, kafka_registry)
    embedded = live_settings.replace(ticks=str(sample_ticks), registry_path=registry_copy, **LEARN)
    run_main(build_live_flow(embedded))
    expected = _learned(embedded)
    assert len(expected["outcomes"]) > 10 and expected["cycles"] and expected["drift"]
    assert any(
        d == "qualified" or d.startswith("retired")
        for c in expected["cycles"]
        for d in c["decisions"].values()
    )

    topic = f"learning-events-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_broker})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(
        timeout=30
    )
    events = f"kafka://{kafka_broker}/{topic}"
    env = {
        **os.environ,
        "QT_HOME": str(tmp_path / "live"),
        "QT_TICKS": str(sample_ticks),
        "QT_REGISTRY_DIR": str(kafka_registry),
        "QT_TRADE_EVENTS": events,
        **ENV,
    }
    live = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.live"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert live.returncode == 0, live.stderr[-3000:]
    assert "trades joined" not in live.stdout  # learning is the other process's job

    separate = live_settings.replace(
        database=f"{live_settings.database}_learning",
        registry_path=kafka_registry,
        trade_events=f"{events}?tail=false",
        **LEARN,
    )
    run_main(build_learning_flow(separate))
    got = _learned(separate)
    assert got["outcomes"] == expected["outcomes"]  # same trades, entry states, rewards
    assert got["drift"] == expected["drift"]  # same checks at the same times, scores
    assert got["cycles"] == expected["cycles"]  # same triggers, data, challengers, verdicts

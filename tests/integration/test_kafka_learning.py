"""The learning graph fed in-process (embedded, one process) and over Kafka (two processes)
joins the same trades into the same records."""

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
FIELDS = ("trade_id", "symbol", "side", "entry_ts", "exit_ts", "exit_reason", "net_pnl",
          "pnl_pct", "sizing", "policy_version", "reward", "joined_from")


def _outcomes(settings) -> list[dict]:
    store = open_store(settings)
    try:
        return [{k: r[k] for k in FIELDS} for r in store.query("queries/trade_outcomes_all")]
    finally:
        store.close()


def test_embedded_and_kafka_learning_join_the_same_trades(
        live_settings, kafka_broker: str, sample_ticks: Path, registry_copy: Path,
        tmp_path: Path) -> None:
    quiet = {"rl_update_interval": 10**9, "clm_enabled": False, "learning": True,
             "registry_path": registry_copy}
    embedded = live_settings.replace(ticks=str(sample_ticks), **quiet)
    run_main(build_live_flow(embedded))
    expected = _outcomes(embedded)
    assert len(expected) > 10 and {o["joined_from"] for o in expected} == {"stream"}

    topic = f"trade-events-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_broker})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic] \
        .result(timeout=30)
    events = f"kafka://{kafka_broker}/{topic}"
    env = {**os.environ, "QT_HOME": str(tmp_path / "live"), "QT_TICKS": str(sample_ticks),
           "QT_REGISTRY_DIR": str(registry_copy), "QT_TRADE_EVENTS": events,
           "QT_RL_V3_UPDATE_INTERVAL": str(10**9), "QT_CLM_ENABLED": "false"}
    live = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.live"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert live.returncode == 0, live.stderr[-3000:]
    assert "trades joined" not in live.stdout  # learning is the other process's job

    separate = live_settings.replace(database=f"{live_settings.database}_learning",
                                     trade_events=f"{events}?tail=false", **quiet)
    run_main(build_learning_flow(separate))
    assert _outcomes(separate) == expected  # same trades, same entry states, same rewards

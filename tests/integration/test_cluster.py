"""Bytewax cluster mode: several processes, addressed as across machines (``-i``/``-a``).

Two processes replay the sample with learning on (and recovery snapshots every second) and
must decide exactly what one process decides: the same trades, supervisor verdicts, PPO
updates, CLM decisions and registry versions. The embedded store is opened by one of them
only (the one that runs the decision engine: the rows travel there by the flow's own
exchange), the summary is printed once. And a Kafka topic's partitions are shared between
the processes.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bytewax.testing import run_main

from cli.analytics import _jsonable, run
from dataflows.live import build_live_flow
from runtime import ClusterPosition, cluster, set_cluster
from settings import PROJECT_ROOT, Settings
from tests.integration.conftest import _free_port

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
QUERIES = ("trades", "rl_updates", "promotions", "supervisor_blocks")

# The outcome of a run, read in a process of its own (the run's embedded store is its own).
_OUTCOME = """
import json, sys
from cli.analytics import _jsonable, run
from settings import Settings
s = Settings.from_env()
json.dump({n: [_jsonable(r) for r in run(n, {}, s)] for n in sys.argv[1:]}, sys.stdout)
"""


def _registry_state(registry: Path) -> dict:
    stages = {p.parent.name: json.loads(p.read_text()) for p in registry.glob("*/stages.json")}
    for versions in stages.values():
        for entry in versions.values():
            entry.pop("promoted_at", None)  # wall clock
    return {
        "versions": sorted(str(p.relative_to(registry)) for p in registry.glob("*/v*")),
        "stages": stages,
    }


def _addresses(n: int) -> str:
    return ";".join(f"127.0.0.1:{_free_port()}" for _ in range(n))


def _start_cluster(
    args: list[str],
    env: dict[str, str],
    processes: int,
) -> list[subprocess.Popen]:
    addresses = _addresses(processes)
    return [
        subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", *args, "-i", str(i), "-a", addresses],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[str, str]]:
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
            outs.append((out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def test_two_processes_decide_and_learn_like_one(
    settings: Settings, trained_registry: Path, sample_ticks: Path, tmp_path: Path
) -> None:
    # two processes, with their own QT_HOME, started first: they import while this process
    # runs the reference
    home = tmp_path / "two"
    two = home / "registry"
    shutil.copytree(trained_registry, two)
    env = {
        **os.environ,
        **LEARNING_ON,
        "QT_HOME": str(home),
        "QT_REGISTRY_DIR": str(two),
        "QT_TICKS": str(sample_ticks),
    }
    recovery = home / "recovery"  # with recovery on, a snapshot every second: it must not
    recovery.mkdir()  # change what is decided (kill -9 + resume: see the README)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery), "2"],
        check=True,
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
    )
    cluster_procs = _start_cluster(
        ["dataflows.live", "-r", str(recovery), "-s", "1", "-b", "0"], env, 2
    )

    # one process, in this one (the session's store), from the same registry
    one = tmp_path / "one_registry"
    shutil.copytree(trained_registry, one)
    s = Settings.from_env(
        LEARNING_ON,
        home=settings.home,
        database=settings.database,
        registry_path=one,
        ticks=str(sample_ticks),
    )
    try:
        run_main(build_live_flow(s))
    except BaseException:
        _finish(cluster_procs, timeout=0.1)
        raise
    expected = {n: [_jsonable(r) for r in run(n, {}, s)] for n in QUERIES}
    expected.update(_registry_state(one))
    assert expected["trades"] and expected["rl_updates"] and expected["promotions"]

    outs = _finish(cluster_procs)
    printed = [out for out, _ in outs if "qt live run summary" in out]
    assert len(printed) == 1, "one summary, printed by one process"
    proc = subprocess.run(
        [sys.executable, "-c", _OUTCOME, *QUERIES],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    got.update(_registry_state(two))
    assert got == expected


# The live flow's Kafka source alone (as dataflows.graphs.tick_source builds it), each process
# printing what it read.
KAFKA_FLOW = """
import os
import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from connectors.kafka import KafkaTickSource, KafkaUrl
from settings import Settings

s = Settings.from_env()
flow = Dataflow("partitions")
blocks = op.input("ticks", flow, KafkaTickSource(KafkaUrl.parse(s.ticks), s.kafka_batch_size,
                                                 idle_ms=s.idle_partition_ms,
                                                 outage_s=s.kafka_outage_s))
op.output("out", op.map("who", blocks, lambda b: f"read {os.getpid()} {b.partition} {len(b)}"),
          StdOutSink())
"""


@pytest.mark.kafka
def test_two_processes_share_a_topics_partitions(
    topic_url: str, sample_ticks: Path, tmp_path: Path
) -> None:
    """A topic of two partitions read by two processes: each reads one partition, all of it."""
    from cli.produce import produce
    from connectors.kafka import KafkaUrl

    head = tmp_path / "head.csv"
    with gzip.open(sample_ticks, "rt") as src:
        head.write_text("".join(line for _, line in zip(range(4001), src, strict=False)))
    stats = produce([head], KafkaUrl.parse(topic_url), partitions=2)
    flow_file = tmp_path / "partitions_flow.py"
    flow_file.write_text(KAFKA_FLOW)
    env = {
        **os.environ,
        "QT_TICKS": f"{topic_url}?tail=false",
        "QT_HOME": str(tmp_path),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    started = time.monotonic()
    outs = _finish(_start_cluster([str(flow_file)], env, 2), timeout=120)
    read: dict[str, dict[str, int]] = {}
    for out, _ in outs:
        for line in out.splitlines():
            if line.startswith("read "):
                _, pid, partition, n = line.split()
                read.setdefault(partition, {}).setdefault(pid, 0)
                read[partition][pid] += int(n)
    assert time.monotonic() - started < 120
    topic = KafkaUrl.parse(topic_url).topic
    expected = {f"{topic}/{p}": n for p, n in stats.per_partition.items()}
    if len(expected) < 2:
        pytest.skip("the sample's symbols hashed to one partition")
    assert {p: sum(by_pid.values()) for p, by_pid in read.items()} == expected
    assert all(len(by_pid) == 1 for by_pid in read.values()), read  # one reader each
    assert len({pid for by_pid in read.values() for pid in by_pid}) == 2, read  # both read


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["x"], {}, ClusterPosition(0, 1)),
        (
            ["/v/bytewax/run.py", "dataflows.live", "-i", "1", "-a", "h:1;h:2"],
            {},
            ClusterPosition(1, 2),
        ),
        (
            ["/v/bytewax/run.py", "dataflows.live", "--process-id=2", "--addresses", "a:1;b:1;c:1"],
            {},
            ClusterPosition(2, 3),
        ),
        (
            ["/v/bytewax/run.py", "dataflows.live"],
            {"BYTEWAX_PROCESS_ID": "1", "BYTEWAX_ADDRESSES": "h:1;h:2"},
            ClusterPosition(1, 2),
        ),
        (["/v/bytewax/run.py", "dataflows.live", "-w", "2"], {}, ClusterPosition(0, 1)),
    ],
)
def test_cluster_position_from_bytewax_run_arguments(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], expected: ClusterPosition
) -> None:
    for k in ("BYTEWAX_PROCESS_ID", "BYTEWAX_ADDRESSES", "BYTEWAX_HOSTFILE_PATH"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", argv)
    set_cluster(None)
    assert cluster() == expected
    assert cluster().first == (expected.process_id == 0)


def test_the_other_processes_wait_for_the_first_ones_models(
    tmp_path: Path, trained_registry: Path
) -> None:
    """Only the first process bootstraps an empty registry (it alone may use the embedded
    store meanwhile); the others wait for every production model, and say why they stop."""
    from dataflows.live import RegistryIncomplete, wait_for_models

    slept: list[float] = []
    empty = Settings.from_env({}, home=tmp_path, registry_path=tmp_path / "empty")
    with pytest.raises(RegistryIncomplete, match="first process"):
        wait_for_models(empty, timeout_s=1.0, sleep=slept.append)
    assert slept == [0.5, 0.5]
    ready = Settings.from_env({}, home=tmp_path, registry_path=trained_registry)
    wait_for_models(ready, sleep=slept.append)
    assert len(slept) == 2  # no wait

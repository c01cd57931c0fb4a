"""The forward process: the sequence nets' forwards in a child, with the flow's own bits.

The nets come from the session's trained registry (quick training on the bundled sample);
the windows from the sample's feature vectors, warm-up (NaN) windows included.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from models.base import VectorBatch
from models.forward_process import ForwardProcess, ForwardProcessLost
from models.registry import ModelRegistry
from models.sequence import NHITSModel, PatchTSTModel
from models.trees import LightGBMModel, XGBoostModel
from schemas.features import FeatureVector
from settings import Settings
from training.history import history_from_ticks

NETS = ("nhits", "patchtst")
TREES = ("xgboost", "lightgbm")


@pytest.fixture(scope="module")
def nets(trained_registry: Path) -> dict[str, NHITSModel | PatchTSTModel]:
    registry = ModelRegistry(trained_registry)
    return {name: registry.load(name) for name in NETS}


@pytest.fixture(scope="module")
def trees(trained_registry: Path) -> dict[str, XGBoostModel | LightGBMModel]:
    registry = ModelRegistry(trained_registry)
    return {name: registry.load(name) for name in TREES}


@pytest.fixture(scope="module")
def vectors(sample_ticks: Path) -> list[FeatureVector]:
    """The sample's first 300 feature vectors of EURUSD: warm-up ones (NaN windows) first."""
    history = history_from_ticks(str(sample_ticks), Settings.from_env({}))
    return history.vectors["FXCM:EURUSD"][:300]


@pytest.fixture
def forwards() -> ForwardProcess:
    """The process's shared child (the flows' one), up."""
    fp = ForwardProcess.shared()
    assert fp.wait_ready(), "the forward process did not come up"
    return fp


@pytest.fixture
def own_forwards() -> Iterator[ForwardProcess]:
    """A child of the test's own (for the tests that kill or close it)."""
    fp = ForwardProcess()
    yield fp
    fp.close()


@pytest.mark.parametrize("name", NETS)
def test_forecasts_in_the_child_have_the_flows_bits(
    name: str, nets: dict, vectors: list[FeatureVector], forwards: ForwardProcess
) -> None:
    net = nets[name]
    assert net.directory is not None  # loaded from the registry: the child can load it too
    windows = VectorBatch(vectors).windows
    assert np.isnan(windows).any(axis=1).sum() > 10 and np.isfinite(windows).all(axis=1).any()
    here = net.forecast_windows(windows)
    sent = forwards.submitted
    there = net.begin_forecast(windows, forwards)()
    assert forwards.submitted == sent + 1 == forwards.poll()  # computed there, answered
    np.testing.assert_array_equal(there, here)  # NaN rows where here has them, same bits
    ids, conf = net.begin_vote_arrays(VectorBatch(vectors), forwards)()
    want_ids, want_conf = net.vote_arrays(VectorBatch(vectors))
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(conf, want_conf)


@pytest.mark.parametrize("name", TREES)
def test_tree_votes_in_the_child_have_the_flows_bits(
    name: str, trees: dict, vectors: list[FeatureVector], forwards: ForwardProcess
) -> None:
    """The trees' class probabilities come from the child too, with the same bits (warm-up
    rows with NaN features included: they take each node's default branch)."""
    model = trees[name]
    assert model.directory is not None
    batch = VectorBatch(vectors)
    assert np.isnan(batch.features).any()
    sent = forwards.submitted
    ids, conf = model.begin_vote_arrays(batch, forwards)()
    assert forwards.submitted == sent + 1 == forwards.poll()  # computed there, answered
    want_ids, want_conf = model.vote_arrays(batch)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(conf, want_conf)
    rid = forwards.submit(model, batch.features)
    np.testing.assert_array_equal(forwards.result(rid), model.predict_proba(batch.features))


def test_requests_are_answered_in_order_without_waiting(
    nets: dict, vectors: list[FeatureVector], forwards: ForwardProcess
) -> None:
    """Submitting returns at once; poll() counts answers as they come, in request order."""
    windows = VectorBatch(vectors).windows
    sent = forwards.submitted
    finishes = [nets[n].begin_forecast(windows[i::3], forwards) for i in range(3) for n in NETS]
    assert forwards.submitted == sent + 6
    deadline = time.monotonic() + 60
    while forwards.poll() < sent + 6:
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
    nets: dict, vectors: list[FeatureVector], own_forwards: ForwardProcess, caplog
) -> None:
    net = nets["nhits"]
    windows = VectorBatch(vectors).windows
    assert own_forwards.wait_ready()
    os.kill(own_forwards.pid, signal.SIGKILL)
    time.sleep(0.2)
    with caplog.at_level(logging.WARNING):
        pending = net.begin_forecast(windows, own_forwards)  # sent to a dead child, or refused
        forecast = pending()
    np.testing.assert_array_equal(forecast, net.forecast_windows(windows))
    assert own_forwards.lost is not None and "exited with code -9" in own_forwards.lost
    assert "computing in this process" in caplog.text
    assert not own_forwards.ready() and own_forwards.poll() == own_forwards.submitted
    with pytest.raises(ForwardProcessLost):
        own_forwards.submit(net, windows)


def test_the_child_leaves_ctrl_c_to_the_parent_and_goes_with_its_pipe(
    nets: dict, own_forwards: ForwardProcess
) -> None:
    net = nets["nhits"]
    up = own_forwards.submit(net, np.zeros((1, net.input_size)))
    own_forwards.result(up)  # it is serving (its handler is set before)
    os.kill(own_forwards.pid, signal.SIGINT)
    time.sleep(0.2)
    rid = own_forwards.submit(net, np.zeros((1, net.input_size)))
    assert own_forwards.result(rid).shape == (1, net.horizon)  # still serving
    own_forwards.close()
    assert own_forwards._proc.returncode == 0


def test_until_the_child_is_up_forecasts_are_computed_here(
    nets: dict, vectors: list[FeatureVector], own_forwards: ForwardProcess
) -> None:
    """The flow never waits for the child's start-up: until its preloads are answered,
    requests are not sent (the child is held stopped while it has not answered)."""
    net = nets["patchtst"]
    os.kill(own_forwards.pid, signal.SIGSTOP)
    try:
        own_forwards.preload(net)
        windows = VectorBatch(vectors).windows
        first = net.begin_forecast(windows, own_forwards)()
        assert own_forwards.submitted == 1  # only the preload
        assert not own_forwards.ready()
    finally:
        os.kill(own_forwards.pid, signal.SIGCONT)
    assert own_forwards.wait_ready()
    second = net.begin_forecast(windows, own_forwards)()
    assert own_forwards.submitted == 2
    np.testing.assert_array_equal(first, second)


def test_the_flows_of_a_process_share_one_child_until_it_is_lost() -> None:
    first = ForwardProcess.shared()
    assert ForwardProcess.shared() is first
    first.close()
    assert first.lost is not None and not first.ready()
    second = ForwardProcess.shared()  # a new child once the last one is gone
    assert second is not first and second.lost is None
    assert ForwardProcess.shared() is second

"""The scoring step (:func:`operators.ensemble.score_votes`): every model version's votes on
every feature step, emitted once a forward process has answered the models' arithmetic.

Models from the session's trained registry; feature vectors from the bundled sample.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from models.forward_process import ForwardProcess
from models.registry import ModelRegistry
from operators.ensemble import (
    DeferredScoring,
    EnsembleConfig,
    Held,
    RegistryModels,
    Scorer,
    score_votes,
    submit_scoring,
)
from schemas.features import FeatureStep
from settings import Settings
from training.history import history_from_ticks


@pytest.fixture(scope="module")
def scorer(trained_registry: Path) -> Scorer:
    return Scorer(RegistryModels(ModelRegistry(trained_registry)), EnsembleConfig())


@pytest.fixture(scope="module")
def steps(sample_ticks: Path) -> list[FeatureStep]:
    """Four feature steps of 60 EURUSD vectors each, the first with warm-up vectors."""
    vectors = history_from_ticks(str(sample_ticks), Settings.from_env({})).vectors["FXCM:EURUSD"]
    return [FeatureStep("FXCM:EURUSD", vectors[i : i + 60], None, []) for i in range(0, 240, 60)]


@pytest.fixture
def forwards() -> ForwardProcess:
    """The process's shared child (the flows' one), up."""
    fp = ForwardProcess.shared()
    assert fp.wait_ready(), "the forward process did not come up"
    return fp


def _votes(scored: list) -> list:
    return [(s.features, s.votes) for s in scored]


def _submitted(
    scorer: Scorer, forwards: ForwardProcess | None, steps: list[FeatureStep]
) -> list[Held]:
    """``steps`` as the scoring step's stateless half hands them on: one call for all."""
    return [p for _, p in submit_scoring("ensemble", scorer, forwards)([("k", s) for s in steps])]


def _bars(step: FeatureStep) -> list:
    return [(v.symbol, v.ts) for v in step.vectors]


def _expected(scorer: Scorer, steps: list[FeatureStep]) -> list:
    return [(s, scorer.all_votes(s.vectors)) for s in steps]


@pytest.fixture
def stopped() -> Iterator[ForwardProcess]:
    """A child of the test's own, up, then held stopped (SIGSTOP): it answers nothing until
    the test lets it go on (SIGCONT)."""
    fp = ForwardProcess()
    assert fp.wait_ready(), "the forward process did not come up"
    os.kill(fp.pid, signal.SIGSTOP)
    try:
        yield fp
    finally:
        os.kill(fp.pid, signal.SIGCONT)
        fp.close()


def test_steps_are_held_until_the_child_answers_and_the_flow_does_not_wait(
    scorer: Scorer, steps: list[FeatureStep], stopped: ForwardProcess
) -> None:
    logic = DeferredScoring("ensemble", scorer, stopped)
    out, _ = logic.on_batch(_submitted(scorer, stopped, [steps[0]]))
    # the two trees' probabilities went to the child (the first step is all warm-up: no
    # window to forecast, so no net's)
    assert out == [] and stopped.submitted == 2
    out, _ = logic.on_batch(_submitted(scorer, stopped, steps[1:3]))
    assert out == [] and logic.on_notify()[0] == []  # the child has not answered: held
    assert stopped.submitted == 6 and logic.notify_at() is not None  # two trees, two nets
    assert [_bars(s) for s in logic.snapshot()] == [_bars(s) for s in steps[:3]]
    os.kill(stopped.pid, signal.SIGCONT)
    got: list = []
    deadline = time.monotonic() + 60
    while len(got) < 3:
        assert time.monotonic() < deadline, "the child never answered"
        got += logic.on_notify()[0]
        time.sleep(0.01)
    assert _votes(got) == _expected(scorer, steps[:3])
    assert logic.notify_at() is None and logic.snapshot() == []


def test_a_key_waits_for_the_child_only_beyond_two_held_batches(
    scorer: Scorer, steps: list[FeatureStep], stopped: ForwardProcess
) -> None:
    logic = DeferredScoring("ensemble", scorer, stopped)
    assert logic.on_batch(_submitted(scorer, stopped, [steps[1]]))[0] == []
    assert logic.on_batch(_submitted(scorer, stopped, [steps[2]]))[0] == []
    third: list = []
    waiting = threading.Thread(
        target=lambda: third.extend(logic.on_batch(_submitted(scorer, stopped, [steps[3]]))[0])
    )
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()  # a third batch: it waits for the oldest one's forwards
    os.kill(stopped.pid, signal.SIGCONT)
    waiting.join(60)
    assert not waiting.is_alive()
    assert _votes(third)[:1] == _expected(scorer, steps[1:2])
    out, _ = logic.on_eof()
    assert _votes(third + out) == _expected(scorer, steps[1:4])


def test_a_resume_scores_the_held_steps_again(
    scorer: Scorer, steps: list[FeatureStep], stopped: ForwardProcess, forwards: ForwardProcess
) -> None:
    logic = DeferredScoring("ensemble", scorer, stopped)
    logic.on_batch(_submitted(scorer, stopped, [steps[1]]))
    logic.on_batch(_submitted(scorer, stopped, [steps[2]]))
    snapshot = pickle.loads(pickle.dumps(logic.snapshot(), protocol=5))
    assert [_bars(s) for s in snapshot] == [_bars(s) for s in steps[1:3]]  # (NaN: not ==)
    resumed = DeferredScoring("ensemble", scorer, forwards, snapshot)
    out, _ = resumed.on_eof()
    assert [(_bars(s.features), s.votes) for s in out] == [
        (_bars(s), scorer.all_votes(s.vectors)) for s in steps[1:3]
    ]


def test_without_a_forward_process_each_batch_is_emitted_at_once(
    scorer: Scorer, steps: list[FeatureStep]
) -> None:
    logic = DeferredScoring("ensemble", scorer, None)
    out, _ = logic.on_batch(_submitted(scorer, None, steps[:2]))
    assert _votes(out) == _expected(scorer, steps[:2])
    assert logic.notify_at() is None and logic.snapshot() == []


@pytest.mark.parametrize("with_process", [True, False], ids=["forward process", "in process"])
def test_in_a_dataflow_every_step_is_scored_once_in_order(
    scorer: Scorer, steps: list[FeatureStep], with_process: bool
) -> None:
    """Two keys (the same steps under each, in turn, so that each call spans both keys):
    each key's steps come out once, in order, with their own votes."""
    forwards = ForwardProcess.shared() if with_process else None
    flow = Dataflow("scoring")
    items = [(key, s) for s in steps for key in ("shard-a", "shard-b")]
    keyed = op.input("in", flow, TestingSource(items, batch_size=4))
    out: list = []
    op.output("out", score_votes("ensemble", keyed, scorer, forwards), TestingSink(out))
    run_main(flow)
    for key in ("shard-a", "shard-b"):
        assert _votes([s for k, s in out if k == key]) == _expected(scorer, steps)


def test_a_submitted_step_that_is_pickled_travels_scored(
    scorer: Scorer, steps: list[FeatureStep], forwards: ForwardProcess
) -> None:
    """The steps of one call never leave their worker (the keyed step after it routes them
    where they are); if one were pickled all the same, it would carry its votes."""
    held = _submitted(scorer, forwards, steps[1:3])
    copies = pickle.loads(pickle.dumps(held, protocol=5))
    assert [(_bars(c.step), c.scored().votes) for c in copies] == [
        (_bars(s), scorer.all_votes(s.vectors)) for s in steps[1:3]
    ]

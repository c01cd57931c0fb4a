"""The scoring step (:func:`operators.ensemble.score_votes`): every model version's votes on
every feature step, a batch behind when a forward process runs the sequence nets.

Models from the session's trained registry; feature vectors from the bundled sample.
"""

from __future__ import annotations

import pickle
import time
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


def test_with_a_forward_process_each_batch_is_emitted_one_behind(
    scorer: Scorer, steps: list[FeatureStep], forwards: ForwardProcess
) -> None:
    sent = forwards.submitted
    logic = DeferredScoring("ensemble", scorer, forwards)
    out, _ = logic.on_batch(_submitted(scorer, forwards, [steps[0]]))
    assert out == [] and logic.notify_at() is not None
    out, _ = logic.on_batch(_submitted(scorer, forwards, steps[1:3]))
    assert _votes(out) == _expected(scorer, steps[:1])
    out, _ = logic.on_eof()
    assert _votes(out) == _expected(scorer, steps[1:3])
    assert logic.notify_at() is None and logic.snapshot() == []
    # the second batch's forwards (one per net) ran in the child; the first batch is all
    # warm-up (NaN windows are not forecast)
    assert forwards.submitted - sent == 2


def test_a_quiet_key_emits_its_batch_once_the_forwards_are_answered(
    scorer: Scorer, steps: list[FeatureStep], forwards: ForwardProcess
) -> None:
    logic = DeferredScoring("ensemble", scorer, forwards)
    assert logic.on_batch(_submitted(scorer, forwards, [steps[0]]))[0] == []
    deadline = time.monotonic() + 60
    while not (out := logic.on_notify()[0]):
        assert time.monotonic() < deadline, "the forwards were never answered"
        time.sleep(0.01)
    assert _votes(out) == _expected(scorer, steps[:1])
    assert logic.notify_at() is None


def test_a_resume_scores_the_pending_steps_again(
    scorer: Scorer, steps: list[FeatureStep], forwards: ForwardProcess
) -> None:
    logic = DeferredScoring("ensemble", scorer, forwards)
    logic.on_batch(_submitted(scorer, forwards, [steps[0]]))
    logic.on_batch(_submitted(scorer, forwards, [steps[1]]))
    snapshot = pickle.loads(pickle.dumps(logic.snapshot(), protocol=5))
    assert [_bars(s) for s in snapshot] == [_bars(steps[1])]  # (NaN: not == after a copy)
    resumed = DeferredScoring("ensemble", scorer, forwards, snapshot)
    out, _ = resumed.on_batch(_submitted(scorer, forwards, [steps[2]]))
    assert [(_bars(s.features), s.votes) for s in out] == [
        (_bars(steps[1]), scorer.all_votes(steps[1].vectors))
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

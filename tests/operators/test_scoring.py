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
from operators.ensemble import DeferredScoring, EnsembleConfig, RegistryModels, Scorer, score_votes
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


def _bars(step: FeatureStep) -> list:
    return [(v.symbol, v.ts) for v in step.vectors]


def _expected(scorer: Scorer, steps: list[FeatureStep]) -> list:
    return [(s, scorer.all_votes(s.vectors)) for s in steps]


def test_with_a_forward_process_each_batch_is_emitted_one_behind(
    scorer: Scorer, steps: list[FeatureStep], forwards: ForwardProcess
) -> None:
    sent = forwards.submitted
    logic = DeferredScoring("ensemble", scorer, forwards)
    out, _ = logic.on_batch([steps[0]])
    assert out == [] and logic.notify_at() is not None
    out, _ = logic.on_batch(steps[1:3])
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
    assert logic.on_batch([steps[0]])[0] == []
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
    logic.on_batch([steps[0]])
    logic.on_batch([steps[1]])
    snapshot = pickle.loads(pickle.dumps(logic.snapshot(), protocol=5))
    assert [_bars(s) for s in snapshot] == [_bars(steps[1])]  # (NaN: not == after a copy)
    resumed = DeferredScoring("ensemble", scorer, forwards, snapshot)
    out, _ = resumed.on_batch([steps[2]])
    assert [(_bars(s.features), s.votes) for s in out] == [
        (_bars(steps[1]), scorer.all_votes(steps[1].vectors))
    ]


def test_without_a_forward_process_each_batch_is_emitted_at_once(
    scorer: Scorer, steps: list[FeatureStep]
) -> None:
    logic = DeferredScoring("ensemble", scorer, None)
    out, _ = logic.on_batch(steps[:2])
    assert _votes(out) == _expected(scorer, steps[:2])
    assert logic.notify_at() is None and logic.snapshot() == []


@pytest.mark.parametrize("with_process", [True, False], ids=["forward process", "in process"])
def test_in_a_dataflow_every_step_is_scored_once_in_order(
    scorer: Scorer, steps: list[FeatureStep], with_process: bool
) -> None:
    forwards = ForwardProcess.shared() if with_process else None
    flow = Dataflow("scoring")
    items = op.input("in", flow, TestingSource([("FXCM:EURUSD", s) for s in steps]))
    out: list = []
    op.output("out", score_votes("ensemble", items, scorer, forwards), TestingSink(out))
    run_main(flow)
    assert [key for key, _ in out] == ["FXCM:EURUSD"] * len(steps)
    assert _votes([s for _, s in out]) == _expected(scorer, steps)

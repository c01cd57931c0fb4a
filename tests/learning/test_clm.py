"""The continuous learner's own rules: orphaned challengers resumed or retired at start, and a
performance trigger that compares like with like (tests/integration/test_learning.py runs
whole cycles on replays)."""

from __future__ import annotations

from pathlib import Path

import pytest

from learning.clm import PERF_BASELINE_CALLS, ClmConfig, ContinuousLearner
from learning.cycles import ClmDeps, Cycle, CycleRunner
from learning.drift import MODEL_NAME as REFERENCE
from learning.triggers import RetrainRequests, Trigger, TriggerConfig
from models.base import MODEL_NAMES
from models.labels import LabelConfig
from models.registry import ModelRegistry
from operators.versions import ActiveModels
from schemas.learning import ChallengerDecision, CycleStatus
from schemas.registry import ModelStage
from schemas.tables import CLM_CYCLES, event_rows

H = 3_600_000


def learner(registry: ModelRegistry, store, settings) -> ContinuousLearner:
    label_cfg = LabelConfig.from_settings(settings)
    runner = CycleRunner(
        ClmDeps(registry, store, None, RetrainRequests(settings.clm_dir), settings.clm_dir, None),
        label_cfg,
        0,
    )
    return ContinuousLearner(
        ClmConfig(triggers=TriggerConfig(-1, -1, 6.0)),
        label_cfg,
        runner,
        ActiveModels(registry, owned=True),
    )


def shadow_copies(registry: ModelRegistry, cycle_id: str) -> dict[str, str]:
    return {
        m: registry.publish(
            m,
            registry.load(m).save,
            stage=ModelStage.SHADOW,
            feature_set="fs",
            params={"cycle": cycle_id},
        ).version
        for m in MODEL_NAMES
    }


def test_an_interrupted_shadow_test_is_resumed_by_the_next_run(
    registry_copy: Path, store, settings
) -> None:
    registry = ModelRegistry(registry_copy, store)
    versions = shadow_copies(registry, "clm-0007-x")
    cycle = Cycle(
        "clm-0007-x",
        "manual",
        "test",
        1_000,
        CycleStatus.SHADOW,
        versions=dict(versions),
        decisions={"xgboost": ChallengerDecision.PROMOTED},
    )
    block = event_rows(CLM_CYCLES, [cycle.record(2_000)])
    store.insert_block(block)
    registry.set_stage("xgboost", versions["xgboost"], ModelStage.PRODUCTION)  # decided before
    clm = learner(registry, store, settings)
    assert clm.cycle is not None and clm.cycle.cycle_id == "clm-0007-x"
    assert sorted(clm.cycle.challengers()) == sorted(
        (m, v) for m, v in versions.items() if m != "xgboost"
    )
    assert set(clm.judge.rows) == set(clm.cycle.challengers())  # judged from now on
    assert "resumed" in clm.cycle.reason


def test_an_orphan_without_its_cycle_is_retired(registry_copy: Path, store, settings) -> None:
    registry = ModelRegistry(registry_copy, store)
    versions = shadow_copies(registry, "clm-9999-unknown")
    clm = learner(registry, store, settings)
    assert clm.cycle is None and clm.models.shadows == []
    assert all(registry.get(m, v).stage is ModelStage.RETIRED for m, v in versions.items())


def test_performance_compares_the_ensembles_hit_rate_with_its_own_reference(
    registry_copy: Path, store, settings
) -> None:
    registry = ModelRegistry(registry_copy, store)
    clm = learner(registry, store, settings)
    reference = registry.get(REFERENCE, registry.production_version(REFERENCE)).metrics
    assert clm.perf_reference == pytest.approx(reference["ensemble.test_call_hit_rate"])
    clm.perf_reference = 0.5  # a round figure for the rule below
    now = 100 * H
    clm.judge.calls.extend((now - H, True) for _ in range(3))
    clm.judge.calls.extend((now - H, False) for _ in range(7))
    trigger = clm._performance(now)  # 3/10 < 0.5 - 0.05
    assert trigger is not None and trigger[0] is Trigger.PERFORMANCE
    assert "ensemble call hit rate 3/10" in trigger[1]
    clm.judge.calls.clear()
    clm.judge.calls.extend((now - H, hit) for hit in [True] * 5 + [False] * 5)
    assert clm._performance(now) is None  # 0.5 is not degraded
    # calls older than the period do not count
    assert clm._performance(now + 10 * H) is None


def test_after_a_promotion_the_ensemble_earns_a_new_reference(
    registry_copy: Path, store, settings
) -> None:
    registry = ModelRegistry(registry_copy, store)
    clm = learner(registry, store, settings)
    cycle = Cycle("c", "manual", "test", 0, CycleStatus.SHADOW, reference_version="")
    clm._on_promotion(cycle, 10 * H)
    assert clm.perf_reference is None
    clm.judge.calls.extend((10 * H + 1 + k, k % 4 == 0) for k in range(PERF_BASELINE_CALLS))
    assert clm._performance(11 * H) is None  # the new reference is set, not judged against
    assert clm.perf_reference == pytest.approx(8 / PERF_BASELINE_CALLS)

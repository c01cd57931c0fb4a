"""The learning loop on replayed real data: the audit's three checks of it.

(a) policy updates occur after trades close, and later trades use the new policy;
(b) a manual retrain trains, shadow-tests and promotes or rejects by the rule; a forced-better
    challenger is promoted and a forced-worse one is not;
(c) time and drift triggers fire at the right event times.
"""

from __future__ import annotations

import gzip
import itertools
import math
from pathlib import Path

import pytest
from bytewax.testing import run_main

from dataflows.live import build_live_flow
from learning.clm import ClmConfig, ContinuousLearner
from learning.triggers import RetrainRequests, TriggerConfig
from models.base import MODEL_NAMES
from models.labels import LabelConfig
from models.registry import ModelRegistry
from schemas.learning import ShadowPrediction
from schemas.registry import ModelStage
from schemas.signals import ACTION_OF
from schemas.timeutil import from_ms, to_ms
from storage.store import open_store

QUIET = {"clm_enabled": False, "rl_update_interval": 10**9}


def _split_sample(sample: Path, tmp: Path) -> tuple[Path, Path]:
    """The bundled sample's two days as two files (a first replay, then a second)."""
    with gzip.open(sample, "rt") as f:
        header, *lines = f.readlines()
    days = [tmp / "day1.csv", tmp / "day2.csv"]
    for path, day in zip(days, ("2014-05-06", "2014-05-07"), strict=True):
        path.write_text(header + "".join(x for x in lines if x.startswith(day)))
    return days[0], days[1]


def test_policy_updates_occur_after_trades_close(
    live_settings, registry_copy: Path, sample_ticks: Path
) -> None:
    """(a): rl_updates rows, the registry's policy advanced, parameters moved, and the trades
    after an update record the new policy version."""
    s = live_settings.replace(
        ticks=str(sample_ticks),
        registry_path=registry_copy,
        learning=True,
        clm_enabled=False,
        rl_update_interval=6,
    )
    before = ModelRegistry(registry_copy).production_version("ppo")
    run_main(build_live_flow(s))
    store = open_store(s)
    try:
        updates = store.query("analytics/rl_updates")
        trades = store.query("analytics/trades")
        outcomes = store.query("queries/trade_outcomes_all")
    finally:
        store.close()
    assert len([u for u in updates if u["transitions"]]) >= 2
    for u in updates:  # too-stale transitions (QT_RL_V3_MAX_POLICY_LAG) are dropped, counted
        assert u["transitions"] + u["dropped"] == 6
        assert (u["param_change"] > 0) == (u["transitions"] > 0)
    after = ModelRegistry(registry_copy).production_version("ppo")
    assert after != before and after == updates[-1]["registry_version"]
    bumped = [int(u["policy_after"].rsplit("-v", 1)[1]) for u in updates if u["transitions"]]
    assert bumped == list(range(1, len(bumped) + 1))  # each update is one policy version
    first_update = min(u["ts"] for u in updates)
    later = [t for t in trades if t["entry_ts"] > first_update]
    assert later and all(not t["policy_version"].endswith("-v0") for t in later)
    assert len(outcomes) == len(trades)  # every trade joined, each once
    assert all(math.isfinite(o["reward"]) and o["joined_from"] == "stream" for o in outcomes)


def test_manual_retrain_is_trained_shadowed_and_decided(
    live_settings, registry_copy: Path, sample_ticks: Path, tmp_path: Path
) -> None:
    """(b): a manual request -> a clm_cycles row, shadow predictions, and a decision per model
    that follows the promotion rule."""
    day1, day2 = _split_sample(sample_ticks, tmp_path)
    s = live_settings.replace(
        ticks=str(day1),
        registry_path=registry_copy,
        learning=True,
        rl_update_interval=10**9,
        clm_blocking=True,
        clm_budget="quick",
        clm_shadow_min=100,
        clm_shadow_max=400,
    )
    run_main(build_live_flow(s.replace(clm_enabled=False)))  # day 1 fills the store
    RetrainRequests(s.clm_dir).submit("test: manual retrain", request_id=s.database)
    run_main(build_live_flow(s.replace(ticks=str(day2))))
    store = open_store(s)
    try:
        cycles = store.query("analytics/clm_cycles")
        promotions = store.query("analytics/promotions")
        shadows = store.query("analytics/shadow_vs_production")
    finally:
        store.close()
    manual = [c for c in cycles if c["trigger"] == "manual"]
    assert len(manual) == 1 and manual[0]["status"] == "decided"
    assert manual[0]["reason"].startswith("test: manual retrain")
    challengers = set(manual[0]["versions"])  # from scratch, and warm-started from production
    assert challengers == set(MODEL_NAMES) | {f"{m}.warm" for m in MODEL_NAMES}
    assert {r["model"] for r in shadows} == set(MODEL_NAMES)
    assert {p["model"] for p in promotions} == challengers  # every challenger decided
    registry = ModelRegistry(registry_copy)
    promoted_models = set()
    for p in promotions:
        model = p["model"].split(".")[0]
        assert p["reason"], p
        if p["decision"] == "promoted":  # proven: the interval's lower end clears the margin
            assert p["improvement_low"] > s.clm_promote_margin, p
            assert p["challenger_bps_per_bar"] >= p["production_bps_per_bar"], p
            assert model not in promoted_models  # at most one variant per model
            promoted_models.add(model)
        elif p["decision"] == "retired_not_better":  # proven not more than the margin better
            assert p["improvement_high"] <= s.clm_promote_margin, p
        elif p["decision"] == "retired_unproven":  # undecided at QT_CLM_SHADOW_MAX bars
            assert p["bars_compared"] >= s.clm_shadow_max, p
        else:
            assert p["decision"] == "superseded", p
        stage = registry.get(model, p["challenger_version"]).stage
        assert stage is (
            ModelStage.PRODUCTION if p["decision"] == "promoted" else ModelStage.RETIRED
        )


def test_forced_better_challenger_is_promoted_and_forced_worse_is_not(
    settings, registry_copy: Path, sample_ticks: Path
) -> None:
    """(b): challengers whose shadow votes are the realised labels (better) or always wrong
    (worse), judged by the continuous learner on the sample's bars in event order."""
    from learning.cycles import ClmDeps, Cycle, CycleRunner
    from models.labels import label_symbol
    from operators.ensemble import EnsembleConfig, RegistryModels, Scorer
    from operators.versions import ActiveModels
    from schemas.learning import ChallengerDecision, CycleStatus, ScoredBar
    from training.history import history_from_ticks

    s = settings.replace(registry_path=registry_copy)
    history = history_from_ticks(str(sample_ticks), s)
    label_cfg = LabelConfig.from_settings(s)
    registry = ModelRegistry(registry_copy)
    versions = {name: f"v{2:04d}" for name in MODEL_NAMES}  # published below
    forced = {"xgboost": "better", "lightgbm": "worse", "nhits": "better", "patchtst": "worse"}
    scorer = Scorer(RegistryModels(registry), EnsembleConfig())
    bars = []
    for symbol in history.symbols:
        warm = [v for v in history.vectors[symbol] if v.warm]
        labels, _, _ = label_symbol(warm, label_cfg)
        for v, y, sig in zip(warm, labels, scorer.score(warm), strict=True):
            shadow = (
                tuple(
                    ShadowPrediction(
                        name,
                        versions[name],
                        symbol,
                        v.ts,
                        ACTION_OF[int(y) if how == "better" else (int(y) + 1) % 3],
                        0.9,
                        False,
                    )
                    for name, how in forced.items()
                )
                if y >= 0
                else ()
            )
            bars.append(ScoredBar(symbol, to_ms(v.ts), v, sig, shadow))
    bars.sort(key=lambda b: (b.ts_ms, b.symbol))
    store = open_store(s)
    try:
        models = ActiveModels(registry, owned=True)
        runner = CycleRunner(
            ClmDeps(registry, store, None, RetrainRequests(s.clm_dir), s.clm_dir, None),
            label_cfg,
            0,
        )
        learner = ContinuousLearner(
            ClmConfig(triggers=TriggerConfig(-1, -1, -1)), label_cfg, runner, models
        )
        for name in MODEL_NAMES:  # challengers: copies of production, judged by their votes
            published = registry.publish(
                name,
                registry.load(name).save,
                stage=ModelStage.SHADOW,
                feature_set="fs",
                params={"cycle": "forced"},
            )
            assert published.version == versions[name]
            models.add_shadow(name, published.version)
        learner.cycle = Cycle(
            "forced",
            "manual",
            "forced challengers",
            bars[0].ts_ms,
            CycleStatus.SHADOW,
            versions=dict(versions),
        )
        for key in models.shadows:
            learner.judge.watch(key)
        records = [r for b in bars for r in learner.on_bar(b)]
    finally:
        store.close()
    (final,) = [r for r in records if r.status == CycleStatus.DECIDED]
    assert final.decisions == {
        name: ChallengerDecision.PROMOTED
        if how == "better"
        else ChallengerDecision.RETIRED_NOT_BETTER
        for name, how in forced.items()
    }
    for name, how in forced.items():
        stage = registry.get(name, versions[name]).stage
        assert stage is (ModelStage.PRODUCTION if how == "better" else ModelStage.RETIRED)
        assert models.production[name] == (versions[name] if how == "better" else "v0001")
    assert all(final.reasons[name] for name in forced)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trigger", "overrides", "period_h"),
    [
        (
            "drift",
            {
                "clm_drift_hours": 6.0,
                "clm_drift_threshold": -1e9,  # every check fires
                "clm_retrain_hours": 10_000.0,
            },
            6.0,
        ),
        ("time", {"clm_retrain_hours": 12.0, "clm_drift_threshold": 1e9}, 12.0),
    ],
)
def test_time_and_drift_triggers_fire_at_the_right_event_times(
    live_settings,
    registry_copy: Path,
    sample_ticks: Path,
    trigger: str,
    overrides: dict,
    period_h: float,
) -> None:
    """(c): in a two-day replay, the first cycle starts at the first bar close at or after
    one period past the first event time, and later ones a period after (time) or on the
    drift-check grid (drift)."""
    s = live_settings.replace(
        ticks=str(sample_ticks),
        registry_path=registry_copy,
        learning=True,
        rl_update_interval=10**9,
        clm_blocking=True,
        clm_budget="quick",
        clm_shadow_min=50,
        clm_shadow_max=200,
        replay_block_bytes=16_384,
        clm_perf_hours=10_000.0,
        **overrides,
    )
    run_main(build_live_flow(s))
    store = open_store(s)
    try:
        cycles = [c for c in store.query("analytics/clm_cycles") if c["trigger"] == trigger]
        first_bar = store.query("queries/first_bar_end")[0]["first_end"]
        checks = store.query("analytics/drift_checks")
    finally:
        store.close()
    assert len(cycles) >= 2, cycles
    if trigger == "drift":  # every check is recorded, raw and beyond its noise level
        assert {to_ms(c["started_ts"]) for c in cycles} <= {to_ms(c["ts"]) for c in checks}
        assert all(
            c["fired"]
            and math.isfinite(c["noise"])
            and c["rows"] >= 100
            and c["method"] == "seasonal"
            for c in checks
        )
    period = period_h * 3_600_000
    starts = [to_ms(c["started_ts"]) for c in cycles]
    t0 = to_ms(first_bar)
    # clocks start at the first event the CLM step sees (the first block's bars, <= 15 min
    # of this feed at 16 kB blocks), and a check fires at the first tick past its due time
    slack = 20 * 60_000
    assert t0 + period <= starts[0] <= t0 + period + slack
    for a, b in itertools.pairwise(starts):
        assert b - a >= period - slack, (from_ms(a), from_ms(b))
        if trigger == "drift":  # a fixed grid: start + k x period
            assert ((b - t0) % period) < slack or (period - (b - t0) % period) < slack
    assert all(c["status"] in ("decided", "shadow") for c in cycles), cycles

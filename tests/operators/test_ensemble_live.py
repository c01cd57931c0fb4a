"""The ensemble with registry models: every bar gets a signal, promotions take effect."""

from __future__ import annotations

from pathlib import Path

from bytewax.testing import run_main

from dataflows.live import build_live_flow
from models.base import MODEL_NAMES
from models.registry import ModelRegistry
from operators.ensemble import EnsembleConfig, RegistryModels, Scorer
from schemas.registry import ModelStage
from settings import Settings
from storage.store import open_store
from training.history import history_from_ticks


def test_live_flow_writes_a_signal_for_every_bar_with_four_votes(
    settings, sample_ticks: Path, trained_registry: Path, capsys
) -> None:
    s = settings.replace(ticks=str(sample_ticks), registry_path=trained_registry, learning=False)
    run_main(build_live_flow(s))
    assert "signals" in capsys.readouterr().out
    store = open_store(s)
    try:
        bars = store.query("queries/table_counts")[0]["bars"]
        rows = store.query("queries/signal_votes")
    finally:
        store.close()
    assert len(rows) == bars == 5_722
    assert len([r for r in rows if r["warm"]]) > 5_500
    for r in rows:  # every bar, warm-up included, carries the four votes
        assert r["models"] == list(MODEL_NAMES)
        assert all(v == "v0001" for v in r["versions"])
        assert len(r["actions"]) == len(r["confidences"]) == 4
    assert {r["action"] for r in rows} <= {"BUY", "SELL", "HOLD"}
    assert all(r["action"] == "HOLD" and r["consensus"] == "warmup" for r in rows if not r["warm"])


def test_a_promoted_version_votes_from_the_next_bar(
    registry_copy: Path, sample_ticks: Path
) -> None:
    reg = ModelRegistry(registry_copy)
    vectors = [
        v
        for v in history_from_ticks(str(sample_ticks), Settings.from_env({})).vectors["FXCM:EURUSD"]
        if v.warm
    ][:3]
    scorer = Scorer(RegistryModels(reg), EnsembleConfig())
    before = scorer.score(vectors[:1])[0]
    assert before.vote("lightgbm").version == "v0001"
    new = reg.publish(
        "lightgbm", reg.load("lightgbm").save, stage=ModelStage.SHADOW, feature_set="fs"
    )
    assert scorer.score(vectors[1:2])[0].vote("lightgbm").version == "v0001"  # shadow: no
    reg.set_stage("lightgbm", new.version, ModelStage.PRODUCTION)
    after = scorer.score(vectors[2:3])[0]
    assert after.vote("lightgbm").version == new.version == "v0002"
    assert after.vote("xgboost").version == "v0001"

"""Registry: round trips, tamper refusal, atomic publish, stage changes, the table record,
rollbacks, the change counter, changes recorded after the fact, stages rebuilt from rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.dataset import build_training_set, time_split
from models.labels import LabelConfig
from models.registry import (
    IntegrityError,
    ModelRegistry,
    NoPreviousProduction,
    RegistryError,
    StagesMissing,
)
from models.trees import LightGBMModel, TreeParams, XGBoostModel
from operators.sizing import PolicySource
from operators.versions import ActiveModels
from schemas.features import FEATURE_SET_VERSION
from schemas.registry import ModelStage
from settings import Settings
from training.history import history_from_ticks


@pytest.fixture(scope="module")
def trained(sample_ticks: Path):
    s = Settings.from_env({})
    data = build_training_set(
        history_from_ticks(str(sample_ticks), s), LabelConfig.from_settings(s)
    )
    train, val, test = time_split(data.ts_ms, gap=20)
    params = TreeParams(max_rounds=40)
    models = {
        "xgboost": XGBoostModel.train(data, train, val, params),
        "lightgbm": LightGBMModel.train(data, train, val, params),
    }
    return models, [data.vectors[i] for i in test]


@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_round_trip_gives_identical_predictions(tmp_path, trained, name) -> None:
    models, vectors = trained
    reg = ModelRegistry(tmp_path)
    mv = reg.publish(
        name,
        models[name].save,
        stage=ModelStage.PRODUCTION,
        feature_set=FEATURE_SET_VERSION,
        metrics={"macro_f1": 0.4},
    )
    assert (mv.version, mv.stage) == ("v0001", ModelStage.PRODUCTION)
    loaded = reg.load(name)
    assert loaded.predict(vectors) == models[name].predict(vectors)


def test_tampered_artifact_is_refused(tmp_path, trained) -> None:
    reg = ModelRegistry(tmp_path)
    mv = reg.publish(
        "xgboost",
        trained[0]["xgboost"].save,
        stage=ModelStage.PRODUCTION,
        feature_set=FEATURE_SET_VERSION,
    )
    artifact = tmp_path / "xgboost" / mv.version / "model.ubj"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.ubj has SHA-256 .* refusing"):
        reg.load("xgboost")
    (tmp_path / "xgboost" / mv.version / "extra.pkl").write_bytes(b"x")
    with pytest.raises(IntegrityError):
        reg.verified_path("xgboost", mv.version)


def test_failed_publish_leaves_no_version(tmp_path) -> None:
    reg = ModelRegistry(tmp_path)

    def broken_writer(directory: Path) -> list[Path]:
        (directory / "half.bin").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        reg.publish("xgboost", broken_writer, stage=ModelStage.PRODUCTION, feature_set="fs")
    assert reg.versions("xgboost") == []
    assert [p.name for p in (tmp_path / "xgboost").iterdir()] == []


def test_promotion_retires_the_previous_production_and_is_recorded(
    tmp_path, trained, store
) -> None:
    reg = ModelRegistry(tmp_path, store)
    model = trained[0]["lightgbm"]
    v1 = reg.publish("lightgbm", model.save, stage=ModelStage.PRODUCTION, feature_set="fs")
    v2 = reg.publish("lightgbm", model.save, stage=ModelStage.SHADOW, feature_set="fs")
    assert reg.production_version("lightgbm") == v1.version
    reg.set_stage("lightgbm", v2.version, ModelStage.PRODUCTION)
    assert reg.production_version("lightgbm") == v2.version
    assert reg.get("lightgbm", v1.version).stage is ModelStage.RETIRED
    assert reg.get("lightgbm", v2.version).promoted_at is not None
    rows = {(r["version"], r["stage"]) for r in store.query("queries/model_registry")}
    assert rows == {(v1.version, "retired"), (v2.version, "production")}
    with pytest.raises(RegistryError):
        reg.set_stage("lightgbm", "v0099", ModelStage.PRODUCTION)


def _tiny(directory: Path) -> list[Path]:
    (directory / "model.bin").write_bytes(b"weights")
    return [directory / "model.bin"]


REPAIR = (
    "restore it from a backup, or rebuild it from the model_registry table with: "
    "python -m cli.registry repair"
)


def test_versions_without_readable_stages_are_an_error_not_an_empty_registry(tmp_path) -> None:
    reg = ModelRegistry(tmp_path)
    reg.publish("xgboost", _tiny, stage=ModelStage.PRODUCTION, feature_set="fs")
    assert (tmp_path / "xgboost" / "stages.json").is_file()
    reg.publish("xgboost", _tiny, stage=ModelStage.SHADOW, feature_set="fs")
    (tmp_path / "xgboost" / "stages.json").unlink()
    fresh = ModelRegistry(tmp_path)
    with pytest.raises(StagesMissing) as missing:
        fresh.production_version("xgboost")
    assert str(missing.value) == (
        f"model registry {tmp_path / 'xgboost'}: stages.json is "
        f"missing but versions v0001..v0002 exist; {REPAIR}"
    )
    with pytest.raises(StagesMissing):  # nothing is written over it either
        fresh.publish("xgboost", _tiny, stage=ModelStage.PRODUCTION, feature_set="fs")
    assert fresh.version_names("xgboost") == ["v0001", "v0002"]
    (tmp_path / "xgboost" / "stages.json").write_text('{"v0001": {"stage"')
    with pytest.raises(
        StagesMissing,
        match=r"stages\.json is corrupt \(.*\) but versions "
        r"v0001\.\.v0002 exist; restore it from a backup",
    ):
        ModelRegistry(tmp_path).versions("xgboost")
    assert ModelRegistry(tmp_path).production_version("lightgbm") is None  # no versions: fine


def test_the_live_flow_bootstraps_only_an_empty_registry(settings, registry_copy) -> None:
    import json

    from dataflows.live import RegistryIncomplete, ensure_models

    s = settings.replace(registry_path=registry_copy)
    ensure_models(s)  # complete: nothing to do
    stages = registry_copy / "nhits" / "stages.json"
    stages.write_text(
        json.dumps(
            {v: {**e, "stage": "retired"} for v, e in json.loads(stages.read_text()).items()}
        )
    )
    before = {p: p.read_text() for p in registry_copy.glob("*/stages.json")}
    with pytest.raises(RegistryIncomplete) as incomplete:
        ensure_models(s)
    assert str(incomplete.value).startswith(
        f"model registry {registry_copy}: nhits has no production version (v0001 on disk); "
        "nothing was retrained"
    )
    assert "python -m cli.registry repair" in str(incomplete.value)
    (registry_copy / "xgboost" / "stages.json").unlink()
    with pytest.raises(
        StagesMissing,
        match=r"xgboost: stages\.json is missing but version "
        r"v0001 exists",
    ):
        ensure_models(s)
    before.pop(registry_copy / "xgboost" / "stages.json")
    assert {p: p.read_text() for p in registry_copy.glob("*/stages.json")} == before


def test_rollback_goes_back_one_production_version_at_a_time(tmp_path) -> None:
    reg = ModelRegistry(tmp_path)
    for _ in range(3):  # v0001, v0002, v0003 production in turn
        reg.publish("xgboost", _tiny, stage=ModelStage.PRODUCTION, feature_set="fs")
    reg.publish("xgboost", _tiny, stage=ModelStage.SHADOW, feature_set="fs")  # never production
    before = reg.manual_changes()
    assert reg.roll_back("xgboost", "manual: test").version == "v0002"
    assert reg.get("xgboost", "v0003").stage is ModelStage.RETIRED
    assert reg.stages("xgboost")["v0003"]["rolled_back"] is True
    assert reg.roll_back("xgboost", "manual: test").version == "v0001"  # not forth to v0003
    with pytest.raises(NoPreviousProduction, match="no earlier production version"):
        reg.roll_back("xgboost", "manual: test")
    assert reg.manual_changes() == before + 2
    reg.set_stage("xgboost", "v0003", ModelStage.PRODUCTION, "manual: test", manual=True)
    assert "rolled_back" not in reg.stages("xgboost")["v0003"]
    assert reg.previous_production("xgboost") == "v0001"  # v0002 was rolled back from
    history = reg.history("xgboost", "v0003")
    assert [(h["stage"], h["by"]) for h in history] == [
        ("production", "published"),
        ("retired", "manual: test"),
        ("production", "manual: test"),
    ]
    assert [(h["stage"], h["by"]) for h in reg.history("xgboost", "v0001")] == [
        ("production", "published"),
        ("retired", "published"),  # v0002 was published
        ("production", "manual: test"),
        ("retired", "manual: test"),
    ]


def test_a_rolled_back_version_answers_for_its_publish_key_no_more(tmp_path) -> None:
    reg = ModelRegistry(tmp_path)
    reg.publish("ppo", _tiny, stage=ModelStage.PRODUCTION, feature_set="fs", key="ppo-L-v0")
    v2 = reg.publish("ppo", _tiny, stage=ModelStage.PRODUCTION, feature_set="fs", key="ppo-L-v1")
    again = reg.publish("ppo", _tiny, stage=ModelStage.PRODUCTION, feature_set="fs", key="ppo-L-v1")
    assert again.version == v2.version  # a replay reuses the version
    ModelRegistry(tmp_path).roll_back("ppo", "manual: test")  # another registry (process)
    # the learner continues from v0001: its next update is a new version, not the retired one
    v3 = reg.publish("ppo", _tiny, stage=ModelStage.PRODUCTION, feature_set="fs", key="ppo-L-v1")
    assert (v3.version, v3.stage) == ("v0003", ModelStage.PRODUCTION)
    assert ModelRegistry(tmp_path).keyed("ppo")["ppo-L-v1"] == "v0003"  # a replay finds it


def test_every_change_moves_the_generation_and_manual_ones_the_count(tmp_path) -> None:
    reg = ModelRegistry(tmp_path)
    assert reg.generation() is None and reg.manual_changes() == 0
    reg.publish("xgboost", _tiny, stage=ModelStage.PRODUCTION, feature_set="fs")
    first = reg.generation()
    assert first is not None and reg.manual_changes() == 0
    reg.publish("xgboost", _tiny, stage=ModelStage.SHADOW, feature_set="fs")
    second = reg.generation()
    assert second != first and reg.manual_changes() == 0
    other = ModelRegistry(tmp_path)
    other.set_stage("xgboost", "v0002", ModelStage.RETIRED, "manual: test", manual=True)
    assert reg.generation() not in (first, second) and reg.manual_changes() == 1
    assert reg.last_manual_change().startswith("xgboost: manual: test at ")


def test_changes_made_without_a_store_are_recorded_later(tmp_path, store) -> None:
    ModelRegistry(tmp_path).publish("xgboost", _tiny, stage=ModelStage.PRODUCTION, feature_set="fs")
    offline = ModelRegistry(tmp_path, spool=True)
    offline.publish("xgboost", _tiny, stage=ModelStage.PRODUCTION, feature_set="fs")
    assert (tmp_path / "unrecorded.jsonl").read_text().count("\n") == 2  # v0002, v0001
    assert store.query("queries/model_registry") == []
    online = ModelRegistry(tmp_path, store)
    assert online.flush_records() == 2 and online.flush_records() == 0
    rows = {
        r["version"]: r for r in store.query("queries/model_registry_versions", model="xgboost")
    }
    assert {v: r["stage"] for v, r in rows.items()} == {"v0001": "retired", "v0002": "production"}
    assert rows["v0002"]["promoted_at"] == online.get("xgboost", "v0002").promoted_at
    assert not (tmp_path / "unrecorded.jsonl").exists()


def test_stages_from_records_keeps_what_the_table_says_and_notes_the_rest() -> None:
    from datetime import UTC, datetime

    from models.registry import stages_from_records

    t1, t2 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)
    rows = [
        {"version": "v0001", "stage": "production", "promoted_at": t1},
        {"version": "v0002", "stage": "production", "promoted_at": t2},
        {"version": "v0003", "stage": "shadow", "promoted_at": None},
        {"version": "v0009", "stage": "retired", "promoted_at": t1},
    ]
    stages, notes = stages_from_records(["v0001", "v0002", "v0003", "v0004"], rows)
    assert stages == {
        "v0001": {"stage": "retired", "promoted_at": "2024-01-01T00:00:00.000Z"},
        "v0002": {"stage": "production", "promoted_at": "2024-02-01T00:00:00.000Z"},
        "v0003": {"stage": "shadow"},
        "v0004": {"stage": "candidate"},
    }
    assert notes == [
        "v0004: no model_registry row; kept as a candidate",
        "v0009: recorded as retired but not on disk; left out",
        "v0001: recorded as production too; retired (promoted earlier than v0002)",
    ]


def test_the_engine_adopts_a_manual_change_at_its_next_poll(tmp_path) -> None:
    """operators.versions + sizing: a learner's change made elsewhere is followed (learning
    off) but not adopted by an engine that owns its versions; a manual rollback is adopted by
    both at the next poll, and a pinned PPO policy is re-pinned to the registry's."""
    reg = ModelRegistry(tmp_path)
    for model in ("xgboost", "ppo"):
        for _ in range(2):  # v0002 production, v0001 retired
            reg.publish(model, _tiny, stage=ModelStage.PRODUCTION, feature_set="fs")
    following = ActiveModels(reg, owned=False, names=("xgboost",))
    owned = ActiveModels(reg, owned=True, names=("xgboost",))
    pinned, unpinned = PolicySource(reg, "v0002"), PolicySource(reg)
    assert following.poll() is False and owned.poll() is False  # nothing changed
    other = ModelRegistry(tmp_path)  # another process: a learner, then the registry CLI
    other.publish("xgboost", _tiny, stage=ModelStage.SHADOW, feature_set="fs")
    assert following.poll() is False and following.shadows == [("xgboost", "v0003")]
    assert owned.poll() is False and owned.shadows == []  # owned: only its learner's changes
    for model in ("xgboost", "ppo"):
        other.roll_back(model, "manual: test")
    assert owned.production == {"xgboost": "v0002"}  # not before the next poll
    assert owned.poll() is True and owned.production == {"xgboost": "v0001"}
    assert following.poll() is True and following.production == {"xgboost": "v0001"}
    assert owned.poll() is False and following.poll() is False
    for policy in (pinned, unpinned):
        policy.adopt()  # what the engine does when poll() says True
        assert policy.version == "v0001"
    assert (pinned.pinned, unpinned.pinned) == ("v0001", None)
    assert owned.snapshot()["manual"] == 2

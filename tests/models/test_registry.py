"""Registry: round trips, tamper refusal, atomic publish, stage changes, the table record."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.dataset import build_training_set, history_from_ticks, time_split
from models.labels import LabelConfig
from models.registry import IntegrityError, ModelRegistry, RegistryError, StagesMissing
from models.trees import LightGBMModel, TreeParams, XGBoostModel
from operators.features import FEATURE_SET_VERSION
from schemas.registry import Stage
from settings import Settings


@pytest.fixture(scope="module")
def trained(sample_ticks: Path):
    s = Settings.from_env({})
    data = build_training_set(history_from_ticks(str(sample_ticks), s),
                              LabelConfig.from_settings(s))
    train, val, test = time_split(data.ts_ms, gap=20)
    params = TreeParams(max_rounds=40)
    models = {"xgboost": XGBoostModel.train(data, train, val, params),
              "lightgbm": LightGBMModel.train(data, train, val, params)}
    return models, [data.vectors[i] for i in test]


@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_round_trip_gives_identical_predictions(tmp_path, trained, name) -> None:
    models, vectors = trained
    reg = ModelRegistry(tmp_path)
    mv = reg.publish(name, models[name].save, stage=Stage.PRODUCTION,
                     feature_set=FEATURE_SET_VERSION, metrics={"macro_f1": 0.4})
    assert (mv.version, mv.stage) == ("v0001", Stage.PRODUCTION)
    loaded = reg.load(name)
    assert loaded.predict(vectors) == models[name].predict(vectors)


def test_tampered_artifact_is_refused(tmp_path, trained) -> None:
    reg = ModelRegistry(tmp_path)
    mv = reg.publish("xgboost", trained[0]["xgboost"].save, stage=Stage.PRODUCTION,
                     feature_set=FEATURE_SET_VERSION)
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
        reg.publish("xgboost", broken_writer, stage=Stage.PRODUCTION, feature_set="fs")
    assert reg.versions("xgboost") == []
    assert [p.name for p in (tmp_path / "xgboost").iterdir()] == []


def test_promotion_retires_the_previous_production_and_is_recorded(tmp_path, trained,
                                                                    store) -> None:
    reg = ModelRegistry(tmp_path, store)
    model = trained[0]["lightgbm"]
    v1 = reg.publish("lightgbm", model.save, stage=Stage.PRODUCTION, feature_set="fs")
    v2 = reg.publish("lightgbm", model.save, stage=Stage.SHADOW, feature_set="fs")
    assert reg.production_version("lightgbm") == v1.version
    reg.set_stage("lightgbm", v2.version, Stage.PRODUCTION)
    assert reg.production_version("lightgbm") == v2.version
    assert reg.get("lightgbm", v1.version).stage is Stage.RETIRED
    assert reg.get("lightgbm", v2.version).promoted_at is not None
    rows = {(r["version"], r["stage"]) for r in store.query("queries/model_registry")}
    assert rows == {(v1.version, "retired"), (v2.version, "production")}
    with pytest.raises(RegistryError):
        reg.set_stage("lightgbm", "v0099", Stage.PRODUCTION)


def _tiny(directory: Path) -> list[Path]:
    (directory / "model.bin").write_bytes(b"weights")
    return [directory / "model.bin"]


REPAIR = ("restore it from a backup, or rebuild it from the model_registry table with: "
          "python -m cli.registry repair")


def test_versions_without_readable_stages_are_an_error_not_an_empty_registry(tmp_path) -> None:
    reg = ModelRegistry(tmp_path)
    reg.publish("xgboost", _tiny, stage=Stage.PRODUCTION, feature_set="fs")
    assert (tmp_path / "xgboost" / "stages.json").is_file()
    reg.publish("xgboost", _tiny, stage=Stage.SHADOW, feature_set="fs")
    (tmp_path / "xgboost" / "stages.json").unlink()
    fresh = ModelRegistry(tmp_path)
    with pytest.raises(StagesMissing) as missing:
        fresh.production_version("xgboost")
    assert str(missing.value) == (f"model registry {tmp_path / 'xgboost'}: stages.json is "
                                  f"missing but versions v0001..v0002 exist; {REPAIR}")
    with pytest.raises(StagesMissing):  # nothing is written over it either
        fresh.publish("xgboost", _tiny, stage=Stage.PRODUCTION, feature_set="fs")
    assert fresh.version_names("xgboost") == ["v0001", "v0002"]
    (tmp_path / "xgboost" / "stages.json").write_text('{"v0001": {"stage"')
    with pytest.raises(StagesMissing, match=r"stages\.json is corrupt \(.*\) but versions "
                       r"v0001\.\.v0002 exist; restore it from a backup"):
        ModelRegistry(tmp_path).versions("xgboost")
    assert ModelRegistry(tmp_path).production_version("lightgbm") is None  # no versions: fine


def test_the_live_flow_bootstraps_only_an_empty_registry(settings, registry_copy) -> None:
    import json

    from dataflows.live import RegistryIncomplete, ensure_models

    s = settings.replace(registry_path=registry_copy)
    ensure_models(s)  # complete: nothing to do
    stages = registry_copy / "nhits" / "stages.json"
    stages.write_text(json.dumps({v: {**e, "stage": "retired"}
                                  for v, e in json.loads(stages.read_text()).items()}))
    before = {p: p.read_text() for p in registry_copy.glob("*/stages.json")}
    with pytest.raises(RegistryIncomplete) as incomplete:
        ensure_models(s)
    assert str(incomplete.value).startswith(
        f"model registry {registry_copy}: nhits has no production version (v0001 on disk); "
        "nothing was retrained")
    assert "python -m cli.registry repair" in str(incomplete.value)
    (registry_copy / "xgboost" / "stages.json").unlink()
    with pytest.raises(StagesMissing, match=r"xgboost: stages\.json is missing but version "
                       r"v0001 exists"):
        ensure_models(s)
    before.pop(registry_copy / "xgboost" / "stages.json")
    assert {p: p.read_text() for p in registry_copy.glob("*/stages.json")} == before

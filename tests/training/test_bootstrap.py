"""Bootstrap: all five artifacts trained and registered from a real file, metrics printed."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from models.base import MODEL_NAMES, POLICY_NAME
from models.registry import ModelRegistry
from schemas.registry import ModelStage
from settings import Settings
from training.bootstrap import BootstrapConfig, bootstrap

BITTREX = "candles/bittrex_10altBTC_1m_2018-01-20.csv.gz"


@pytest.mark.slow
def test_bootstrap_on_ten_symbols_of_candles(shared_data: Path, tmp_path: Path, store) -> None:
    """10 symbols of one-minute candles: the first 4 of the Bittrex file's 10 days (the whole
    file trains the same way, 2.5 times longer)."""
    with gzip.open(shared_data / BITTREX, "rt") as src:
        header, *rows = src.read().splitlines()
    first = [r for r in rows if r < "2018-01-24"]  # rows start with their ISO time
    ticks = tmp_path / "bittrex_first_days.csv.gz"
    ticks.write_bytes(gzip.compress("\n".join([header, *first, ""]).encode()))
    reg = ModelRegistry(tmp_path / "registry", store)
    out = io.StringIO()
    report = bootstrap(
        Settings.from_env({}),
        reg,
        ticks=str(ticks),
        config=BootstrapConfig.quick(),
        out=out,
        progress=False,
    )
    table = out.getvalue()
    print(table)
    for name in (*MODEL_NAMES, POLICY_NAME):
        assert reg.production_version(name) == "v0001", name
        assert report.versions[name].stage is ModelStage.PRODUCTION
        assert name in table
    for name in ("xgboost", "lightgbm"):  # the trees beat a constant-class guess
        assert report.metrics[name]["test_macro_f1"] > report.metrics["baseline"]["test_macro_f1"]
    rows = store.query("queries/model_registry")
    assert {r["model"] for r in rows} == {*MODEL_NAMES, POLICY_NAME, "feature_reference"}
    assert all(r["data_from"] is not None for r in rows)
    assert all(r["metrics"] for r in rows if r["model"] != "feature_reference")
    assert len({r.split(",")[1] for r in first}) == 10
    # 60% of the labelled bars, less the purged ones
    assert 0.55 * len(first) < report.rows["train"] < 0.6 * len(first)


def test_registry_of_the_session_has_every_model(trained_registry: Path) -> None:
    reg = ModelRegistry(trained_registry)
    assert reg.has_production((*MODEL_NAMES, POLICY_NAME))
    for name in (*MODEL_NAMES, POLICY_NAME):
        reg.verified_path(name, reg.production_version(name))

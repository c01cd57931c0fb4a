"""Shared fixtures.

Real market data comes from ``../shared/data`` beside the repository (or ``QT_TEST_DATA``).
chDB allows one data path per process, so the whole pytest session shares one embedded
store directory and every test that writes gets a fresh database in it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from settings import PROJECT_ROOT, Settings
from storage.store import open_store

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _shared_data() -> Path:
    candidates = [
        os.environ.get("QT_TEST_DATA", ""),
        PROJECT_ROOT.parent / "shared" / "data",
        Path("/work/shared/data"),
    ]
    for c in candidates:
        if c and Path(c, "SOURCES.md").is_file():
            return Path(c)
    raise RuntimeError("real market data not found: set QT_TEST_DATA to ../shared/data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _shared_data()


@pytest.fixture(scope="session")
def fxcm_quotes(shared_data: Path) -> Path:
    return shared_data / "quotes" / "fxcm_EURUSD-NZDUSD_2014-05_quotes.csv.gz"


@pytest.fixture(scope="session")
def sample_ticks() -> Path:
    from settings import SAMPLE_TICKS

    return SAMPLE_TICKS


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one QT_HOME (and so the one chDB path) of this pytest process."""
    return tmp_path_factory.mktemp("qt_home")


@pytest.fixture
def settings(session_home: Path) -> Settings:
    """Settings on the session store, with a database of this test's own."""
    return Settings.from_env({}, home=session_home, database=f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(settings: Settings) -> Iterator:
    s = open_store(settings)
    yield s
    s.close()


@pytest.fixture
def run_market():
    """Run the live flow's market-data graph over ``QT_TICKS``-style input, in process.

    Returns (bars, feature vectors, validated blocks) as the dataflow emitted them.
    """
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, run_main

    from dataflows import graphs

    def run(ticks: str, **overrides):
        s = Settings.from_env({}, ticks=ticks, **overrides)
        flow = Dataflow("market_test")
        md = graphs.market_data(flow, s)
        bars: list = []
        vectors: list = []
        validated: list = []
        op.output("bars_out", op.flat_map("b", md.bars, lambda kv: kv[1].bars), TestingSink(bars))
        op.output(
            "features_out",
            op.flat_map("f", md.features, lambda kv: kv[1].vectors),
            TestingSink(vectors),
        )
        op.output("validated_out", md.validated, TestingSink(validated))
        run_main(flow)
        return bars, vectors, validated

    return run


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory, sample_ticks: Path) -> Path:
    """A registry with all five production models, quickly trained on the bundled sample.

    Shared by the session: tests that change stages must work on a copy (``registry_copy``).
    """
    from models.registry import ModelRegistry
    from training.bootstrap import BootstrapConfig, bootstrap

    root = tmp_path_factory.mktemp("registry")
    s = Settings.from_env({}, registry_path=root)
    with open(os.devnull, "w") as quiet:
        bootstrap(
            s,
            ModelRegistry(root),
            ticks=str(sample_ticks),
            config=BootstrapConfig.quick(),
            out=quiet,
            progress=False,
        )
    return root


@pytest.fixture
def registry_copy(trained_registry: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "registry"
    shutil.copytree(trained_registry, target)
    return target


@pytest.fixture
def live_settings(settings: Settings, trained_registry: Path) -> Settings:
    """Settings for running the live flow: the session store and the trained registry, with
    the learning graph off (it would publish new versions into the shared registry); tests of
    the learning loop turn it on with a copy of the registry."""
    return settings.replace(registry_path=trained_registry, learning=False)

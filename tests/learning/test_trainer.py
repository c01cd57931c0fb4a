"""The CLM training cycle on the bundled FXCM sample (real quotes, 2 symbols, 2 days).

One cycle runs in this process (:func:`train_all`) and one in a spawned child
(:class:`TrainingJob`), both with the tiny :meth:`CycleConfig.quick` budget on the same history:
the artifacts must load and reproduce the recorded metrics, and the child must produce the same
models as the parent. These check plumbing and rules, not forecasting skill.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from learning.trainer import (
    CycleConfig,
    CycleResult,
    TrainingError,
    TrainingJob,
    concat_rows,
    copy_writer,
    history_before,
    recent_history,
    train_all,
)
from models.base import MODEL_NAMES
from models.dataset import History, TrainingSet, build_training_set, history_from_ticks, time_split
from models.labels import LabelConfig
from models.metrics import classification_report
from models.registry import ModelRegistry, loader
from models.sequence import NHITSParams, PatchTSTParams
from operators.features import FEATURE_SET_VERSION
from schemas.registry import Stage
from schemas.signals import CLASS_OF, Action
from schemas.timeutil import to_ms
from settings import SAMPLE_TICKS, Settings

LABELS = LabelConfig.from_settings(Settings.from_env({}))
EXTRA_EARLY, EXTRA_LATE = 30, 20


@pytest.fixture(scope="module")
def history() -> History:
    return history_from_ticks(str(SAMPLE_TICKS), Settings.from_env({}))


@pytest.fixture(scope="module")
def extra_rows(history: History) -> TrainingSet:
    """Stand-ins for closed trades: the first 30 labelled rows (before the cut, so they train)
    and the last 20 (after it, so they must be held out)."""
    data = build_training_set(history, LABELS)
    idx = np.r_[np.arange(EXTRA_EARLY), np.arange(len(data) - EXTRA_LATE, len(data))]
    return data.subset(idx)


@pytest.fixture(scope="module")
def local_cycle(history: History, extra_rows: TrainingSet,
                tmp_path_factory: pytest.TempPathFactory) -> CycleResult:
    return train_all(history, extra_rows, LABELS, CycleConfig.quick(),
                     tmp_path_factory.mktemp("local"))


@pytest.fixture(scope="module")
def child_cycle(history: History, extra_rows: TrainingSet,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[CycleResult, float]:
    """The same cycle through a TrainingJob; also how long start() took to return."""
    job = TrainingJob()
    try:
        t0 = time.perf_counter()
        job.start(history, extra_rows, LABELS, CycleConfig.quick(),
                  tmp_path_factory.mktemp("child"))
        start_seconds = time.perf_counter() - t0
        assert job.running
        return poll_until(job, timeout=180), start_seconds
    finally:
        job.shutdown()


def poll_until(job: TrainingJob, timeout: float) -> CycleResult:
    """Poll as a dataflow step would, until a result (or the child's error) arrives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = job.poll()
        if result is not None:
            assert not job.running
            return result
        time.sleep(0.05)
    raise AssertionError(f"no result within {timeout} s")


def validation_split(history: History) -> tuple[TrainingSet, np.ndarray, np.ndarray]:
    data = build_training_set(history, LABELS)
    val_fraction = CycleConfig.quick().val_fraction
    train, val, _ = time_split(data.ts_ms, (1 - val_fraction, val_fraction, 0.0),
                               gap=LABELS.horizon * len(history.symbols))
    return data, train, val


def test_train_all_writes_loadable_artifacts_that_reproduce_the_metrics(
        local_cycle: CycleResult, history: History) -> None:
    data, _, val = validation_split(history)
    vectors = [data.vectors[i] for i in val]
    assert local_cycle.pid == os.getpid()
    for name in MODEL_NAMES:
        directory = local_cycle.paths[name]
        assert directory == local_cycle.out_dir / name
        assert (directory / "params.json").is_file()
        model = loader(name)(directory)  # each class's own load(), no pickles
        preds = model.predict(vectors)
        assert len(preds) == len(vectors)
        assert all(isinstance(a, Action) and 0.0 <= c <= 1.0 for a, c in preds)
        pred = np.array([CLASS_OF[a] for a, _ in preds])
        report = classification_report(data.y[val], pred, data.forward_return[val],
                                       data.threshold[val])
        recorded = local_cycle.metrics[name]
        assert set(recorded) == {"val_accuracy", "val_macro_f1", "val_calls",
                                 "val_call_hit_rate", "val_n"}
        for key, value in report.items():
            assert recorded[f"val_{key}"] == pytest.approx(value), (name, key)
        assert local_cycle.seconds[name] > 0
    assert 0 < local_cycle.metrics["baseline"]["val_macro_f1"] < 1
    assert local_cycle.seconds["total"] >= sum(local_cycle.seconds[n] for n in MODEL_NAMES)


def test_train_all_reports_rows_and_the_data_range(local_cycle: CycleResult,
                                                   history: History) -> None:
    data, train, val = validation_split(history)
    rows = local_cycle.rows
    assert (rows["train"], rows["val"], rows["symbols"]) == (len(train), len(val), 2)
    assert local_cycle.train_from_ms == data.ts_ms[train].min()
    assert local_cycle.train_to_ms == data.ts_ms[train].max()
    assert local_cycle.train_to_ms < local_cycle.val_from_ms == data.ts_ms[val].min()
    assert local_cycle.val_to_ms == data.ts_ms[val].max()
    # The trade rows before the cut reached the trees; those after it were held out.
    assert (rows["extra"], rows["extra_held_out"]) == (EXTRA_EARLY, EXTRA_LATE)
    for name in ("xgboost", "lightgbm"):
        doc = json.loads((local_cycle.paths[name] / "params.json").read_text())
        assert doc["train_rows"] == len(train) + EXTRA_EARLY
    # The sequence models saw their budget of bars, shared by the symbols, all before the cut.
    assert rows["seq_bars"] == CycleConfig.quick().seq_max_bars
    doc = json.loads((local_cycle.paths["nhits"] / "params.json").read_text())
    assert doc["last_train_ts_ms"] < local_cycle.val_from_ms


def test_train_all_refuses_a_directory_with_artifacts(history: History,
                                                      local_cycle: CycleResult) -> None:
    with pytest.raises(FileExistsError, match="fresh out_dir"):
        train_all(history, None, LABELS, CycleConfig.quick(), local_cycle.out_dir)


def test_job_trains_in_a_child_process_and_returns_the_same_models(
        child_cycle: tuple[CycleResult, float], local_cycle: CycleResult) -> None:
    result, start_seconds = child_cycle
    assert start_seconds < 2.0, "start() must return at once"
    assert result.pid != os.getpid()
    assert result.wall_seconds is not None and result.wall_seconds >= result.seconds["total"]
    assert result.rows == local_cycle.rows
    # Same data, config and seeds: the child's models score exactly as the parent's.
    assert result.metrics == local_cycle.metrics
    for name in MODEL_NAMES:
        assert sorted(p.name for p in result.paths[name].iterdir()) == \
            sorted(p.name for p in local_cycle.paths[name].iterdir())


def test_child_error_surfaces_from_poll(tmp_path: Path) -> None:
    job = TrainingJob()
    try:
        job.start(History(), None, LABELS, CycleConfig.quick(), tmp_path)
        with pytest.raises(TrainingError, match="0 labelled rows") as err:
            poll_until(job, timeout=120)
        assert isinstance(err.value.__cause__, ValueError)
        assert not job.running and job.poll() is None  # reported once; the job is free again
    finally:
        job.shutdown()


def test_one_cycle_at_a_time_niced_child_and_shutdown_stops_it(history: History,
                                                          tmp_path: Path) -> None:
    slow = CycleConfig(nhits=NHITSParams(max_steps=100_000),
                                         patchtst=PatchTSTParams(max_steps=100_000))
    before = set(multiprocessing.active_children())
    job = TrainingJob()
    try:
        job.start(history, None, LABELS, slow, tmp_path / "a")
        with pytest.raises(RuntimeError, match="one cycle at a time"):
            job.start(history, None, LABELS, slow, tmp_path / "b")
        time.sleep(1.0)
        assert job.running and job.poll() is None
        children = set(multiprocessing.active_children()) - before
        assert len(children) == 1
        (child,) = children  # runs below the flow's CPU priority
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(19, os.nice(0) + job.niceness)
    finally:
        t0 = time.perf_counter()
        job.shutdown()
    assert time.perf_counter() - t0 < 10
    assert not job.running and job.poll() is None
    assert not any(p.is_alive() for p in children)


PARENT = """
import multiprocessing, sys, time
from learning.trainer import CycleConfig, TrainingJob
from models.dataset import History
from models.labels import LabelConfig
job = TrainingJob()
job.start(History(), None, LabelConfig(), CycleConfig(), sys.argv[1])
print(multiprocessing.active_children()[0].pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie nobody reaps has exited


def test_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    """A flow killed with -9 must not leave a training process behind."""
    import signal
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    lingered = _alive(child)
    if lingered:
        os.kill(child, signal.SIGKILL)
    assert not lingered


def test_concat_rows_appends_only_rows_before_the_cut(history: History) -> None:
    data, train, val = validation_split(history)
    cut = int(data.ts_ms[val].min())
    extra = data.subset(np.r_[train[:5], val[:3]])
    merged, idx, held_out = concat_rows(data, train, cut, extra)
    assert held_out == 3 and len(merged) == len(data) + 5
    assert np.array_equal(idx[:len(train)], train)
    assert np.array_equal(merged.X[idx[len(train):]], data.X[train[:5]], equal_nan=True)
    assert np.array_equal(merged.y[val], data.y[val])  # validation rows keep their indices
    assert concat_rows(data, train, cut, None) == (data, train, 0)
    wrong = data.subset(train[:2])
    wrong.feature_names = ("a", "b")
    with pytest.raises(ValueError, match="columns"):
        concat_rows(data, train, cut, wrong)
    short = data.subset(train[:2])
    short.vectors = short.vectors[:1]
    with pytest.raises(ValueError, match="differ in length"):
        concat_rows(data, train, cut, short)


def test_recent_history_shares_the_row_budget_between_symbols(history: History) -> None:
    recent = recent_history(history, 1_000)
    assert recent.bars == {}
    for symbol in history.symbols:
        assert recent.vectors[symbol] == history.vectors[symbol][-500:]
    assert recent_history(history, None).vectors == history.vectors


def test_history_before_keeps_the_last_bars_before_the_cut(history: History) -> None:
    symbol = history.symbols[0]
    vectors = history.vectors[symbol]
    cut = to_ms(vectors[500].ts)
    kept = history_before(history, cut, 100).vectors[symbol]
    assert kept == vectors[400:500]
    assert history_before(history, cut, None).vectors[symbol] == vectors[:500]


def test_cycle_artifacts_publish_to_the_registry(local_cycle: CycleResult,
                                                 tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    mv = reg.publish("xgboost", copy_writer(local_cycle.paths["xgboost"]), stage=Stage.SHADOW,
                     feature_set=FEATURE_SET_VERSION, data_from=local_cycle.data_from,
                     data_to=local_cycle.data_to, metrics=local_cycle.metrics["xgboost"])
    assert mv.stage is Stage.SHADOW and mv.data_to == local_cycle.data_to
    loaded = reg.load("xgboost", mv.version)  # checksums verified
    assert loaded.meta["train_rows"] == local_cycle.rows["train"] + EXTRA_EARLY

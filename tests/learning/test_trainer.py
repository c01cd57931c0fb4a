"""The CLM training cycle on the bundled FXCM sample (real quotes, 2 symbols, 2 days).

Cycles run with the tiny :meth:`CycleConfig.quick` budget: one from scratch in this process
(:func:`train_all`); a "production" cycle on the first day only, and warm-started cycles on
both days from its artifacts, in this process and in a spawned child (:class:`TrainingJob`).
The artifacts must load and reproduce the recorded metrics, the slices must be purged by event
time, and the child must produce the same models as the parent. These check plumbing and rules,
not forecasting skill.
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
    MODEL_CLASSES,
    CycleConfig,
    CycleResult,
    InlineTraining,
    TrainingError,
    TrainingJob,
    concat_rows,
    copy_writer,
    cycle_split,
    embargo_ms,
    history_before,
    recent_history,
    resolve_label_end,
    train_all,
    warm_name,
    warm_window,
)
from models.base import MODEL_NAMES
from models.dataset import (
    LABEL_END_UNKNOWN,
    History,
    TrainingSet,
    build_training_set,
    feature_matrix,
)
from models.labels import LabelConfig
from models.metrics import classification_report
from models.registry import ModelRegistry, loader
from models.sequence import NHITSParams, PatchTSTParams
from models.trees import XGBoostModel
from schemas.features import FEATURE_SET_VERSION
from schemas.registry import ModelStage
from schemas.signals import CLASS_OF, Action
from schemas.timeutil import to_ms
from settings import SAMPLE_TICKS, Settings
from training.history import history_from_ticks

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
def local_cycle(
    history: History, extra_rows: TrainingSet, tmp_path_factory: pytest.TempPathFactory
) -> CycleResult:
    return train_all(
        history, extra_rows, LABELS, CycleConfig.quick(), tmp_path_factory.mktemp("local")
    )


def clm_style_rows(history: History, n: int) -> TrainingSet:
    """Trade rows built the way learning/clm.py builds them today: entry vectors, a label,
    no ``label_end_ms`` (so the cycle assumes ``trade_label_ms``)."""
    vectors = [v for s in history.symbols for v in history.vectors[s] if v.warm]
    vectors = [vectors[i] for i in np.linspace(0, len(vectors) - 1, n).astype(int)]
    return TrainingSet(
        X=feature_matrix(vectors),
        y=np.arange(n, dtype=np.int64) % 3,
        ts_ms=np.array([to_ms(v.ts) for v in vectors], dtype=np.int64),
        symbols=np.array([v.symbol for v in vectors], dtype=object),
        forward_return=np.full(n, np.nan),
        threshold=np.full(n, np.nan),
        vectors=vectors,
    )


@pytest.fixture(scope="module")
def production(history: History, tmp_path_factory: pytest.TempPathFactory) -> CycleResult:
    """A cycle on the first day of the sample: the models a later cycle warm-starts from."""
    first = to_ms(history.vectors[history.symbols[0]][0].ts)
    day_one = history_before(history, first + 86_400_000, None)
    return train_all(
        day_one, None, LABELS, CycleConfig.quick(), tmp_path_factory.mktemp("production")
    )


def warm_args(history: History, production: CycleResult) -> dict:
    return {
        "extra_rows": clm_style_rows(history, 40),
        "label_cfg": LABELS,
        "config": CycleConfig.quick(),
        "warm_from": production.paths,
        "since_ms": production.train_to_ms,
    }


@pytest.fixture(scope="module")
def warm_cycle(
    history: History, production: CycleResult, tmp_path_factory: pytest.TempPathFactory
) -> CycleResult:
    """Both days, from scratch and warm-started from ``production``."""
    return train_all(
        history, out_dir=tmp_path_factory.mktemp("warm"), **warm_args(history, production)
    )


@pytest.fixture(scope="module")
def child_cycle(
    history: History, production: CycleResult, tmp_path_factory: pytest.TempPathFactory
) -> tuple[CycleResult, float]:
    """``warm_cycle`` again through a TrainingJob; also how long start() took to return."""
    job = TrainingJob()
    try:
        t0 = time.perf_counter()
        args = warm_args(history, production)
        job.start(
            history,
            args.pop("extra_rows"),
            args.pop("label_cfg"),
            args.pop("config"),
            tmp_path_factory.mktemp("child"),
            **args,
        )
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
    """The cycle's training set and its train and validation slices (as train_all cuts)."""
    data = build_training_set(history, LABELS)
    train, _, val = cycle_split(
        data, CycleConfig.quick(), embargo_ms(history, LABELS, CycleConfig.quick())
    )
    return data, train, val


def test_train_all_writes_loadable_artifacts_that_reproduce_the_metrics(
    local_cycle: CycleResult, history: History
) -> None:
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
        report = classification_report(
            data.y[val], pred, data.forward_return[val], data.threshold[val]
        )
        recorded = local_cycle.metrics[name]
        assert set(recorded) == {
            "val_accuracy",
            "val_macro_f1",
            "val_calls",
            "val_call_hit_rate",
            "val_n",
        }
        for key, value in report.items():
            assert recorded[f"val_{key}"] == pytest.approx(value), (name, key)
        assert local_cycle.seconds[name] > 0
    assert 0 < local_cycle.metrics["baseline"]["val_macro_f1"] < 1
    ensemble = local_cycle.metrics["ensemble"]  # the four from-scratch models, audit rules
    assert ensemble["val_n"] == local_cycle.rows["val"]
    # an ensemble call needs three models calling it: 3 x its calls <= all the models' calls
    assert 3 * ensemble["val_calls"] <= sum(
        local_cycle.metrics[n]["val_calls"] for n in MODEL_NAMES
    )
    assert 0 < ensemble["val_macro_f1"] < 1
    assert local_cycle.seconds["total"] >= sum(local_cycle.seconds[n] for n in MODEL_NAMES)


def test_train_all_reports_rows_and_the_data_range(
    local_cycle: CycleResult, history: History
) -> None:
    data, train, val = validation_split(history)
    rows = local_cycle.rows
    assert (rows["train"], rows["val"], rows["symbols"]) == (len(train), len(val), 2)
    assert rows["train"] + rows["es"] + rows["val"] + rows["purged"] == len(data)
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


def test_train_all_refuses_a_directory_with_artifacts(
    history: History, local_cycle: CycleResult
) -> None:
    with pytest.raises(FileExistsError, match="fresh out_dir"):
        train_all(history, None, LABELS, CycleConfig.quick(), local_cycle.out_dir)


def test_job_trains_in_a_child_process_and_returns_the_same_models(
    child_cycle: tuple[CycleResult, float], warm_cycle: CycleResult
) -> None:
    result, start_seconds = child_cycle
    assert start_seconds < 2.0, "start() must return at once"
    assert result.pid != os.getpid()
    assert result.wall_seconds is not None and result.wall_seconds >= result.seconds["total"]
    assert result.rows == warm_cycle.rows
    # Same data, config and seeds: the child's models score exactly as the parent's, warm
    # variants (warm_from and since_ms went through) included.
    assert result.metrics == warm_cycle.metrics
    assert set(result.paths) == set(warm_cycle.paths)
    for name, path in result.paths.items():
        assert sorted(p.name for p in path.iterdir()) == sorted(
            p.name for p in warm_cycle.paths[name].iterdir()
        )


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


def test_inline_training_reports_like_the_child(tmp_path: Path) -> None:
    """QT_CLM_BLOCKING trains in the flow's process with the same interface: an error is
    reported once by poll (and wait), a result once."""
    job = InlineTraining()
    job.start(History(), None, LABELS, CycleConfig.quick(), tmp_path / "a")
    with pytest.raises(TrainingError, match="0 labelled rows"):
        job.wait()
    assert job.poll() is None
    with pytest.raises(RuntimeError, match="no training cycle"):
        job.wait()


def test_one_cycle_at_a_time_niced_child_and_shutdown_stops_it(
    history: History, tmp_path: Path
) -> None:
    slow = CycleConfig(
        nhits=NHITSParams(max_steps=100_000), patchtst=PatchTSTParams(max_steps=100_000)
    )
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

    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
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
    assert np.array_equal(idx[: len(train)], train)
    assert np.array_equal(merged.X[idx[len(train) :]], data.X[train[:5]], equal_nan=True)
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


def test_cycle_artifacts_publish_to_the_registry(local_cycle: CycleResult, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    mv = reg.publish(
        "xgboost",
        copy_writer(local_cycle.paths["xgboost"]),
        stage=ModelStage.SHADOW,
        feature_set=FEATURE_SET_VERSION,
        data_from=local_cycle.data_from,
        data_to=local_cycle.data_to,
        metrics=local_cycle.metrics["xgboost"],
    )
    assert mv.stage is ModelStage.SHADOW and mv.data_to == local_cycle.data_to
    loaded = reg.load("xgboost", mv.version)  # checksums verified
    assert loaded.meta["train_rows"] == local_cycle.rows["train"] + EXTRA_EARLY


# --- purge, embargo and the three slices ---------------------------------------------------
def test_cycle_slices_are_purged_by_event_time(local_cycle: CycleResult, history: History) -> None:
    """train | early stopping | validation: no label used by a slice ends at or after the next
    slice's start less the embargo (a horizon of bars by default)."""
    data = build_training_set(history, LABELS)
    embargo = embargo_ms(history, LABELS, CycleConfig.quick())
    assert embargo == LABELS.horizon * 60_000 == local_cycle.embargo_ms
    train, es, val = cycle_split(data, CycleConfig.quick(), embargo)
    es_start, val_start = data.ts_ms[es].min(), data.ts_ms[val].min()
    assert (local_cycle.es_from_ms, local_cycle.val_from_ms) == (es_start, val_start)
    assert data.label_end_ms[train].max() < es_start - embargo
    assert data.label_end_ms[es].max() < val_start - embargo
    assert data.ts_ms[train].max() < es_start <= data.ts_ms[es].max() < val_start
    assert not set(train) & set(es) and not set(es) & set(val) and not set(train) & set(val)
    # The purge drops each symbol's last bars before a cut: horizon + embargo of them.
    for cut, rows in ((es_start, train), (val_start, es)):
        for symbol in history.symbols:
            gap = cut - data.ts_ms[rows][data.symbols[rows] == symbol].max()
            assert gap > 2 * LABELS.horizon * 60_000
    # A label ends exactly at the close `horizon` bars later in the symbol's own series.
    for symbol in history.symbols:
        closes = {to_ms(v.ts): i for i, v in enumerate(history.vectors[symbol])}
        mine = np.flatnonzero(data.symbols == symbol)
        for i in mine[::97]:
            j = closes[int(data.ts_ms[i])] + LABELS.horizon
            assert data.label_end_ms[i] == to_ms(history.vectors[symbol][j].ts)


def test_trees_stop_early_on_their_own_slice_not_on_the_reported_one(
    local_cycle: CycleResult, history: History, extra_rows: TrainingSet
) -> None:
    data = build_training_set(history, LABELS)
    config = CycleConfig.quick()
    embargo = embargo_ms(history, LABELS, config)
    train, es, val = cycle_split(data, config, embargo)
    for name in ("xgboost", "lightgbm"):
        doc = json.loads((local_cycle.paths[name] / "params.json").read_text())
        assert doc["val_rows"] == len(es) == local_cycle.rows["es"]  # what it stopped on
        assert local_cycle.metrics[name]["val_n"] == len(val)  # what is reported
    # Rebuilt with the early-stopping slice, the model is the cycle's, bit for bit.
    fit, idx, _ = concat_rows(data, train, int(data.ts_ms[es].min()) - embargo, extra_rows)
    again = XGBoostModel.train(fit, idx, es, config.tree, config.seed)
    served = XGBoostModel.load(local_cycle.paths["xgboost"])
    assert np.array_equal(again.predict_proba(data.X[val]), served.predict_proba(data.X[val]))


def test_trade_rows_are_purged_by_exit_time(history: History) -> None:
    data, train, _ = validation_split(history)
    cut = int(data.ts_ms[train].max()) + 1
    rows = data.subset(train[:4])
    # entered long before the cut; exits just before, at, and after it (minus nothing)
    rows.label_end_ms = np.array([cut - 1, cut, cut + 3_600_000, LABEL_END_UNKNOWN])
    merged, idx, held_out = concat_rows(data, train, cut, rows)
    assert held_out == 3 and len(merged) == len(data) + 1
    assert merged.label_end_ms[idx[len(train) :]].tolist() == [cut - 1]
    # A trade row built without exit times (learning/clm.py today): exit assumed later.
    clm_rows = clm_style_rows(history, 10)
    assert (clm_rows.label_end_ms == LABEL_END_UNKNOWN).all()
    resolved, n = resolve_label_end(clm_rows, 7_200_000)
    assert n == 10 and np.array_equal(resolved.label_end_ms, clm_rows.ts_ms + 7_200_000)
    assert resolve_label_end(resolved, 1) == (resolved, 0)


# --- warm starts -------------------------------------------------------------------------------
def test_warm_cycle_holds_both_variants_per_model(
    warm_cycle: CycleResult, production: CycleResult, history: History
) -> None:
    data, train, val = validation_split(history)
    variants = [v for n in MODEL_NAMES for v in (n, warm_name(n))]
    assert list(warm_cycle.paths) == variants
    assert set(warm_cycle.metrics) == {*variants, "baseline", "ensemble"}
    assert set(warm_cycle.fit_seconds) == set(variants)
    vectors = [data.vectors[i] for i in val]
    for v in variants:
        assert warm_cycle.paths[v] == warm_cycle.out_dir / v
        assert warm_cycle.seconds[v] >= warm_cycle.fit_seconds[v] > 0
        model = MODEL_CLASSES[v.removesuffix(".warm")].load(warm_cycle.paths[v])
        pred = np.array([CLASS_OF[a] for a, _ in model.predict(vectors)])
        report = classification_report(
            data.y[val], pred, data.forward_return[val], data.threshold[val]
        )
        assert warm_cycle.metrics[v]["val_macro_f1"] == pytest.approx(report["macro_f1"])
    # The trade rows came without exit times: assumed 2 h after entry, purged by that.
    rows = warm_cycle.rows
    assert rows["extra_assumed_end"] == 40
    es_cut = warm_cycle.es_from_ms - warm_cycle.embargo_ms
    ts = clm_style_rows(history, 40).ts_ms
    assert rows["extra"] == int((ts + CycleConfig.quick().trade_label_ms < es_cut).sum()) > 0
    assert rows["extra"] + rows["extra_held_out"] == 40
    # Trees: trained on the rows after production's data end (trade rows included).
    for name in ("xgboost", "lightgbm"):
        info = warm_cycle.warm[warm_name(name)]
        assert info["fallback"] is None and not info["overlaps_val"]
        assert info["since_ms"] == production.train_to_ms == info["from_ms"] - 1
        new = int((data.ts_ms[train] > production.train_to_ms).sum())
        new += int(((ts > production.train_to_ms) & (ts + 7_200_000 < es_cut)).sum())
        assert info["rows"] == new
        doc = json.loads((warm_cycle.paths[warm_name(name)] / "params.json").read_text())
        assert doc["train_rows"] == new and doc["val_rows"] == rows["es"]
        assert doc["warm_start"]["base_rounds"] == info["base_rounds"]
        assert doc["best_iteration"] == info["rounds"] > info["base_rounds"]
    # Sequence models: fine-tuned from production's weights on their bars since it trained.
    for name, params in (
        ("nhits", CycleConfig.quick().nhits),
        ("patchtst", CycleConfig.quick().patchtst),
    ):
        info = warm_cycle.warm[warm_name(name)]
        doc = json.loads((production.paths[name] / "params.json").read_text())
        assert info["since_ms"] == doc["last_train_ts_ms"] and info["fallback"] is None
        assert info["steps"] == 2 and info["learning_rate"] == params.learning_rate * 0.5
        warm_doc = json.loads((warm_cycle.paths[warm_name(name)] / "params.json").read_text())
        assert warm_doc["warm_start"]["base_last_train_ts_ms"] == doc["last_train_ts_ms"]
        assert warm_doc["total_steps"] == params.max_steps + 2
        assert warm_doc["last_train_ts_ms"] < warm_cycle.val_from_ms - warm_cycle.embargo_ms


def test_warm_trees_start_from_production_trees(
    warm_cycle: CycleResult, production: CycleResult, history: History
) -> None:
    data, _, val = validation_split(history)
    X = data.X[val]
    for name in ("xgboost", "lightgbm"):
        base = MODEL_CLASSES[name].load(production.paths[name])
        warm = MODEL_CLASSES[name].load(warm_cycle.paths[warm_name(name)])
        r = base.n_rounds()
        if name == "xgboost":
            head = warm.booster.inplace_predict(X, iteration_range=(0, r))
            assert warm.booster.get_dump()[: 3 * r] == base.booster.get_dump()
        else:
            head = warm.booster.predict(X, num_iteration=r)
            trees = warm.booster.dump_model()["tree_info"]
            assert trees[: 3 * r] == base.booster.dump_model()["tree_info"]
        assert np.array_equal(head, base.predict_proba(X))
        assert warm.n_rounds() > r
        assert not np.array_equal(warm.predict_proba(X), base.predict_proba(X))


def test_warm_start_falls_back_to_recent_rows_and_skips_unusable_artifacts(
    history: History, production: CycleResult, warm_cycle: CycleResult, tmp_path: Path
) -> None:
    config = CycleConfig.quick()
    late = warm_cycle.es_from_ms  # nothing of the training slice comes after it
    result = train_all(
        history,
        None,
        LABELS,
        config,
        tmp_path,
        warm_from={
            "xgboost": production.paths["xgboost"],
            "lightgbm": production.paths["xgboost"],
        },  # wrong model
        since_ms=late,
    )
    assert set(result.paths) == {*MODEL_NAMES, "xgboost.warm"}
    info = result.warm["xgboost.warm"]
    assert "only 0 rows after production's data end" in info["fallback"]
    assert info["rows"] >= config.min_rows
    assert (
        info["rows"]
        == json.loads((result.paths["xgboost.warm"] / "params.json").read_text())["train_rows"]
    )
    assert "not usable" in result.warm["lightgbm.warm"]["skipped"]
    assert "lightgbm.warm" not in result.metrics and "lightgbm.warm" not in result.seconds
    with pytest.raises(ValueError, match="unknown models"):
        train_all(history, None, LABELS, config, tmp_path / "x", warm_from={"ppo": tmp_path})


def test_warm_window_rules() -> None:
    ts = np.arange(10) * 60_000
    assert warm_window(ts, 3 * 60_000, 4) == (3 * 60_000 + 1, None)
    start, why = warm_window(ts, 8 * 60_000, 4)
    assert start == 6 * 60_000 and "only 1 rows" in why and "most recent 4 rows" in why
    start, why = warm_window(ts, None, 20)
    assert start == 0 and "unknown" in why and "most recent 10 rows" in why

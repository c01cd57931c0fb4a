"""The CLM training cycle: retrain all four voters from a :class:`~models.dataset.History`,
off the hot path.

:func:`train_all` is a pure function (history in, artifact files and figures out) that runs in
any process; :class:`TrainingJob` runs it in a child process so that a cycle never blocks a
Bytewax worker or holds its GIL.

The cycle, with the project's own code (the recipe of :mod:`models.bootstrap`):

1. keep each symbol's most recent bars, ``max_rows`` in all (an equal share per symbol);
2. label the warm bars (:func:`~models.dataset.build_training_set`) and split by time
   (:func:`~models.dataset.time_split`): the last ``val_fraction`` of the rows validate, the
   rest train, with a gap of ``horizon x symbols`` rows at the cut so that no label straddles
   it. There is no test split: the shadow test beside production is the out-of-sample test;
3. append ``extra_rows`` (entry features of closed trades labelled by their outcome) to the
   training rows of the tree models. Only rows whose entry time is before the validation cut
   are used; later ones are counted and held out, or validation would score rows the trees
   had seen. N-HiTS and PatchTST train on the return series, which those rows do not extend;
4. train XGBoost and LightGBM (early stopping on validation) and N-HiTS and PatchTST (on the
   last bars before the cut, ``seq_max_bars`` in all), save each into
   ``out_dir/<model>/`` with its own ``save`` (native files + ``params.json``, no pickles);
5. score each model on the validation split with its own ``predict`` (the serving path) and
   :func:`models.metrics.classification_report` (``val_*`` keys, as the bootstrap records).

Why the sequence models see only the last bars: neuralforecast builds every window of every
series on each optimiser step, so a step costs time in proportion to the series' length, not
to the 32 windows it samples (measured on the Bittrex file: 100 steps of N-HiTS took 5.4 s on
~9k bars per symbol, 1.3 s on 3k). 40,000 bars (4,000 per symbol there, ~2.8 days of minutes)
are far more than the ~10k windows 300 steps sample, so a longer series buys nothing but time.
Both caps are totals over the symbols, so that a cycle's cost does not grow with the number of
symbols or the lookback (``QT_CLM_LOOKBACK_DAYS`` is 90 days; the Bittrex file has 10).
"""

from __future__ import annotations

import bisect
import contextlib
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.base import MODEL_NAMES, cap_threads
from models.dataset import History, TrainingSet, build_training_set, time_split
from models.labels import LabelConfig
from models.metrics import classification_report, constant_baseline
from models.sequence import NHITSModel, NHITSParams, PatchTSTModel, PatchTSTParams
from models.trees import LightGBMModel, TreeParams, XGBoostModel
from schemas.signals import CLASS_OF
from schemas.timeutil import from_ms, to_ms


def _cycle_tree() -> TreeParams:
    return TreeParams(max_rounds=200, early_stopping_rounds=20, learning_rate=0.1)


@dataclass(frozen=True)
class CycleConfig:
    """Training budget of one retraining cycle (all four models, one core).

    Defaults, chosen so that a cycle on the Bittrex file (10 symbols x 10 days of minutes,
    ~133k labelled bars) ends well inside the issue's 60 s, child start-up and imports
    included, while the live flow uses the other core:

    - ``tree``: learning rate 0.1 (bootstrap 0.05), at most 200 rounds, early stopping after
      20. With the bootstrap's 0.05 / 300 / 30 XGBoost took 3.2 s for the same validation
      macro-F1 (0.327 vs 0.325 on a 70/15 split); here the trees keep ~130-170 rounds and
      take ~4.5 s each, validation included.
    - ``nhits`` / ``patchtst``: 300 optimiser steps of 32 windows (the bootstrap's budget),
      affordable because of ``seq_max_bars`` (~4.5 s and ~6 s of fitting).
    - ``seq_max_bars``: 40,000: the sequence models train on each symbol's last
      ``40,000 / symbols`` bars before the validation cut (module docstring); None: all.
    - ``max_rows``: 150,000: each symbol keeps its last ``150,000 / symbols`` bars (the whole
      Bittrex file fits), so a 90-day lookback costs what 10 days do. :class:`TrainingJob`
      cuts before sending the history to the child, which also bounds the pickling.
    - ``val_fraction``: 0.15, the last 15% of the labelled rows (by time) validate.
    - ``min_rows``: 500 labelled rows at least, as the bootstrap requires.
    - ``seed``: 0, every model's seed.

    Measured with ``bench/bench_clm.py`` (TrainingJob start -> result, child start-up,
    imports and the history's IPC included), Bittrex file, quiet machine: 29.7-34.0 s
    (start-up + IPC 4.4-5 s, labels 0.8, XGBoost 4.6, LightGBM 4.1, N-HiTS 6.7 with the
    neuralforecast import, PatchTST 9.1-11 of which ~4 s is its validation forward over 20k
    windows); 34.6-35.5 s while the live flow ran beside it on the other core.
    """

    tree: TreeParams = field(default_factory=_cycle_tree)
    nhits: NHITSParams = field(default_factory=lambda: NHITSParams(max_steps=300))
    patchtst: PatchTSTParams = field(default_factory=lambda: PatchTSTParams(max_steps=300))
    seq_max_bars: int | None = 40_000
    max_rows: int | None = 150_000
    val_fraction: float = 0.15
    min_rows: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("seq_max_bars", "max_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}")

    @classmethod
    def quick(cls) -> CycleConfig:
        """Tiny models for tests: seconds, not tens of seconds."""
        return cls(tree=TreeParams(max_rounds=20, early_stopping_rounds=5),
                   nhits=NHITSParams(max_steps=5), patchtst=PatchTSTParams(max_steps=5),
                   seq_max_bars=2_000, min_rows=200)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, for the registry's ``params`` and the ``clm_cycles`` row."""
        return {"tree": self.tree.to_dict(), "nhits": self.nhits.to_dict(),
                "patchtst": self.patchtst.to_dict(), "seq_max_bars": self.seq_max_bars,
                "max_rows": self.max_rows,
                "val_fraction": self.val_fraction, "min_rows": self.min_rows, "seed": self.seed}


@dataclass(frozen=True)
class CycleResult:
    """What a cycle produced: one artifact directory per model and the figures to record.

    - ``paths``: model name -> ``out_dir/<model>`` (load it with the model class's ``load``);
    - ``metrics``: model name -> ``val_accuracy``, ``val_macro_f1``, ``val_calls``,
      ``val_call_hit_rate``, ``val_n``; ``baseline`` -> the majority-class ``val_macro_f1``;
    - ``rows``: ``train`` (history rows), ``extra`` (trade rows appended), ``extra_held_out``
      (trade rows at or after the cut), ``val``, ``symbols``, ``seq_bars`` (bars the sequence
      models trained on, all symbols);
    - ``train_from_ms`` / ``train_to_ms``: first and last training bar (history rows);
      ``val_from_ms`` / ``val_to_ms``: the validation window (``val_from_ms`` is the cut);
    - ``seconds``: ``prepare`` (labels, split), per model (fit + save + validation), ``total``;
    - ``pid``: the process that trained; ``wall_seconds``: set by :class:`TrainingJob`, from
      :meth:`TrainingJob.start` to the result (child start-up, imports and IPC included).
    """

    out_dir: Path
    paths: dict[str, Path]
    metrics: dict[str, dict[str, float]]
    rows: dict[str, int]
    train_from_ms: int
    train_to_ms: int
    val_from_ms: int
    val_to_ms: int
    seconds: dict[str, float]
    pid: int
    wall_seconds: float | None = None

    @property
    def data_from(self) -> datetime:
        return from_ms(self.train_from_ms)

    @property
    def data_to(self) -> datetime:
        """The validation cut: every training label is known before it (the registry's
        ``data_to``, as the bootstrap records it)."""
        return from_ms(self.val_from_ms)


# --- data ---------------------------------------------------------------------------------------
def per_symbol(total: int | None, symbols: int) -> int | None:
    """A total budget of bars shared equally by ``symbols`` (at least 1 each; None: no cap)."""
    return None if total is None else max(1, total // max(1, symbols))


def recent_history(history: History, max_rows: int | None) -> History:
    """Each symbol's last ``max_rows / symbols`` vectors, without the bars (training reads
    only the feature vectors; leaving the bars out cuts the child's pickle by ~15%)."""
    n = per_symbol(max_rows, len(history.vectors))
    return History(vectors={s: (vs[-n:] if n is not None else vs)
                            for s, vs in history.vectors.items()},
                   rows_in=history.rows_in, ticks=history.ticks,
                   dead_letters=history.dead_letters)


def history_before(history: History, cut_ms: int, max_bars: int | None) -> History:
    """Per symbol, the last ``max_bars`` vectors that close strictly before ``cut_ms``."""
    out = History()
    for symbol, vectors in history.vectors.items():
        end = bisect.bisect_left(vectors, cut_ms, key=lambda v: to_ms(v.ts))
        start = 0 if max_bars is None else max(0, end - max_bars)
        out.vectors[symbol] = vectors[start:end]
    return out


def concat_rows(data: TrainingSet, train_idx: np.ndarray, cut_ms: int,
                extra: TrainingSet | None) -> tuple[TrainingSet, np.ndarray, int]:
    """``data`` with the ``extra`` rows that start before ``cut_ms`` appended, the training
    indices extended by them, and how many extra rows were held out (at or after the cut).

    Rows of ``data`` keep their indices, so validation indices stay valid.
    """
    if extra is None or len(extra) == 0:
        return data, train_idx, 0
    if tuple(extra.feature_names) != tuple(data.feature_names) or \
            extra.X.shape[1:] != data.X.shape[1:]:
        raise ValueError(f"extra_rows have columns {list(extra.feature_names)}, the training "
                         f"set {list(data.feature_names)}")
    lengths = {"X": len(extra.X), "y": len(extra.y), "ts_ms": len(extra.ts_ms),
               "symbols": len(extra.symbols), "forward_return": len(extra.forward_return),
               "threshold": len(extra.threshold), "vectors": len(extra.vectors)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"extra_rows fields differ in length: {lengths}")
    keep = np.flatnonzero(np.asarray(extra.ts_ms) < cut_ms)
    held_out = len(extra) - len(keep)
    if len(keep) == 0:
        return data, train_idx, held_out
    extra = extra.subset(keep)
    merged = TrainingSet(
        X=np.vstack([data.X, extra.X]),
        y=np.concatenate([data.y, np.asarray(extra.y, dtype=data.y.dtype)]),
        ts_ms=np.concatenate([data.ts_ms, np.asarray(extra.ts_ms, dtype=data.ts_ms.dtype)]),
        symbols=np.concatenate([data.symbols, np.asarray(extra.symbols, dtype=object)]),
        forward_return=np.concatenate([data.forward_return, extra.forward_return]),
        threshold=np.concatenate([data.threshold, extra.threshold]),
        vectors=[*data.vectors, *extra.vectors],
        feature_names=data.feature_names,
    )
    idx = np.concatenate([train_idx, np.arange(len(data), len(merged), dtype=train_idx.dtype)])
    return merged, idx, held_out


# --- the cycle ----------------------------------------------------------------------------------
def _classes(preds: list[tuple[Any, float]]) -> np.ndarray:
    return np.array([CLASS_OF[a] for a, _ in preds], dtype=np.int64)


def train_all(history: History, extra_rows: TrainingSet | None, label_cfg: LabelConfig,
              config: CycleConfig, out_dir: Path) -> CycleResult:
    """Retrain all four models on ``history`` (+ ``extra_rows``) into ``out_dir/<model>/``.

    Pure: reads its arguments, writes only under ``out_dir`` (each model's directory must not
    exist yet, or be empty, so a result never mixes two cycles' files). Runs with one thread.
    In a process that also serves the models from other threads use :class:`TrainingJob`:
    building neuralforecast modules beside a live forward is not thread-safe
    (:data:`models.base.MODEL_LOCK`).
    """
    started = time.perf_counter()
    cap_threads()
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in MODEL_NAMES}
    for p in paths.values():
        if p.exists() and any(p.iterdir()):
            raise FileExistsError(f"{p} already holds files: give each cycle a fresh out_dir")

    history = recent_history(history, config.max_rows)
    data = build_training_set(history, label_cfg)
    if len(data) < config.min_rows:
        raise ValueError(f"training cycle: {len(data)} labelled rows, at least "
                         f"{config.min_rows} are needed to train and validate")
    gap = label_cfg.horizon * len(history.symbols)
    fractions = (1.0 - config.val_fraction, config.val_fraction, 0.0)
    train, val, _ = time_split(data.ts_ms, fractions, gap=gap)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"training cycle: empty split (train {len(train)}, val {len(val)})")
    cut_ms = int(data.ts_ms[val].min())
    fit_data, fit_idx, held_out = concat_rows(data, train, cut_ms, extra_rows)
    seq_history = history_before(history, cut_ms,
                                 per_symbol(config.seq_max_bars, len(history.symbols)))
    val_vectors = [data.vectors[i] for i in val]
    seconds = {"prepare": time.perf_counter() - started}

    trainers = {
        "xgboost": lambda: XGBoostModel.train(fit_data, fit_idx, val, config.tree, config.seed),
        "lightgbm": lambda: LightGBMModel.train(fit_data, fit_idx, val, config.tree,
                                                config.seed),
        "nhits": lambda: NHITSModel.train(seq_history, cut_ms, label_cfg, config.nhits,
                                          config.seed),
        "patchtst": lambda: PatchTSTModel.train(seq_history, cut_ms, label_cfg,
                                                config.patchtst, config.seed),
    }
    metrics: dict[str, dict[str, float]] = {}
    for name in MODEL_NAMES:
        t0 = time.perf_counter()
        model = trainers[name]()
        model.save(paths[name])
        pred = _classes(model.predict(val_vectors))
        report = classification_report(data.y[val], pred, data.forward_return[val],
                                       data.threshold[val])
        metrics[name] = {f"val_{k}": float(v) for k, v in report.items()}
        seconds[name] = time.perf_counter() - t0
        del model
    base = constant_baseline(data.y[train], data.y[val])
    metrics["baseline"] = {"val_macro_f1": float(base["macro_f1"])}
    seconds["total"] = time.perf_counter() - started
    rows = {"train": len(train), "extra": len(fit_idx) - len(train),
            "extra_held_out": held_out, "val": len(val), "symbols": len(history.symbols),
            "seq_bars": sum(len(v) for v in seq_history.vectors.values())}
    return CycleResult(
        out_dir=out_dir, paths=paths, metrics=metrics, rows=rows,
        train_from_ms=int(data.ts_ms[train].min()), train_to_ms=int(data.ts_ms[train].max()),
        val_from_ms=cut_ms, val_to_ms=int(data.ts_ms[val].max()), seconds=seconds,
        pid=os.getpid())


def copy_writer(src: Path) -> Callable[[Path], list[Path]]:
    """A ``write(directory)`` for :meth:`models.registry.ModelRegistry.publish` that copies a
    cycle's artifact directory (the files as trained, nothing re-serialised)."""

    def write(directory: Path) -> list[Path]:
        return [Path(shutil.copy2(p, Path(directory) / p.name))
                for p in sorted(Path(src).iterdir()) if p.is_file()]

    return write


# --- off the hot path ---------------------------------------------------------------------------
class TrainingError(RuntimeError):
    """A training cycle failed in the child; ``__cause__`` is the child's exception (with its
    traceback text chained below it)."""


def _child_init(priority: int, parent_pid: int) -> None:
    """One thread per library in the child (the live flow's workers own the other core), a
    lower CPU priority (when the cores are oversubscribed, the hot path wins), and an exit
    when the parent dies."""
    _set_priority(0, priority)
    cap_threads()
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="qt-parent-watch",
                     daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    """A parent killed with -9 leaves the executor's child blocked on its call queue forever
    (it holds a copy of the queue's write end, so it never sees EOF) or training for nobody:
    nothing can collect its result, so it exits."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(3)


def _set_priority(pid: int, priority: int) -> None:
    """Set an absolute nice value (idempotent, unlike ``os.nice``); best effort."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, priority)


class TrainingJob:
    """Runs :func:`train_all` in a child process, one cycle at a time.

    A fresh ``spawn`` child per cycle (``ProcessPoolExecutor(max_workers=1)``): no fork of a
    process that runs Bytewax, torch and chDB threads, nothing of a cycle (torch, ~1.5 GB of
    training memory) left behind after it, and the parent's only work is pickling the history
    in the executor's feeder thread (~1.8 s of GIL shared with the workers for the Bittrex
    file; the bars are not sent). Models come back as files in ``out_dir``; the result is a
    small :class:`CycleResult`.

    The child exits by itself within a second when its parent dies (a live flow killed with
    -9 leaves no training process behind). It runs ``niceness`` (default 10) steps below the
    parent's CPU priority: with a core each nothing changes, but when more wants the cores (a
    second worker, another process), the scheduler favours the live flow and the cycle takes
    longer instead.

    ``poll()`` returns None while a cycle runs (or when none was started), the result once,
    or raises :class:`TrainingError` for a failed cycle; either way the job is then free for
    the next :meth:`start`.
    """

    def __init__(self, niceness: int = 10) -> None:
        if niceness < 0:
            raise ValueError(f"niceness must be >= 0 (a child cannot outrank the flow), "
                             f"got {niceness}")
        self.niceness = niceness
        self._executor: ProcessPoolExecutor | None = None
        self._future: Future[CycleResult] | None = None
        self._started = 0.0
        self._out_dir: Path | None = None

    @property
    def running(self) -> bool:
        return self._future is not None and not self._future.done()

    def start(self, history: History, extra_rows: TrainingSet | None, label_cfg: LabelConfig,
              config: CycleConfig, out_dir: Path) -> None:
        """Start a cycle and return at once (the child starts and imports in the background)."""
        if self._future is not None:
            raise RuntimeError("a training cycle is running or its result was not collected "
                               "with poll(); one cycle at a time")
        self._close(kill=False)
        ctx = multiprocessing.get_context("spawn")
        priority = min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.niceness)
        self._executor = ProcessPoolExecutor(max_workers=1, mp_context=ctx,
                                             initializer=_child_init,
                                             initargs=(priority, os.getpid()))
        self._out_dir = Path(out_dir)
        self._started = time.perf_counter()
        self._future = self._executor.submit(
            train_all, recent_history(history, config.max_rows), extra_rows,
            label_cfg, config, self._out_dir)
        # The initializer runs only after the child's imports (~3 s of CPU): renice it now.
        for proc in list(getattr(self._executor, "_processes", {}).values()):
            _set_priority(proc.pid, priority)

    def poll(self) -> CycleResult | None:
        """The finished cycle's result (once), None while it runs; re-raises its error."""
        future = self._future
        if future is None or not future.done():
            return None
        self._future = None
        wall = time.perf_counter() - self._started
        self._close(kill=False)
        try:
            result = future.result()
        except BaseException as exc:
            raise TrainingError(f"training cycle into {self._out_dir} failed after {wall:.1f} "
                                f"s in the child process: {type(exc).__name__}: {exc}") from exc
        return replace(result, wall_seconds=wall)

    def wait(self, timeout: float | None = None) -> CycleResult:
        """Block until the cycle ends (for scripts and tests; a dataflow polls instead)."""
        if self._future is None:
            raise RuntimeError("no training cycle to wait for")
        done, _ = futures_wait([self._future], timeout)
        if not done:
            raise TimeoutError(f"training cycle still running after {timeout} s")
        result = self.poll()
        assert result is not None
        return result

    def shutdown(self) -> None:
        """Stop: a running cycle's child is terminated and its result discarded."""
        self._future = None
        self._close(kill=True)

    def _close(self, kill: bool) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if kill:
            # ProcessPoolExecutor cannot cancel a running call (terminate_workers() arrives in
            # Python 3.14), so the child is terminated through the executor's process table.
            for proc in list(getattr(executor, "_processes", {}).values()):
                if proc.is_alive():
                    proc.terminate()
        # Never join the child here: poll() runs on a dataflow worker. The executor's manager
        # thread reaps it.
        executor.shutdown(wait=kill, cancel_futures=True)

    def __enter__(self) -> TrainingJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

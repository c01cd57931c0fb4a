"""The CLM training cycle: retrain all four voters from a :class:`~models.dataset.History`,
off the hot path, from scratch and (optionally) warm-started from production.

:func:`train_all` is a pure function (history in, artifact files and figures out) that runs in
any process; :class:`TrainingJob` runs it in a child process so that a cycle never blocks a
Bytewax worker or holds its GIL.

The cycle splits the labelled bars by time into train | early stopping | validation
(:func:`~models.dataset.purged_split`), each cut purged by event time less an embargo, so the
reported validation is untouched by any training decision, early stopping included (the
shadow test beside production is the out-of-sample test). Entry features of closed trades
(``extra_rows``) train the trees only if the trade's exit is known before the early-stopping
slice starts. Each model is saved into ``out_dir/<model>/`` (with ``warm_from``, also a
warm-started challenger into ``out_dir/<model>.warm/``) and scored on the validation slice
with its own ``predict`` (``val_*`` keys).

Design notes: docs/training.md.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.base import MODEL_NAMES
from models.dataset import (
    LABEL_END_UNKNOWN,
    History,
    TrainingSet,
    bar_ms,
    build_training_set,
    purged_split,
)
from models.labels import LabelConfig
from models.metrics import classification_report, constant_baseline
from models.sequence import NHITSModel, NHITSParams, PatchTSTModel, PatchTSTParams, SeqParams
from models.trees import LightGBMModel, TreeParams, XGBoostModel
from operators.ensemble import EnsembleConfig, signal_of
from runtime import cap_threads
from schemas.signals import CLASS_OF, Vote
from schemas.timeutil import from_ms, iso, to_ms
from settings import ClmBudget, Settings

WARM = ".warm"
"""Suffix of a warm-started variant's key in :class:`CycleResult` (``"xgboost.warm"``)."""

MODEL_CLASSES: dict[str, Any] = {
    "xgboost": XGBoostModel,
    "lightgbm": LightGBMModel,
    "nhits": NHITSModel,
    "patchtst": PatchTSTModel,
}
"""Model name -> class (its ``train``, ``load``), as :data:`models.base.MODEL_NAMES`."""
SEQUENCE_MODELS = ("nhits", "patchtst")


def warm_name(model: str) -> str:
    """The key of ``model``'s warm-started variant in a :class:`CycleResult`."""
    return model + WARM


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
    - ``es_fraction``: 0.10, the 10% before them stop the trees early (never reported).
    - ``embargo_bars``: event time dropped before each cut beyond the label purge, in bars
      (None: the label horizon; the bar length is read off the feature vectors).
    - ``trade_label_ms``: when a trade row comes without ``label_end_ms``, its exit is assumed
      this long after entry (2 h: twice ``QT_MAX_HOLDING_SECONDS``'s default, as the exit fills
      at a tick after the holding limit).
    - ``warm_seq_step_fraction`` / ``warm_seq_lr_scale``: a warm N-HiTS/PatchTST fine-tunes
      with this fraction of ``nhits``/``patchtst``'s steps (0.3) at this multiple of their
      learning rate (0.5). The warm trees use ``tree`` as it is: early stopping sizes them.
    - ``min_rows``: 500 labelled rows at least, as the bootstrap requires; also the least new
      data a warm start uses before it falls back (module docstring).
    - ``seed``: 0, every model's seed.

    Measured with ``bench/bench_clm.py`` (TrainingJob start -> result, child start-up,
    imports and the history's IPC included), Bittrex file, quiet machine: 29.7-34.0 s
    (start-up + IPC 4.4-5 s, labels 0.8, XGBoost 4.6, LightGBM 4.1, N-HiTS 6.7 with the
    neuralforecast import, PatchTST 9.1-11 of which ~4 s is its validation forward over 20k
    windows); 34.6-35.5 s while the live flow ran beside it on the other core.

    Warm variants on the same file (production trained on its first 5 days, the cycle on all
    10 with ``warm_from`` those models; CPU seconds in process, fit + save + validation,
    scratch vs warm): XGBoost 3.1 vs 1.0, LightGBM 2.2 vs 1.0, N-HiTS 6.1 vs 2.5, PatchTST
    12.2 vs 5.7 (about 3.5 s of each PatchTST figure is the validation forward); the cycle
    35 s of CPU instead of 25 without them.
    """

    tree: TreeParams = field(default_factory=_cycle_tree)
    nhits: NHITSParams = field(default_factory=lambda: NHITSParams(max_steps=300))
    patchtst: PatchTSTParams = field(default_factory=lambda: PatchTSTParams(max_steps=300))
    seq_max_bars: int | None = 40_000
    max_rows: int | None = 150_000
    val_fraction: float = 0.15
    es_fraction: float = 0.10
    embargo_bars: int | None = None
    trade_label_ms: int = 2 * 3_600_000
    warm_seq_step_fraction: float = 0.3
    warm_seq_lr_scale: float = 0.5
    min_rows: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.es_fraction < 1.0 - self.val_fraction:
            raise ValueError(
                f"es_fraction must be in (0, 1 - val_fraction), got {self.es_fraction}"
            )
        for name in ("seq_max_bars", "max_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}")
        if self.embargo_bars is not None and self.embargo_bars < 0:
            raise ValueError(f"embargo_bars must be None or >= 0, got {self.embargo_bars}")
        if self.trade_label_ms < 0:
            raise ValueError(f"trade_label_ms must be >= 0, got {self.trade_label_ms}")
        if not 0.0 < self.warm_seq_step_fraction <= 1.0 or self.warm_seq_lr_scale <= 0.0:
            raise ValueError(
                "warm_seq_step_fraction must be in (0, 1] and warm_seq_lr_scale "
                f"> 0, got {self.warm_seq_step_fraction}, "
                f"{self.warm_seq_lr_scale}"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> CycleConfig:
        """``QT_CLM_BUDGET``: the full training budget, or :meth:`quick`."""
        return cls.quick() if settings.clm_budget == ClmBudget.QUICK else cls()

    @classmethod
    def quick(cls) -> CycleConfig:
        """Tiny models for tests: seconds, not tens of seconds."""
        return cls(
            tree=TreeParams(max_rounds=20, early_stopping_rounds=5),
            nhits=NHITSParams(max_steps=5),
            patchtst=PatchTSTParams(max_steps=5),
            seq_max_bars=2_000,
            min_rows=200,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, for the registry's ``params`` and the ``clm_cycles`` row."""
        return {
            "tree": self.tree.to_dict(),
            "nhits": self.nhits.to_dict(),
            "patchtst": self.patchtst.to_dict(),
            "seq_max_bars": self.seq_max_bars,
            "max_rows": self.max_rows,
            "val_fraction": self.val_fraction,
            "es_fraction": self.es_fraction,
            "embargo_bars": self.embargo_bars,
            "trade_label_ms": self.trade_label_ms,
            "warm_seq_step_fraction": self.warm_seq_step_fraction,
            "warm_seq_lr_scale": self.warm_seq_lr_scale,
            "min_rows": self.min_rows,
            "seed": self.seed,
        }

    def fractions(self) -> tuple[float, float, float]:
        """Shares of train, early stopping and validation rows (before the purge)."""
        return (1.0 - self.es_fraction - self.val_fraction, self.es_fraction, self.val_fraction)


@dataclass(frozen=True)
class CycleResult:
    """What a cycle produced: one artifact directory per model and variant, and the figures.

    Keys of ``paths``, ``metrics`` and ``seconds`` are model names (from scratch) and, with
    ``warm_from``, :func:`warm_name` of them (``"xgboost.warm"``) for the warm variants made.

    - ``paths``: variant -> ``out_dir/<variant>`` (load it with the model class's ``load``);
    - ``metrics``: variant -> ``val_accuracy``, ``val_macro_f1``, ``val_calls``,
      ``val_call_hit_rate``, ``val_n``; ``baseline`` -> the majority-class ``val_macro_f1``;
    - ``rows``: ``train`` (history rows), ``extra`` (trade rows appended), ``extra_held_out``
      (trade rows whose label ends too late), ``extra_assumed_end`` (trade rows without
      ``label_end_ms``), ``es``, ``val``, ``purged`` (rows dropped at the cuts), ``symbols``,
      ``seq_bars`` (bars the sequence models trained on, all symbols);
    - ``train_from_ms`` / ``train_to_ms``: first and last training bar (history rows);
      ``es_from_ms`` / ``es_to_ms``: the early-stopping slice; ``val_from_ms`` /
      ``val_to_ms``: the validation window (``val_from_ms`` is the cut); ``embargo_ms``;
    - ``seconds``: ``prepare`` (labels, split), per variant (load + fit + save + validation),
      ``total``; ``fit_seconds``: per variant, the training alone (a warm variant's includes
      loading production), the cost to compare between the two variants;
    - ``warm``: per warm variant asked for, how it was made: ``base`` (production's
      directory), ``since_ms`` (production's data end used, None if unknown), ``from_ms``
      (first training time), ``rows`` (rows it trained on; for the sequence models bars,
      their input context included), ``fallback`` (why not the data since production, or
      None), ``overlaps_val`` (production's labels reach the validation slice), and per kind
      ``base_rounds``/``rounds`` or ``steps``/``learning_rate``; ``skipped`` (the reason)
      when no variant was made;
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
    es_from_ms: int = 0
    es_to_ms: int = 0
    embargo_ms: int = 0
    warm: dict[str, dict[str, Any]] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def data_from(self) -> datetime:
        return from_ms(self.train_from_ms)

    @property
    def data_to(self) -> datetime:
        """The validation cut: every label a model trained or stopped early on is known
        before it (the registry's ``data_to``, as the bootstrap records it)."""
        return from_ms(self.val_from_ms)


# --- data ---------------------------------------------------------------------------------------
def per_symbol(total: int | None, symbols: int) -> int | None:
    """A total budget of bars shared equally by ``symbols`` (at least 1 each; None: no cap)."""
    return None if total is None else max(1, total // max(1, symbols))


def recent_history(history: History, max_rows: int | None) -> History:
    """Each symbol's last ``max_rows / symbols`` vectors, without the bars (training reads
    only the feature vectors; leaving the bars out cuts the child's pickle by ~15%)."""
    n = per_symbol(max_rows, len(history.vectors))
    return History(
        vectors={s: (vs[-n:] if n is not None else vs) for s, vs in history.vectors.items()},
        rows_in=history.rows_in,
        ticks=history.ticks,
        dead_letters=history.dead_letters,
    )


def history_before(history: History, cut_ms: int, max_bars: int | None) -> History:
    """Per symbol, the last ``max_bars`` vectors that close strictly before ``cut_ms``."""
    out = History()
    for symbol, vectors in history.vectors.items():
        end = bisect.bisect_left(vectors, cut_ms, key=lambda v: to_ms(v.ts))
        start = 0 if max_bars is None else max(0, end - max_bars)
        out.vectors[symbol] = vectors[start:end]
    return out


def history_between(
    history: History, from_ms: int, cut_ms: int, context: int, min_bars: int, max_bars: int | None
) -> History:
    """Per symbol, the vectors closing in ``[from_ms, cut_ms)`` with ``context`` bars before
    them (the input window of the first new target), at least ``min_bars`` and at most
    ``max_bars`` (the last ones) where the symbol has them before ``cut_ms``."""
    out = History()
    for symbol, vectors in history.vectors.items():

        def key(v: Any) -> int:
            return to_ms(v.ts)

        end = bisect.bisect_left(vectors, cut_ms, key=key)
        first = bisect.bisect_left(vectors, from_ms, key=key, hi=end)
        start = max(0, min(first - context, end - min_bars))
        if max_bars is not None:
            start = max(start, end - max(max_bars, min_bars))
        out.vectors[symbol] = vectors[start:end]
    return out


def embargo_ms(history: History, label_cfg: LabelConfig, config: CycleConfig) -> int:
    """``config.embargo_bars`` (None: the label horizon) in ms of this history's bars."""
    bars = label_cfg.horizon if config.embargo_bars is None else config.embargo_bars
    return bars * bar_ms(history)


def cycle_split(
    data: TrainingSet, config: CycleConfig, embargo: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, early-stopping and validation indices of a cycle: :func:`purged_split` with
    the config's fractions and ``embargo`` ms (module docstring, step 2)."""
    train, es, val = purged_split(data.ts_ms, data.label_end_ms, config.fractions(), embargo)
    return train, es, val


def resolve_label_end(extra: TrainingSet, assumed_ms: int) -> tuple[TrainingSet, int]:
    """``extra`` with every unknown ``label_end_ms`` set to ``ts + assumed_ms``, and how many
    were unknown (trade rows from callers that do not pass exit times)."""
    unknown = extra.label_end_ms == LABEL_END_UNKNOWN
    if not unknown.any():
        return extra, 0
    ends = np.where(
        unknown, np.asarray(extra.ts_ms, dtype=np.int64) + assumed_ms, extra.label_end_ms
    )
    return dataclasses.replace(extra, label_end_ms=ends), int(unknown.sum())


def concat_rows(
    data: TrainingSet, train_idx: np.ndarray, cut_ms: int, extra: TrainingSet | None
) -> tuple[TrainingSet, np.ndarray, int]:
    """``data`` with the ``extra`` rows whose label ends before ``cut_ms`` appended, the
    training indices extended by them, and how many extra rows were held out (label known at
    or after the cut, or never: :data:`~models.dataset.LABEL_END_UNKNOWN`).

    Pass the next slice's start less the embargo as ``cut_ms``. Rows of ``data`` keep their
    indices, so validation indices stay valid.
    """
    if extra is None or len(extra) == 0:
        return data, train_idx, 0
    if (
        tuple(extra.feature_names) != tuple(data.feature_names)
        or extra.X.shape[1:] != data.X.shape[1:]
    ):
        raise ValueError(
            f"extra_rows have columns {list(extra.feature_names)}, the training "
            f"set {list(data.feature_names)}"
        )
    lengths = {
        "X": len(extra.X),
        "y": len(extra.y),
        "ts_ms": len(extra.ts_ms),
        "symbols": len(extra.symbols),
        "forward_return": len(extra.forward_return),
        "threshold": len(extra.threshold),
        "vectors": len(extra.vectors),
        "label_end_ms": len(extra.label_end_ms),
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"extra_rows fields differ in length: {lengths}")
    keep = np.flatnonzero(np.asarray(extra.label_end_ms) < cut_ms)
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
        label_end_ms=np.concatenate([data.label_end_ms, extra.label_end_ms]),
    )
    idx = np.concatenate([train_idx, np.arange(len(data), len(merged), dtype=train_idx.dtype)])
    return merged, idx, held_out


def warm_window(ts_ms: np.ndarray, since_ms: int | None, min_rows: int) -> tuple[int, str | None]:
    """Where a warm start's data begins: ``(from_ms, fallback)``; rows with
    ``ts >= from_ms`` train it.

    Normally the rows after ``since_ms`` (production's data end). With fewer than
    ``min_rows`` of them, or no ``since_ms``, the most recent ``min_rows`` rows (all, if
    there are fewer), and ``fallback`` says why.
    """
    ts = np.sort(np.asarray(ts_ms, dtype=np.int64))
    if len(ts) == 0:
        return 0, "no training rows"
    if since_ms is not None:
        new = len(ts) - int(np.searchsorted(ts, since_ms, "right"))
        if new >= min_rows:
            return int(since_ms) + 1, None
        why = (
            f"only {new} rows after production's data end {iso(from_ms(int(since_ms)))} "
            f"(fewer than min_rows={min_rows})"
        )
    else:
        why = "production's data end is unknown"
    start = int(ts[max(0, len(ts) - min_rows)])
    kept = len(ts) - int(np.searchsorted(ts, start, "left"))
    return start, f"{why}: the most recent {kept} rows, from {iso(from_ms(start))}"


# --- the cycle ----------------------------------------------------------------------------------
def _classes(preds: list[tuple[Any, float]]) -> np.ndarray:
    return np.array([CLASS_OF[a] for a, _ in preds], dtype=np.int64)


def _base_since(base: Any, since_ms: int | None) -> int | None:
    """Production's data end: the later of the caller's ``since_ms`` and what the artifact
    recorded (a model trained further than the caller knows has seen those rows)."""
    recorded = base.meta.get("last_train_ts_ms")
    known = [int(t) for t in (since_ms, recorded) if t is not None]
    return max(known) if known else None


def _warm_seq_params(config_params: SeqParams, base: Any, config: CycleConfig) -> SeqParams:
    """The base's architecture and loss with this cycle's smaller fine-tuning budget."""
    steps = max(1, round(config_params.max_steps * config.warm_seq_step_fraction))
    return replace(
        base.params,
        max_steps=steps,
        learning_rate=config_params.learning_rate * config.warm_seq_lr_scale,
        batch_size=config_params.batch_size,
        windows_batch_size=config_params.windows_batch_size,
    )


@dataclass
class _Prepared:
    """A cycle's data once labelled and split (what each model's training reads)."""

    history: History
    data: TrainingSet
    fit_data: TrainingSet  # ``data`` with the kept trade rows appended
    fit_idx: np.ndarray  # training rows of the trees: ``train`` + trade rows
    train: np.ndarray
    es: np.ndarray
    val: np.ndarray
    embargo: int
    seq_cut: int  # the sequence models train on bars closing before it
    seq_cap: int | None  # bars per symbol
    seq_history: History
    held_out: int  # trade rows whose label ends too late
    assumed: int  # trade rows that came without label_end_ms

    @functools.cached_property
    def bar_ts(self) -> np.ndarray:
        """Close times of every bar in the window (all symbols, unsorted)."""
        return np.array(
            [to_ms(v.ts) for vs in self.history.vectors.values() for v in vs], dtype=np.int64
        )


def _variant_dirs(out_dir: Path, warm_from: Mapping[str, Path]) -> dict[str, Path]:
    """Each variant's (model's, and warm-started model's) output directory, checked before
    any training: known models only, and no directory already holding files (a result must
    never mix two cycles' files)."""
    unknown = sorted(set(warm_from) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"warm_from names unknown models {unknown}; known: {MODEL_NAMES}")
    dirs = {name: out_dir / name for name in MODEL_NAMES}
    dirs.update({warm_name(name): out_dir / warm_name(name) for name in warm_from})
    for p in dirs.values():
        if p.exists() and any(p.iterdir()):
            raise FileExistsError(f"{p} already holds files: give each cycle a fresh out_dir")
    return dirs


def train_all(
    history: History,
    extra_rows: TrainingSet | None,
    label_cfg: LabelConfig,
    config: CycleConfig,
    out_dir: Path,
    warm_from: Mapping[str, Path] | None = None,
    since_ms: int | None = None,
) -> CycleResult:
    """Retrain all four models on ``history`` (+ ``extra_rows``) into ``out_dir/<model>/``;
    with ``warm_from`` (model -> production artifact directory), also warm-start those
    models from production on the data after ``since_ms`` (when production's training data
    ended) into ``out_dir/<model>.warm/`` (module docstring).

    Pure: reads its arguments, writes only under ``out_dir`` (each model's directory must not
    exist yet, or be empty, so a result never mixes two cycles' files). Runs with one thread.
    In a process that also serves the models from other threads use :class:`TrainingJob`:
    building neuralforecast modules beside a live forward is not thread-safe
    (:data:`runtime.MODEL_LOCK`).
    """
    started = time.perf_counter()
    cap_threads()
    out_dir = Path(out_dir)
    warm_from = {name: Path(p) for name, p in (warm_from or {}).items()}
    dirs = _variant_dirs(out_dir, warm_from)

    c = _prepare(history, extra_rows, label_cfg, config)
    data, val = c.data, c.val
    val_vectors = [data.vectors[i] for i in val]
    seconds = {"prepare": time.perf_counter() - started}

    def report(pred: np.ndarray) -> dict[str, float]:
        r = classification_report(data.y[val], pred, data.forward_return[val], data.threshold[val])
        return {f"val_{k}": float(v) for k, v in r.items()}

    votes: dict[str, list[tuple[Any, float]]] = {}  # from-scratch models, for the ensemble

    def score(variant: str, model: Any) -> dict[str, float]:
        preds = model.predict(val_vectors)
        if variant in MODEL_NAMES:
            votes[variant] = preds
        return report(_classes(preds))

    trainers = {
        "xgboost": lambda: XGBoostModel.train(
            c.fit_data, c.fit_idx, c.es, config.tree, config.seed
        ),
        "lightgbm": lambda: LightGBMModel.train(
            c.fit_data, c.fit_idx, c.es, config.tree, config.seed
        ),
        "nhits": lambda: NHITSModel.train(
            c.seq_history, c.seq_cut, label_cfg, config.nhits, config.seed
        ),
        "patchtst": lambda: PatchTSTModel.train(
            c.seq_history, c.seq_cut, label_cfg, config.patchtst, config.seed
        ),
    }
    paths: dict[str, Path] = {}
    metrics: dict[str, dict[str, float]] = {}
    warm: dict[str, dict[str, Any]] = {}
    fit_seconds: dict[str, float] = {}
    model: Any  # a trained model of any of the four kinds (each has save())
    for name in MODEL_NAMES:
        variants = [name] + ([warm_name(name)] if name in warm_from else [])
        for variant in variants:
            t0 = time.perf_counter()
            if variant == name:
                model = trainers[name]()
            else:
                model, warm[variant] = _train_warm(
                    name, warm_from[name], since_ms, c, label_cfg, config
                )
                if model is None:
                    continue
            fit_seconds[variant] = time.perf_counter() - t0
            model.save(dirs[variant])
            paths[variant] = dirs[variant]
            metrics[variant] = score(variant, model)
            seconds[variant] = time.perf_counter() - t0
            del model
    base_report = constant_baseline(data.y[c.train], data.y[val])
    metrics["baseline"] = {"val_macro_f1": float(base_report["macro_f1"])}
    metrics["ensemble"] = report(ensemble_classes(votes, val_vectors))
    seconds["total"] = time.perf_counter() - started
    rows = {
        "train": len(c.train),
        "extra": len(c.fit_idx) - len(c.train),
        "extra_held_out": c.held_out,
        "extra_assumed_end": c.assumed,
        "es": len(c.es),
        "val": len(val),
        "purged": len(data) - len(c.train) - len(c.es) - len(val),
        "symbols": len(c.history.symbols),
        "seq_bars": sum(len(v) for v in c.seq_history.vectors.values()),
    }
    return CycleResult(
        out_dir=out_dir,
        paths=paths,
        metrics=metrics,
        rows=rows,
        train_from_ms=int(data.ts_ms[c.train].min()),
        train_to_ms=int(data.ts_ms[c.train].max()),
        val_from_ms=int(data.ts_ms[val].min()),
        val_to_ms=int(data.ts_ms[val].max()),
        seconds=seconds,
        pid=os.getpid(),
        es_from_ms=int(data.ts_ms[c.es].min()),
        es_to_ms=int(data.ts_ms[c.es].max()),
        embargo_ms=c.embargo,
        warm=warm,
        fit_seconds=fit_seconds,
    )


def ensemble_classes(
    votes: Mapping[str, list[tuple[Any, float]]], vectors: list[Any]
) -> np.ndarray:
    """The audit ensemble's class on each vector from the four models' votes (the live
    rules, :func:`operators.ensemble.signal_of`, with the audit weights)."""
    cfg = EnsembleConfig()
    out = np.zeros(len(vectors), dtype=np.int64)
    for i, v in enumerate(vectors):
        ballot = [Vote(n, "", votes[n][i][0], float(votes[n][i][1])) for n in MODEL_NAMES]
        out[i] = CLASS_OF[signal_of(v, ballot, cfg).action]
    return out


def _prepare(
    history: History, extra_rows: TrainingSet | None, label_cfg: LabelConfig, config: CycleConfig
) -> _Prepared:
    """Steps 1-3 of the module docstring: window, labels, purged slices, trade rows."""
    history = recent_history(history, config.max_rows)
    data = build_training_set(history, label_cfg)
    if len(data) < config.min_rows:
        raise ValueError(
            f"training cycle: {len(data)} labelled rows, at least "
            f"{config.min_rows} are needed to train and validate"
        )
    embargo = embargo_ms(history, label_cfg, config)
    train, es, val = cycle_split(data, config, embargo)
    if len(train) == 0 or len(es) == 0 or len(val) == 0:
        raise ValueError(
            f"training cycle: empty split (train {len(train)}, early stopping "
            f"{len(es)}, val {len(val)})"
        )
    assumed = 0
    if extra_rows is not None and len(extra_rows):
        extra_rows, assumed = resolve_label_end(extra_rows, config.trade_label_ms)
    es_cut = int(data.ts_ms[es].min())
    fit_data, fit_idx, held_out = concat_rows(data, train, es_cut - embargo, extra_rows)
    seq_cut = int(data.ts_ms[val].min()) - embargo
    seq_cap = per_symbol(config.seq_max_bars, len(history.symbols))
    return _Prepared(
        history,
        data,
        fit_data,
        fit_idx,
        train,
        es,
        val,
        embargo,
        seq_cut,
        seq_cap,
        history_before(history, seq_cut, seq_cap),
        held_out,
        assumed,
    )


def _train_warm(
    name: str,
    directory: Path,
    since_ms: int | None,
    c: _Prepared,
    label_cfg: LabelConfig,
    config: CycleConfig,
) -> tuple[Any, dict[str, Any]]:
    """Model ``name`` warm-started from production's artifact in ``directory`` (module
    docstring), and how (``CycleResult.warm``); None and the reason if it cannot be."""
    info: dict[str, Any] = {"base": str(directory)}
    cls = MODEL_CLASSES[name]
    context = _window_length_of(c.history)
    try:
        base = cls.load(directory)
        if name in SEQUENCE_MODELS and (base.input_size, base.horizon) != (
            context,
            label_cfg.horizon,
        ):
            raise ValueError(
                f"production has input {base.input_size} / horizon "
                f"{base.horizon}, the data {context} / {label_cfg.horizon}"
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        info["skipped"] = f"production model not usable: {type(exc).__name__}: {exc}"
        return None, info
    since = _base_since(base, since_ms)
    info["since_ms"] = since
    # Production's last labels end a horizon after its data end: inside validation?
    val_cut = int(c.data.ts_ms[c.val].min())
    info["overlaps_val"] = (
        since is not None and since + label_cfg.horizon * bar_ms(c.history) >= val_cut
    )
    if name in SEQUENCE_MODELS:
        start, info["fallback"] = warm_window(
            c.bar_ts[c.bar_ts < c.seq_cut], since, config.min_rows
        )
        params = _warm_seq_params(getattr(config, name), base, config)
        warm_history = history_between(
            c.history, start, c.seq_cut, context, context + label_cfg.horizon + 1, c.seq_cap
        )
        model = cls.train(warm_history, c.seq_cut, label_cfg, params, config.seed, base=base)
        info.update(
            rows=sum(len(v) for v in warm_history.vectors.values()),
            steps=params.max_steps,
            learning_rate=params.learning_rate,
        )
    else:
        start, info["fallback"] = warm_window(c.data.ts_ms[c.train], since, config.min_rows)
        warm_idx = c.fit_idx[c.fit_data.ts_ms[c.fit_idx] >= start]
        model = cls.train(c.fit_data, warm_idx, c.es, config.tree, config.seed, base=base)
        info.update(rows=len(warm_idx), base_rounds=base.n_rounds(), rounds=model.n_rounds())
    info["from_ms"] = int(start)
    return model, info


def _window_length_of(history: History) -> int:
    """The feature window's length (the sequence models' input size); 0 if empty."""
    for vectors in history.vectors.values():
        if vectors:
            return len(vectors[0].window)
    return 0


def copy_writer(src: Path) -> Callable[[Path], list[Path]]:
    """A ``write(directory)`` for :meth:`models.registry.ModelRegistry.publish` that copies a
    cycle's artifact directory (the files as trained, nothing re-serialised)."""

    def write(directory: Path) -> list[Path]:
        return [
            Path(shutil.copy2(p, Path(directory) / p.name))
            for p in sorted(Path(src).iterdir())
            if p.is_file()
        ]

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
    threading.Thread(
        target=_exit_with_parent, args=(parent_pid,), name="qt-parent-watch", daemon=True
    ).start()


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


class InlineTraining:
    """Runs :func:`train_all` in this process, at :meth:`start` (``QT_CLM_BLOCKING``): the
    flow waits for the cycle anyway, so the ~5 s of a child's start-up and imports buy
    nothing. Holds :data:`runtime.MODEL_LOCK` while it trains (building neuralforecast
    modules beside another worker's forward is not thread-safe). The interface of
    :class:`TrainingJob`."""

    def __init__(self) -> None:
        self._result: CycleResult | None = None
        self._error: BaseException | None = None
        self._out_dir: Path | None = None

    @property
    def running(self) -> bool:
        return False

    def start(
        self,
        history: History,
        extra_rows: TrainingSet | None,
        label_cfg: LabelConfig,
        config: CycleConfig,
        out_dir: Path,
        warm_from: Mapping[str, Path] | None = None,
        since_ms: int | None = None,
    ) -> None:
        if self._result is not None or self._error is not None:
            raise RuntimeError("a training cycle's result was not collected with poll()")
        from runtime import MODEL_LOCK

        self._out_dir = Path(out_dir)
        started = time.perf_counter()
        try:
            with MODEL_LOCK:
                result = train_all(
                    recent_history(history, config.max_rows),
                    extra_rows,
                    label_cfg,
                    config,
                    self._out_dir,
                    warm_from,
                    since_ms,
                )
            self._result = replace(result, wall_seconds=time.perf_counter() - started)
        except Exception as exc:  # reported by poll(), as a child's failure would be
            self._error = exc

    def poll(self) -> CycleResult | None:
        result, error = self._result, self._error
        self._result = self._error = None
        if error is not None:
            raise TrainingError(
                f"training cycle into {self._out_dir} failed: {type(error).__name__}: {error}"
            ) from error
        return result

    def wait(self, timeout: float | None = None) -> CycleResult:
        result = self.poll()
        if result is None:
            raise RuntimeError("no training cycle to wait for")
        return result

    def shutdown(self) -> None:
        self._result = self._error = None


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
            raise ValueError(
                f"niceness must be >= 0 (a child cannot outrank the flow), got {niceness}"
            )
        self.niceness = niceness
        self._executor: ProcessPoolExecutor | None = None
        self._future: Future[CycleResult] | None = None
        self._started = 0.0
        self._out_dir: Path | None = None

    @property
    def running(self) -> bool:
        return self._future is not None and not self._future.done()

    def start(
        self,
        history: History,
        extra_rows: TrainingSet | None,
        label_cfg: LabelConfig,
        config: CycleConfig,
        out_dir: Path,
        warm_from: Mapping[str, Path] | None = None,
        since_ms: int | None = None,
    ) -> None:
        """Start a cycle and return at once (the child starts and imports in the background);
        the arguments are :func:`train_all`'s."""
        if self._future is not None:
            raise RuntimeError(
                "a training cycle is running or its result was not collected "
                "with poll(); one cycle at a time"
            )
        self._close(kill=False)
        ctx = multiprocessing.get_context("spawn")
        priority = min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.niceness)
        self._executor = ProcessPoolExecutor(
            max_workers=1, mp_context=ctx, initializer=_child_init, initargs=(priority, os.getpid())
        )
        self._out_dir = Path(out_dir)
        self._started = time.perf_counter()
        self._future = self._executor.submit(
            train_all,
            recent_history(history, config.max_rows),
            extra_rows,
            label_cfg,
            config,
            self._out_dir,
            None if warm_from is None else {k: Path(v) for k, v in warm_from.items()},
            since_ms,
        )
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
            raise TrainingError(
                f"training cycle into {self._out_dir} failed after {wall:.1f} "
                f"s in the child process: {type(exc).__name__}: {exc}"
            ) from exc
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

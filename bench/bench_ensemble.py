"""Benchmark: the ensemble step's cost per decision at 1, 64 and 1,000 symbols, old vs new.

Both paths score the same real feature vectors with the same trained models and decide with
the audit's rules (:meth:`operators.ensemble.Scorer.score`: every model's votes, then
:func:`~operators.ensemble.signal_of` per vector); "n symbols" are n real vectors whose bars
closed together, scored in one call.

- **old**: the path before issue 11, kept as the models' reference methods: each model
  called through ``predict(vectors)`` (its own feature or window matrix, a Python loop for
  the vote rule); XGBoost ``inplace_predict`` and LightGBM's raw ``Booster.predict``;
  N-HiTS and PatchTST as neuralforecast's modules in float64, the whole batch in one forward
  (a TorchScript trace for one window).
- **new**: what the live flow runs now: one :class:`models.base.VectorBatch` shared by the
  four models (``vote_arrays``), the trees as NumPy forests (the native library above
  ``NATIVE_MIN_WORK`` rows x trees), N-HiTS and PatchTST as plain torch modules in
  fixed-shape float32 chunks, the vote rules on arrays.

Times are CPU seconds of this process (``time.process_time``): on a shared 2-core machine the
wall clock mostly measures the neighbours. Old and new alternate, round after round, and the
ratio is taken from the medians of the same run. The agreement line compares the two paths'
signals on every vector of the sample (warm-up bars included).

Models: trained here on the bundled sample's training days (small budgets: speed does not
depend on skill), or a registry's production versions with ``--registry DIR``. A tree model
of the bootstrap has few rounds; ``--tree-rounds N`` forces N rounds (no early stopping) to
show the cost of big forests.

    python bench/bench_ensemble.py [--registry DIR] [--rounds 7] [--tree-rounds 100]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.base import MODEL_NAMES, VectorBatch
from models.dataset import build_training_set, feature_matrix, time_split
from models.labels import LabelConfig, label_threshold
from models.sequence import (
    NHITSModel,
    NHITSParams,
    PatchTSTModel,
    PatchTSTParams,
    signal_from_forecast,
)
from models.trees import LightGBMModel, TreeParams, XGBoostModel
from operators.ensemble import EnsembleConfig, LoadedModel, ModelSource, Scorer
from runtime import cap_threads
from schemas.features import FeatureVector
from schemas.signals import ACTION_OF, Action
from settings import SAMPLE_TICKS, Settings
from training.history import history_from_ticks

SIZES = (1, 64, 1000)


class Fixed(ModelSource):
    def __init__(self, loaded: list[LoadedModel]) -> None:
        self.loaded = loaded

    def current(self) -> list[LoadedModel]:
        return self.loaded


def old_predict(model: Any) -> Callable[[Sequence[FeatureVector]], list[tuple[Action, float]]]:
    """The pre-issue-11 ``predict`` of a model, through its reference methods."""
    if isinstance(model, XGBoostModel | LightGBMModel):

        def trees(vectors: Sequence[FeatureVector]) -> list[tuple[Action, float]]:
            proba = model.reference_proba(feature_matrix(vectors))
            best = proba.argmax(axis=1)
            conf = proba[np.arange(len(best)), best]
            return [(ACTION_OF[int(c)], float(p)) for c, p in zip(best, conf, strict=True)]

        return trees

    def seq(vectors: Sequence[FeatureVector]) -> list[tuple[Action, float]]:
        windows = np.array([v.window for v in vectors], dtype=np.float64)
        cum = model.reference_forecast_windows(windows).sum(axis=1)
        return [
            signal_from_forecast(
                float(r), label_threshold(v.values["vol_ewma"], v.values["spread_bps"], model.cfg)
            )
            for v, r in zip(vectors, cum, strict=True)
        ]

    return seq


def train_models(tree_rounds: int | None) -> dict[str, Any]:
    settings = Settings.from_env({})
    labels = LabelConfig.from_settings(settings)
    history = history_from_ticks(str(settings.bootstrap_ticks), settings)
    data = build_training_set(history, labels)
    train, val, _ = time_split(data.ts_ms, gap=20)
    cut = int(data.ts_ms[val].min())
    tree = (
        TreeParams()
        if tree_rounds is None
        else TreeParams(max_rounds=tree_rounds, early_stopping_rounds=tree_rounds)
    )
    return {
        "xgboost": XGBoostModel.train(data, train, val, tree),
        "lightgbm": LightGBMModel.train(data, train, val, tree),
        "nhits": NHITSModel.train(history, cut, labels, NHITSParams(max_steps=50)),
        "patchtst": PatchTSTModel.train(history, cut, labels, PatchTSTParams(max_steps=50)),
    }


def registry_models(root: str) -> dict[str, Any]:
    from models.registry import ModelRegistry

    registry = ModelRegistry(Path(root))
    return {name: registry.load(name) for name in MODEL_NAMES}


def score_times(scorer: Scorer, batch: list[FeatureVector], k: int) -> None:
    for _ in range(k):
        scorer.score(batch)


def vote_fresh(fn: Callable[[VectorBatch], object], batch: list[FeatureVector]) -> None:
    """One model's votes on a fresh batch (its matrices built anew, as a lone model would)."""
    fn(VectorBatch(batch))


def cpu_ms(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", help="load the production models of this registry")
    ap.add_argument("--rounds", type=int, default=7, help="alternating old/new rounds")
    ap.add_argument("--tree-rounds", type=int, help="train trees with exactly N rounds")
    args = ap.parse_args()
    cap_threads(1)
    models = registry_models(args.registry) if args.registry else train_models(args.tree_rounds)
    settings = Settings.from_env({})
    vectors = history_from_ticks(str(SAMPLE_TICKS), settings)  # the replay days
    every = [v for s in vectors.symbols for v in vectors.vectors[s]]
    warm = [v for v in every if v.warm and np.isfinite(v.window).all()]
    cfg = EnsembleConfig()
    old = Scorer(Fixed([LoadedModel(n, "old", old_predict(models[n])) for n in MODEL_NAMES]), cfg)
    new = Scorer(Fixed([LoadedModel.of(n, "new", models[n]) for n in MODEL_NAMES]), cfg)
    trees = {n: models[n].forest.n_trees for n in ("xgboost", "lightgbm")}
    print(
        f"models: {'registry ' + args.registry if args.registry else 'trained here'}; "
        f"trees: xgboost {trees['xgboost']}, lightgbm {trees['lightgbm']}"
    )

    # agreement on every vector of the replay days (warm-up bars included)
    a, b = old.score(every), new.score(every)
    same_action = sum(x.action == y.action for x, y in zip(a, b, strict=True))
    print(
        f"agreement on {len(every)} bars of the sample's replay days: {same_action} "
        f"signals with the same action"
    )
    for i, name in enumerate(MODEL_NAMES):
        va = [s.votes[i] for s in a]
        vb = [s.votes[i] for s in b]
        acts = sum(x.action == y.action for x, y in zip(va, vb, strict=True))
        diff = max(abs(x.confidence - y.confidence) for x, y in zip(va, vb, strict=True))
        print(f"  {name:<9} votes: {acts} same action, max |confidence difference| {diff:.3g}")
    conf = max(abs(x.confidence - y.confidence) for x, y in zip(a, b, strict=True))
    print(f"  ensemble confidence: max |difference| {conf:.3g}")

    rng = np.random.default_rng(0)
    batches = {
        n: [[warm[i] for i in rng.choice(len(warm), n, replace=False)] for _ in range(3)]
        for n in SIZES
    }
    times: dict[tuple[str, int], list[float]] = {}
    for n in SIZES:  # warm both paths (traces, lazy imports) before timing
        old.score(batches[n][0])
        new.score(batches[n][0])
    for r in range(args.rounds):
        for n in SIZES:
            batch = batches[n][r % 3]
            reps = max(1, 64 // n)
            for label, scorer in (("old", old), ("new", new)):
                t = cpu_ms(functools.partial(score_times, scorer, batch, reps))
                times.setdefault((label, n), []).append(t / reps / n)
    print(
        f"per decision (CPU ms, median of {args.rounds} rounds; a decision = every model's "
        f"vote + the ensemble's rules):"
    )
    print(f"  {'symbols':>7}  {'old':>8}  {'new':>8}  old/new")
    for n in SIZES:
        o = statistics.median(times[("old", n)])
        w = statistics.median(times[("new", n)])
        print(f"  {n:>7}  {o:8.4f}  {w:8.4f}  {o / w:6.1f}x")
    print("new path per model (CPU ms per call):")
    for m in new.models.current():
        row = []
        for n in SIZES:
            assert m.vote_arrays is not None
            call = functools.partial(vote_fresh, m.vote_arrays, batches[n][0])
            row.append(statistics.median(cpu_ms(call) for _ in range(5)))
        print(
            f"  {m.name:<9} "
            + "  ".join(f"{n:>4}: {t:7.3f}" for n, t in zip(SIZES, row, strict=True))
        )


if __name__ == "__main__":
    main()

"""Benchmark: the ensemble step's cost per decision, against the naive path, in one run.

- **ensemble step**: :class:`operators.ensemble.Scorer` (what the live flow runs): one batched
  call per model for all symbols closing a bar together; direct torch forwards for N-HiTS and
  PatchTST, raw Booster paths for the trees; the audit's consensus rules.
- **naive path**: per decision, each model's high-level predict: XGBoost ``Booster.predict``
  on a ``DMatrix``, LightGBM's scikit-learn-style ``predict`` on a DataFrame, and
  ``NeuralForecast.predict()`` for N-HiTS and PatchTST.

Models are trained on the bundled sample (small budgets: speed does not depend on how well they
predict), single-threaded like in the flow. Decisions use real feature vectors of the sample;
"64 symbols" are 64 real vectors scored together.

    python bench/bench_ensemble.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from models.base import MODEL_NAMES, cap_threads
from models.dataset import build_training_set, feature_matrix, history_from_ticks, time_split
from models.labels import LabelConfig
from models.sequence import NHITSModel, NHITSParams, PatchTSTModel, PatchTSTParams
from models.trees import LightGBMModel, TreeParams, XGBoostModel
from operators.ensemble import EnsembleConfig, LoadedModel, ModelSource, Scorer, decide
from operators.features import FEATURE_NAMES
from schemas.features import FeatureVector
from schemas.signals import ACTION_OF, Vote
from settings import SAMPLE_TICKS, Settings


class Fixed(ModelSource):
    def __init__(self, models: dict) -> None:
        self.loaded = [LoadedModel(n, "bench", models[n].predict) for n in MODEL_NAMES]

    def current(self) -> list[LoadedModel]:
        return self.loaded


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def naive_decision(models: dict, v: FeatureVector, history_frames: dict[str, pd.DataFrame],
                   cfg: EnsembleConfig) -> None:
    import xgboost as xgb

    x = feature_matrix([v])
    votes = []
    p = models["xgboost"].booster.predict(xgb.DMatrix(x, feature_names=list(FEATURE_NAMES)))
    votes.append(Vote("xgboost", "", ACTION_OF[int(p[0].argmax())], float(p[0].max())))
    p = models["lightgbm"].booster.predict(pd.DataFrame(x, columns=list(FEATURE_NAMES)))
    votes.append(Vote("lightgbm", "", ACTION_OF[int(p[0].argmax())], float(p[0].max())))
    for name in ("nhits", "patchtst"):
        fc = models[name].nf.predict(df=history_frames[v.symbol])
        r = float(fc.iloc[:, -1].sum()) / 1e4
        votes.append(Vote(name, "", ACTION_OF[1 if r > 0 else 2], 0.5))
    decide(votes, v.values["vol_daily"], cfg)


def window_frame(v: FeatureVector) -> pd.DataFrame:
    """The NeuralForecast input whose last input_size rows are the vector's window."""
    y = np.asarray(v.window) * 1e4
    return pd.DataFrame({"unique_id": v.symbol, "ds": np.arange(len(y)), "y": y})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    cap_threads(1)
    settings = Settings.from_env({})
    cfg_labels = LabelConfig.from_settings(settings)
    history = history_from_ticks(str(SAMPLE_TICKS), settings)
    data = build_training_set(history, cfg_labels)
    train, val, _ = time_split(data.ts_ms, gap=20)
    cut = int(data.ts_ms[val].min())
    models = {
        "xgboost": XGBoostModel.train(data, train, val, TreeParams()),
        "lightgbm": LightGBMModel.train(data, train, val, TreeParams()),
        "nhits": NHITSModel.train(history, cut, cfg_labels, NHITSParams(max_steps=50)),
        "patchtst": PatchTSTModel.train(history, cut, cfg_labels, PatchTSTParams(max_steps=50)),
    }
    vectors = [data.vectors[i] for i in val][:64 * 4]
    cfg = EnsembleConfig()
    scorer = Scorer(Fixed(models), cfg)

    one: Sequence[FeatureVector]
    i = iter(range(10**9))

    def step_one() -> None:
        scorer.score([vectors[next(i) % len(vectors)]])

    def step_64() -> None:
        k = next(i) % 4
        scorer.score(vectors[64 * k:64 * (k + 1)])

    frames = {v.symbol: window_frame(v) for v in vectors[:1]}
    one = vectors[:1]

    def naive_one() -> None:
        naive_decision(models, one[0], frames, cfg)

    t_one = median_ms(step_one, args.repeats)
    t_64 = median_ms(step_64, max(20, args.repeats // 4)) / 64
    t_naive = median_ms(naive_one, max(20, args.repeats // 10))
    print(f"ensemble step, 1 symbol:     {t_one:7.3f} ms per decision (median)")
    print(f"ensemble step, 64 symbols:   {t_64:7.3f} ms per decision (median batch / 64)")
    print(f"naive path, 1 symbol:        {t_naive:7.3f} ms per decision (median)")
    print(f"speed-up vs naive: {t_naive / t_one:.1f}x (1 symbol), "
          f"{t_naive / t_64:.1f}x (64 symbols)")
    for name in MODEL_NAMES:
        m = models[name]
        print(f"  {name:<9} direct predict 1: {median_ms(lambda m=m: m.predict(one), 100):.3f} ms"
              f", 64: {median_ms(lambda m=m: m.predict(vectors[:64]), 50):.3f} ms")


if __name__ == "__main__":
    main()

"""The one interface every signal model implements.

A model maps feature vectors (one per symbol, all at the same kind of bar close) to
``(action, confidence)`` pairs; :class:`~schemas.signals.Vote` adds its name and version.
Batch first: the ensemble step calls :meth:`SignalModel.predict` once for all the symbols (and
bars) that are ready, so per-call overhead is paid once.

Artifacts are native formats only (XGBoost UBJ, LightGBM text, torch state dicts loaded with
``weights_only=True``, SB3 zip) plus a JSON of hyper-parameters: no pickles.

Threads: Bytewax workers already use the two cores, so every model runs its inference with
one thread (:func:`runtime.cap_threads`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from schemas.features import FeatureVector
from schemas.signals import Action

if TYPE_CHECKING:
    import numpy as np

MODEL_NAMES = ("xgboost", "lightgbm", "nhits", "patchtst")
# The training stack: the live flow serves the models without importing any of it (start-up
# time; tests/models/test_serving.py checks it, bench/bench_startup.py reports it).
TRAINING_STACK = (
    "neuralforecast",
    "lightning",
    "pytorch_lightning",
    "ray",
    "optuna",
    "sklearn",
    "scipy",
    "xgboost",
    "lightgbm",
    "torch._dynamo",
)

POLICY_NAME = "ppo"
Prediction = tuple[Action, float]


@runtime_checkable
class SignalModel(Protocol):
    """A trained model that votes BUY / SELL / HOLD with a confidence in [0, 1]."""

    name: ClassVar[str]

    def predict(self, vectors: Sequence[FeatureVector]) -> list[Prediction]:
        """One (action, confidence) per vector. May raise; the ensemble turns a raise (or a
        NaN confidence) into HOLD with confidence 0 and counts it."""
        ...

    def vote_arrays(self, batch: VectorBatch) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict` as arrays: class ids (0 HOLD, 1 BUY, 2 SELL) and confidences,
        one per vector of ``batch`` (what the ensemble calls: no per-vector Python)."""
        ...

    def save(self, directory: Path) -> list[Path]:
        """Write the model's native artifact files into ``directory``; return their paths."""
        ...

    @classmethod
    def load(cls, directory: Path) -> SignalModel:
        """Rebuild a model saved by :meth:`save` (no pickles)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Hyper-parameters and anything else worth recording in the registry."""
        ...


class VectorBatch:
    """Feature vectors scored together, with the arrays the models read built once.

    Every model of the ensemble used to turn the same vectors into the same matrices (the
    trees a feature matrix each, the forecasters a window matrix each); at a thousand symbols
    that Python loop cost as much as a model. The ensemble hands one batch to every model
    (:meth:`SignalModel.vote_arrays`), so each array is built once, on first use.
    """

    def __init__(self, vectors: Sequence[FeatureVector]) -> None:
        self.vectors = vectors

    def __len__(self) -> int:
        return len(self.vectors)

    @functools.cached_property
    def features(self) -> np.ndarray:
        """``(n, len(FEATURE_NAMES))`` float64, the canonical column order."""
        from models.dataset import feature_matrix

        return feature_matrix(self.vectors)

    @functools.cached_property
    def windows(self) -> np.ndarray:
        """``(n, L)`` one-bar log returns; raises if the vectors' windows differ in length."""
        import numpy as np

        lengths = {len(v.window) for v in self.vectors}
        if len(lengths) > 1:
            raise ValueError(f"windows of lengths {sorted(lengths)} in one batch")
        n, width = len(self.vectors), lengths.pop() if lengths else 0
        flat = chain.from_iterable([v.window for v in self.vectors])
        return np.fromiter(flat, np.float64, n * width).reshape(n, width)

    def column(self, name: str) -> np.ndarray:
        """One feature for every vector (a view of :attr:`features`)."""
        from schemas.features import FEATURE_NAMES

        return self.features[:, FEATURE_NAMES.index(name)]

    def subset(self, index: Sequence[int]) -> VectorBatch:
        """The batch of the vectors at ``index``, sharing the arrays built so far."""
        import numpy as np

        sub = VectorBatch([self.vectors[i] for i in index])
        rows = np.asarray(index, dtype=np.intp)
        for name in ("features", "windows"):
            if name in self.__dict__:
                sub.__dict__[name] = self.__dict__[name][rows]
        return sub


def check_fields(cls: type, d: dict[str, Any]) -> None:
    """Refuse a ``params.json`` with keys the params dataclass ``cls`` does not know: a typo or
    a newer format must be an error, not silently dropped."""
    import dataclasses

    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}")

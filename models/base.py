"""The one interface every signal model implements.

A model maps feature vectors (one per symbol, all at the same kind of bar close) to
``(action, confidence)`` pairs; :class:`~schemas.signals.Vote` adds its name and version.
Batch first: the ensemble step calls :meth:`SignalModel.predict` once for all the symbols (and
bars) that are ready, so per-call overhead is paid once.

Artifacts are native formats only (XGBoost UBJ, LightGBM text, torch state dicts loaded with
``weights_only=True``, SB3 zip) plus a JSON of hyper-parameters: no pickles.

Threads: Bytewax workers already use the two cores, so every model runs its inference with
one thread (:func:`cap_threads`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from schemas.features import FeatureVector
from schemas.signals import Action

MODEL_NAMES = ("xgboost", "lightgbm", "nhits", "patchtst")

# Bytewax runs ``-w N`` workers as threads of one process. Building neuralforecast modules
# (which seed and flip torch's global state) or tracing them while another thread runs a
# forward crashed the process (SIGSEGV, seen with ``-w 2``), so every model load, trace and
# inference in the process holds this lock. Inference is a small part of a worker's time.
MODEL_LOCK = threading.RLock()
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


def check_fields(cls: type, d: dict[str, Any]) -> None:
    """Refuse a ``params.json`` with keys the params dataclass ``cls`` does not know: a typo or
    a newer format must be an error, not silently dropped."""
    import dataclasses

    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}")


def cap_threads(n: int = 1) -> None:
    """Cap BLAS/OpenMP/torch threads so models do not oversubscribe the workers' cores."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def skip_dynamo_import() -> None:
    """Let torch's optimizers run without importing ``torch._dynamo`` (1-2 s of start-up).

    ``torch.optim.Optimizer`` methods (``add_param_group``, ``load_state_dict``, ...) are
    wrapped by ``torch._compile._disable_dynamo``, whose first call imports ``torch._dynamo``
    to build a "run this without TorchDynamo" wrapper, and caches it on the function as
    ``__dynamo_disable``. Loading the PPO policy (SB3 builds its Adam optimizer and loads its
    state) was the only reason the live flow imported TorchDynamo. Nothing in this project
    compiles with TorchDynamo, and without an active compile the wrapper runs the function
    as it is: so the cache is filled with the function itself, which skips the import and
    changes no result. A torch whose wrapper looks otherwise is left alone (it just imports).
    Idempotent; call before the first optimizer is built.
    """
    import sys

    if "torch._dynamo" in sys.modules:
        return
    from torch.optim.optimizer import Optimizer

    for name in dir(Optimizer):
        method = getattr(Optimizer, name, None)
        wrapped = getattr(method, "__wrapped__", None)
        code = getattr(method, "__code__", None)
        if (wrapped is not None and code is not None
                and code.co_filename.replace("\\", "/").endswith("torch/_compile.py")
                and getattr(wrapped, "__dynamo_disable", None) is None):
            wrapped.__dynamo_disable = wrapped  # type: ignore[attr-defined]

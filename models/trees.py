"""Gradient-boosted tree classifiers: the ensemble's XGBoost and LightGBM voters.

Both are 3-class classifiers over one feature vector (columns
:data:`~operators.features.FEATURE_NAMES`, NaN handled natively by the trees; class ids 0 HOLD,
1 BUY, 2 SELL). They share :class:`TreeParams` and every training rule, so the two votes differ
by library, not by recipe:

- class-balanced sample weights (:func:`balanced_weights`): confidences are calibrated to a
  balanced prior, not to the raw HOLD share;
- early stopping on ``val_idx`` (pass an early-stopping slice of its own, not the split whose
  metrics are reported), then the model is cut at the best round;
- single thread and a fixed seed: same data + same seed -> same model.

Prediction: ``action = ACTION_OF[argmax p]``, ``confidence = max p`` (in [1/3, 1]), computed in
NumPy by :class:`models.forest.Forest` or by the library, with identical bits. Artifacts are
native files plus ``params.json`` (no pickles); :meth:`load` refuses one whose feature names
differ from the running code's :data:`FEATURE_NAMES`.

>>> TreeParams().max_rounds, TreeParams().max_depth
(300, 4)
>>> balanced_weights(np.array([0, 0, 0, 1])).tolist()
[0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]

Design notes: docs/models.md.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from models.base import Prediction, VectorBatch, check_fields
from models.dataset import TrainingSet
from models.forest import Forest, lightgbm_forest, xgboost_forest
from models.forward_process import ForwardProcess as Forwards
from models.forward_process import offload
from runtime import cap_threads
from schemas.features import FEATURE_NAMES, FEATURE_SET_VERSION, FeatureVector
from schemas.signals import ACTION_OF

if TYPE_CHECKING:
    import lightgbm as lgb
    import xgboost as xgb

N_CLASSES = 3
# rows x trees from which the native predictor beats the NumPy forest (bench_ensemble: at 64
# rows a 107-round XGBoost model is ~1.6x faster natively; at one row the forest is ~3x faster)
NATIVE_MIN_WORK = 16_384
PARAMS_FILE = "params.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TreeParams:
    """Hyper-parameters shared by both libraries (each maps them to its own names).

    Defaults are small and CPU-friendly: a few hundred shallow trees at most, stopped early.

    - ``max_rounds``: boosting rounds before early stopping (XGBoost ``num_boost_round``,
      LightGBM ``num_boost_round``).
    - ``early_stopping_rounds``: rounds without improvement of the validation loss.
    - ``learning_rate``: shrinkage (``eta``).
    - ``max_depth``: tree depth; LightGBM also gets ``num_leaves``.
    - ``num_leaves``: LightGBM leaves per tree (``2**max_depth - 1`` keeps them comparable).
    - ``min_child_weight``: least summed sample weight in a leaf (XGBoost ``min_child_weight``,
      LightGBM ``min_sum_hessian_in_leaf``), with ``min_data_in_leaf`` rows for LightGBM.
    - ``subsample`` / ``colsample``: row and column sampling per tree (seeded).
    - ``reg_lambda``: L2 penalty on leaf values.
    - ``balance_classes``: weight samples by inverse class frequency (see the module doc).
    """

    max_rounds: int = 300
    early_stopping_rounds: int = 30
    learning_rate: float = 0.05
    max_depth: int = 4
    num_leaves: int = 15
    min_child_weight: float = 1.0
    min_data_in_leaf: int = 20
    subsample: float = 0.8
    colsample: float = 0.8
    reg_lambda: float = 1.0
    balance_classes: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TreeParams:
        """Rebuild from ``params.json``; unknown keys are an error, not silently dropped."""
        check_fields(cls, d)
        return cls(**d)


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Per-row weights ``n / (k * n_class)`` over the k classes present (mean weight 1)."""
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=N_CLASSES).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(N_CLASSES)
    per_class[present] = len(y) / (present.sum() * counts[present])
    return per_class[y]


def _check_split(data: TrainingSet, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
    if tuple(data.feature_names) != FEATURE_NAMES:
        raise ValueError("training set columns differ from operators.features.FEATURE_NAMES")
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(
            "tree models need non-empty train and validation splits "
            f"(got {len(train_idx)} and {len(val_idx)} rows)"
        )
    if data.X.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"X has {data.X.shape[1]} columns, expected {len(FEATURE_NAMES)}")


def _weights(y: np.ndarray, params: TreeParams) -> np.ndarray:
    return balanced_weights(y) if params.balance_classes else np.ones(len(y))


def _best(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the most probable class and its probability."""
    best = proba.argmax(axis=1)
    return best, proba[np.arange(len(best)), best]


class _TreeModel:
    """What both tree models share: prediction mapping, params.json, load checks, and the
    two predictors (NumPy forest, native booster) that give the same bits."""

    name: ClassVar[str]
    model_file: ClassVar[str]

    def __init__(self, forest: Forest, params: TreeParams, meta: dict[str, Any]) -> None:
        self.forest = forest
        self.params = params
        self.meta = meta  # seed, rounds kept, scores, feature set, ... (what params.json holds)
        self._booster: Any = None
        self.directory: Path | None = None  # where :meth:`load` read it (a forward process can)

    @property
    def booster(self) -> Any:
        """The library's Booster (imports the library the first time)."""
        if self._booster is None:
            self._booster = self._load_booster()
        return self._booster

    def _load_booster(self) -> Any:
        raise NotImplementedError

    # --- inference ------------------------------------------------------------------------
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, 3), columns HOLD, BUY, SELL."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"expected an (n, {len(FEATURE_NAMES)}) matrix, got {X.shape}")
        if len(X) == 0:
            return np.empty((0, N_CLASSES))
        if len(X) * self.forest.n_trees >= NATIVE_MIN_WORK:
            cap_threads()
            return self._raw_proba(X).reshape(len(X), N_CLASSES)
        return self.forest.predict_proba(X)

    def reference_proba(self, X: np.ndarray) -> np.ndarray:
        """The library's own prediction (what :meth:`predict_proba` must equal, bit for bit)."""
        cap_threads()
        X = np.ascontiguousarray(X, dtype=np.float64)
        return self._raw_proba(X).reshape(len(X), N_CLASSES)

    def predict(self, vectors: Sequence[FeatureVector]) -> list[Prediction]:
        """One (action, confidence) per vector: argmax class and its probability."""
        if not vectors:
            return []
        best, conf = self.vote_arrays(VectorBatch(vectors))
        return [(ACTION_OF[c], p) for c, p in zip(best.tolist(), conf.tolist(), strict=True)]

    def vote_arrays(self, batch: VectorBatch) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict` as (class ids, confidences) on the batch's feature matrix."""
        return self.begin_vote_arrays(batch)()

    def begin_vote_arrays(
        self, batch: VectorBatch, forwards: Forwards | None = None
    ) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        """:meth:`vote_arrays` in two halves: the probabilities are computed by ``forwards``
        (the flow's forward process, :func:`models.forward_process.offload`) while the
        caller goes on, or here when the returned call is made."""
        if not len(batch):
            return lambda: (np.empty(0, dtype=np.int64), np.empty(0))
        X = batch.features
        proba = offload(self, X, forwards, lambda: self.predict_proba(X))
        return lambda: _best(proba())

    def _forward_chunks(self, X: np.ndarray) -> np.ndarray:
        """What a forward process runs for this model: :meth:`predict_proba`."""
        return self.predict_proba(X)

    def _raw_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def n_rounds(self) -> int:
        """Boosting rounds the model holds (a warm start's include its base's)."""
        return self.forest.n_trees // self.forest.n_classes

    # --- artifacts ------------------------------------------------------------------------
    def save(self, directory: Path) -> list[Path]:
        """Write the native model file and ``params.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model_path = directory / self.model_file
        self._save_booster(model_path)
        params_path = directory / PARAMS_FILE
        params_path.write_text(json.dumps(self.describe(), indent=2, sort_keys=True) + "\n")
        return [model_path, params_path]

    def _save_booster(self, path: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The model saved in ``directory`` (checked: its kind, format and feature columns)."""
        params, meta = cls._read_params(directory)
        model = cls(cls._read_artifact(Path(directory) / cls.model_file), params, meta)
        model.directory = Path(directory)
        return model

    @staticmethod
    def _read_artifact(path: Path) -> Any:
        raise NotImplementedError

    @classmethod
    def _read_params(cls, directory: Path) -> tuple[TreeParams, dict[str, Any]]:
        """Read and check ``params.json``: right model, same feature columns as this code."""
        path = Path(directory) / PARAMS_FILE
        doc = json.loads(path.read_text())
        if doc.get("model") != cls.name:
            raise ValueError(f"{path}: saved by model {doc.get('model')!r}, not {cls.name!r}")
        if doc.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: format_version {doc['format_version']} is newer than "
                f"this code's {FORMAT_VERSION}"
            )
        names = tuple(doc.get("feature_names") or ())
        if names != FEATURE_NAMES:
            missing = sorted(set(FEATURE_NAMES) - set(names))
            extra = sorted(set(names) - set(FEATURE_NAMES))
            detail = (
                f"missing {missing}, unexpected {extra}"
                if missing or extra
                else "same names in a different order"
            )
            raise ValueError(
                f"{path}: the model was trained on different feature columns than "
                f"operators.features.FEATURE_NAMES ({detail}); retrain it"
            )
        params = TreeParams.from_dict(doc["params"])
        meta = {k: v for k, v in doc.items() if k not in ("params", "model", "feature_names")}
        return params, meta

    def describe(self) -> dict[str, Any]:
        """Everything ``params.json`` records (JSON-safe)."""
        return {
            "model": self.name,
            "format_version": FORMAT_VERSION,
            "params": self.params.to_dict(),
            "feature_names": list(FEATURE_NAMES),
            **self.meta,
        }


def _train_meta(
    data: TrainingSet,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    seed: int,
    params: TreeParams,
    rounds: int,
    best_score: float,
    library_version: str,
    base: _TreeModel | None,
) -> dict[str, Any]:
    y_train = data.y[train_idx]
    per_class = balanced_weights(y_train) if params.balance_classes else np.ones(len(y_train))
    class_weights = [
        float(per_class[y_train == c][0]) if np.any(y_train == c) else 0.0 for c in range(N_CLASSES)
    ]
    return {
        "seed": int(seed),
        "feature_set": FEATURE_SET_VERSION,
        "best_iteration": int(rounds),  # boosting rounds kept, counted from 1
        "best_val_loss": float(best_score),
        "class_weights": class_weights,
        "train_rows": len(train_idx),
        "val_rows": len(val_idx),
        "train_class_counts": np.bincount(y_train, minlength=N_CLASSES).tolist(),
        "last_train_ts_ms": int(np.max(data.ts_ms[train_idx])),
        "library_version": library_version,
        **({} if base is None else {"warm_start": _warm_meta(base)}),
    }


def _warm_meta(base: _TreeModel) -> dict[str, Any]:
    """What a warm-started model records of the model it continued (JSON-safe)."""
    return {
        "base_rounds": base.n_rounds(),
        "base_seed": base.meta.get("seed"),
        "base_train_rows": base.meta.get("train_rows"),
        "base_last_train_ts_ms": base.meta.get("last_train_ts_ms"),
        "base_params": base.params.to_dict(),
    }


def _check_base(cls: type[_TreeModel], base: _TreeModel | None) -> None:
    if base is not None and not isinstance(base, cls):
        raise TypeError(
            f"{cls.__name__} can warm-start only from a {cls.__name__}, got {type(base).__name__}"
        )


class XGBoostModel(_TreeModel):
    """XGBoost ``multi:softprob`` classifier; inference through ``Booster.inplace_predict``."""

    name: ClassVar[str] = "xgboost"
    model_file: ClassVar[str] = "model.ubj"

    def __init__(
        self,
        raw: bytes,
        params: TreeParams,
        meta: dict[str, Any],
        booster: xgb.Booster | None = None,
    ) -> None:
        """``raw``: the model's UBJSON bytes (the artifact); ``booster`` if already built."""
        super().__init__(xgboost_forest(raw), params, meta)
        self._raw = bytes(raw)
        if booster is not None:
            booster.set_param({"nthread": 1})
        self._booster = booster

    def _load_booster(self) -> xgb.Booster:
        import xgboost as xgb

        booster = xgb.Booster(model_file=bytearray(self._raw))
        booster.set_param({"nthread": 1})
        return booster

    @staticmethod
    def native_params(params: TreeParams, seed: int) -> dict[str, Any]:
        return {
            "objective": "multi:softprob",
            "num_class": N_CLASSES,
            "eval_metric": "mlogloss",
            "tree_method": "hist",
            "eta": params.learning_rate,
            "max_depth": params.max_depth,
            "min_child_weight": params.min_child_weight,
            "subsample": params.subsample,
            "colsample_bytree": params.colsample,
            "lambda": params.reg_lambda,
            "nthread": 1,
            "seed": seed,
            "verbosity": 0,
        }

    @classmethod
    def train(
        cls,
        data: TrainingSet,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        params: TreeParams | None = None,
        seed: int = 0,
        base: XGBoostModel | None = None,
    ) -> XGBoostModel:
        """Fit on ``train_idx``, stop early on ``val_idx``, keep the best rounds only;
        with ``base``, continue boosting from its trees (module docstring)."""
        import xgboost as xgb

        params = params or TreeParams()
        _check_split(data, train_idx, val_idx)
        _check_base(cls, base)
        cap_threads()
        names = list(FEATURE_NAMES)
        y_tr, y_va = data.y[train_idx], data.y[val_idx]
        dtrain = xgb.DMatrix(
            data.X[train_idx],
            label=y_tr,
            weight=_weights(y_tr, params),
            feature_names=names,
            nthread=1,
        )
        dval = xgb.DMatrix(
            data.X[val_idx],
            label=y_va,
            weight=_weights(y_va, params),
            feature_names=names,
            nthread=1,
        )
        booster = xgb.train(
            cls.native_params(params, seed),
            dtrain,
            num_boost_round=params.max_rounds,
            evals=[(dval, "val")],
            early_stopping_rounds=params.early_stopping_rounds,
            verbose_eval=False,
            xgb_model=None if base is None else base.booster,
        )
        rounds = booster.best_iteration + 1  # xgboost counts from 0, base's rounds included
        best_score = booster.best_score
        # Cut at the optimum and go through the artifact bytes: what is served is what is saved.
        raw = bytes(booster[:rounds].save_raw("ubj"))
        kept = xgb.Booster(model_file=bytearray(raw))
        meta = _train_meta(
            data, train_idx, val_idx, seed, params, rounds, best_score, xgb.__version__, base
        )
        return cls(raw, params, meta, kept)

    def _raw_proba(self, X: np.ndarray) -> np.ndarray:
        out = self.booster.inplace_predict(X, validate_features=False)
        return np.asarray(out, dtype=np.float64)

    def _save_booster(self, path: Path) -> None:
        if self._booster is not None:
            self._booster.save_model(str(path))
        else:  # the artifact this model was loaded from, unchanged
            path.write_bytes(self._raw)

    @staticmethod
    def _read_artifact(path: Path) -> bytes:
        return path.read_bytes()


class LightGBMModel(_TreeModel):
    """LightGBM ``multiclass`` classifier; inference through the raw ``Booster.predict``."""

    name: ClassVar[str] = "lightgbm"
    model_file: ClassVar[str] = "model.txt"

    def __init__(
        self,
        text: str,
        params: TreeParams,
        meta: dict[str, Any],
        booster: lgb.Booster | None = None,
    ) -> None:
        """``text``: the model in LightGBM's text format (the artifact)."""
        super().__init__(lightgbm_forest(text), params, meta)
        self._text = text
        self._booster = booster

    def _load_booster(self) -> lgb.Booster:
        import lightgbm as lgb

        return lgb.Booster(model_str=self._text)

    @staticmethod
    def native_params(params: TreeParams, seed: int) -> dict[str, Any]:
        return {
            "objective": "multiclass",
            "num_class": N_CLASSES,
            "metric": "multi_logloss",
            "learning_rate": params.learning_rate,
            "max_depth": params.max_depth,
            "num_leaves": params.num_leaves,
            "min_sum_hessian_in_leaf": params.min_child_weight,
            "min_data_in_leaf": params.min_data_in_leaf,
            "bagging_fraction": params.subsample,
            "bagging_freq": 1 if params.subsample < 1.0 else 0,
            "feature_fraction": params.colsample,
            "lambda_l2": params.reg_lambda,
            "num_threads": 1,
            "seed": seed,
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
        }

    @classmethod
    def train(
        cls,
        data: TrainingSet,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        params: TreeParams | None = None,
        seed: int = 0,
        base: LightGBMModel | None = None,
    ) -> LightGBMModel:
        """Fit on ``train_idx``, stop early on ``val_idx``, keep the best rounds only;
        with ``base``, continue boosting from its trees (module docstring)."""
        import lightgbm as lgb

        params = params or TreeParams()
        _check_split(data, train_idx, val_idx)
        _check_base(cls, base)
        cap_threads()
        native = cls.native_params(params, seed)
        names = list(FEATURE_NAMES)
        y_tr, y_va = data.y[train_idx], data.y[val_idx]
        dtrain = lgb.Dataset(
            data.X[train_idx],
            label=y_tr,
            weight=_weights(y_tr, params),
            feature_name=names,
            params=native,
            free_raw_data=True,
        )
        dval = lgb.Dataset(
            data.X[val_idx],
            label=y_va,
            weight=_weights(y_va, params),
            reference=dtrain,
            params=native,
        )
        booster = lgb.train(
            native,
            dtrain,
            num_boost_round=params.max_rounds,
            valid_sets=[dval],
            valid_names=["val"],
            init_model=None if base is None else base.booster,
            callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)],
        )
        # Both count base's rounds too (a merged booster: base's trees first).
        rounds = (
            booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
        )
        best_score = booster.best_score["val"]["multi_logloss"]
        # Cut at the optimum through the text artifact: what is served is what is saved.
        kept = lgb.Booster(model_str=booster.model_to_string(num_iteration=rounds))
        meta = _train_meta(
            data, train_idx, val_idx, seed, params, rounds, best_score, lgb.__version__, base
        )
        return cls(kept.model_to_string(num_iteration=-1), params, meta, kept)

    def _raw_proba(self, X: np.ndarray) -> np.ndarray:
        return self.booster.predict(X, num_iteration=-1, num_threads=1)

    def _save_booster(self, path: Path) -> None:
        path.write_text(self._text)

    @staticmethod
    def _read_artifact(path: Path) -> str:
        return path.read_text()

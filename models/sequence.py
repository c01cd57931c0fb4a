"""Sequence forecasters: the ensemble's N-HiTS and PatchTST voters (neuralforecast, torch).

Both forecast the next ``h`` one-bar log returns of a symbol from its last ``L`` ones and turn
that forecast into a vote. They share every rule, so the two votes differ by architecture, not
by recipe. The series is the feature step's own one-bar log returns, in basis points
(:data:`TARGET_SCALE`); training uses only bars that close strictly before ``cut_ms``.

Inference never calls neuralforecast (imported lazily, by training only): the trained weights
run in the plain torch modules of :mod:`models.nets`, per fixed-shape float32 chunk, so a
window's forecast depends only on the window, never on which windows shared its batch.

Forecast -> vote (:func:`signal_from_forecast`): ``R`` the forecast cumulative log return over
the next ``h`` bars, ``thr`` the labels' threshold: BUY if ``R > thr``, SELL if ``R < -thr``,
else HOLD; confidence ``min(1, |R| / (2 thr))`` for BUY/SELL, ``max(0, 1 - |R| / thr)`` for
HOLD. A window containing NaN or inf votes HOLD with confidence 0.

>>> signal_from_forecast(0.003, 0.002)
(<Action.BUY: 'BUY'>, 0.75)
>>> signal_from_forecast(-0.001, 0.002)
(<Action.HOLD: 'HOLD'>, 0.5)
>>> NHITSParams().max_steps, PatchTSTParams().hidden_size
(300, 64)

Design notes: docs/models.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import torch

from models.base import Prediction, VectorBatch, check_fields
from models.dataset import History
from models.forward_process import ForwardProcess as Forwards
from models.forward_process import offload
from models.labels import LabelConfig
from models.nets import build_net
from runtime import cap_threads
from schemas.features import FEATURE_SET_VERSION, FeatureVector
from schemas.signals import ACTION_OF, Action
from schemas.timeutil import to_ms

if TYPE_CHECKING:
    import pandas as pd
    from neuralforecast import NeuralForecast

TARGET_SCALE = 1e4  # model units are basis points of log return: y = r * 1e4
TARGET_DOC = "one-bar log return x 1e4 (basis points)"
MODEL_FILE = "model.pt"
PARAMS_FILE = "params.json"
FORMAT_VERSION = 1
MIN_THRESHOLD = 1e-12
LOSSES = ("mae", "mse", "huber")
_QUIET_LOGGERS = (
    "pytorch_lightning",
    "lightning.pytorch",
    "lightning_fabric",
    "lightning.fabric",
    "neuralforecast",
)
_TRAINER_KWARGS: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "logger": False,
    "deterministic": True,
}


# --- hyper-parameters -------------------------------------------------------------------------
def _tuplify(x: Any) -> Any:
    """JSON lists back to the tuples frozen dataclasses hold (hashable, immutable)."""
    return tuple(_tuplify(i) for i in x) if isinstance(x, list | tuple) else x


def _listify(x: Any) -> Any:
    """Tuples to lists: what neuralforecast's constructors (and JSON) expect."""
    return [_listify(i) for i in x] if isinstance(x, list | tuple) else x


@dataclass(frozen=True)
class SeqParams:
    """Training knobs both forecasters share.

    - ``max_steps``: optimiser steps (tests use ~30, the bootstrap a few hundred).
    - ``learning_rate``: Adam step size (neuralforecast's optimiser).
    - ``batch_size``: series per batch (all symbols fit in one).
    - ``windows_batch_size``: windows sampled per step, the real minibatch (kept small: fast).
    - ``loss``: ``mae`` (median forecast, robust to the return tails), ``mse`` or ``huber``.
    """

    max_steps: int = 300
    learning_rate: float = 1e-3
    batch_size: int = 32
    windows_batch_size: int = 32
    loss: str = "mae"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    _TRAIN_FIELDS: ClassVar[tuple[str, ...]] = (
        "max_steps",
        "learning_rate",
        "batch_size",
        "windows_batch_size",
        "loss",
    )

    def arch_kwargs(self) -> dict[str, Any]:
        """The architecture arguments of the neuralforecast class (everything else)."""
        return {
            f.name: _listify(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in self._TRAIN_FIELDS
        }

    def to_dict(self) -> dict[str, Any]:
        return _listify_dict(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Rebuild from ``params.json``; unknown keys are an error, not silently dropped."""
        check_fields(cls, d)
        return cls(**{k: _tuplify(v) for k, v in d.items()})


def _listify_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _listify(v) for k, v in d.items()}


@dataclass(frozen=True)
class NHITSParams(SeqParams):
    """N-HiTS, shrunk for CPU: three stacks of one block, each an MLP of two 64-unit layers
    (~47k parameters instead of 2.5M); neuralforecast's pooling and downsampling defaults."""

    mlp_units: tuple[tuple[int, int], ...] = ((64, 64), (64, 64))
    n_pool_kernel_size: tuple[int, ...] = (2, 2, 1)
    n_freq_downsample: tuple[int, ...] = (4, 2, 1)
    dropout_prob_theta: float = 0.0


@dataclass(frozen=True)
class PatchTSTParams(SeqParams):
    """PatchTST, small: two encoder layers of width 64, 4 heads, patches of 16 bars every 8
    (~74k parameters); RevIN on (inside the module), neuralforecast's dropouts."""

    hidden_size: int = 64
    n_heads: int = 4
    encoder_layers: int = 2
    linear_hidden_size: int = 128
    patch_len: int = 16
    stride: int = 8
    dropout: float = 0.2
    fc_dropout: float = 0.2
    revin: bool = True


# --- the vote rule ----------------------------------------------------------------------------
def signal_from_forecast(cum_return: float, threshold: float) -> Prediction:
    """Forecast cumulative log return over the horizon + label threshold -> (action, conf)."""
    if not math.isfinite(cum_return):
        return Action.HOLD, 0.0
    thr = max(threshold, MIN_THRESHOLD) if math.isfinite(threshold) else MIN_THRESHOLD
    size = abs(cum_return)
    if cum_return > thr:
        return Action.BUY, min(1.0, size / (2.0 * thr))
    if cum_return < -thr:
        return Action.SELL, min(1.0, size / (2.0 * thr))
    return Action.HOLD, max(0.0, 1.0 - size / thr)


def label_thresholds(vol_ewma: np.ndarray, spread_bps: np.ndarray, cfg: LabelConfig) -> np.ndarray:
    """:func:`models.labels.label_threshold` for arrays (the same operations, in order)."""
    spread = np.where(np.isnan(spread_bps), 0.0, spread_bps / 1e4)
    vol = np.where(np.isnan(vol_ewma), 0.0, vol_ewma)
    return np.maximum(cfg.round_trip_cost + spread, cfg.vol_mult * vol * math.sqrt(cfg.horizon))


def votes_from_forecasts(
    cum_return: np.ndarray, threshold: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`signal_from_forecast` for arrays: (class ids, confidences)."""
    r = np.asarray(cum_return, dtype=np.float64)
    t = np.asarray(threshold, dtype=np.float64)
    thr = np.where(np.isfinite(t), np.maximum(t, MIN_THRESHOLD), MIN_THRESHOLD)
    size = np.abs(r)
    finite = np.isfinite(r)
    with np.errstate(invalid="ignore"):
        buy, sell = finite & (r > thr), finite & (r < -thr)
        hold_conf = np.maximum(0.0, 1.0 - size / thr)
        trade_conf = np.minimum(1.0, size / (2.0 * thr))
    ids = np.where(buy, 1, np.where(sell, 2, 0))
    conf = np.where(buy | sell, trade_conf, np.where(finite, hold_conf, 0.0))
    return ids, conf


# --- training data ----------------------------------------------------------------------------
def training_frame(history: History, cut_ms: int | None = None) -> pd.DataFrame:
    """Long frame ``[unique_id, ds, y]`` of every symbol's bps returns before ``cut_ms``.

    ``y`` is ``window[-1] * 1e4`` of each bar (the return the feature step appended at that
    bar); the first bar of a symbol has none and is skipped. ``ds`` counts bars from 0.
    """
    import pandas as pd

    frames = []
    for symbol in history.symbols:
        ys = [
            v.window[-1]
            for v in history.vectors[symbol]
            if (cut_ms is None or to_ms(v.ts) < cut_ms) and math.isfinite(v.window[-1])
        ]
        if ys:
            y = np.asarray(ys, dtype=np.float64) * TARGET_SCALE
            frames.append(
                pd.DataFrame({"unique_id": symbol, "ds": np.arange(len(y), dtype=np.int64), "y": y})
            )
    if not frames:
        return pd.DataFrame(
            {
                "unique_id": pd.Series([], dtype=str),
                "ds": pd.Series([], dtype=np.int64),
                "y": pd.Series([], dtype=np.float64),
            }
        )
    return pd.concat(frames, ignore_index=True)


# --- process hygiene around neuralforecast ----------------------------------------------------
@contextlib.contextmanager
def _contained() -> Iterator[None]:
    """Quiet neuralforecast/lightning and undo their global side effects: neuralforecast seeds
    the global RNGs on construction and Lightning's ``deterministic=True`` flips torch's
    deterministic-algorithms flag for the whole process."""
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    py_state, np_state = random.getstate(), np.random.get_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*val_check_steps is greater.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _loss(name: str) -> torch.nn.Module:
    from neuralforecast.losses.pytorch import MAE, MSE, HuberLoss

    return {"mae": MAE, "mse": MSE, "huber": HuberLoss}[name]()


# --- the models -------------------------------------------------------------------------------
class _SequenceModel:
    """What N-HiTS and PatchTST share: training recipe, direct inference, vote, artifacts."""

    name: ClassVar[str]
    nf_class: ClassVar[str]  # class name in neuralforecast.models
    params_cls: ClassVar[type[SeqParams]]

    chunk: ClassVar[int]  # windows per chunk: every product has this shape (module docstring)
    block: ClassVar[int]  # chunks per forward call (cache-sized intermediates; same bits)

    def __init__(
        self,
        module: torch.nn.Module,
        params: SeqParams,
        cfg: LabelConfig,
        input_size: int,
        meta: dict[str, Any],
        nf: NeuralForecast | None = None,
    ) -> None:
        """``module``: the trained weights, as neuralforecast's module (after :meth:`train`)
        or the plain one of :mod:`models.nets` (after :meth:`load`): same ``state_dict``."""
        cap_threads()
        self.module = module.eval()
        self.params = params
        self.cfg = cfg
        self.input_size = int(input_size)
        self.horizon = int(cfg.horizon)
        self.meta = meta  # seed, training facts, feature set (what params.json adds)
        # The fitted NeuralForecast of :meth:`train` (None after :meth:`load`): kept only so
        # offline code can cross-check the direct forward against ``NeuralForecast.predict``.
        self.nf = nf
        net = build_net(self.nf_class, params.arch_kwargs(), self.input_size, self.horizon)
        net.load_state_dict(module.state_dict(), strict=True)
        self._net = net.inference_copy(torch.float32)
        self._reference: _Reference | None = None
        self.directory: Path | None = None  # where :meth:`load` read it (a forward process can)

    def _forward_chunks(self, y: np.ndarray) -> np.ndarray:
        """(m, L) windows in bps -> (m, h) forecasts in bps: padded with zero windows to
        whole chunks of :attr:`chunk` rows; every product of a forward is per chunk, so a
        chunk's result does not depend on how many chunks run together (module docstring).
        Forwards take :attr:`block` chunks at a time: intermediates that fit the cache."""
        B, L, K = self.chunk, self.input_size, self.block
        C = -(-len(y) // B)
        x = torch.zeros((C * B, L), dtype=torch.float32)  # torch's allocation: aligned alike
        x[: len(y)] = torch.from_numpy(y.astype(np.float32))
        x = x.view(C, B, L)
        with torch.inference_mode():
            out = (
                torch.cat([self._net(x[i : i + K]) for i in range(0, C, K)])
                if C > K
                else self._net(x)
            )
            return out.reshape(C * B, self.horizon)[: len(y)].numpy().astype(np.float64)

    # --- building and training -----------------------------------------------------------------
    @classmethod
    def _build(cls, params: SeqParams, input_size: int, horizon: int, seed: int) -> torch.nn.Module:
        import neuralforecast.models as nfm

        klass = getattr(nfm, cls.nf_class)
        return klass(
            h=horizon,
            input_size=input_size,
            loss=_loss(params.loss),
            scaler_type="identity",
            max_steps=params.max_steps,
            learning_rate=params.learning_rate,
            batch_size=params.batch_size,
            windows_batch_size=params.windows_batch_size,
            val_check_steps=params.max_steps,
            random_seed=seed,
            **params.arch_kwargs(),
            **_TRAINER_KWARGS,
        )

    @classmethod
    def train(
        cls,
        history: History,
        cut_ms: int | None,
        cfg: LabelConfig,
        params: SeqParams | None = None,
        seed: int = 0,
        base: Self | None = None,
    ) -> Self:
        """Fit on every symbol's bars that close before ``cut_ms`` (None: all of them).

        Pass the first validation time as ``cut_ms``, e.g. ``ts_ms[val_idx].min()`` from
        :func:`models.dataset.purged_split` over :func:`models.dataset.build_training_set`
        (less the embargo), so that nothing at or after the validation split is seen. ``cfg``
        gives the horizon and the vote threshold; the input size is the feature window's
        length. With ``base``, fine-tune from its weights (module docstring).
        """
        from neuralforecast import NeuralForecast

        params = params or cls.params_cls()
        if not isinstance(params, cls.params_cls):
            raise TypeError(
                f"{cls.__name__} needs {cls.params_cls.__name__}, got {type(params).__name__}"
            )
        input_size = _window_length(history)
        if base is not None:
            _check_base(cls, base, params, input_size, cfg)
        import pandas as pd

        df = training_frame(history, cut_ms)
        need = input_size + cfg.horizon
        lengths = df.groupby("unique_id").size() if len(df) else pd.Series(dtype=int)
        keep = sorted(str(s) for s, n in lengths.items() if n >= need)
        if not keep:
            raise ValueError(
                f"{cls.name}: no symbol has {need} bars before cut_ms={cut_ms} "
                f"(input {input_size} + horizon {cfg.horizon})"
            )
        df = df[df["unique_id"].isin(keep)].reset_index(drop=True)
        cap_threads()
        started = time.perf_counter()
        with _contained():
            module = cls._build(params, input_size, cfg.horizon, seed)
            if base is not None:  # before NeuralForecast copies the module
                module.load_state_dict(base.module.state_dict())
            nf = NeuralForecast(models=[module], freq=1)
            nf.fit(df=df, val_size=0)
        fit_seconds = time.perf_counter() - started
        trained = nf.models[0]
        last_ts = max(
            to_ms(v.ts)
            for s in keep
            for v in history.vectors[s]
            if cut_ms is None or to_ms(v.ts) < cut_ms
        )
        meta = {
            "seed": int(seed),
            "feature_set": FEATURE_SET_VERSION,
            "cut_ms": None if cut_ms is None else int(cut_ms),
            "last_train_ts_ms": int(last_ts),
            "train_bars": {s: int(lengths[s]) for s in keep},
            "fit_seconds": round(fit_seconds, 3),
            "library_version": _nf_version(),
            "total_steps": params.max_steps + (0 if base is None else base.total_steps()),
        }
        if base is not None:
            meta["warm_start"] = {
                "base_last_train_ts_ms": base.meta.get("last_train_ts_ms"),
                "base_seed": base.meta.get("seed"),
                "base_steps": base.total_steps(),
                "base_learning_rate": base.params.learning_rate,
            }
        return cls(trained, params, cfg, input_size, meta, nf=nf)

    def total_steps(self) -> int:
        """Optimiser steps behind the weights, a warm start's base's included."""
        return int(self.meta.get("total_steps", self.params.max_steps))

    # --- inference --------------------------------------------------------------------------------
    def forecast_windows(self, windows: np.ndarray) -> np.ndarray:
        """(n, L) one-bar log returns -> (n, h) forecast log returns; NaN rows where a window
        is not all finite. Fixed-shape float32 chunks (module docstring)."""
        return self.begin_forecast(windows)()

    def begin_forecast(
        self, windows: np.ndarray, forwards: Forwards | None = None
    ) -> Callable[[], np.ndarray]:
        """:meth:`forecast_windows` in two halves: the forward is handed to ``forwards`` (a
        :class:`models.forward_process.ForwardProcess`: it runs there while the caller goes
        on) or run now; the returned call waits for it and gives the forecasts."""
        x = self._checked(windows)
        out = np.full((len(x), self.horizon), np.nan)
        ok = np.isfinite(x).all(axis=1)
        if not ok.any():
            return lambda: out
        y = x[ok] * TARGET_SCALE

        def here() -> np.ndarray:
            cap_threads()
            return self._forward_chunks(y)

        forecast = offload(self, y, forwards, here)

        def finish() -> np.ndarray:
            out[ok] = forecast() / TARGET_SCALE
            return out

        return finish

    def reference_forecast_windows(self, windows: np.ndarray) -> np.ndarray:
        """:meth:`forecast_windows` by the previous path: neuralforecast's module in float64,
        the whole batch in one forward (a TorchScript trace for one window). Tests and
        benchmarks compare with it; it imports neuralforecast."""
        x = self._checked(windows)
        out = np.full((len(x), self.horizon), np.nan)
        ok = np.isfinite(x).all(axis=1)
        if ok.any():
            if self._reference is None:
                self._reference = _Reference(self)
            cap_threads()
            y = torch.as_tensor(x[ok] * TARGET_SCALE, dtype=torch.float64).unsqueeze(-1)
            with torch.inference_mode():
                y_hat = self._reference(y)
            out[ok] = y_hat[..., 0].double().numpy() / TARGET_SCALE
        return out

    def _checked(self, windows: np.ndarray) -> np.ndarray:
        x = np.asarray(windows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"{self.name}: expected windows of shape (n, {self.input_size}), got {x.shape}"
            )
        return x

    def forecast(self, vectors: Sequence[FeatureVector]) -> np.ndarray:
        """(n, h) forecast one-bar log returns after each vector's bar (NaN rows in warm-up)."""
        if not vectors:
            return np.empty((0, self.horizon))
        return self._forecast_batch(VectorBatch(vectors))

    def _forecast_batch(self, batch: VectorBatch) -> np.ndarray:
        return self._begin_batch(batch)()

    def _begin_batch(
        self, batch: VectorBatch, forwards: Forwards | None = None
    ) -> Callable[[], np.ndarray]:
        lengths = {len(v.window) for v in batch.vectors}
        if lengths != {self.input_size}:
            raise ValueError(
                f"{self.name}: windows of length {sorted(lengths)}, the model "
                f"was trained on {self.input_size}"
            )
        return self.begin_forecast(batch.windows, forwards)

    def predict(self, vectors: Sequence[FeatureVector]) -> list[Prediction]:
        """One (action, confidence) per vector by the module docstring's rule."""
        if not vectors:
            return []
        ids, conf = self.vote_arrays(VectorBatch(vectors))
        return [(ACTION_OF[a], c) for a, c in zip(ids.tolist(), conf.tolist(), strict=True)]

    def vote_arrays(self, batch: VectorBatch) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict` as (class ids, confidences): the rule of
        :func:`signal_from_forecast` on arrays, the same floating-point operations."""
        return self.begin_vote_arrays(batch)()

    def begin_vote_arrays(
        self, batch: VectorBatch, forwards: Forwards | None = None
    ) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        """:meth:`vote_arrays` in two halves, the forward in ``forwards`` (see
        :meth:`begin_forecast`)."""
        if not len(batch):
            return lambda: (np.empty(0, dtype=np.int64), np.empty(0))
        forecast = self._begin_batch(batch, forwards)
        thr = label_thresholds(batch.column("vol_ewma"), batch.column("spread_bps"), self.cfg)
        return lambda: votes_from_forecasts(forecast().sum(axis=1), thr)  # NaN rows: HOLD, 0

    # --- artifacts --------------------------------------------------------------------------------
    def n_parameters(self) -> int:
        return int(sum(p.numel() for p in self.module.parameters()))

    def describe(self) -> dict[str, Any]:
        """Everything ``params.json`` records (JSON-safe)."""
        return {
            "model": self.name,
            "format_version": FORMAT_VERSION,
            "nf_class": self.nf_class,
            "params": self.params.to_dict(),
            "input_size": self.input_size,
            "horizon": self.horizon,
            "scaler_type": "identity",
            "target": TARGET_DOC,
            "target_scale": TARGET_SCALE,
            "label_config": dataclasses.asdict(self.cfg),
            "n_parameters": self.n_parameters(),
            **self.meta,
        }

    def save(self, directory: Path) -> list[Path]:
        """Write ``model.pt`` (state dict) and ``params.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model_path = directory / MODEL_FILE
        torch.save(self.module.state_dict(), model_path)
        params_path = directory / PARAMS_FILE
        params_path.write_text(json.dumps(self.describe(), indent=2, sort_keys=True) + "\n")
        return [model_path, params_path]

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild the module from ``params.json`` (the plain torch module of
        :mod:`models.nets`: no neuralforecast), then load the state dict (no pickles)."""
        directory = Path(directory)
        path = directory / PARAMS_FILE
        doc = json.loads(path.read_text())
        if doc.get("model") != cls.name or doc.get("nf_class") != cls.nf_class:
            raise ValueError(f"{path}: saved by model {doc.get('model')!r}, not {cls.name!r}")
        if doc.get("target_scale") != TARGET_SCALE or doc.get("scaler_type") != "identity":
            raise ValueError(
                f"{path}: target transform {doc.get('target_scale')!r} / "
                f"{doc.get('scaler_type')!r} differs from this code's"
            )
        params = cls.params_cls.from_dict(doc["params"])
        cfg = LabelConfig(**doc["label_config"])
        if int(doc["horizon"]) != cfg.horizon:
            raise ValueError(f"{path}: horizon {doc['horizon']} != label horizon {cfg.horizon}")
        state = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
        module = build_net(cls.nf_class, params.arch_kwargs(), int(doc["input_size"]), cfg.horizon)
        module.load_state_dict(state, strict=True)
        described = {
            "model",
            "format_version",
            "nf_class",
            "params",
            "input_size",
            "horizon",
            "scaler_type",
            "target",
            "target_scale",
            "label_config",
            "n_parameters",
        }
        meta = {k: v for k, v in doc.items() if k not in described}
        model = cls(module, params, cfg, int(doc["input_size"]), meta)
        model.directory = directory
        return model


def _windows_batch(y: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """neuralforecast's input dict for univariate windows without exogenous inputs."""
    return {
        "insample_y": y,
        "insample_mask": torch.ones_like(y),
        "futr_exog": None,
        "hist_exog": None,
        "stat_exog": None,
    }


class _PointForecast(torch.nn.Module):
    """Windows (n, L, 1) -> point forecasts (n, h, 1): the module plus its loss's domain map."""

    def __init__(self, module: Any) -> None:  # a neuralforecast model (Lightning module)
        super().__init__()
        self.module = module

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.module.loss.domain_map(self.module(_windows_batch(y)))


def _trace_one(module: Any, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript trace of the module for one window (Lightning's guard on ``trainer`` is
    lifted the way its own ``to_torchscript`` does)."""
    import warnings

    module._jit_is_scripting = True
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(
                _PointForecast(module).eval(), example.clone(), check_trace=False
            )
            return torch.jit.freeze(traced)
    finally:
        module._jit_is_scripting = False


class _Reference:
    """The previous inference path of a model (for comparisons): neuralforecast's module,
    rebuilt from the weights, in float64; one window through a TorchScript trace."""

    def __init__(self, model: _SequenceModel) -> None:
        with _contained():
            module = model._build(
                model.params, model.input_size, model.horizon, int(model.meta.get("seed", 0))
            )
        module.load_state_dict(model.module.state_dict())
        self.module: Any = module.double().eval()
        self.traced_one: torch.jit.ScriptModule | None = None

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if len(y) == 1:
            if self.traced_one is None:
                self.traced_one = _trace_one(self.module, y)
            return self.traced_one(y)
        return self.module.loss.domain_map(self.module(_windows_batch(y)))


def _check_base(
    cls: type[_SequenceModel],
    base: _SequenceModel,
    params: SeqParams,
    input_size: int,
    cfg: LabelConfig,
) -> None:
    """A fine-tune must rebuild ``base``'s module exactly: same class, architecture, loss,
    input size and horizon (only the training budget may differ)."""
    if not isinstance(base, cls):
        raise TypeError(
            f"{cls.__name__} can fine-tune only a {cls.__name__}, got {type(base).__name__}"
        )
    if params.arch_kwargs() != base.params.arch_kwargs() or params.loss != base.params.loss:
        raise ValueError(
            f"{cls.name}: fine-tuning needs the base's architecture and loss; "
            f"pass dataclasses.replace(base.params, max_steps=..., "
            f"learning_rate=...)"
        )
    if (input_size, cfg.horizon) != (base.input_size, base.horizon):
        raise ValueError(
            f"{cls.name}: base has input {base.input_size} / horizon "
            f"{base.horizon}, the data {input_size} / {cfg.horizon}"
        )


def _window_length(history: History) -> int:
    lengths = {len(v.window) for vs in history.vectors.values() for v in vs}
    if len(lengths) != 1:
        raise ValueError(f"history has feature windows of lengths {sorted(lengths)}")
    return lengths.pop()


def _nf_version() -> str:
    import neuralforecast

    return str(neuralforecast.__version__)


class NHITSModel(_SequenceModel):
    """N-HiTS forecaster (neuralforecast ``NHITS``), direct torch inference."""

    name: ClassVar[str] = "nhits"
    nf_class: ClassVar[str] = "NHITS"
    params_cls: ClassVar[type[SeqParams]] = NHITSParams
    chunk: ClassVar[int] = 8
    block: ClassVar[int] = 64


class PatchTSTModel(_SequenceModel):
    """PatchTST forecaster (neuralforecast ``PatchTST``), direct torch inference."""

    name: ClassVar[str] = "patchtst"
    nf_class: ClassVar[str] = "PatchTST"
    params_cls: ClassVar[type[SeqParams]] = PatchTSTParams
    chunk: ClassVar[int] = 4
    block: ClassVar[int] = 32

"""N-HiTS and PatchTST voters, trained briefly on the bundled FXCM sample (real quotes, 2 days).

History is replayed once per session through the live flow's own stage code
(:func:`training.history.history_from_ticks`); the validation cut comes from
:func:`models.dataset.time_split` over the labelled set. Each model trains once per session
with 30 steps (well under a second each; ``import neuralforecast`` costs ~9 s once). The
models are barely trained: these tests check plumbing and rules, not forecasting skill.
Fine-tunes start from those models' weights (with learning rate 0 they must keep them exactly).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.base import SignalModel
from models.dataset import History, build_training_set, time_split
from models.labels import LabelConfig, label_threshold
from models.sequence import (
    TARGET_SCALE,
    NHITSModel,
    NHITSParams,
    PatchTSTModel,
    PatchTSTParams,
    signal_from_forecast,
    training_frame,
)
from schemas.features import FEATURE_SET_VERSION, FeatureVector
from schemas.signals import Action
from schemas.timeutil import to_ms
from settings import SAMPLE_TICKS, Settings
from training.history import history_from_ticks

MODELS = [NHITSModel, PatchTSTModel]
TEST_STEPS = 30
Model = NHITSModel | PatchTSTModel


def _ids(cls: type) -> str:
    return cls.name


@pytest.fixture(scope="session")
def seq_data() -> tuple[History, LabelConfig, int]:
    """(history, label config, validation cut in ms) of the bundled sample."""
    s = Settings.from_env({})
    history = history_from_ticks(str(SAMPLE_TICKS), s)
    cfg = LabelConfig.from_settings(s)
    data = build_training_set(history, cfg)
    _, val, _ = time_split(data.ts_ms, gap=cfg.horizon * len(history.symbols))
    return history, cfg, int(data.ts_ms[val].min())


@pytest.fixture(scope="session")
def seq_trained(seq_data) -> dict[str, Model]:
    history, cfg, cut = seq_data
    return {
        "nhits": NHITSModel.train(history, cut, cfg, NHITSParams(max_steps=TEST_STEPS), seed=0),
        "patchtst": PatchTSTModel.train(
            history, cut, cfg, PatchTSTParams(max_steps=TEST_STEPS), seed=0
        ),
    }


def _after_cut(history: History, cut: int) -> list[FeatureVector]:
    """Warm vectors of every symbol from the validation period on."""
    return [v for s in history.symbols for v in history.vectors[s] if v.warm and to_ms(v.ts) >= cut]


def _spread(vectors: list[FeatureVector], n: int) -> list[FeatureVector]:
    idx = np.linspace(0, len(vectors) - 1, n).round().astype(int)
    return [vectors[i] for i in idx]


def test_training_frame_is_the_feature_window_before_the_cut(seq_data) -> None:
    """Training series and serving windows are the same numbers, and nothing after the cut."""
    history, _, cut = seq_data
    df = training_frame(history, cut)
    assert list(df.columns) == ["unique_id", "ds", "y"]
    assert sorted(df["unique_id"].unique()) == history.symbols
    for symbol in history.symbols:
        before = [v for v in history.vectors[symbol] if to_ms(v.ts) < cut]
        after = [v for v in history.vectors[symbol] if to_ms(v.ts) >= cut]
        assert after, "the cut must leave a validation period"
        part = df[df["unique_id"] == symbol]
        # every bar before the cut except the first (it has no return yet)
        assert len(part) == len(before) - 1
        assert part["ds"].tolist() == list(range(len(part)))
        # the last window before the cut is exactly the tail of the training series
        last = np.asarray(before[-1].window) * TARGET_SCALE
        np.testing.assert_array_equal(part["y"].to_numpy()[-len(last) :], last)
    full = training_frame(history, None)
    assert len(full) > len(df)


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_trained_on_data_before_the_cut_only(cls, seq_trained, seq_data) -> None:
    history, cfg, cut = seq_data
    model = seq_trained[cls.name]
    assert isinstance(model, SignalModel)
    d = model.describe()
    assert d["last_train_ts_ms"] < cut == d["cut_ms"]
    assert d["input_size"] == len(history.vectors[history.symbols[0]][0].window) == 64
    assert d["horizon"] == cfg.horizon
    assert d["n_parameters"] == sum(p.numel() for p in model.module.parameters())
    assert 10_000 < d["n_parameters"] < 200_000  # shrunk, not neuralforecast's 2.5M default
    assert d["params"]["max_steps"] == TEST_STEPS
    assert d["train_bars"] == {
        s: int((training_frame(history, cut)["unique_id"] == s).sum()) for s in history.symbols
    }


@pytest.mark.filterwarnings("ignore:.*LeafSpec")
@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_direct_forward_equals_neuralforecast_predict(cls, seq_trained, seq_data) -> None:
    """The streaming path (module called directly) gives NeuralForecast.predict()'s numbers."""
    history, _, cut = seq_data
    model = seq_trained[cls.name]
    vectors = _spread(_after_cut(history, cut), 5)
    frames = [
        pd.DataFrame(
            {
                "unique_id": f"w{i}",
                "ds": np.arange(model.input_size),
                "y": np.asarray(v.window) * TARGET_SCALE,
            }
        )
        for i, v in enumerate(vectors)
    ]
    expected = model.nf.predict(df=pd.concat(frames, ignore_index=True))
    got = model.forecast(vectors) * TARGET_SCALE
    # one window at a time takes the traced fast path: it must agree too
    one_by_one = np.vstack([model.forecast([v]) for v in vectors]) * TARGET_SCALE
    assert got.shape == (len(vectors), model.horizon)
    for i in range(len(vectors)):
        rows = expected[expected["unique_id"] == f"w{i}"].sort_values("ds")
        assert rows["ds"].tolist() == list(
            range(model.input_size, model.input_size + model.horizon)
        )
        want = rows[model.nf_class].to_numpy()
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(one_by_one[i], want, rtol=0, atol=1e-5)
    # forecasts depend on the window (a broken input mapping tends to give constants)
    assert np.ptp(got.sum(axis=1)) > 1e-3


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_batch_forecast_equals_row_by_row(cls, seq_trained, seq_data) -> None:
    history, _, cut = seq_data
    model = seq_trained[cls.name]
    vectors = _spread(_after_cut(history, cut), 64)
    batch = model.forecast(vectors)
    rows = np.vstack([model.forecast([v]) for v in vectors])
    assert np.isfinite(batch).all()
    # every product is per fixed-size chunk: the same bits alone or in a batch
    np.testing.assert_array_equal(batch, rows)


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_forecast_does_not_depend_on_batch_composition(cls, seq_trained, seq_data) -> None:
    """A window's forecast is the same bits whatever else is in its batch, how many, and
    where it sits (what makes a replay's decisions independent of how items were cut)."""
    history, _, cut = seq_data
    model = seq_trained[cls.name]
    windows = np.array([v.window for v in _spread(_after_cut(history, cut), 300)])
    reference = model.forecast_windows(windows)
    rng = np.random.default_rng(3)
    for size in (1, 2, 3, 5, 17, 64, 150, 300):
        idx = rng.choice(len(windows), size, replace=False)
        np.testing.assert_array_equal(model.forecast_windows(windows[idx]), reference[idx])
    # beside other (synthetic, large) windows and warm-up NaN rows
    noise = rng.normal(0, 5e-3, (37, windows.shape[1]))
    noise[::5, 0] = np.nan
    mixed = np.vstack([noise[:20], windows[:9], noise[20:]])
    np.testing.assert_array_equal(model.forecast_windows(mixed)[20:29], reference[:9])


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_plain_module_is_neuralforecasts_function(cls, seq_trained, seq_data) -> None:
    """models.nets computes what neuralforecast's module computes (float64, to rounding),
    from the same state dict, loaded strictly."""
    from models.nets import build_net
    from models.sequence import _windows_batch

    history, _, cut = seq_data
    model = seq_trained[cls.name]
    net = build_net(cls.nf_class, model.params.arch_kwargs(), model.input_size, model.horizon)
    net.load_state_dict(model.module.state_dict(), strict=True)
    assert set(net.state_dict()) == set(model.module.state_dict())
    x = torch.as_tensor(
        np.array([v.window for v in _spread(_after_cut(history, cut), 64)]) * TARGET_SCALE,
        dtype=torch.float64,
    )
    nf = model._build(model.params, model.input_size, model.horizon, 0)
    nf.load_state_dict(model.module.state_dict())
    nf = nf.double().eval()
    with torch.inference_mode():
        want = nf(_windows_batch(x.unsqueeze(-1)))[..., 0]
        got = net.inference_copy(torch.float64)(x.view(8, 8, -1)).reshape(64, -1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_votes_agree_with_the_previous_float64_path(cls, seq_trained, seq_data) -> None:
    """float32 chunks against the previous path (neuralforecast's module in float64): the
    forecasts within 1e-5 bps, every vote's action the same on the validation bars."""
    history, cfg, cut = seq_data
    model = seq_trained[cls.name]
    vectors = _after_cut(history, cut)
    windows = np.array([v.window for v in vectors])
    new = model.forecast_windows(windows)
    old = model.reference_forecast_windows(windows)
    np.testing.assert_allclose(new * TARGET_SCALE, old * TARGET_SCALE, rtol=0, atol=1e-5)
    old_votes = [
        signal_from_forecast(
            float(r), label_threshold(v.values["vol_ewma"], v.values["spread_bps"], cfg)
        )
        for v, r in zip(vectors, old.sum(axis=1), strict=True)
    ]
    new_votes = model.predict(vectors)
    assert [a for a, _ in new_votes] == [a for a, _ in old_votes]
    assert max(abs(a[1] - b[1]) for a, b in zip(new_votes, old_votes, strict=True)) < 1e-4


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_save_load_round_trip(cls, seq_trained, seq_data, tmp_path: Path) -> None:
    history, _, cut = seq_data
    model = seq_trained[cls.name]
    paths = model.save(tmp_path)
    assert sorted(p.name for p in paths) == ["model.pt", "params.json"]
    doc = json.loads((tmp_path / "params.json").read_text())
    assert doc["model"] == cls.name and doc["nf_class"] == cls.nf_class
    assert doc["feature_set"] == FEATURE_SET_VERSION
    assert doc["target_scale"] == TARGET_SCALE and doc["scaler_type"] == "identity"
    assert doc["input_size"] == 64 and doc["horizon"] == model.horizon

    loaded = cls.load(tmp_path)
    assert loaded.nf is None
    assert loaded.describe() == model.describe()
    vectors = _spread(_after_cut(history, cut), 64)
    np.testing.assert_array_equal(loaded.forecast(vectors), model.forecast(vectors))
    assert loaded.predict(vectors) == model.predict(vectors)

    other = PatchTSTModel if cls is NHITSModel else NHITSModel
    with pytest.raises(ValueError, match="saved by model"):
        other.load(tmp_path)


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_votes_follow_the_rule_and_warm_up_holds(cls, seq_trained, seq_data) -> None:
    history, cfg, _ = seq_data
    model = seq_trained[cls.name]
    vectors = history.vectors[history.symbols[1]]
    preds = model.predict(vectors)
    cum = model.forecast(vectors).sum(axis=1)
    assert len(preds) == len(vectors)
    nan_windows = 0
    for v, (action, conf), r in zip(vectors, preds, cum, strict=True):
        assert isinstance(action, Action) and 0.0 <= conf <= 1.0
        if any(math.isnan(x) for x in v.window):
            nan_windows += 1
            assert (action, conf) == (Action.HOLD, 0.0) and math.isnan(r)
            continue
        thr = label_threshold(v.values["vol_ewma"], v.values["spread_bps"], cfg)
        want = Action.BUY if r > thr else Action.SELL if r < -thr else Action.HOLD
        assert action is want
        assert conf == signal_from_forecast(float(r), thr)[1]
    assert nan_windows == model.input_size  # the first bars, before the window is full
    assert model.predict([]) == [] and model.forecast([]).shape == (0, model.horizon)

    short = dataclasses.replace(vectors[-1], window=vectors[-1].window[1:])
    with pytest.raises(ValueError, match="windows of length"):
        model.predict([short])


def test_signal_rule() -> None:
    thr = 0.002
    assert signal_from_forecast(2 * thr, thr) == (Action.BUY, 1.0)
    assert signal_from_forecast(10 * thr, thr) == (Action.BUY, 1.0)
    assert signal_from_forecast(-3 * thr, thr) == (Action.SELL, 1.0)
    action, conf = signal_from_forecast(-1.5 * thr, thr)
    assert action is Action.SELL and conf == pytest.approx(0.75)
    assert signal_from_forecast(0.0, thr) == (Action.HOLD, 1.0)
    assert signal_from_forecast(thr, thr) == (Action.HOLD, 0.0)  # strict: at thr is not a call
    action, conf = signal_from_forecast(0.5 * thr, thr)
    assert action is Action.HOLD and conf == pytest.approx(0.5)
    assert signal_from_forecast(float("nan"), thr) == (Action.HOLD, 0.0)
    assert signal_from_forecast(1e-9, 0.0)[0] is Action.BUY  # defined with a zero threshold
    # monotone: a bigger forecast beyond the threshold never lowers a call's confidence
    confs = [signal_from_forecast(x * thr, thr)[1] for x in np.linspace(1.01, 3, 50)]
    assert confs == sorted(confs)


def test_same_seed_same_model_other_seed_differs(seq_data) -> None:
    """Seeded and deterministic, without reseeding the process or flipping torch's flags."""
    history, cfg, cut = seq_data
    params = NHITSParams(max_steps=5)
    flag = torch.are_deterministic_algorithms_enabled()
    np.random.seed(123)
    torch.manual_seed(123)
    expected = (np.random.random(), torch.rand(1).item())
    np.random.seed(123)
    torch.manual_seed(123)
    a = NHITSModel.train(history, cut, cfg, params, seed=3)
    assert (np.random.random(), torch.rand(1).item()) == expected
    assert torch.are_deterministic_algorithms_enabled() == flag
    b = NHITSModel.train(history, cut, cfg, params, seed=3)
    c = NHITSModel.train(history, cut, cfg, params, seed=4)
    vectors = _spread(_after_cut(history, cut), 16)
    np.testing.assert_array_equal(a.forecast(vectors), b.forecast(vectors))
    assert not np.array_equal(a.forecast(vectors), c.forecast(vectors))


def test_params_round_trip_and_validation() -> None:
    p = NHITSParams(max_steps=7, mlp_units=((32, 32),))
    assert NHITSParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    q = PatchTSTParams(hidden_size=32, n_heads=2)
    assert PatchTSTParams.from_dict(json.loads(json.dumps(q.to_dict()))) == q
    with pytest.raises(ValueError, match="unknown"):
        NHITSParams.from_dict({"max_steps": 3, "hidden_size": 8})
    with pytest.raises(ValueError, match="loss"):
        NHITSParams(loss="quantile")
    with pytest.raises(TypeError):
        NHITSModel.train(History(), None, LabelConfig(), PatchTSTParams())


# --- fine-tuning from a base model --------------------------------------------------------------
def _weights(model: Model) -> dict[str, torch.Tensor]:
    """The module's learnt parameters (PatchTST's BatchNorm running statistics excluded:
    they move in any training pass, whatever the learning rate)."""
    return {k: p.detach().clone() for k, p in model.module.named_parameters()}


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_fine_tune_starts_from_the_base_weights(cls, seq_trained, seq_data, tmp_path: Path) -> None:
    history, cfg, cut = seq_data
    base = seq_trained[cls.name]
    # Learning rate 0: the optimiser steps, the weights stay the base's, exactly.
    frozen = cls.train(
        history,
        None,
        cfg,
        dataclasses.replace(base.params, max_steps=2, learning_rate=0.0),
        seed=1,
        base=base,
    )
    want = _weights(base)
    got = _weights(frozen)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # A real fine-tune moves them, a little: from the base, not from a fresh initialisation.
    params = dataclasses.replace(base.params, max_steps=3, learning_rate=1e-4)
    tuned = cls.train(history, None, cfg, params, seed=1, base=base)
    fresh = cls.train(history, None, cfg, params, seed=1)
    moved = {k: (_weights(tuned)[k] - want[k]).abs().max().item() for k in want}
    assert max(moved.values()) > 0
    assert sum(moved.values()) < sum(
        (_weights(fresh)[k] - want[k]).abs().max().item() for k in want
    )
    d = tuned.describe()
    assert d["warm_start"]["base_last_train_ts_ms"] == base.meta["last_train_ts_ms"] < cut
    assert d["total_steps"] == TEST_STEPS + 3 and d["params"]["max_steps"] == 3
    # Save -> load round trip: the same forecasts, bit for bit.
    tuned.save(tmp_path)
    loaded = cls.load(tmp_path)
    assert loaded.describe() == d
    vectors = _spread(_after_cut(history, cut), 32)
    np.testing.assert_array_equal(loaded.forecast(vectors), tuned.forecast(vectors))
    assert loaded.predict(vectors) == tuned.predict(vectors)


def test_fine_tune_needs_the_base_architecture(seq_trained, seq_data) -> None:
    history, cfg, _ = seq_data
    base = seq_trained["nhits"]
    with pytest.raises(ValueError, match="architecture"):
        NHITSModel.train(
            history, None, cfg, NHITSParams(max_steps=1, mlp_units=((8, 8),)), base=base
        )
    with pytest.raises(ValueError, match="horizon"):
        NHITSModel.train(
            history,
            None,
            dataclasses.replace(cfg, horizon=5),
            dataclasses.replace(base.params, max_steps=1),
            base=base,
        )
    with pytest.raises(TypeError, match="fine-tune only"):
        PatchTSTModel.train(history, None, cfg, PatchTSTParams(max_steps=1), base=base)

"""XGBoost and LightGBM voters, trained on the bundled FXCM sample (real quotes, 2 days).

The training set is built once per session through the live flow's own stage code
(:func:`training.history.history_from_ticks`), split by time with a gap of one label horizon per
symbol, and each model is trained once per module with seed 0 (about a second each). Warm
starts continue those models on the later rows: the base's trees must stay first, unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from models.base import SignalModel
from models.dataset import TrainingSet, build_training_set, time_split
from models.labels import LabelConfig
from models.metrics import classification_report, constant_baseline, macro_f1
from models.trees import LightGBMModel, TreeParams, XGBoostModel, balanced_weights
from schemas.features import FEATURE_NAMES, FEATURE_SET_VERSION
from schemas.signals import Action
from settings import SAMPLE_TICKS, Settings
from training.history import history_from_ticks

MODELS = [XGBoostModel, LightGBMModel]
Split = tuple[TrainingSet, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="session")
def tree_split() -> Split:
    """(training set, train idx, val idx, test idx) of the bundled sample."""
    s = Settings.from_env({})
    history = history_from_ticks(str(SAMPLE_TICKS), s)
    cfg = LabelConfig.from_settings(s)
    data = build_training_set(history, cfg)
    train, val, test = time_split(data.ts_ms, gap=cfg.horizon * len(history.symbols))
    return data, train, val, test


@pytest.fixture(scope="session")
def trained(tree_split: Split) -> dict[str, XGBoostModel | LightGBMModel]:
    data, train, val, _ = tree_split
    return {cls.name: cls.train(data, train, val, seed=0) for cls in MODELS}


def _ids(cls: type) -> str:
    return cls.name


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_predict_gives_actions_and_confidences(cls, trained, tree_split: Split) -> None:
    data, _, _, test = tree_split
    model = trained[cls.name]
    assert isinstance(model, SignalModel)
    vectors = [data.vectors[i] for i in test]
    preds = model.predict(vectors)
    proba = model.predict_proba(data.X[test])

    assert len(preds) == len(test)
    assert proba.shape == (len(test), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    actions = [a for a, _ in preds]
    assert set(actions) <= {Action.BUY, Action.SELL, Action.HOLD}
    # class-balanced weights: the model does make calls, not HOLD always
    assert {Action.BUY, Action.SELL} & set(actions)
    for (action, conf), row in zip(preds, proba, strict=True):
        assert 1 / 3 - 1e-6 <= conf <= 1.0
        assert conf == pytest.approx(row.max())
        assert action == [Action.HOLD, Action.BUY, Action.SELL][int(row.argmax())]
    assert model.predict([]) == []


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_missing_features_are_handled_natively(cls, trained, tree_split: Split) -> None:
    data, _, _, test = tree_split
    v = data.vectors[test[0]]
    blank = dataclasses.replace(v, values={k: math.nan for k in v.values})
    ((action, conf),) = trained[cls.name].predict([blank])
    assert action in set(Action)
    assert 0.0 <= conf <= 1.0


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_save_load_round_trip_is_exact(cls, trained, tree_split: Split, tmp_path: Path) -> None:
    data, _, _, test = tree_split
    model = trained[cls.name]
    paths = model.save(tmp_path)
    assert sorted(p.name for p in paths) == sorted([cls.model_file, "params.json"])
    assert cls.model_file in ("model.ubj", "model.txt")

    doc = json.loads((tmp_path / "params.json").read_text())
    assert doc["feature_names"] == list(FEATURE_NAMES)
    assert doc["feature_set"] == FEATURE_SET_VERSION
    assert doc["seed"] == 0
    assert 1 <= doc["best_iteration"] <= TreeParams().max_rounds

    loaded = cls.load(tmp_path)
    assert loaded.describe() == model.describe()
    assert np.array_equal(loaded.predict_proba(data.X[test]), model.predict_proba(data.X[test]))


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_beats_constant_baseline_on_test_split(cls, trained, tree_split: Split) -> None:
    data, train, _, test = tree_split
    pred = trained[cls.name].predict_proba(data.X[test]).argmax(axis=1)
    report = classification_report(
        data.y[test], pred, data.forward_return[test], data.threshold[test]
    )
    baseline = constant_baseline(data.y[train], data.y[test])
    # the same calls in a random order: what the model's call mix scores by chance
    rng = np.random.default_rng(0)
    shuffled = float(np.mean([macro_f1(data.y[test], rng.permutation(pred)) for _ in range(20)]))
    print(
        f"\n{cls.name}: test {report}, constant baseline {baseline}, "
        f"shuffled calls macro_f1 {shuffled:.3f}"
    )
    assert report["macro_f1"] > baseline["macro_f1"] + 0.02
    assert report["macro_f1"] > shuffled


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_batch_equals_row_by_row(cls, trained, tree_split: Split) -> None:
    data, _, _, test = tree_split
    model = trained[cls.name]
    vectors = [data.vectors[i] for i in test[:64]]
    assert model.predict(vectors) == [model.predict([v])[0] for v in vectors]


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_load_refuses_other_feature_names(cls, trained, tmp_path: Path) -> None:
    trained[cls.name].save(tmp_path)
    params_path = tmp_path / "params.json"
    doc = json.loads(params_path.read_text())

    doc["feature_names"] = [*FEATURE_NAMES[:-1], "some_new_feature"]
    params_path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"different feature columns.*some_new_feature"):
        cls.load(tmp_path)

    doc["feature_names"] = list(reversed(FEATURE_NAMES))
    params_path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="different order"):
        cls.load(tmp_path)


def test_load_refuses_the_other_library(trained, tmp_path: Path) -> None:
    trained["xgboost"].save(tmp_path)
    with pytest.raises(ValueError, match="not 'lightgbm'"):
        LightGBMModel.load(tmp_path)


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_same_seed_same_model(cls, trained, tree_split: Split) -> None:
    data, train, val, test = tree_split
    again = cls.train(data, train, val, seed=0)
    other = cls.train(data, train, val, seed=1)
    X = data.X[test]
    assert np.array_equal(again.predict_proba(X), trained[cls.name].predict_proba(X))
    # the seed does reach the sampler (rows and columns are subsampled)
    assert not np.array_equal(other.predict_proba(X), again.predict_proba(X))


def test_balanced_weights_equalise_class_mass(tree_split: Split) -> None:
    data, train, _, _ = tree_split
    y = data.y[train]
    w = balanced_weights(y)
    mass = [w[y == c].sum() for c in range(3)]
    np.testing.assert_allclose(mass, len(y) / 3)
    assert w.mean() == pytest.approx(1.0)


def test_train_rejects_an_empty_validation_split(tree_split: Split) -> None:
    data, train, _, _ = tree_split
    with pytest.raises(ValueError, match="non-empty"):
        XGBoostModel.train(data, train, np.array([], dtype=np.int64))


# --- warm starts ---------------------------------------------------------------------------
def _head(model: XGBoostModel | LightGBMModel, X: np.ndarray, rounds: int) -> np.ndarray:
    """Probabilities of the model's first ``rounds`` boosting rounds only."""
    if isinstance(model, XGBoostModel):
        return model.booster.inplace_predict(X, iteration_range=(0, rounds))
    return model.booster.predict(X, num_iteration=rounds)


@pytest.fixture(scope="session")
def warm(trained, tree_split: Split) -> dict[str, XGBoostModel | LightGBMModel]:
    """Each trained model continued on the later (validation) rows, stopped on the test rows."""
    data, _, val, test = tree_split
    params = TreeParams(max_rounds=40, early_stopping_rounds=10)
    return {
        cls.name: cls.train(data, val, test, params, seed=0, base=trained[cls.name])
        for cls in MODELS
    }


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_warm_start_keeps_the_base_trees_and_adds_rounds(
    cls, trained, warm, tree_split: Split, tmp_path: Path
) -> None:
    data, train, val, test = tree_split
    base, model = trained[cls.name], warm[cls.name]
    X = data.X[np.r_[train[:200], test]]
    r = base.n_rounds()
    # The base's trees come first, unchanged: their predictions are the base's, bit for bit.
    assert np.array_equal(_head(model, X, r), base.predict_proba(X))
    assert model.n_rounds() > r
    assert not np.array_equal(model.predict_proba(X), base.predict_proba(X))
    # Cut at the best round: the booster holds exactly the rounds params.json records.
    d = model.describe()
    assert d["best_iteration"] == model.n_rounds() <= r + 40
    assert d["warm_start"]["base_rounds"] == r
    assert (
        d["warm_start"]["base_last_train_ts_ms"]
        == base.meta["last_train_ts_ms"]
        == int(data.ts_ms[train].max())
    )
    assert d["train_rows"] == len(val) and d["last_train_ts_ms"] == int(data.ts_ms[val].max())
    # What is saved is what is served.
    model.save(tmp_path)
    loaded = cls.load(tmp_path)
    assert loaded.describe() == d
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))
    # Same base, data and seed: the same model.
    again = cls.train(
        data, val, test, TreeParams(max_rounds=40, early_stopping_rounds=10), seed=0, base=base
    )
    assert np.array_equal(again.predict_proba(X), model.predict_proba(X))


def test_warm_start_refuses_the_other_library(trained, tree_split: Split) -> None:
    data, _, val, test = tree_split
    with pytest.raises(TypeError, match="warm-start only from a LightGBMModel"):
        LightGBMModel.train(data, val, test, base=trained["xgboost"])


def _edge_rows(model: XGBoostModel | LightGBMModel, X: np.ndarray) -> np.ndarray:
    """Real rows, then rows whose features sit exactly on split thresholds (where ``<`` and
    ``<=`` part), on zero, NaN, +-inf and LightGBM's 1e-35 zero band."""
    rng = np.random.default_rng(7)
    f = model.forest
    edges = []
    for t in range(min(f.n_trees, 30)):
        for pos in range(f.feature.shape[1]):
            row = X[rng.integers(len(X))].copy()
            row[f.feature[t, pos]] = float(f.threshold[t, pos])
            edges.append(row)
    odd = X[rng.integers(0, len(X), 400)].copy()
    mask = rng.random(odd.shape)
    odd[mask < 0.05] = np.nan
    odd[(mask >= 0.05) & (mask < 0.08)] = 0.0
    odd[(mask >= 0.08) & (mask < 0.09)] = 1e-36
    odd[(mask >= 0.09) & (mask < 0.095)] = -np.inf
    odd[(mask >= 0.095) & (mask < 0.1)] = np.inf
    return np.vstack([X, *edges, odd]) if edges else np.vstack([X, odd])


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_numpy_forest_equals_the_library_bit_for_bit(cls, trained, tree_split: Split) -> None:
    """The serving path (NumPy forest, no library import) gives the library's probabilities
    to the last bit: same votes, same confidences, so the ensemble and sizing do not move."""
    data, _, _, _ = tree_split
    model = trained[cls.name]
    X = _edge_rows(model, data.X)
    want = model.reference_proba(X)
    got = model.forest.predict_proba(X)
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    # the big-batch path runs the library: the same bits either way
    np.testing.assert_array_equal(model.predict_proba(X), want)
    small = X[:3]
    assert len(small) * model.forest.n_trees < 16_384
    np.testing.assert_array_equal(model.predict_proba(small), want[:3])


@pytest.mark.parametrize("cls", MODELS, ids=_ids)
def test_a_loaded_model_serves_from_the_artifact_without_its_booster(
    cls, trained, tree_split: Split, tmp_path: Path
) -> None:
    data, _, _, test = tree_split
    model = trained[cls.name]
    model.save(tmp_path)
    loaded = cls.load(tmp_path)
    X = data.X[test]
    np.testing.assert_array_equal(loaded.forest.predict_proba(X), model.reference_proba(X))
    assert loaded._booster is None  # served without building the library's booster
    assert (
        loaded.n_rounds() == model.booster.num_boosted_rounds()
        if cls is XGBoostModel
        else loaded.n_rounds() == model.booster.current_iteration()
    )
    again = tmp_path / "again"
    loaded.save(again)  # a loaded model re-saves its artifact unchanged
    assert (again / cls.model_file).read_bytes() == (tmp_path / cls.model_file).read_bytes()

"""The ensemble's consensus rules (the audit's patterns), failures, and its invariants."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.ensemble import EnsembleConfig, LoadedModel, ModelSource, Scorer, decide
from schemas.features import FeatureVector
from schemas.signals import Action, Consensus, Vote
from schemas.timeutil import from_ms

B, S, H = Action.BUY, Action.SELL, Action.HOLD
NAMES = ("xgboost", "lightgbm", "nhits", "patchtst")  # weights .25 .25 .30 .20
CFG = EnsembleConfig()


def votes(actions: Sequence[Action], conf: Sequence[float] = (0.8, 0.8, 0.8, 0.8)) -> list[Vote]:
    return [Vote(n, "v1", a, c) for n, a, c in zip(NAMES, actions, conf, strict=True)]


@pytest.mark.parametrize(
    ("pattern", "action", "consensus", "confidence"),
    [
        # unanimous: every model agrees -> x1.2 (capped at 1)
        ((B, B, B, B), B, Consensus.UNANIMOUS, 0.96),
        ((S, S, S, S), S, Consensus.UNANIMOUS, 0.96),
        ((H, H, H, H), H, Consensus.UNANIMOUS, 0.96),  # all HOLD
        # 3-1: three agree (>= 0.70 weight) -> x1.1
        ((B, B, B, S), B, Consensus.STRONG, 0.88),
        ((S, B, S, S), S, Consensus.STRONG, 0.88),
        ((B, B, B, H), B, Consensus.STRONG, 0.88),
        ((H, B, B, B), B, Consensus.STRONG, 0.88),  # lgbm+nhits+patchtst = 0.75
        # 2-2 split: HOLD, whatever the pair
        ((B, B, S, S), H, Consensus.SPLIT, 0.0),
        ((B, S, B, S), H, Consensus.SPLIT, 0.0),
        ((B, B, H, H), H, Consensus.SPLIT, 0.64),  # 0.5 BUY < 0.6 -> HOLD from the HOLD voters
        ((H, H, B, B), H, Consensus.SPLIT, 0.64),  # N-HiTS + PatchTST = 0.5 < 0.6
        # 2-1-1: no two models reach 0.6 (max pair N-HiTS + XGBoost = 0.55)
        ((B, H, B, S), H, Consensus.SPLIT, 0.64),
        ((S, S, B, H), H, Consensus.SPLIT, 0.64),
    ],
)
def test_vote_patterns(pattern, action, consensus, confidence) -> None:
    d = decide(votes(pattern), volatility=0.0, cfg=CFG)
    assert d.action is action
    assert d.consensus is consensus
    assert d.confidence == pytest.approx(confidence)
    assert d.buy_votes == pytest.approx(
        sum(w for w, a in zip((0.25, 0.25, 0.3, 0.2), pattern, strict=True) if a is B)
    )


def test_confidence_is_the_weighted_mean_of_the_agreeing_models_times_the_multiplier() -> None:
    d = decide(votes((B, B, B, S), (0.9, 0.5, 0.7, 1.0)), 0.0, CFG)
    assert d.confidence == pytest.approx((0.25 * 0.9 + 0.25 * 0.5 + 0.3 * 0.7) / 0.8 * 1.1)
    d = decide(votes((B, B, B, B), (1.0, 1.0, 0.9, 1.0)), 0.0, CFG)
    assert d.confidence == 1.0  # capped


@pytest.mark.parametrize(
    ("vol", "conf", "action", "blocked"),
    [
        (0.04, 0.5, B, False),  # calm: a weak BUY passes
        (0.06, 0.5, H, True),  # volatile: needs confidence > 0.70
        (0.06, 0.58, H, True),  # 0.696 is not enough
        (0.06, 0.59, B, False),  # 0.708 is
        (0.06, 0.8, B, False),  # 0.96 > 0.70
    ],
)
def test_volatility_rule(vol: float, conf: float, action: Action, blocked: bool) -> None:
    d = decide(votes((B, B, B, B), (conf,) * 4), volatility=vol, cfg=CFG)
    assert (d.action, d.vol_blocked) == (action, blocked)


@given(
    st.lists(st.tuples(st.sampled_from([B, S, H]), st.floats(0, 1)), min_size=4, max_size=4),
    st.floats(0, 1),
)
def test_ensemble_always_returns_one_action_with_confidence_in_unit_interval(pairs, vol) -> None:
    d = decide(votes([a for a, _ in pairs], [c for _, c in pairs]), vol, CFG)
    assert d.action in (B, S, H)
    assert 0.0 <= d.confidence <= 1.0
    assert not (d.buy_votes >= 0.6 and d.sell_votes >= 0.6)


def _vector(warm: bool = True, vol: float = 0.01) -> FeatureVector:
    return FeatureVector("X", from_ms(60_000), from_ms(0), "fs", warm, 1.0, {"vol_daily": vol}, ())


class Fixed(ModelSource):
    def __init__(self, models: list[LoadedModel]) -> None:
        self.models = models

    def current(self) -> list[LoadedModel]:
        return self.models


def _const(action: Action, conf: float):
    return lambda vs: [(action, conf)] * len(vs)


def test_failing_model_votes_hold_zero_and_is_counted() -> None:
    def boom(vs):
        raise RuntimeError("model exploded")

    models = [
        LoadedModel("xgboost", "v1", boom),
        LoadedModel("lightgbm", "v2", _const(B, 0.9)),
        LoadedModel("nhits", "v3", _const(B, math.nan)),
        LoadedModel("patchtst", "v4", _const(B, 0.9)),
    ]
    scorer = Scorer(Fixed(models))
    (sig,) = scorer.score([_vector()])
    assert sig.vote("xgboost") == Vote("xgboost", "v1", H, 0.0, failed=True)
    assert sig.vote("nhits") == Vote("nhits", "v3", H, 0.0, failed=True)
    assert [v.version for v in sig.votes] == ["v1", "v2", "v3", "v4"]
    assert sig.action is H  # only 0.45 weight left voting BUY
    assert scorer.failures == {"xgboost": 1, "nhits": 1}


def test_warmup_bars_get_a_hold_signal_with_the_votes_recorded() -> None:
    asked = []

    def spy(vs):
        asked.append(len(vs))
        return [(B, 1.0)] * len(vs)

    scorer = Scorer(Fixed([LoadedModel(n, "v1", spy) for n in NAMES]))
    sigs = scorer.score([_vector(warm=False), _vector(), _vector(warm=False)])
    assert [s.consensus for s in sigs] == [Consensus.WARMUP, Consensus.UNANIMOUS, Consensus.WARMUP]
    assert [s.action for s in sigs] == [H, B, H]
    assert all(len(s.votes) == 4 for s in sigs)
    assert asked == [3, 3, 3, 3]  # one batched call per model for all the vectors


@given(
    st.lists(st.tuples(st.sampled_from(NAMES), st.booleans()), max_size=300),
    st.lists(st.sampled_from([B, S, H]), min_size=4, max_size=4),
    st.lists(st.floats(0, 1), min_size=4, max_size=4),
)
def test_dynamic_weights_keep_the_audit_rules(outcomes, pattern, conf) -> None:
    """Whatever the models' records: a 2-2 split is HOLD, and no two models trade alone."""
    from operators.weights import DynamicWeights

    w = DynamicWeights(
        dict(zip(NAMES, (0.25, 0.25, 0.3, 0.2), strict=True)), window=20, min_trades=1
    )
    for model, right in outcomes:
        w.observe(model, right)
    weights = w.current()
    assert sum(weights.values()) == pytest.approx(1.0)
    top2 = sorted(weights.values())[-2:]
    assert sum(top2) < CFG.vote_threshold
    d = decide(votes(pattern, conf), 0.0, CFG, weights)
    buys, sells = pattern.count(B), pattern.count(S)
    if buys == sells:
        assert d.action is H
    if d.action is not H:
        assert max(buys, sells) >= 3


def test_a_two_two_split_is_hold_even_when_one_pair_outweighs_the_other() -> None:
    heavy = {"xgboost": 0.4, "lightgbm": 0.05, "nhits": 0.35, "patchtst": 0.2}
    d = decide(votes((B, S, B, S)), 0.0, CFG, heavy)  # BUY pair 0.75 vs SELL pair 0.25
    assert d.action is H and d.buy_votes == pytest.approx(0.75)


def test_array_voters_fail_like_predict_voters() -> None:
    """The fast path (``vote_arrays`` on a shared batch) keeps the failure rules: a raise
    fails every vote, a NaN / out-of-range confidence or an unknown class id fails that vote."""
    import numpy as np

    def arrays(ids, conf):
        return lambda batch: (np.array(ids[: len(batch)]), np.array(conf[: len(batch)]))

    def boom(batch):
        raise RuntimeError("model exploded")

    def unused(vs):
        raise AssertionError("predict must not be called when vote_arrays exists")

    models = [
        LoadedModel("xgboost", "v1", unused, boom),
        LoadedModel("lightgbm", "v2", unused, arrays([1, 1, 2], [0.9, math.nan, 0.7])),
        LoadedModel("nhits", "v3", unused, arrays([1, 7, 0], [0.6, 0.6, 1.5])),
        LoadedModel("patchtst", "v4", unused, arrays([1, 2, 0], [0.9, 0.8, 1.0])),
    ]
    scorer = Scorer(Fixed(models))
    first, second, third = scorer.score([_vector(), _vector(), _vector()])
    assert first.vote("xgboost") == Vote("xgboost", "v1", H, 0.0, failed=True)
    assert first.vote("lightgbm") == Vote("lightgbm", "v2", B, 0.9)
    assert first.vote("nhits") == Vote("nhits", "v3", B, 0.6)
    assert second.vote("lightgbm") == Vote("lightgbm", "v2", H, 0.0, failed=True)  # NaN
    assert second.vote("nhits") == Vote("nhits", "v3", H, 0.0, failed=True)  # class 7
    assert second.vote("patchtst") == Vote("patchtst", "v4", S, 0.8)
    assert third.vote("nhits") == Vote("nhits", "v3", H, 0.0, failed=True)  # 1.5 > 1
    assert third.vote("lightgbm") == Vote("lightgbm", "v2", S, 0.7)
    assert scorer.failures == {"xgboost": 3, "lightgbm": 1, "nhits": 2}
    assert all(isinstance(v.confidence, float) for s in (first, second, third) for v in s.votes)

"""Records of the learning loop: PPO updates, shadow predictions, CLM cycles, trade outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from schemas.features import FeatureVector
from schemas.signals import Action, Signal


@dataclass(frozen=True, slots=True)
class RLUpdate:
    """One PPO update from closed trades (a row of ``rl_updates``)."""

    registry_version: str
    ts: datetime  # event time: the newest exit among the transitions used
    policy_before: str
    policy_after: str
    transitions: int
    dropped: int
    mean_reward: float
    policy_loss: float
    value_loss: float
    approx_kl: float
    clip_fraction: float
    param_change_norm: float
    seconds: float


@dataclass(frozen=True, slots=True)
class ShadowPrediction:
    """A shadow (challenger) model's vote on a bar, made beside production, never traded."""

    model: str
    version: str
    symbol: str
    ts: datetime
    action: Action
    confidence: float
    failed: bool


@dataclass(frozen=True, slots=True)
class TradeOutcome:
    """A joined trade as the learners saw it (a row of ``trade_outcomes``)."""

    trade_id: str
    symbol: str
    side: str
    entry_ts: datetime
    exit_ts: datetime
    exit_reason: str
    net_pnl: float
    pnl_pct: float
    sizing: str
    policy_version: str
    reward: float
    joined_from: str


class CycleStatus(StrEnum):
    """Where a CLM cycle is (the ``status`` column of ``clm_cycles``)."""

    TRAINING = "training"  # its models are being trained
    SHADOW = "shadow"  # its challengers vote beside production, judged on every bar
    DECIDED = "decided"  # every challenger was promoted or retired
    FAILED = "failed"  # it could not train (too little data, a training error)
    ABANDONED = "abandoned"  # its challengers were retired without a verdict (see reasons)


class ChallengerDecision(StrEnum):
    """What happened to one challenger (the ``decisions`` column of ``clm_cycles``)."""

    PROMOTED = "promoted"  # proven better: now production
    QUALIFIED = "qualified"  # proven better, QT_CLM_AUTO_PROMOTE off
    RETIRED_NOT_BETTER = "retired_not_better"  # proven not better by the margin
    RETIRED_UNPROVEN = "retired_unproven"  # QT_CLM_SHADOW_MAX bars without a verdict
    SUPERSEDED = "superseded"  # another variant of its model was promoted
    ABANDONED = "abandoned"  # retired without a verdict (see the reason)


@dataclass(frozen=True, slots=True)
class ClmCycle:
    """One continuous-learning cycle (a row of ``clm_cycles``; the row is rewritten as the
    cycle moves from training to shadow to decided). Challengers are named after their model,
    ``<model>`` (trained from scratch) or ``<model>.warm`` (continued from production)."""

    cycle_id: str
    trigger: str
    reason: str
    status: CycleStatus
    started_ts: datetime  # event time the trigger fired
    data_from: datetime | None
    data_to: datetime | None
    rows: int
    train_metrics: dict[str, float]  # "<challenger>.<metric>"
    shadow_metrics: dict[str, float]  # "<challenger>.<evidence figure>"
    versions: dict[str, str]  # challenger -> registry version
    decisions: dict[str, str]  # challenger -> ChallengerDecision
    updated_ts: datetime
    reasons: dict[str, str]  # challenger -> one line: why that decision
    reference_version: str  # the cycle's drift reference (promoted with a model)


@dataclass(frozen=True, slots=True)
class ScoredBar:
    """One decided bar as the learners see it, in the engine's event order: the vector, the
    production signal (with its four votes) and the shadow challengers' votes."""

    symbol: str
    ts_ms: int
    vector: FeatureVector
    signal: Signal
    shadow: tuple[ShadowPrediction, ...]

    kind = "bar.decided"


@dataclass(frozen=True, slots=True)
class DriftCheck:
    """One drift check of the continuous learner (a row of ``drift_checks``)."""

    ts: datetime
    reference: str  # the feature_reference version checked against
    rows: int
    method: str
    raw: float
    score: float
    expected: float
    null_level: float
    corrected: float
    threshold: float
    fired: bool

"""Records of the learning loop: PPO updates, shadow predictions, CLM cycles, trade outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.signals import Action


@dataclass(frozen=True, slots=True)
class RLUpdate:
    """One PPO update from closed trades (a row of ``rl_updates``)."""

    registry_version: str
    ts: datetime                 # event time: the newest exit among the transitions used
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


@dataclass(frozen=True, slots=True)
class ClmCycle:
    """One continuous-learning cycle (a row of ``clm_cycles``; the row is rewritten as the
    cycle moves from training to shadow to decided)."""

    cycle_id: str
    trigger: str
    reason: str
    status: str                      # training | shadow | decided | failed
    started_ts: datetime             # event time the trigger fired
    data_from: datetime | None
    data_to: datetime | None
    rows: int
    train_metrics: dict[str, float]  # "<model>.<metric>"
    shadow_metrics: dict[str, float]  # "<model>.production_f1", ".challenger_f1", ".n"
    versions: dict[str, str]         # model -> challenger version
    decisions: dict[str, str]        # model -> promoted | retired
    updated_ts: datetime

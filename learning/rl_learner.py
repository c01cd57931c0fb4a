"""RL updates: closed trades become PPO transitions; every N of them update the policy.

Each joined trade (entry state + outcome) becomes a transition: the recorded entry state, raw
action, log-probability and value estimate, the multi-objective reward of :mod:`rl.reward`,
and the exit state as next state (each trade is a one-step episode). Only trades the policy
actually sized (``sizing=rl``) with a stochastic action are learned from: a fixed-size trade's
outcome is not the policy's action's, and PPO needs the sampling probability. Others are
counted, not used.

Every ``QT_RL_V3_UPDATE_INTERVAL`` transitions, the current production policy is loaded from
the registry, updated on them (SB3 PPO on the recorded transitions; transitions recorded more
than ``QT_RL_V3_MAX_POLICY_LAG`` policy versions ago are dropped and counted), saved as a new
production version, and the live sizing step uses it from its next decision. Each update is a
row of ``rl_updates``.

Reward inputs from a joined trade: ``equity_at_entry = equity_after - net_pnl``,
``size_frac = size_usd / equity_at_entry``, ``vol_daily`` of the entry features, drawdown before
and after from the entry and exit state vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from models.base import MODEL_LOCK, POLICY_NAME
from operators.features import FEATURE_SET_VERSION
from operators.stage import stage_builder
from rl.policy import Transition
from rl.reward import RewardWeights, reward
from rl.state import NAMES
from schemas.learning import RLUpdate
from schemas.registry import Stage
from schemas.timeutil import from_ms, to_ms
from schemas.trades import JoinedTrade, Sizing

DRAWDOWN = NAMES.index("drawdown")


@dataclass(frozen=True)
class LearnerConfig:
    update_interval: int = 100
    max_lag: int = 2
    enabled: bool = True
    weights: RewardWeights = field(default_factory=RewardWeights)

    @classmethod
    def from_settings(cls, s: Any) -> LearnerConfig:
        return cls(s.rl_update_interval, s.rl_max_policy_lag,
                   s.rl_enabled and s.rl_training_enabled)


def trade_reward(j: JoinedTrade, weights: RewardWeights) -> float:
    """The documented multi-objective reward of one closed trade."""
    o, c = j.opened, j.closed
    equity_at_entry = c.equity_after - c.net_pnl
    return reward(net_pnl=c.net_pnl, equity_at_entry=equity_at_entry,
                  size_frac=o.size_usd / equity_at_entry, vol_daily=o.entry.volatility
                  if math.isfinite(o.entry.volatility) else 0.0,
                  drawdown_before=o.entry.rl.state[DRAWDOWN],
                  drawdown_after=c.exit_state[DRAWDOWN], weights=weights)


def transition_of(j: JoinedTrade, weights: RewardWeights) -> Transition | None:
    """The PPO transition of a joined trade, or None when it is not the policy's to learn."""
    rl = j.opened.entry.rl
    if j.opened.entry.sizing is not Sizing.RL or not rl.stochastic:
        return None
    return Transition.from_decision(rl, trade_reward(j, weights), j.closed.exit_state)


class PolicyLearner:
    """Collects transitions and updates the production policy (plain Python)."""

    def __init__(self, cfg: LearnerConfig, registry: Any,
                 buffer: list[Transition] | None = None, newest_ms: int = 0,
                 counts: dict[str, int] | None = None) -> None:
        if cfg.update_interval < 1:
            raise ValueError(f"QT_RL_V3_UPDATE_INTERVAL must be >= 1, got {cfg.update_interval}")
        self.cfg = cfg
        self.registry = registry
        self.buffer = buffer or []
        self.newest_ms = newest_ms
        self.counts = counts or {}

    def push(self, j: JoinedTrade) -> list[RLUpdate]:
        if not self.cfg.enabled:
            return []
        t = transition_of(j, self.cfg.weights)
        if t is None:
            self.counts["not_learnable"] = self.counts.get("not_learnable", 0) + 1
            return []
        self.buffer.append(t)
        self.newest_ms = max(self.newest_ms, to_ms(j.closed.exit_ts))
        if len(self.buffer) < self.cfg.update_interval:
            return []
        batch, self.buffer = self.buffer, []
        return [self._update(batch)]

    def _update(self, batch: list[Transition]) -> RLUpdate:
        with MODEL_LOCK:
            runtime = self.registry.load(POLICY_NAME)
            m = runtime.update(batch, max_lag=self.cfg.max_lag)
            version = self.registry.production_version(POLICY_NAME)
            if m.transitions:
                version = self.registry.publish(
                    POLICY_NAME, runtime.save, stage=Stage.PRODUCTION,
                    feature_set=FEATURE_SET_VERSION,
                    metrics={"mean_reward": m.mean_reward, "transitions": m.transitions,
                             "param_change_norm": m.param_change_norm},
                    params={"policy": runtime.version, "trigger": "rl_update"}).version
        return RLUpdate(version, from_ms(self.newest_ms), m.version_before, m.version_after,
                        m.transitions, m.dropped, m.mean_reward, m.policy_loss, m.value_loss,
                        m.approx_kl, m.clip_fraction, m.param_change_norm, m.seconds)

    def finish(self) -> list[RLUpdate]:
        return []  # a partial batch waits: PPO updates on full intervals only

    def snapshot(self) -> dict[str, Any]:
        return {"buffer": list(self.buffer), "newest_ms": self.newest_ms,
                "counts": dict(self.counts)}


@operator
def learn_policy(step_id: str, joined: Stream[JoinedTrade], cfg: LearnerConfig,
                 registry: Any) -> Stream[RLUpdate]:
    """One learner for all symbols (PPO updates one policy)."""
    keyed = op.key_on("one_policy", joined, lambda _: POLICY_NAME)
    out = op.stateful("ppo", keyed, stage_builder(
        lambda _: PolicyLearner(cfg, registry),
        lambda s: PolicyLearner(cfg, registry, s["buffer"], s["newest_ms"], s["counts"])))
    return op.key_rm("unkey", out)

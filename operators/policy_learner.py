"""RL updates: closed trades become PPO transitions; every N of them update the policy.

Each joined trade (entry state + outcome) becomes a transition: the recorded entry state, raw
action, log-probability and value estimate, the multi-objective reward of
:func:`rl.reward.trade_reward`, and the exit state as next state (each trade is a one-step
episode). Only trades the policy actually sized (``sizing=rl``) with a stochastic action are
learned from: a fixed-size trade's outcome is not the policy's action's, and PPO needs the
sampling probability. Others are counted, not used.

Every ``QT_RL_V3_UPDATE_INTERVAL`` transitions, the policy in use (:class:`PolicySource`:
pinned by this learner, or the registry's production version) is updated on them (SB3 PPO on
the recorded transitions, seeded, so the same batch gives the same weights; transitions
recorded more than ``QT_RL_V3_MAX_POLICY_LAG`` policy versions ago are dropped and counted),
published as a new production version and pinned, so sizing uses it from the next order.
Each update is a row of ``rl_updates``.

Exactly once: the publish is keyed by the policy version it creates (``ppo-<lineage>-v<n>``,
update n of lineage L, which follows from the stream, not the clock), so an update replayed
after a crash finds its version already published and reuses it instead of applying the
update on top of itself.

A partial batch is not lost at end of input: :meth:`PolicyLearner.finish` writes it next to
the policy's versions (``pending.json``, keyed by the version it waits to update) and the next
run that starts fresh from that same version continues it. Once an update has used it, the
policy's version has moved on and the file no longer applies, so it is never used twice.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from models.base import POLICY_NAME
from operators.sizing import PolicySource
from operators.stage import stage_builder
from rl.policy import Transition
from rl.reward import RewardWeights, trade_reward
from runtime import MODEL_LOCK
from schemas.features import FEATURE_SET_VERSION
from schemas.learning import RLUpdate
from schemas.registry import ModelStage
from schemas.timeutil import from_ms, to_ms
from schemas.trades import JoinedTrade, Sizing
from settings import DEFAULTS, Settings

log = logging.getLogger(__name__)
PENDING_FILE = "pending.json"


@dataclass(frozen=True)
class LearnerConfig:
    """The PPO learner's knobs (defaults: :data:`settings.DEFAULTS`)."""

    update_interval: int = DEFAULTS.rl_update_interval
    max_lag: int = DEFAULTS.rl_max_policy_lag
    enabled: bool = DEFAULTS.rl_enabled and DEFAULTS.rl_training_enabled
    weights: RewardWeights = field(default_factory=RewardWeights)

    @classmethod
    def from_settings(cls, s: Settings) -> LearnerConfig:
        return cls(
            s.rl_update_interval, s.rl_max_policy_lag, s.rl_enabled and s.rl_training_enabled
        )


def transition_of(j: JoinedTrade, weights: RewardWeights) -> Transition | None:
    """The PPO transition of a joined trade, or None when it is not the policy's to learn."""
    rl = j.opened.entry.rl
    if j.opened.entry.sizing is not Sizing.RL or not rl.stochastic:
        return None
    return Transition.from_decision(
        rl, trade_reward(j.opened, j.closed, weights), j.closed.exit_state
    )


class PolicyLearner:
    """Collects transitions and updates the policy in use (plain Python)."""

    def __init__(
        self,
        cfg: LearnerConfig,
        registry: Any,
        policy: PolicySource,
        state: dict[str, Any] | None = None,
    ) -> None:
        if cfg.update_interval < 1:
            raise ValueError(f"QT_RL_V3_UPDATE_INTERVAL must be >= 1, got {cfg.update_interval}")
        self.cfg = cfg
        self.registry = registry
        self.policy = policy
        self.buffer: list[Transition] = []
        self.oldest_ms = 0  # the exits of the batch being collected: the span an update used
        self.newest_ms = 0
        self.counts: dict[str, int] = {}
        if state is not None:
            self.buffer = list(state["buffer"])
            self.oldest_ms = state.get("oldest_ms", 0)
            self.newest_ms = state["newest_ms"]
            self.counts = dict(state["counts"])
            if state.get("pinned"):
                policy.pin(state["pinned"])
        elif cfg.enabled:
            self._resume_pending()

    @property
    def pending_path(self) -> Path:
        return self.registry.model_dir(POLICY_NAME) / PENDING_FILE

    def push(self, j: JoinedTrade) -> list[RLUpdate]:
        if not self.cfg.enabled:
            return []
        t = transition_of(j, self.cfg.weights)
        if t is None:
            self.counts["not_learnable"] = self.counts.get("not_learnable", 0) + 1
            return []
        exit_ms = to_ms(j.closed.exit_ts)
        if not self.buffer:
            self.oldest_ms = exit_ms
        self.buffer.append(t)
        self.newest_ms = max(self.newest_ms, exit_ms)
        if len(self.buffer) < self.cfg.update_interval:
            return []
        batch, self.buffer = self.buffer, []
        return [self._update(batch)]

    def _update(self, batch: list[Transition]) -> RLUpdate:
        with MODEL_LOCK:
            version = self.policy.version
            runtime = self.registry.load(POLICY_NAME, version)  # a fresh copy to update
            m = runtime.update(batch, max_lag=self.cfg.max_lag)
            if m.transitions:
                version = self.registry.publish(
                    POLICY_NAME,
                    runtime.save,
                    stage=ModelStage.PRODUCTION,
                    feature_set=FEATURE_SET_VERSION,
                    data_from=from_ms(self.oldest_ms),
                    data_to=from_ms(self.newest_ms),
                    metrics={
                        "mean_reward": m.mean_reward,
                        "transitions": m.transitions,
                        "param_change_norm": m.param_change_norm,
                    },
                    params={"policy": runtime.version, "trigger": "rl_update"},
                    key=runtime.version,
                ).version
                self.policy.pin(version)
        assert version is not None
        return RLUpdate(
            version,
            from_ms(self.newest_ms),
            m.version_before,
            m.version_after,
            m.transitions,
            m.dropped,
            m.mean_reward,
            m.policy_loss,
            m.value_loss,
            m.approx_kl,
            m.clip_fraction,
            m.param_change_norm,
            m.seconds,
        )

    def finish(self) -> list[RLUpdate]:
        """End of input: a partial batch waits for the next run (module docstring)."""
        if self.cfg.enabled and self.buffer and self.policy.version is not None:
            doc = {
                "after": self.policy.version,
                "oldest_ms": self.oldest_ms,
                "newest_ms": self.newest_ms,
                "transitions": [t.to_dict() for t in self.buffer],
            }
            path = self.pending_path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, path)
        return []

    def _resume_pending(self) -> None:
        path = self.pending_path
        if not path.is_file():
            return
        try:
            doc = json.loads(path.read_text())
            if doc.get("after") != self.policy.version:
                return  # written before a later update: its transitions were used, or stale
            self.buffer = [Transition.from_dict(t) for t in doc["transitions"]]
            self.oldest_ms = int(doc.get("oldest_ms", doc["newest_ms"]))
            self.newest_ms = int(doc["newest_ms"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return
        log.info("PPO: %d transitions carried over from the last run", len(self.buffer))

    def snapshot(self) -> dict[str, Any]:
        return {
            "buffer": list(self.buffer),
            "oldest_ms": self.oldest_ms,
            "newest_ms": self.newest_ms,
            "counts": dict(self.counts),
            "pinned": self.policy.pinned,
        }


@operator
def learn_policy(
    step_id: str, joined: Stream[JoinedTrade], cfg: LearnerConfig, registry: Any
) -> Stream[RLUpdate]:
    """One learner for all symbols (PPO updates one policy), as its own step: the learning
    flow of the two-process deployment. The live flow's engine runs the same learner inline."""
    keyed = op.key_on("one_policy", joined, lambda _: POLICY_NAME)
    out = op.stateful(
        "ppo",
        keyed,
        stage_builder(
            lambda _: PolicyLearner(cfg, registry, PolicySource(registry)),
            lambda s: PolicyLearner(cfg, registry, PolicySource(registry), s),
        ),
    )
    return op.key_rm("unkey", out)

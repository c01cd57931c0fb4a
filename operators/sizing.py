"""RL sizing: the production PPO policy turns a tradable signal into (size, TP %, SL %).

- State: :class:`rl.state.RLState`, built by the portfolio when the order fills (after an
  opposite position is closed, :meth:`operators.portfolio.Portfolio.begin_fill`): the symbol's
  sub-account, the signal's confidence and direction, ``vol_daily``, and ``exposure``, the
  notional of every open position over the whole account's equity.
- Acting: stochastic when ``QT_RL_V3_TRAINING_ENABLED`` (and RL is enabled and not in shadow
  mode), otherwise the distribution's mode. Exploration noise is drawn from a generator seeded
  by (symbol, bar end), so a replay draws the same actions whatever the worker count. Each
  decision records its state, raw action, log-probability, value and policy version.
- Bounds: the policy's action is clipped into :class:`rl.state.ActionBounds`. A non-finite
  action (a broken policy) sizes nothing: the order is skipped and counted, because a trade
  without a finite action and log-probability could not be learned from.
- ``QT_RL_V3_SHADOW_MODE`` or ``QT_RL_V3_ENABLED=false``: the RL decision is still computed and
  recorded, but the trade uses ``QT_FIXED_POSITION_USD`` (capped at equity) with the middle of
  the TP/SL bounds, and is marked ``sizing=fixed`` (the learning flow does not learn from it:
  the outcome is not the policy's action's).
- The policy (:class:`PolicySource`) is the one the in-process learner pinned, or the
  registry's production version re-read before each decision; an update is used from the
  next decision on. A policy promoted or rolled back by hand (``python -m cli.registry``)
  replaces a pinned one at the next bar the engine decides (:meth:`PolicySource.adopt`, the
  rule of :mod:`operators.versions`), and the learner's next update starts from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.base import POLICY_NAME
from rl.state import ActionBounds, RLState
from runtime import MODEL_LOCK
from schemas.rl import SizingDecision
from schemas.trades import Sizing
from settings import DEFAULTS, Settings


@dataclass(frozen=True)
class SizingConfig:
    enabled: bool = DEFAULTS.rl_enabled
    shadow: bool = DEFAULTS.rl_shadow_mode
    training: bool = DEFAULTS.rl_training_enabled
    fixed_size_usd: float = DEFAULTS.fixed_position_usd

    @classmethod
    def from_settings(cls, s: Settings) -> SizingConfig:
        return cls(s.rl_enabled, s.rl_shadow_mode, s.rl_training_enabled, s.fixed_position_usd)

    @property
    def rl_trades(self) -> bool:
        return self.enabled and not self.shadow

    @property
    def stochastic(self) -> bool:
        return self.rl_trades and self.training


def decision_noise(symbol: str, bar_end_ms: int) -> np.ndarray:
    """Standard-normal exploration noise determined by the decision's identity."""
    seed = int.from_bytes(hashlib.sha256(f"{symbol}|{bar_end_ms}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed).standard_normal(3)


@dataclass(frozen=True, slots=True)
class Sized:
    """A sizing outcome: the recorded RL decision and what is actually traded."""

    decision: SizingDecision
    sizing: Sizing
    size_usd: float
    tp_pct: float
    sl_pct: float


class PolicySource:
    """The PPO policy that sizes orders: the registry's production version, reloaded when it
    changes, or the version the in-process learner :meth:`pin`-ned. Pinned, which policy sized
    an order follows the engine's event order (an update is used from the next order after the
    trade that completed its batch), not the moment the registry file changed."""

    def __init__(self, registry: Any, pinned: str | None = None) -> None:
        self.registry = registry
        self.pinned = pinned
        self._version: str | None = None
        self._policy: Any = None

    @property
    def version(self) -> str | None:
        return self.pinned or self.registry.production_version(POLICY_NAME)

    def pin(self, version: str) -> None:
        self.pinned = version

    def adopt(self) -> None:
        """A manual stage change: a pinned policy becomes the registry's production version
        (unpinned, the source follows the registry anyway)."""
        if self.pinned is not None:
            version = self.registry.production_version(POLICY_NAME)
            if version is not None:
                self.pinned = version

    def current(self) -> Any:
        version = self.version
        if version is None:
            raise RuntimeError("sizing: no production PPO policy in the registry")
        if version != self._version:
            self._policy = self.registry.load(POLICY_NAME, version)
            self._version = version
        return self._policy


class Sizer:
    """Shared by the worker threads of a process; policy calls hold the model lock."""

    def __init__(self, cfg: SizingConfig, policy: Any) -> None:
        self.cfg = cfg
        self.policy = policy

    def size(self, symbol: str, bar_end_ms: int, state: RLState) -> Sized | None:
        """Size one order, or None when the policy's action is not finite (skip it)."""
        stochastic = self.cfg.stochastic
        noise = decision_noise(symbol, bar_end_ms) if stochastic else None
        with MODEL_LOCK:
            runtime = self.policy.current()
            d = runtime.act(state, stochastic, noise)
        return sized_from(d, self.cfg, runtime.bounds, state.equity_usd)


def sized_from(
    d: SizingDecision, cfg: SizingConfig, bounds: ActionBounds, equity_usd: float
) -> Sized | None:
    """What is traded for a policy decision (module docstring): the policy's size, TP and SL;
    the fixed size when RL does not trade or the action was degenerate; nothing when the
    action or its log-probability is not finite."""
    if not np.isfinite(d.raw_action).all() or not np.isfinite(d.log_prob):
        return None
    if cfg.rl_trades and not d.degenerate:
        return Sized(d, Sizing.RL, d.position_size_usd, d.tp_pct, d.sl_pct)
    b = bounds
    return Sized(
        d,
        Sizing.FIXED,
        min(cfg.fixed_size_usd, equity_usd),
        0.5 * (b.tp_min_pct + b.tp_max_pct),
        0.5 * (b.sl_min_pct + b.sl_max_pct),
    )

"""The RL sizing record a trade carries: the policy's input, output and statistics at entry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SizingDecision:
    """What the policy decided for one signal, with everything the PPO update needs later.

    ``state`` is the exact network input (:meth:`RLState.to_array`), ``raw_action`` the
    unclipped sample (or the distribution mode when ``stochastic`` is False),
    ``log_prob`` its log-density under policy ``policy_version``, ``value`` the critic's
    estimate of ``state``. ``tp_pct`` / ``sl_pct`` are percent of the entry fill price.
    Only stochastic, non-degenerate decisions are valid PPO training samples.
    """

    state: tuple[float, ...]
    raw_action: tuple[float, ...]
    log_prob: float
    value: float
    policy_version: str
    position_size_usd: float
    tp_pct: float
    sl_pct: float
    degenerate: bool
    stochastic: bool

    @property
    def tp_frac(self) -> float:
        """Take-profit distance as a fraction of the entry price (``tp_pct / 100``)."""
        return self.tp_pct / 100.0

    @property
    def sl_frac(self) -> float:
        """Stop-loss distance as a fraction of the entry price (``sl_pct / 100``)."""
        return self.sl_pct / 100.0

"""What flows from the ensemble to execution: supervisor verdicts and per-bar decisions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from schemas.features import FeatureVector
from schemas.records import quick_init
from schemas.signals import Action, Signal

NO_CLOCK = 2**62  # the decision clock of bars closed at end of input (after everything)


class SupervisorMode(StrEnum):
    ENFORCED = "ENFORCED"  # a biased signal does not trade
    OBSERVE = "OBSERVE"  # the verdict is recorded, the signal trades anyway
    OFF = "OFF"  # no window, no verdicts

    @classmethod
    def parse(cls, text: str) -> SupervisorMode:
        try:
            return cls(text.strip().upper())
        except ValueError:
            raise ValueError(
                f"QT_MODEL_SUPERVISOR_MODE={text!r}: expected ENFORCED, OBSERVE or OFF"
            ) from None


@quick_init
@dataclass(frozen=True, slots=True)
class Verdict:
    """The bias window's judgement of one BUY/SELL signal.

    ``biased`` says the rule fired (the action's share of the window exceeded the threshold
    after the minimum samples); ``allowed`` says the signal may trade (False only when biased
    in ENFORCED mode). Shares and ``window_size`` include this signal. ``order`` is the
    signal's position in the window's (deterministic) processing order.
    """

    symbol: str
    ts: datetime
    action: Action
    mode: SupervisorMode
    scope: str
    allowed: bool
    biased: bool
    reason: str
    buy_share: float
    sell_share: float
    window_size: int
    order: int


@quick_init
@dataclass(frozen=True, slots=True)
class BarDecision:
    """Everything execution needs about one closed bar of one symbol.

    ``clock_ms`` is the partition's event-time clock when the bar closed (the decision time
    used to order signals across symbols); ``verdict`` is None for HOLD signals (not judged)
    and when the supervisor is OFF.
    """

    symbol: str
    bar_end_ms: int
    clock_ms: int
    signal: Signal
    vector: FeatureVector
    verdict: Verdict | None

    @property
    def tradable(self) -> bool:
        """A BUY/SELL the supervisor let through."""
        return self.signal.action is not Action.HOLD and (
            self.verdict is None or self.verdict.allowed
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """A validated input block's provenance, for ordering signals across partitions.

    The block produced ``parts`` per-symbol pieces; once they (and this message) have reached
    the supervisor, the partition's clock has passed ``clock_ms``. ``final`` marks the last
    block of a partition, ``idle`` a partition with nothing to read.
    """

    partition: str
    seq: int
    parts: int
    clock_ms: int
    final: bool
    idle: bool = False

"""Model votes and trading actions (the ensemble's vocabulary)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    """What a model (or the ensemble) says to do. Class ids: 0 HOLD, 1 BUY, 2 SELL."""

    HOLD = "HOLD"
    BUY = "BUY"
    SELL = "SELL"


CLASS_OF: dict[Action, int] = {Action.HOLD: 0, Action.BUY: 1, Action.SELL: 2}
ACTION_OF: dict[int, Action] = {v: k for k, v in CLASS_OF.items()}


@dataclass(frozen=True, slots=True)
class Vote:
    """One model's verdict on one symbol at one bar: the audit's (action, confidence, name),
    plus the version that made it and whether the model failed (a failure votes HOLD with
    confidence 0 and is counted)."""

    model: str
    version: str
    action: Action
    confidence: float
    failed: bool = False

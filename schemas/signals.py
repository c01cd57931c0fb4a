"""Model votes and trading actions (the ensemble's vocabulary)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from schemas.records import quick_init


class Action(StrEnum):
    """What a model (or the ensemble) says to do. Class ids: 0 HOLD, 1 BUY, 2 SELL."""

    HOLD = "HOLD"
    BUY = "BUY"
    SELL = "SELL"


CLASS_OF: dict[Action, int] = {Action.HOLD: 0, Action.BUY: 1, Action.SELL: 2}
ACTION_OF: dict[int, Action] = {v: k for k, v in CLASS_OF.items()}


@quick_init
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


class Consensus(StrEnum):
    """How many of the models agree with the ensemble's action (the audit's multipliers)."""

    UNANIMOUS = "unanimous"  # all models, x1.2
    STRONG = "strong"  # all but one, x1.1
    SPLIT = "split"  # anything less, x0.8
    WARMUP = "warmup"  # features not warm yet: no model was asked


@quick_init
@dataclass(frozen=True, slots=True)
class Signal:
    """The ensemble's decision for one symbol at one bar close (``ts``), with every vote.

    ``vol_blocked`` is True when the volatility rule turned a BUY/SELL into HOLD; ``weights``
    are the per-model weights used (fixed, or dynamic when enabled), in ``votes`` order.
    """

    symbol: str
    ts: datetime
    bar_start: datetime
    action: Action
    confidence: float
    consensus: Consensus
    buy_votes: float
    sell_votes: float
    volatility: float
    vol_blocked: bool
    warm: bool
    feature_set: str
    votes: tuple[Vote, ...]
    weights: tuple[float, ...]

    def vote(self, model: str) -> Vote:
        for v in self.votes:
            if v.model == model:
                return v
        raise KeyError(model)

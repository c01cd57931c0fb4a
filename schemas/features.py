"""Feature vectors: what the models see for one symbol at one bar close."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.bars import BarStep
from schemas.ticks import BlockTag


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """Features of ``symbol`` known at ``ts`` (the close of the bar that starts at ``bar_start``).

    ``values`` maps feature name to value (NaN where the feed cannot provide it, e.g. spread
    on trades-only data). ``window`` is the last ``QT_SEQ_WINDOW`` bar log-returns, oldest
    first, NaN-padded during warm-up; the sequence models read it. ``warm`` is False until
    every feature has its full lookback: warm-up bars are marked, never guessed.
    ``feature_set`` is the version id of the code that computed them.
    """

    symbol: str
    ts: datetime
    bar_start: datetime
    feature_set: str
    warm: bool
    close: float
    values: dict[str, float]
    window: tuple[float, ...]


@dataclass(slots=True)
class FeatureStep:
    """What the feature step emits per bar step: the vectors of the bars it closed (one per
    bar, in order) and the bar step itself, whose ticks execution needs downstream."""

    symbol: str
    vectors: list[FeatureVector]
    tag: BlockTag | None
    clocks: list[int]
    bar_step: BarStep | None = None

"""Dynamic ensemble weights (the audit's long-term item 7.3.6), off by default.

With ``QT_DYNAMIC_WEIGHTS=true`` each model's weight follows its recent realised accuracy on
closed trades: a model is right on a trade when its vote agreed with the trade's side and the
trade won (the ``model_win_rate`` analytics rule), wrong when it agreed and the trade lost;
models that did not vote for the side are not scored on that trade. Over the last
``window`` scored trades per model::

    raw_i    = base_i * clip(0.5 + accuracy_i, 0.5, 1.5)   (accuracy 0.5 keeps base_i)
    weight_i = raw_i / sum(raw)                              (weights sum to 1)

so a weight can move at most to half or one and a half times its audit weight before
normalising, and a model with fewer than ``min_trades`` scored trades keeps accuracy 0.5.
The weights used are recorded with every signal (``signals.weights``). They are shared in the
process (the learning graph updates them, the ensemble reads them), so they exist in the
single-process (embedded) mode; with separate processes each keeps the audit weights.

>>> w = DynamicWeights({"a": 0.5, "b": 0.5}, window=4, min_trades=2)
>>> for right in (True, True, False, True):
...     w.observe("a", right)
>>> {k: round(v, 4) for k, v in w.current().items()}
{'a': 0.5556, 'b': 0.4444}
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

from schemas.signals import Action
from schemas.trades import JoinedTrade, Side


class DynamicWeights:
    """Per-model weights from recent realised accuracy (thread-safe)."""

    def __init__(self, base: Mapping[str, float], window: int = 50,
                 min_trades: int = 10) -> None:
        self.base = dict(base)
        self.window = window
        self.min_trades = min_trades
        self._outcomes: dict[str, deque[bool]] = {m: deque(maxlen=window) for m in base}
        self._lock = threading.Lock()
        self._current = dict(base)

    def observe(self, model: str, right: bool) -> None:
        with self._lock:
            self._outcomes.setdefault(model, deque(maxlen=self.window)).append(right)
            raw = {}
            for m, b in self.base.items():
                seen = self._outcomes.get(m, ())
                acc = sum(seen) / len(seen) if len(seen) >= self.min_trades else 0.5
                raw[m] = b * min(1.5, max(0.5, 0.5 + acc))
            total = sum(raw.values())
            self._current = {m: r / total for m, r in raw.items()}

    def observe_trade(self, joined: JoinedTrade) -> None:
        """Score every model that voted for the trade's side."""
        side = Action.BUY if joined.opened.side is Side.LONG else Action.SELL
        won = joined.closed.net_pnl > 0
        for vote in joined.opened.entry.votes:
            if vote.action is side:
                self.observe(vote.model, won)

    def current(self) -> dict[str, float]:
        with self._lock:
            return dict(self._current)

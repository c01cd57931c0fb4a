"""Dynamic ensemble weights (a long-term item of the audit, docs/audit.md), off by default.

With ``QT_DYNAMIC_WEIGHTS=true`` each model's weight follows its recent realised accuracy on
closed trades: a model is right on a trade when its vote agreed with the trade's side and the
trade won (the ``model_win_rate`` analytics rule), wrong when it agreed and the trade lost;
models that did not vote for the side are not scored on that trade. Over the last
``window`` scored trades per model::

    raw_i    = base_i * clip(0.5 + accuracy_i, 0.5, 1.5)   (accuracy 0.5 keeps base_i)
    weight_i = raw_i / sum(raw)                              (weights sum to 1)

so a weight can move at most to half or one and a half times its audit weight before
normalising, and a model with fewer than ``min_trades`` scored trades keeps accuracy 0.5.
The audit's weights make any trade need three models (no two reach the 0.6 vote threshold);
dynamic weights keep that: when two weights would sum to the threshold or more, all weights
are pulled back toward the audit's by the smallest factor that keeps every pair at least
``PAIR_MARGIN`` (0.005) below it.
(The 2-2 split is HOLD in :func:`operators.ensemble.decide` whatever the weights.)
The weights used are recorded with every signal (``signals.weights``). They are shared in the
process (the learning graph updates them, the ensemble reads them), so they exist in the
single-process (embedded) mode; with separate processes each keeps the audit weights.

>>> w = DynamicWeights({"a": 0.5, "b": 0.5}, window=4, min_trades=2)
>>> for right in (True, True, False, True):
...     w.observe("a", right)
>>> {k: round(v, 4) for k, v in w.current().items()}
{'a': 0.5556, 'b': 0.4444}
>>> w = DynamicWeights({"x": .25, "l": .25, "n": .3, "p": .2}, window=4, min_trades=1)
>>> for m, right in (("x", True), ("n", True), ("l", False), ("p", False)):
...     w.observe(m, right)
>>> round(sum(sorted(w.current().values())[-2:]), 4)  # x and n would reach 0.62
0.595
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

from schemas.signals import Action
from schemas.trades import JoinedTrade, Side


class DynamicWeights:
    """Per-model weights from recent realised accuracy (thread-safe)."""

    def __init__(
        self,
        base: Mapping[str, float],
        window: int = 50,
        min_trades: int = 10,
        pair_limit: float = 0.6,
    ) -> None:
        self.base = dict(base)
        self.window = window
        self.min_trades = min_trades
        self.pair_limit = pair_limit
        if len(self.base) >= 3 and _max_pair(self.base) >= pair_limit:
            raise ValueError(f"base weights {self.base}: two already reach {pair_limit}")
        self._outcomes: dict[str, deque[bool]] = {m: deque(maxlen=window) for m in base}
        self._lock = threading.Lock()
        self._current = dict(base)

    def observe(self, model: str, right: bool) -> None:
        with self._lock:
            self._outcomes.setdefault(model, deque(maxlen=self.window)).append(right)
            self._recompute()

    def _recompute(self) -> None:
        """The weights from the outcomes (the caller holds the lock)."""
        raw = {}
        for m, b in self.base.items():
            seen = self._outcomes.get(m, ())
            acc = sum(seen) / len(seen) if len(seen) >= self.min_trades else 0.5
            raw[m] = b * min(1.5, max(0.5, 0.5 + acc))
        total = sum(raw.values())
        weights = {m: r / total for m, r in raw.items()}
        if len(weights) >= 3:
            weights = _keep_three(weights, self.base, self.pair_limit)
        self._current = weights

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

    def snapshot(self) -> dict[str, list[bool]]:
        with self._lock:
            return {m: list(d) for m, d in self._outcomes.items()}

    def restore(self, state: Mapping[str, list[bool]]) -> None:
        """Continue from :meth:`snapshot` (the weights follow from the outcomes)."""
        with self._lock:
            self._outcomes = {m: deque(v, maxlen=self.window) for m, v in state.items()}
            self._recompute()


PAIR_MARGIN = 0.005


def _max_pair(weights: Mapping[str, float]) -> float:
    top = sorted(weights.values(), reverse=True)
    return sum(top[:2])


def _keep_three(
    weights: dict[str, float], base: Mapping[str, float], limit: float
) -> dict[str, float]:
    """``weights`` pulled toward ``base`` just enough that no two come within
    :data:`PAIR_MARGIN` of ``limit``."""
    limit -= PAIR_MARGIN
    if _max_pair(weights) <= limit:
        return weights
    lo, hi = 0.0, 1.0  # base + lam x (weights - base); lam = 0 is the base, which is fine
    for _ in range(50):
        mid = (lo + hi) / 2
        if _max_pair({m: base[m] + mid * (w - base[m]) for m, w in weights.items()}) <= limit:
            lo = mid
        else:
            hi = mid
    return {m: base[m] + lo * (w - base[m]) for m, w in weights.items()}

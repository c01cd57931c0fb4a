"""The shadow judge's evidence: realised labels for every decided bar, paired votes per challenger.

Bars arrive in the decision engine's event order (:class:`~schemas.learning.ScoredBar`). A
bar's label is realised when its symbol's bar ``horizon`` bars later closes: the log return
between the two closes against the label threshold of :mod:`models.labels` (the same rule
training uses). At that moment each shadow challenger that voted on the bar gets one **paired
row**: the realised label, production's class and the challenger's class on the same bar, the
forward return and the bar's round-trip cost (fees and slippage both ways plus the quoted
spread, the cost part of the label threshold), so that both models can be scored
statistically and economically on exactly the same bars (:mod:`learning.evidence`).

The judge also keeps the production ensemble's realised calls (was a BUY/SELL right by more
than its threshold?) for the performance trigger, which compares them with the ensemble's
call hit rate on its validation data: like with like.

>>> from models.labels import LabelConfig
>>> lab = Labeler(LabelConfig(horizon=2, vol_mult=0.0, round_trip_cost=0.001))
>>> [lab.push("X", t, c, 0.0, float("nan"), t) for t, c in ((1, 100.0), (2, 101.0))]
[[], []]
>>> lab.push("X", 3, 100.5, 0.0, float("nan"), 3)  # bar 1's label: ln(100.5/100) > 0.001
[(1, 1, 0.004987541511038968, 0.001)]
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.labels import LabelConfig, classify, label_threshold
from schemas.learning import ScoredBar
from schemas.signals import CLASS_OF, Action

_BUY, _SELL = CLASS_OF[Action.BUY], CLASS_OF[Action.SELL]


class Labeler:
    """Per symbol, the last ``horizon`` bars waiting for their label (module docstring)."""

    def __init__(self, cfg: LabelConfig, state: dict[str, list[tuple]] | None = None) -> None:
        self.cfg = cfg
        self.pending: dict[str, deque[tuple]] = {s: deque(v) for s, v in (state or {}).items()}

    def push(
        self,
        symbol: str,
        ts_ms: int,
        close: float,
        vol_ewma: float,
        spread_bps: float,
        payload: Any,
    ) -> list[tuple[Any, int, float, float]]:
        """Add a bar; returns ``(payload, label, forward return, cost)`` of the bar whose
        label this close realised (at most one)."""
        q = self.pending.setdefault(symbol, deque())
        q.append((ts_ms, close, vol_ewma, spread_bps, payload))
        if len(q) <= self.cfg.horizon:
            return []
        _, c0, vol, spread, old = q.popleft()
        if not (c0 > 0 and close > 0):
            return []
        fwd = math.log(close / c0)
        thr = label_threshold(vol, spread, self.cfg)
        y = int(classify(np.array([fwd]), np.array([thr]))[0])
        spread_cost = 0.0 if math.isnan(spread) else spread / 1e4
        return [(old, y, fwd, self.cfg.round_trip_cost + spread_cost)]

    def threshold_hit(self, action_class: int, fwd: float, vol: float, spread: float) -> bool:
        thr = label_threshold(vol, spread, self.cfg)
        return (action_class == _BUY and fwd > thr) or (action_class == _SELL and fwd < -thr)

    def snapshot(self) -> dict[str, list[tuple]]:
        return {s: list(q) for s, q in self.pending.items()}


@dataclass
class PairedRows:
    """One challenger's paired rows, in realisation order."""

    ts_ms: list[int] = field(default_factory=list)
    symbol: list[str] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    production: list[int] = field(default_factory=list)
    challenger: list[int] = field(default_factory=list)
    fwd: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    def add(
        self,
        ts_ms: int,
        symbol: str,
        y: int,
        production: int,
        challenger: int,
        fwd: float,
        cost: float,
    ) -> None:
        self.ts_ms.append(ts_ms)
        self.symbol.append(symbol)
        self.y.append(y)
        self.production.append(production)
        self.challenger.append(challenger)
        self.fwd.append(fwd)
        self.cost.append(cost)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "ts_ms": np.asarray(self.ts_ms, dtype=np.int64),
            "symbol": np.asarray(self.symbol, dtype=object),
            "y": np.asarray(self.y, dtype=np.int64),
            "prod": np.asarray(self.production, dtype=np.int64),
            "chal": np.asarray(self.challenger, dtype=np.int64),
            "fwd": np.asarray(self.fwd, dtype=np.float64),
            "cost": np.asarray(self.cost, dtype=np.float64),
        }

    def copy(self) -> PairedRows:
        return PairedRows(
            list(self.ts_ms),
            list(self.symbol),
            list(self.y),
            list(self.production),
            list(self.challenger),
            list(self.fwd),
            list(self.cost),
        )


class ShadowJudge:
    """Paired rows per challenger ``(model, version)`` and the ensemble's realised calls."""

    def __init__(self, cfg: LabelConfig, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.labeler = Labeler(cfg, state.get("pending"))
        self.rows: dict[tuple[str, str], PairedRows] = {
            k: v.copy() for k, v in state.get("rows", {}).items()
        }
        self.calls: deque[tuple[int, bool]] = deque(state.get("calls", ()), maxlen=100_000)

    def watch(self, key: tuple[str, str]) -> None:
        """Start collecting rows for a challenger (from its next labelled shadow vote)."""
        self.rows.setdefault(key, PairedRows())

    def forget(self, key: tuple[str, str]) -> None:
        self.rows.pop(key, None)

    def push(self, bar: ScoredBar) -> None:
        v = bar.vector
        if not v.warm:
            return
        production = {vote.model: CLASS_OF[vote.action] for vote in bar.signal.votes}
        shadow = {
            (s.model, s.version): CLASS_OF[s.action]
            for s in bar.shadow
            if (s.model, s.version) in self.rows
        }
        payload = (
            bar.ts_ms,
            CLASS_OF[bar.signal.action],
            production,
            shadow,
            v.values["vol_ewma"],
            v.values["spread_bps"],
        )
        for old, y, fwd, cost in self.labeler.push(
            bar.symbol, bar.ts_ms, v.close, v.values["vol_ewma"], v.values["spread_bps"], payload
        ):
            ts, ensemble, prod, chal, vol, spread = old
            if ensemble in (_BUY, _SELL):
                self.calls.append((ts, self.labeler.threshold_hit(ensemble, fwd, vol, spread)))
            for key, c in chal.items():
                rows = self.rows.get(key)
                if rows is not None:
                    rows.add(ts, bar.symbol, y, prod[key[0]], c, fwd, cost)

    def call_hit_rate(self, since_ms: int) -> tuple[int, int]:
        """(hits, calls) of the production ensemble's calls made after ``since_ms``."""
        recent = [hit for ts, hit in self.calls if ts > since_ms]
        return sum(recent), len(recent)

    def snapshot(self) -> dict[str, Any]:
        return {
            "pending": self.labeler.snapshot(),
            "rows": {k: v.copy() for k, v in self.rows.items()},
            "calls": list(self.calls),
        }

"""The end-of-run summary: counters from every stage, totalled on one key, one screen.

Stages emit small ``Counts`` dicts (one per block, not per tick); :func:`run_summary` adds
them up and emits one :class:`Summary` at end of input.

>>> s = Summary({"rows_in": 10, "ticks": 8, "dead_letters": 2}, elapsed_s=2.0)
>>> s.ticks_per_second
4.0
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from operators.stage import stage_builder
from runtime import STOP

Counts = dict[str, int]


@dataclass(frozen=True, slots=True)
class PnlPoint:
    """A closed trade's net PnL at its exit time (the summary's equity curve)."""

    exit_ms: int
    trade_id: str
    net_pnl: float

# Display order and labels; keys not listed are shown after these, as they are.
LABELS: dict[str, str] = {
    "rows_in": "input rows",
    "ticks": "ticks",
    "dead_letters": "dead letters",
    "dead_letters.decode": "  undecodable",
    "dead_letters.validate": "  invalid values",
    "dead_letters.order": "  time going backwards",
    "bars": "bars",
    "bars.in_training": "  in the models' training data",
    "features": "feature vectors",
    "features.warm": "  warm",
    "signals": "signals",
    "signals.buy": "  BUY",
    "signals.sell": "  SELL",
    "signals.hold": "  HOLD",
    "signals.blocked": "  blocked by the supervisor",
    "trades.opened": "trades opened",
    "trades.joined.stream": "trades joined (stream)",
    "trades.joined.store": "trades joined (store)",
    "dead_letters.join": "join dead letters",
    "rl.transitions": "RL transitions",
    "rl.updates": "RL updates",
    "clm.drift_checks": "drift checks",
    "clm.drift_fired": "  drift beyond noise",
    "clm.cycles": "CLM cycles started",
    "clm.failed_at_start": "  without enough data",
    "clm.shadow": "  shadow-tested",
    "clm.decided": "  decided",
    "clm.promoted": "  models promoted",
    "clm.retired": "  models retired",
    "execution.signals_same_side": "signals beside an open position",
    "execution.orders_superseded": "orders replaced before their fill",
    "execution.orders_unfilled": "orders unfilled at end of input",
    "execution.orders_unsized": "orders the policy could not size",
    "ensemble.votes_scored_in_engine": "votes scored late (new versions)",
    "engine.decision_queue_max": "most bars waiting for a decision",
    "engine.partitions_forced_idle": "slow partitions treated as idle",
}


@dataclass(frozen=True)
class Summary:
    counts: Counts
    elapsed_s: float
    pnl: tuple[float, ...] = ()  # closed trades' net PnL in exit-time order
    start_equity: float = 0.0
    stopped: str | None = None  # the signal that stopped the run before its input ended

    @property
    def win_rate(self) -> float:
        return sum(1 for p in self.pnl if p > 0) / len(self.pnl) if self.pnl else math.nan

    @property
    def net_pnl(self) -> float:
        return math.fsum(self.pnl)

    @property
    def max_drawdown(self) -> float:
        """Largest peak-to-trough fall of the portfolio's realised equity, as a fraction."""
        equity = peak = self.start_equity
        worst = 0.0
        for p in self.pnl:
            equity += p
            peak = max(peak, equity)
            if peak > 0:
                worst = max(worst, 1.0 - equity / peak)
        return worst

    def sample_note(self) -> str:
        """``out-of-sample``, or how much of the replay the production models trained on."""
        inside = self.counts.get("bars.in_training", 0)
        if not inside:
            return "out-of-sample"
        return (f"in-sample: {inside / self.counts['bars']:.0%} of replayed bars were in the "
                "models' training data")

    @property
    def ticks_per_second(self) -> float:
        return self.counts.get("ticks", 0) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def render(self, title: str = "run summary") -> str:
        keys = [k for k in LABELS if k in self.counts]
        keys += sorted(k for k in self.counts if k not in LABELS)
        width = max(len(LABELS.get(k, k)) for k in keys) if keys else 10
        lines = [f"== {title} " + "=" * max(0, 44 - len(title))]
        lines += [f"  {LABELS.get(k, k):<{width}}  {self.counts[k]:>14,}" for k in keys]
        if self.counts.get("bars"):
            note = self.sample_note()
            lines.append(f"  {'evaluation':<{width}}  {note:>14}" if note == "out-of-sample"
                         else f"  WARNING {note}")
        if self.pnl or "trades.opened" in self.counts:
            lines.append(f"  {'trades closed':<{width}}  {len(self.pnl):>14,}")
            lines.append(f"  {'win rate':<{width}}  {self.win_rate:>14.1%}")
            lines.append(f"  {'net PnL':<{width}}  {self.net_pnl:>14,.2f}")
            lines.append(f"  {'max drawdown':<{width}}  {self.max_drawdown:>14.2%}")
        if self.stopped:
            lines.append(f"  STOPPED by {self.stopped}: open positions, bars and learning state "
                         "are kept; run the same command to go on (with -r, from where it "
                         "stopped)")
        lines.append(f"  {'elapsed':<{width}}  {self.elapsed_s:>12.1f} s")
        lines.append(f"  {'ticks/s':<{width}}  {self.ticks_per_second:>14,.0f}")
        lines.append("=" * 48)
        return "\n".join(lines)


@dataclass
class RunTotals:
    started: float
    start_equity: float = 0.0
    totals: Counter = field(default_factory=Counter)
    closes: list[PnlPoint] = field(default_factory=list)

    def push(self, item: Counts | PnlPoint) -> list[Summary]:
        if isinstance(item, PnlPoint):
            self.closes.append(item)
        else:
            self.totals.update(item)
        return []

    def finish(self) -> list[Summary]:
        ordered = sorted(self.closes, key=lambda p: (p.exit_ms, p.trade_id))
        return [Summary(dict(self.totals), time.monotonic() - self.started,
                        tuple(p.net_pnl for p in ordered), self.start_equity,
                        STOP.signal_name if STOP.requested else None)]

    def stopped(self) -> list[Summary]:
        return self.finish()  # the summary is printed after a stop too

    def snapshot(self) -> tuple[Counts, list[PnlPoint]]:
        return dict(self.totals), list(self.closes)


@operator
def run_summary(step_id: str, counts: Stream[Counts | PnlPoint], started: float,
                start_equity: float = 0.0, always: tuple[str, ...] = ()) -> Stream[Summary]:
    """Total the counters of a run; emits one :class:`Summary` at end of input. Keys in
    ``always`` are shown even when nothing counted them (0)."""
    keyed = op.key_on("one_key", counts, lambda _: "run")
    out = op.stateful("totals", keyed, stage_builder(
        lambda _: RunTotals(started, start_equity, Counter(dict.fromkeys(always, 0))),
        lambda state: RunTotals(started, start_equity, Counter(state[0]), list(state[1]))))
    return op.key_rm("unkey", out)

"""The end-of-run summary: counters from every stage, totalled on one key, one screen.

Stages emit small ``Counts`` dicts (one per block, not per tick); :func:`run_summary` adds
them up and emits one :class:`Summary` at end of input. On the way it draws a progress line
on stderr (:class:`ProgressLine`) and feeds the Prometheus metrics (:mod:`metrics`): the
same totals, three views.

>>> s = Summary({"rows_in": 10, "ticks": 8, "dead_letters": 2}, elapsed_s=2.0)
>>> s.ticks_per_second
4.0
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from metrics import METRICS
from operators.stage import stage_builder
from runtime import STOP
from schemas.learning import ChallengerDecision, ClmCycle, CycleStatus, DriftCheck

Counts = dict[str, int]


@dataclass(frozen=True, slots=True)
class PnlPoint:
    """A closed trade's net PnL at its exit time (the summary's equity curve)."""

    exit_ms: int
    trade_id: str
    net_pnl: float


@dataclass(frozen=True, slots=True)
class EventTime:
    """The newest event time a stage has reached (bars closed up to ``ms``)."""

    ms: int


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
    "rows.written": "rows written to the store",
}


# Counters for the metrics and the progress line, not the summary screen (its dead letters are
# broken down by stage; `python -m cli.analytics dead_letters_by_reason` lists the reasons).
HIDDEN = ("dead_letters.reason.", "input.")


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
        return (
            f"in-sample: {inside / self.counts['bars']:.0%} of replayed bars were in the "
            "models' training data"
        )

    @property
    def ticks_per_second(self) -> float:
        return self.counts.get("ticks", 0) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def render(self, title: str = "run summary") -> str:
        keys = [k for k in LABELS if k in self.counts]
        keys += sorted(k for k in self.counts if k not in LABELS and not k.startswith(HIDDEN))
        width = max(len(LABELS.get(k, k)) for k in keys) if keys else 10
        lines = [f"== {title} " + "=" * max(0, 44 - len(title))]
        lines += [f"  {LABELS.get(k, k):<{width}}  {self.counts[k]:>14,}" for k in keys]
        if self.counts.get("bars"):
            note = self.sample_note()
            lines.append(
                f"  {'evaluation':<{width}}  {note:>14}"
                if note == "out-of-sample"
                else f"  WARNING {note}"
            )
        if self.pnl or "trades.opened" in self.counts:
            lines.append(f"  {'trades closed':<{width}}  {len(self.pnl):>14,}")
            lines.append(f"  {'win rate':<{width}}  {self.win_rate:>14.1%}")
            lines.append(f"  {'net PnL':<{width}}  {self.net_pnl:>14,.2f}")
            lines.append(f"  {'max drawdown':<{width}}  {self.max_drawdown:>14.2%}")
        if self.stopped:
            lines.append(
                f"  STOPPED by {self.stopped}: open positions, bars and learning state "
                "are kept; run the same command to go on (with -r, from where it "
                "stopped)"
            )
        lines.append(f"  {'elapsed':<{width}}  {self.elapsed_s:>12.1f} s")
        lines.append(f"  {'ticks/s':<{width}}  {self.ticks_per_second:>14,.0f}")
        lines.append("=" * 48)
        return "\n".join(lines)


class ProgressLine:
    """The progress of a long run on stderr: rows, share of the input read (when its size is
    known), ticks/s, event time reached, trades, net PnL; in tail mode (``lag``) how far
    event time is behind the wall clock.

    A terminal gets one line redrawn every ``every_s``; a log (not a terminal) a new line every
    ``log_every_s``. Plain Python: :meth:`update` returns the text it wrote, or None.

    >>> import io
    >>> line = ProgressLine(io.StringIO(), tty=False, log_every_s=0.0, input_bytes=1_000)
    >>> totals = Counter({"rows_in": 5_000, "ticks": 4_990, "input.bytes": 250})
    >>> line.update(totals, 1_399_334_400_000, 2, 1.5, started=0.0, now=2.0)
    '5,000 rows (25%) | 2,495 ticks/s | at 2014-05-06 00:00 | 2 trades | net PnL +1.50'
    """

    def __init__(
        self,
        out: TextIO = sys.stderr,
        tty: bool | None = None,
        every_s: float = 1.0,
        log_every_s: float = 30.0,
        input_bytes: int = 0,
        lag: bool = False,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.every_s = every_s if self.tty else log_every_s
        self.input_bytes, self.lag, self.wall = input_bytes, lag, wall
        self._last = -math.inf
        self._width = 0

    def update(
        self,
        totals: Counter,
        event_ms: int | None,
        trades: int,
        net_pnl: float,
        started: float,
        now: float | None = None,
    ) -> str | None:
        now = time.monotonic() if now is None else now
        if now - self._last < self.every_s:
            return None
        self._last = now
        rows = totals.get("rows_in", 0)
        parts = [f"{rows:,} rows"]
        if self.input_bytes and "input.bytes" in totals:
            share = min(1.0, totals.get("input.bytes", 0) / self.input_bytes)
            parts[0] += f" ({share:.0%})"
        elapsed = now - started
        parts.append(f"{totals.get('ticks', 0) / elapsed if elapsed > 0 else 0:,.0f} ticks/s")
        if event_ms is not None:
            at = datetime.fromtimestamp(event_ms / 1000, UTC)
            parts.append(f"at {at:%Y-%m-%d %H:%M}")
            if self.lag:
                behind = self.wall() - event_ms / 1000
                METRICS.event_time_lag(behind)
                parts.append(f"{behind:,.0f} s behind the wall clock")
        parts.append(f"{trades:,} trades | net PnL {net_pnl:+,.2f}")
        text = " | ".join(parts)
        if self.tty:
            self.out.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self.out.write(text + "\n")
        self.out.flush()
        return text

    def done(self) -> None:
        """End the redrawn line, so the summary starts on a line of its own."""
        if self.tty and self._width:
            self.out.write("\n")
            self.out.flush()


@dataclass
class RunTotals:
    started: float
    start_equity: float = 0.0
    totals: Counter = field(default_factory=Counter)
    closes: list[PnlPoint] = field(default_factory=list)
    event_ms: int | None = None
    progress: ProgressLine | None = None
    net_pnl: float = field(init=False)

    def __post_init__(self) -> None:
        self.net_pnl = math.fsum(p.net_pnl for p in self.closes)

    def push(self, item: Counts | PnlPoint | EventTime) -> list[Summary]:
        if isinstance(item, EventTime):
            self.event_ms = item.ms if self.event_ms is None else max(self.event_ms, item.ms)
        elif isinstance(item, PnlPoint):
            self.closes.append(item)
            self.net_pnl += item.net_pnl
            METRICS.closed(self.net_pnl)
        else:
            self.totals.update(item)
            METRICS.count(item)
        if self.progress is not None:
            self.progress.update(
                self.totals, self.event_ms, len(self.closes), self.net_pnl, self.started
            )
        return []

    def finish(self) -> list[Summary]:
        if self.progress is not None:
            self.progress.done()
        ordered = sorted(self.closes, key=lambda p: (p.exit_ms, p.trade_id))
        return [
            Summary(
                dict(self.totals),
                time.monotonic() - self.started,
                tuple(p.net_pnl for p in ordered),
                self.start_equity,
                STOP.signal_name if STOP.requested else None,
            )
        ]

    def stopped(self) -> list[Summary]:
        return self.finish()  # the summary is printed after a stop too

    def snapshot(self) -> tuple[Counts, list[PnlPoint], int | None]:
        return dict(self.totals), list(self.closes), self.event_ms


@operator
def run_summary(
    step_id: str,
    counts: Stream[Counts | PnlPoint | EventTime],
    started: float,
    start_equity: float = 0.0,
    always: tuple[str, ...] = (),
    progress: Callable[[], ProgressLine | None] = lambda: None,
) -> Stream[Summary]:
    """Total the counters of a run; emits one :class:`Summary` at end of input. Keys in
    ``always`` are shown even when nothing counted them (0); ``progress`` makes the progress
    line (None: no line)."""

    def restore(state: tuple) -> RunTotals:
        totals, closes, event_ms = (*state, None)[:3]
        return RunTotals(started, start_equity, Counter(totals), list(closes), event_ms, progress())

    keyed = op.key_on("one_key", counts, lambda _: "run")
    out = op.stateful(
        "totals",
        keyed,
        stage_builder(
            lambda _: RunTotals(
                started, start_equity, Counter(dict.fromkeys(always, 0)), progress=progress()
            ),
            restore,
        ),
    )
    return op.key_rm("unkey", out)


def learning_counts(
    updates: Sequence[object], drift: Sequence[DriftCheck], cycles: Sequence[ClmCycle]
) -> Counts:
    """The summary's counters of what the learners recorded (engine and learning flow)."""
    c: Counts = {
        "rl.updates": len(updates),
        "clm.drift_checks": len(drift),
        "clm.drift_fired": sum(d.fired for d in drift),
    }
    for cycle in cycles:
        for key, n in cycle_counts(cycle).items():
            c[key] = c.get(key, 0) + n
    return c


def cycle_counts(c: ClmCycle) -> Counts:
    """How a ``clm_cycles`` record moves the summary's CLM counters."""
    if c.status in (CycleStatus.TRAINING, CycleStatus.FAILED) and not c.versions:
        return {"clm.cycles": 1, "clm.failed_at_start": int(c.status is CycleStatus.FAILED)}
    if c.status is CycleStatus.SHADOW and not c.shadow_metrics:  # entered shadow
        return {"clm.shadow": 1}
    if c.status is not CycleStatus.DECIDED:
        return {}
    out: Counts = {"clm.decided": 1}
    for decision in c.decisions.values():
        key = "clm.promoted" if decision == ChallengerDecision.PROMOTED else "clm.retired"
        out[key] = out.get(key, 0) + 1
    return out

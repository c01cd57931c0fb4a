"""The end-of-run summary: counters from every stage, totalled on one key, one screen.

Stages emit small ``Counts`` dicts (one per block, not per tick); :func:`run_summary` adds
them up and emits one :class:`Summary` at end of input.

>>> s = Summary({"rows_in": 10, "ticks": 8, "dead_letters": 2}, elapsed_s=2.0)
>>> s.ticks_per_second
4.0
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from operators.stage import stage_builder

Counts = dict[str, int]

# Display order and labels; keys not listed are shown after these, as they are.
LABELS: dict[str, str] = {
    "rows_in": "input rows",
    "ticks": "ticks",
    "dead_letters": "dead letters",
    "dead_letters.decode": "  undecodable",
    "dead_letters.validate": "  invalid values",
    "dead_letters.order": "  time going backwards",
    "bars": "bars",
    "features": "feature vectors",
    "features.warm": "  warm",
    "signals": "signals",
    "signals.buy": "  BUY",
    "signals.sell": "  SELL",
    "signals.hold": "  HOLD",
}


@dataclass(frozen=True)
class Summary:
    counts: Counts
    elapsed_s: float

    @property
    def ticks_per_second(self) -> float:
        return self.counts.get("ticks", 0) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def render(self, title: str = "run summary") -> str:
        keys = [k for k in LABELS if k in self.counts]
        keys += sorted(k for k in self.counts if k not in LABELS)
        width = max(len(LABELS.get(k, k)) for k in keys) if keys else 10
        lines = [f"== {title} " + "=" * max(0, 44 - len(title))]
        lines += [f"  {LABELS.get(k, k):<{width}}  {self.counts[k]:>14,}" for k in keys]
        lines.append(f"  {'elapsed':<{width}}  {self.elapsed_s:>12.1f} s")
        lines.append(f"  {'ticks/s':<{width}}  {self.ticks_per_second:>14,.0f}")
        lines.append("=" * 48)
        return "\n".join(lines)


@dataclass
class RunTotals:
    started: float
    totals: Counter = field(default_factory=Counter)

    def push(self, counts: Counts) -> list[Summary]:
        self.totals.update(counts)
        return []

    def finish(self) -> list[Summary]:
        return [Summary(dict(self.totals), time.monotonic() - self.started)]

    def snapshot(self) -> Counts:
        return dict(self.totals)


@operator
def run_summary(step_id: str, counts: Stream[Counts], started: float) -> Stream[Summary]:
    """Total the counters of a run; emits one :class:`Summary` at end of input."""
    keyed = op.key_on("one_key", counts, lambda _: "run")
    out = op.stateful("totals", keyed, stage_builder(
        lambda _: RunTotals(started), lambda state: RunTotals(started, Counter(state))))
    return op.key_rm("unkey", out)

"""How far the input is complete: each input partition's event-time clock, and their minimum.

Every validated input block sends a :class:`~schemas.decisions.Progress` message (its
partition, sequence number, how many symbols it has ticks of, and the partition's clock after
it) straight to the decision engine, and each piece (one per shard of symbols) reaches the
engine through bars, features and scoring with the block's tag, counting the symbols it
carries. A partition's clock advances to a block's clock once that block's message and all
its symbols have arrived, blocks in sequence. Because a
partition's clock never decreases along its input, every event keyed by a clock below
:meth:`PartitionClocks.horizon` has then arrived, from every partition: the engine processes
exactly those, so its order does not depend on workers or timing.

A partition's last block (``final``) moves its clock to :data:`FINAL`, just below the clock of
the bars that are only closed at end of input, which wait for the engine's end of input.

**Idle partitions.** A live partition with nothing to read for ``QT_IDLE_PARTITION_MS`` of wall
time sends an idle marker (:meth:`schemas.ticks.TickRows.idle_marker`); from then on the
horizon is the minimum over the other partitions, so one quiet partition never stops the
decisions for the rest. Its next real block makes it count again. Data it delivers then with
a clock below what the engine already processed is **late**: it is still processed, at once,
but after events the engine had already decided (the documented lateness rule; keep
``QT_IDLE_PARTITION_MS`` above the feed's longest normal silence). When every partition is idle,
everything that arrived is processed. The engine can also declare the slowest partition idle
itself, when the events waiting for it exceed ``QT_MAX_DECISION_QUEUE``
(:meth:`PartitionClocks.force_idle`).

>>> c = PartitionClocks(["a", "b"])
>>> c.progress(Progress("a", 0, 1, 100, False)); c.horizon()
-inf
>>> c.arrived(BlockTag("a", 0, 1, 100)); c.progress(Progress("b", 0, 0, 250, False))
>>> c.horizon()
100
>>> c.progress(Progress("a", 1, 0, 100, False, idle=True)); c.horizon()  # a: nothing to read
250
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from schemas.decisions import NO_CLOCK, Progress
from schemas.ticks import BlockTag

FINAL = NO_CLOCK - 1


@dataclass
class PartitionClock:
    """Completion of one input partition's blocks, in sequence."""

    next_seq: int = 0
    clock: float = -math.inf
    expected: dict[int, Progress] = field(default_factory=dict)
    arrived: dict[int, int] = field(default_factory=dict)
    idle: bool = False

    def advance(self) -> None:
        while self.next_seq in self.expected:
            p = self.expected[self.next_seq]
            if self.arrived.get(self.next_seq, 0) < p.parts:
                return
            del self.expected[self.next_seq]
            self.arrived.pop(self.next_seq, None)
            self.idle = p.idle
            if not p.idle:
                self.clock = FINAL if p.final else max(self.clock, p.clock_ms)
            self.next_seq += 1


class PartitionClocks:
    """The clocks of all input partitions (see the module docstring)."""

    def __init__(
        self, partitions: Sequence[str] = (), state: dict[str, PartitionClock] | None = None
    ) -> None:
        self.parts: dict[str, PartitionClock] = (
            {p: PartitionClock() for p in partitions}
            if state is None
            else {p: _copy(c) for p, c in state.items()}
        )

    def _part(self, name: str) -> PartitionClock:
        part = self.parts.get(name)
        if part is None:
            part = self.parts[name] = PartitionClock()
        return part

    def progress(self, p: Progress) -> None:
        part = self._part(p.partition)
        part.expected[p.seq] = p
        part.advance()

    def arrived(self, tag: BlockTag | None, symbols: int = 1) -> None:
        """A piece of a block arrived, carrying ``symbols`` of the block's symbols (a block's
        ``parts`` counts symbols; pieces without a tag were closed at end of input)."""
        if tag is None:
            return
        part = self._part(tag.partition)
        part.arrived[tag.seq] = part.arrived.get(tag.seq, 0) + symbols
        part.advance()

    def horizon(self) -> float:
        """Every event keyed below this clock has arrived (``inf`` with no partitions); idle
        partitions do not hold it back (module docstring)."""
        if not self.parts:
            return math.inf
        waiting = [p.clock for p in self.parts.values() if not p.idle]
        return min(waiting) if waiting else FINAL

    def force_idle(self) -> str | None:
        """Declare the partition that holds the horizon back idle; returns its name."""
        waiting = {n: p for n, p in self.parts.items() if not p.idle and p.clock < FINAL}
        if len(waiting) < 2:
            return None  # one partition left: waiting for it is waiting for the input
        name = min(waiting, key=lambda n: (waiting[n].clock, n))
        waiting[name].idle = True
        return name

    def snapshot(self) -> dict[str, Any]:
        return {p: _copy(c) for p, c in self.parts.items()}


def _copy(c: PartitionClock) -> PartitionClock:
    return replace(c, expected=dict(c.expected), arrived=dict(c.arrived))

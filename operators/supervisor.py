"""The model supervisor: a bounded bias window over the ensemble's BUY/SELL signals.

The audit's semantics, with its unbounded list bounded:

- The window keeps the last ``QT_MODEL_SUPERVISOR_WINDOW`` BUY/SELL signals (HOLD signals are
  not trade signals and are not judged). A signal joins the window, then is judged on shares
  that include it (as the audit's ``check_bias_and_block`` appends first).
- With fewer than ``QT_MODEL_SUPERVISOR_MIN_SAMPLES`` (20) signals nothing is biased. After that
  a BUY is biased while the BUY share exceeds ``QT_MODEL_SUPERVISOR_BIAS_THRESHOLD`` (0.70), a
  SELL likewise for the SELL share.
- Modes: ENFORCED blocks a biased signal; OBSERVE records the verdict and lets it trade; OFF
  keeps no window and judges nothing.
- Scope: ``global`` (one window for all symbols, the audit's) or ``symbol`` (one per symbol).

Order. A global window is order-sensitive, and with several workers the symbols' signals
arrive interleaved by scheduling. So signals are judged in a defined order: by decision clock
(the input partition's event time when the bar closed), then bar end, then symbol. A signal is
released for judgement once every input partition's clock has passed its decision clock:
each validated block sends a :class:`~schemas.decisions.Progress` message straight here, and a
partition's clock advances when all of a block's per-symbol pieces (and the message) have
arrived. The verdicts are therefore the same with 1 and 2 workers, and do not depend on how
the input is cut into blocks.

>>> w = BiasWindow(size=100, min_samples=3, threshold=0.6)
>>> [w.judge(a)[0] for a in (Action.BUY, Action.BUY, Action.BUY, Action.SELL, Action.BUY)]
[False, False, True, False, True]
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from operators.ensemble import SignalStep
from operators.stage import stage_builder
from schemas.decisions import BarDecision, Progress, SupervisorMode, Verdict
from schemas.signals import Action
from schemas.timeutil import to_ms

SCOPES = ("global", "symbol")


@dataclass(frozen=True)
class SupervisorConfig:
    mode: SupervisorMode = SupervisorMode.ENFORCED
    threshold: float = 0.70
    min_samples: int = 20
    window: int = 100
    scope: str = "global"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"QT_MODEL_SUPERVISOR_SCOPE={self.scope!r}: expected one of "
                             f"{SCOPES}")
        if self.window < 1 or self.min_samples < 1 or not 0 < self.threshold <= 1:
            raise ValueError(f"supervisor window {self.window}, min samples "
                             f"{self.min_samples}, threshold {self.threshold}: out of range")

    @classmethod
    def from_settings(cls, s: Any) -> SupervisorConfig:
        return cls(SupervisorMode.parse(s.supervisor_mode), s.supervisor_bias_threshold,
                   s.supervisor_min_samples, s.supervisor_window, s.supervisor_scope.lower())


class BiasWindow:
    """The last ``size`` BUY/SELL actions, with running counts (O(1) per signal)."""

    def __init__(self, size: int, min_samples: int, threshold: float,
                 actions: Iterable[Action] = ()) -> None:
        self.size, self.min_samples, self.threshold = size, min_samples, threshold
        self.actions: deque[Action] = deque(maxlen=size)
        self.buys = self.sells = 0
        for a in actions:
            self._add(a)

    def _add(self, action: Action) -> None:
        if len(self.actions) == self.size:
            old = self.actions[0]
            self.buys -= old is Action.BUY
            self.sells -= old is Action.SELL
        self.actions.append(action)
        self.buys += action is Action.BUY
        self.sells += action is Action.SELL

    def judge(self, action: Action) -> tuple[bool, str, float, float, int]:
        """Add ``action`` and judge it: (biased, reason, buy share, sell share, window size)."""
        if action is Action.HOLD:
            raise ValueError("the bias window judges BUY and SELL signals only")
        self._add(action)
        n = len(self.actions)
        buy, sell = self.buys / n, self.sells / n
        if n < self.min_samples:
            return False, f"insufficient samples ({n} < {self.min_samples})", buy, sell, n
        if action is Action.BUY and buy > self.threshold:
            return True, f"excessive LONG bias: {buy:.0%} BUY > {self.threshold:.0%}", buy, sell, n
        if action is Action.SELL and sell > self.threshold:
            return (True, f"excessive SHORT bias: {sell:.0%} SELL > {self.threshold:.0%}", buy,
                    sell, n)
        return False, "no bias detected", buy, sell, n


@dataclass
class Supervisor:
    """Judges signals in the order they are given (one window)."""

    cfg: SupervisorConfig
    window: BiasWindow | None = None
    judged: int = 0

    def __post_init__(self) -> None:
        if self.window is None:
            self.window = BiasWindow(self.cfg.window, self.cfg.min_samples, self.cfg.threshold)

    def decide(self, step_symbol: str, clock: int, signal: Any, vector: Any) -> BarDecision:
        verdict = None
        if signal.action is not Action.HOLD and self.cfg.mode is not SupervisorMode.OFF:
            assert self.window is not None
            biased, reason, buy, sell, n = self.window.judge(signal.action)
            allowed = not (biased and self.cfg.mode is SupervisorMode.ENFORCED)
            if biased and not allowed:
                reason = f"blocked: {reason}"
            elif biased:
                reason = f"observed (not blocked): {reason}"
            verdict = Verdict(step_symbol, signal.ts, signal.action, self.cfg.mode,
                              self.cfg.scope, allowed, biased, reason, buy, sell, n, self.judged)
            self.judged += 1
        return BarDecision(step_symbol, to_ms(signal.ts), clock, signal, vector, verdict)

    def snapshot(self) -> tuple[list[str], int]:
        assert self.window is not None
        return [a.value for a in self.window.actions], self.judged

    @classmethod
    def restore(cls, cfg: SupervisorConfig, state: tuple[list[str], int]) -> Supervisor:
        actions, judged = state
        window = BiasWindow(cfg.window, cfg.min_samples, cfg.threshold,
                            [Action(a) for a in actions])
        return cls(cfg, window, judged)


@dataclass
class _PartitionClock:
    """Completion of one input partition's blocks, in sequence."""

    next_seq: int = 0
    clock: float = -math.inf
    expected: dict[int, Progress] = field(default_factory=dict)
    arrived: dict[int, int] = field(default_factory=dict)

    def advance(self) -> None:
        while self.next_seq in self.expected:
            p = self.expected[self.next_seq]
            if self.arrived.get(self.next_seq, 0) < p.parts:
                return
            del self.expected[self.next_seq]
            self.arrived.pop(self.next_seq, None)
            self.clock = math.inf if p.final else max(self.clock, p.clock_ms)
            self.next_seq += 1


@dataclass
class OrderedSupervisor:
    """The global-scope stage: buffers signals and judges them in decision-clock order."""

    supervisor: Supervisor
    partitions: dict[str, _PartitionClock]
    pending: list[tuple[tuple[int, int, str, int], Any]] = field(default_factory=list)
    counter: int = 0

    @classmethod
    def fresh(cls, cfg: SupervisorConfig, partitions: Sequence[str]) -> OrderedSupervisor:
        return cls(Supervisor(cfg), {p: _PartitionClock() for p in partitions})

    def push(self, item: SignalStep | Progress) -> list[tuple[str, BarDecision]]:
        if isinstance(item, Progress):
            part = self.partitions.setdefault(item.partition, _PartitionClock())
            part.expected[item.seq] = item
            part.advance()
        else:
            for (signal, vector), clock in zip(item.scored, item.clocks, strict=True):
                key = (clock, to_ms(signal.ts), item.symbol, self.counter)
                self.counter += 1
                heapq.heappush(self.pending, (key, (item.symbol, signal, vector)))
            if item.tag is not None:
                part = self.partitions.setdefault(item.tag.partition, _PartitionClock())
                part.arrived[item.tag.seq] = part.arrived.get(item.tag.seq, 0) + 1
                part.advance()
        horizon = min((p.clock for p in self.partitions.values()), default=math.inf)
        return self._release(lambda key: key[0] < horizon)

    def _release(self, ready: Any) -> list[tuple[str, BarDecision]]:
        out = []
        while self.pending and ready(self.pending[0][0]):
            key, (symbol, signal, vector) = heapq.heappop(self.pending)
            out.append((symbol, self.supervisor.decide(symbol, key[0], signal, vector)))
        return out

    def finish(self) -> list[tuple[str, BarDecision]]:
        return self._release(lambda key: True)

    def snapshot(self) -> dict[str, Any]:
        return {"supervisor": self.supervisor.snapshot(), "partitions": self.partitions,
                "pending": list(self.pending), "counter": self.counter}

    @classmethod
    def restore(cls, cfg: SupervisorConfig, state: dict[str, Any]) -> OrderedSupervisor:
        return cls(Supervisor.restore(cfg, state["supervisor"]), state["partitions"],
                   state["pending"], state["counter"])


@dataclass
class SymbolSupervisor:
    """The symbol-scope stage: one window per symbol, signals judged as they come."""

    supervisor: Supervisor

    def push(self, item: SignalStep) -> list[BarDecision]:
        return [self.supervisor.decide(item.symbol, clock, signal, vector)
                for (signal, vector), clock in zip(item.scored, item.clocks, strict=True)]

    def finish(self) -> list[BarDecision]:
        return []

    def snapshot(self) -> tuple[list[str], int]:
        return self.supervisor.snapshot()


@operator
def supervise(step_id: str, signals: KeyedStream[SignalStep], progress: Stream[Progress],
              cfg: SupervisorConfig, partitions: Sequence[str]) -> KeyedStream[BarDecision]:
    """Judge every signal with the bias window; emit one decision per bar, keyed by symbol."""
    if cfg.scope == "symbol":
        return op.stateful("per_symbol", signals, stage_builder(
            lambda _: SymbolSupervisor(Supervisor(cfg)),
            lambda state: SymbolSupervisor(Supervisor.restore(cfg, state))))
    merged = op.merge("with_progress", op.key_rm("unkey", signals), progress)
    keyed = op.key_on("one_window", merged, lambda _: "global")
    judged = op.stateful("global", keyed, stage_builder(
        lambda _: OrderedSupervisor.fresh(cfg, partitions),
        lambda state: OrderedSupervisor.restore(cfg, state)))
    return op.flat_map("by_symbol", judged, lambda kv: [kv[1]])

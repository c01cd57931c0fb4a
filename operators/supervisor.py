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
arrive interleaved by scheduling. So signals are judged in the decision engine's event order
(:mod:`operators.engine`: the partition clock at the bar's closing tick, then symbol), once
every input partition's clock has passed it. The verdicts are therefore the same with 1 and 2
workers, and do not depend on how the input is cut into blocks.

>>> w = BiasWindow(size=100, min_samples=3, threshold=0.6)
>>> [w.judge(a)[0] for a in (Action.BUY, Action.BUY, Action.BUY, Action.SELL, Action.BUY)]
[False, False, True, False, True]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from schemas.decisions import BarDecision, SupervisorMode, Verdict
from schemas.signals import Action
from schemas.timeutil import to_ms
from settings import DEFAULTS, Settings, SupervisorScope


@dataclass(frozen=True)
class SupervisorConfig:
    mode: SupervisorMode = DEFAULTS.supervisor_mode
    threshold: float = DEFAULTS.supervisor_bias_threshold
    min_samples: int = DEFAULTS.supervisor_min_samples
    window: int = DEFAULTS.supervisor_window
    scope: SupervisorScope = DEFAULTS.supervisor_scope

    def __post_init__(self) -> None:
        object.__setattr__(self, "scope", SupervisorScope(self.scope))  # a plain string too
        if self.window < 1 or self.min_samples < 1 or not 0 < self.threshold <= 1:
            raise ValueError(
                f"supervisor window {self.window}, min samples "
                f"{self.min_samples}, threshold {self.threshold}: out of range"
            )

    @classmethod
    def from_settings(cls, s: Settings) -> SupervisorConfig:
        return cls(
            SupervisorMode.parse(s.supervisor_mode),
            s.supervisor_bias_threshold,
            s.supervisor_min_samples,
            s.supervisor_window,
            s.supervisor_scope,
        )


class BiasWindow:
    """The last ``size`` BUY/SELL actions, with running counts (O(1) per signal)."""

    def __init__(
        self, size: int, min_samples: int, threshold: float, actions: Iterable[Action] = ()
    ) -> None:
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
            return (
                True,
                f"excessive SHORT bias: {sell:.0%} SELL > {self.threshold:.0%}",
                buy,
                sell,
                n,
            )
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

    def decide(
        self, step_symbol: str, clock: int, signal: Any, vector: Any, bar_end_ms: int | None = None
    ) -> BarDecision:
        """Judge one signal (``bar_end_ms``: its time in ms, when the caller knows it)."""
        verdict = None
        if signal.action is not Action.HOLD and self.cfg.mode is not SupervisorMode.OFF:
            assert self.window is not None
            biased, reason, buy, sell, n = self.window.judge(signal.action)
            allowed = not (biased and self.cfg.mode is SupervisorMode.ENFORCED)
            if biased and not allowed:
                reason = f"blocked: {reason}"
            elif biased:
                reason = f"observed (not blocked): {reason}"
            verdict = Verdict(
                step_symbol,
                signal.ts,
                signal.action,
                self.cfg.mode,
                self.cfg.scope,
                allowed,
                biased,
                reason,
                buy,
                sell,
                n,
                self.judged,
            )
            self.judged += 1
        return BarDecision(
            step_symbol,
            to_ms(signal.ts) if bar_end_ms is None else bar_end_ms,
            clock,
            signal,
            vector,
            verdict,
        )

    def snapshot(self) -> tuple[list[str], int]:
        assert self.window is not None
        return [a.value for a in self.window.actions], self.judged

    @classmethod
    def restore(cls, cfg: SupervisorConfig, state: tuple[list[str], int]) -> Supervisor:
        actions, judged = state
        window = BiasWindow(
            cfg.window, cfg.min_samples, cfg.threshold, [Action(a) for a in actions]
        )
        return cls(cfg, window, judged)

"""Adapter from a plain per-key Python object to Bytewax's ``StatefulLogic``.

``snapshot()`` returns an independent copy: later pushes must not change it
(tests/operators/test_snapshots.py checks every stage but the decision engine and the learners).

Stage logic in this package is written as small classes that know nothing about Bytewax, so
they can be tested as plain Python. A stage has ``push(value) -> list`` for each item,
``finish() -> list`` at end of input, and ``snapshot()`` for recovery. :class:`StageLogic`
runs one such object per key; the object is created from the key's first item (so it can
learn its symbol) or restored from a snapshot.

When the input ended because a stop was requested (:data:`runtime.STOP`), ``finish`` is not
called: end-of-input rules (closing the open bar, closing positions) would change what a
resume continues from. A stage that must act on a stop defines ``stopped() -> list``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from bytewax.operators import StatefulLogic

from runtime import STOP

V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")
V_in = TypeVar("V_in", contravariant=True)
W_out = TypeVar("W_out", covariant=True)
S_out = TypeVar("S_out", covariant=True)


class Stage(Protocol[V_in, W_out, S_out]):
    """A stage's plain-Python interface: items in, outputs out, a snapshot for recovery."""

    def push(self, value: V_in) -> Iterable[W_out]: ...
    def finish(self) -> Iterable[W_out]: ...
    def snapshot(self) -> S_out: ...


class StageLogic(StatefulLogic[V, W, Any], Generic[V, W, S]):
    """Runs a :class:`Stage` for one key; never discards it (keys are symbols/partitions)."""

    def __init__(
        self, create: Callable[[V], Stage], restore: Callable[[S], Stage], resume: S | None
    ) -> None:
        self._create = create
        self._stage: Stage | None = None if resume is None else restore(resume)

    def on_item(self, value: V) -> tuple[Iterable[W], bool]:
        if self._stage is None:
            self._stage = self._create(value)
        return self._stage.push(value), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[W], bool]:
        if self._stage is None:
            return (), StatefulLogic.RETAIN
        if STOP.requested:
            stopped = getattr(self._stage, "stopped", None)
            return (stopped() if stopped is not None else ()), StatefulLogic.RETAIN
        return self._stage.finish(), StatefulLogic.RETAIN

    def snapshot(self) -> Any:
        return None if self._stage is None else self._stage.snapshot()


def stage_builder(
    create: Callable[[V], Stage], restore: Callable[[Any], Stage]
) -> Callable[[Any], StageLogic]:
    """The ``builder`` argument of ``op.stateful`` for a stage class."""
    return lambda resume: StageLogic(create, restore, resume)

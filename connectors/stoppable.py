"""Any partitioned source, ended early when a stop is requested (:data:`runtime.STOP`).

The wrapped partition checks the request at every poll and then ends (``StopIteration``)
without emitting anything more, in particular no "final" block: downstream, the input is not
over, it paused. Its snapshot is the inner partition's, so a resume from recovery reads on from
the last row handed downstream.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from runtime import STOP

X = TypeVar("X")
S = TypeVar("S")


class StoppablePartition(StatefulSourcePartition[X, S], Generic[X, S]):
    def __init__(self, inner: StatefulSourcePartition[X, S]) -> None:
        self._inner = inner

    def next_batch(self) -> list[X]:
        if STOP.requested:
            raise StopIteration
        return list(self._inner.next_batch())

    def next_awake(self) -> datetime | None:
        return None if STOP.requested else self._inner.next_awake()

    def snapshot(self) -> S:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class Stoppable(FixedPartitionedSource[X, S], Generic[X, S]):
    """``inner`` whose partitions end at a stop request."""

    def __init__(self, inner: FixedPartitionedSource[X, S]) -> None:
        self.inner = inner

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: S | None) -> Any:
        return StoppablePartition(self.inner.build_part(step_id, for_part, resume_state))

"""Process-wide runtime state that several layers share: the stop request.

A live flow is stopped with SIGINT (Ctrl-C) or SIGTERM. :func:`install_stop_handlers` makes the
first such signal a *request*: the sources end their partitions at their next poll, every stage
keeps its state instead of running its end-of-input rules (an open bar stays open, an open
position stays open, a pending PPO batch is kept), the sinks flush, and the run summary prints
with a line saying how to resume. With recovery on (``-r``), the last snapshot is taken at that
point and a resume continues exactly where the stop left off. A second signal stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType


class StopRequest:
    """Set once by a signal; read by sources and stages (thread-safe)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, signal_name: str) -> None:
        self.signal_name = signal_name
        self._event.set()

    def reset(self) -> None:
        self.signal_name = None
        self._event.clear()


STOP = StopRequest()


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM request a stop; the second one ends the process at once. Only from
    the main thread (where Python runs signal handlers); a no-op elsewhere."""
    if threading.current_thread() is not threading.main_thread():
        return
    STOP.reset()

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if STOP.requested:  # the second signal: no more patience
            sys.stderr.write(f"\n{name} again: stopping now, without the summary\n")
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        sys.stderr.write(f"\n{name}: stopping: the sources end now, state is kept, the sinks "
                         "flush and the summary follows (again to stop at once)\n")
        STOP.request(name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)

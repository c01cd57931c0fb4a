"""CLM triggers on event time: time, drift and performance clocks, manual requests, the perf rule.

Why event time: a replay of three weeks must exercise a weekly retrain and daily drift checks
in minutes, and a replay must fire them at the same points as the live run would.

:class:`TriggerSchedule` rules (periods from ``QT_CLM_RETRAIN_HOURS`` 168,
``QT_CLM_DRIFT_HOURS`` 24, ``QT_CLM_PERF_HOURS`` 6):

- The **first observed event time** starts every clock that is not running yet: nothing is due
  at that instant; each check is first due one period later.
- **Time trigger** (:attr:`Check.TIME`): due when ``now - last_cycle >= retrain period``.
  :meth:`TriggerSchedule.record_cycle` (any cycle, whatever started it) restarts that clock.
- **Drift and performance checks**: due every period on a fixed grid from the first event
  (start + k x period), independent of cycles.
- **Jumps**: when event time jumps over several periods, a due check fires **once**, and its
  next due time is the first grid point after ``now`` (missed periods are not replayed: one
  drift check on the newest data answers them all). The time trigger likewise fires once;
  until a cycle is recorded it stays on the grid last cycle (or start) + k x retrain period.
- A period ``<= 0`` disables that check. Event time that goes backwards fires nothing.

The state is a small JSON-able dict (:meth:`TriggerSchedule.snapshot`) for Bytewax recovery.

>>> H = 3_600_000
>>> s = TriggerSchedule(TriggerConfig(retrain_hours=48, drift_hours=24, perf_hours=6))
>>> s.due(0), [c.value for c in s.due(6 * H)], [c.value for c in s.due(24 * H)]
([], ['performance'], ['drift', 'performance'])
>>> [c.value for c in s.due(100 * H)]  # jumped over several periods: each fires once
['time', 'drift', 'performance']
>>> s.next_due(Check.DRIFT) // H, s.next_due(Check.TIME) // H
(120, 144)
>>> s.record_cycle(101 * H); s.next_due(Check.TIME) // H
149
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from schemas.timeutil import iso
from settings import DEFAULTS, Settings

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000


class Trigger(StrEnum):
    """Why a CLM cycle started (the ``trigger`` column of ``clm_cycles``)."""

    TIME = "time"
    DRIFT = "drift"
    PERFORMANCE = "performance"
    MANUAL = "manual"


class Check(StrEnum):
    """What falls due at an event time. ``TIME`` is itself a trigger; ``DRIFT`` and
    ``PERFORMANCE`` ask for a check that may or may not become one."""

    TIME = "time"
    DRIFT = "drift"
    PERFORMANCE = "performance"


@dataclass(frozen=True)
class TriggerConfig:
    """Periods in hours of event time; ``<= 0`` disables a check (``QT_CLM_RETRAIN_HOURS``,
    ``QT_CLM_DRIFT_HOURS``, ``QT_CLM_PERF_HOURS``; defaults: :data:`settings.DEFAULTS`)."""

    retrain_hours: float = DEFAULTS.clm_retrain_hours
    drift_hours: float = DEFAULTS.clm_drift_hours
    perf_hours: float = DEFAULTS.clm_perf_hours

    @classmethod
    def from_settings(cls, s: Settings) -> TriggerConfig:
        return cls(s.clm_retrain_hours, s.clm_drift_hours, s.clm_perf_hours)

    def period_ms(self, check: Check) -> int:
        hours = {
            Check.TIME: self.retrain_hours,
            Check.DRIFT: self.drift_hours,
            Check.PERFORMANCE: self.perf_hours,
        }[check]
        return round(hours * HOUR_MS)


class TriggerSchedule:
    """Event-time clocks of the three periodic checks (see the module docstring)."""

    def __init__(
        self,
        cfg: TriggerConfig,
        next_ms: Mapping[Check, int] | None = None,
        last_cycle_ms: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.periods = {c: cfg.period_ms(c) for c in Check}
        self.next_ms: dict[Check, int] = dict(next_ms or {})
        self.last_cycle_ms = last_cycle_ms

    def due(self, now_ms: int) -> list[Check]:
        """The checks due at event time ``now_ms``, in ``Check`` order; each fires once."""
        fired = []
        for check in Check:
            period = self.periods[check]
            if period <= 0:
                continue
            nxt = self.next_ms.get(check)
            if nxt is None:  # the first event starts this clock
                self.next_ms[check] = now_ms + period
            elif now_ms >= nxt:
                fired.append(check)
                self.next_ms[check] = nxt + period * ((now_ms - nxt) // period + 1)
        return fired

    def record_cycle(self, now_ms: int) -> None:
        """A cycle started at ``now_ms``: the time trigger is next due a retrain period later."""
        self.last_cycle_ms = now_ms
        if self.periods[Check.TIME] > 0:
            self.next_ms[Check.TIME] = now_ms + self.periods[Check.TIME]

    def next_due(self, check: Check) -> int | None:
        """When ``check`` is next due (None before the first event or when disabled)."""
        return self.next_ms.get(check) if self.periods[check] > 0 else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "next_ms": {c.value: t for c, t in self.next_ms.items()},
            "last_cycle_ms": self.last_cycle_ms,
        }

    @classmethod
    def restore(cls, cfg: TriggerConfig, state: Mapping[str, Any]) -> TriggerSchedule:
        """Resume with the saved due times (new periods apply from the next firing on)."""
        return cls(
            cfg, {Check(c): int(t) for c, t in state["next_ms"].items()}, state["last_cycle_ms"]
        )


def performance_degraded(
    recent_wins: int,
    recent_trades: int,
    validation_hit_rate: float,
    min_trades: int = 10,
    tolerance: float = 0.05,
) -> bool:
    """The performance trigger: recent live results fell below what validation promised.

    Fires when the window holds at least ``min_trades`` closed trades (fewer say too little)
    and ``recent_wins / recent_trades < validation_hit_rate - tolerance``; ``tolerance`` is
    absolute (0.05 = 5 percentage points) so ordinary noise around the validation figure (the
    production model's ``call_hit_rate``) does not retrain. A win rate exactly at the limit
    does not fire (``0.66 - 0.06`` is ``0.6000000000000001`` in floats: rounding is ignored).

    >>> performance_degraded(4, 10, 0.55), performance_degraded(5, 10, 0.55)
    (True, False)
    >>> performance_degraded(0, 9, 0.55)  # too few trades to judge
    False
    """
    if recent_trades < 0 or not 0 <= recent_wins <= recent_trades:
        raise ValueError(f"{recent_wins} wins of {recent_trades} trades is impossible")
    if min_trades < 1:
        raise ValueError(f"min_trades must be >= 1, got {min_trades}")
    if recent_trades < min_trades:
        return False
    rate, limit = recent_wins / recent_trades, validation_hit_rate - tolerance
    return rate < limit and not math.isclose(rate, limit, rel_tol=1e-9, abs_tol=1e-12)


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RetrainRequests:
    """Manual retrain requests as small JSON files: a CLI submits, the flow claims.

    Layout: ``<directory>/requests/<id>.json`` (the request) and ``<directory>/claimed/<id>.json``
    (the claim marker). Both are created atomically and never overwritten:

    - :meth:`submit` writes a temporary file and hard-links it to its final name, so a reader
      never sees half a request, and resubmitting the same ``request_id`` (a retried CLI call)
      keeps the first request instead of making a second one.
    - :meth:`claim` creates the marker with ``O_CREAT | O_EXCL``: exactly one caller (thread,
      worker or process) succeeds per request, so no request is ever taken twice.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.requests = self.directory / "requests"
        self.claimed = self.directory / "claimed"
        self.requests.mkdir(parents=True, exist_ok=True)
        self.claimed.mkdir(parents=True, exist_ok=True)

    def submit(self, reason: str = "manual", request_id: str | None = None) -> Path:
        """Write a request (idempotent per ``request_id``); returns its path."""
        rid = request_id or f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        if not _ID.match(rid):
            raise ValueError(f"request id {rid!r}: use letters, digits, '.', '_', '-'")
        final = self.requests / f"{rid}.json"
        doc = {
            "id": rid,
            "trigger": Trigger.MANUAL.value,
            "reason": reason,
            "submitted_at": iso(datetime.now(UTC)),
        }
        tmp = self.requests / f".tmp-{uuid.uuid4().hex}"
        try:
            with tmp.open("w") as f:
                json.dump(doc, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, final)
        except FileExistsError:
            pass  # the same id was submitted before: one request
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def _unclaimed(self) -> list[Path]:
        return sorted(
            p
            for p in self.requests.glob("*.json")
            if not p.name.startswith(".") and not (self.claimed / p.name).exists()
        )

    def pending(self) -> list[dict[str, Any]]:
        """Requests not claimed yet (read-only; another caller may claim them meanwhile)."""
        return [json.loads(p.read_text()) for p in self._unclaimed()]

    def claim(self) -> list[dict[str, Any]]:
        """Take every pending request, oldest id first; each is returned to one caller only."""
        taken = []
        for path in self._unclaimed():
            try:
                fd = os.open(self.claimed / path.name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue  # another caller took it
            claimed_at = iso(datetime.now(UTC))
            with os.fdopen(fd, "w") as f:
                json.dump({"claimed_at": claimed_at, "pid": os.getpid()}, f)
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                log.warning("retrain request %s is unreadable, dropped: %s", path, e)
                continue
            taken.append({**doc, "claimed_at": claimed_at})
        return taken

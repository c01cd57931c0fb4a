"""Validation: decoded input rows -> per-symbol valid ticks + dead letters with reasons.

One :class:`TickValidator` per input partition (the step is keyed by partition, and a
partition owns its symbols), because "time going backwards" needs the newest time seen per
symbol, and "time jumping ahead" the newest time of the partition. Rules, first match wins:

==============  =======================================================================
stage           reason
==============  =======================================================================
decode          the row could not be decoded (wrong field count, bad number or time,
                missing required field); ``numeric overflow in <field>``: a finite-looking
                number too large for a float (``1e309``; an ``inf`` literal is a value,
                "non-finite" below); ``ts out of range (cannot be represented)``: a time
                outside year 1..9999 (after its UTC offset); a quote size above 1e15;
                ``file truncated``/``file corrupt``: the unreadable rest of a damaged
                compressed file, as one dead letter (:mod:`connectors.replay`)
validate        unknown symbol (when ``QT_SYMBOLS`` is set); non-finite price;
                non-positive price; ``price outside the sane range`` (any of price, bid,
                ask, open, high, low outside [1e-12, 1e12]); negative size; ``size outside
                the sane range`` (above 1e15); crossed quote (bid > ask); inconsistent
                candle (high < low, open/close outside [low, high]); ``time outside the
                sane range``: before 1990-01-01, or more than 1 day after the wall clock
order           ``time jumped ahead``: more than 1 day past the newest accepted tick of
                the partition, unless the next 2 rows of the partition are past that
                point too (a real gap: a weekend, a holiday, an outage); older than the
                newest tick of its symbol by more than ``QT_MAX_BACKWARDS_MS``
==============  =======================================================================

Why these ranges: every market in ``../shared/data`` trades between 2.5e-5 and 64,000 and
sizes stay below 1.4e8, so [1e-12, 1e12] and 1e15 reject only corrupt values (``1e-308``,
``1e300``), never a cheap token or a hyperinflated currency; electronic tick data starts in
the 1990s; a time after the wall clock plus a day cannot have been recorded yet. A tick
rejected by a time rule moves neither its symbol's clock nor the partition's, so one absurd
time cannot turn every later row into "time going backwards". The partition's first tick
has no reference yet: only the sane range applies to it (so a file whose first row is
absurd cannot set a reference in the future). A jump of more than a day must be confirmed
because real feeds have gaps of days (FX weekends: 46 h in the FXCM file; 91 h in the
Bitstamp 2011 trades): the jump is accepted when the 2 rows after it are past the same
point, and a row whose confirmation has not arrived yet waits (kept in the validator's
state) for the partition's next block; at the end of the input it is judged on the rows
there are.

Every input row ends up in exactly one place: a :class:`TickBatch` or a dead letter.

>>> from schemas.ticks import Tick, TickOrigin, tick_rows_from_ticks
>>> from schemas.timeutil import parse_iso
>>> t = lambda s, p: Tick(parse_iso(s), "X", TickOrigin.TRADE, p, size=1.0)
>>> rows = tick_rows_from_ticks([t("2024-01-01T00:00:05Z", 10.0),
...                             t("2024-01-01T00:00:01Z", 11.0),
...                             t("2024-01-01T00:00:06Z", -1.0)])
>>> out = TickValidator(max_backwards_ms=1000).validate(rows)
>>> len(out.batches["X"]), [d.reason for d in out.dead]
(1, ['non-positive price', 'time went backwards by 4000 ms'])
>>> rows = tick_rows_from_ticks([t("2024-01-01T00:00:05Z", 10.0),
...                             t("2024-06-01T00:00:00Z", 10.0),
...                             t("2024-01-01T00:00:06Z", 10.0),
...                             t("2024-01-01T00:00:07Z", 10.0)])
>>> [d.reason for d in TickValidator().validate(rows).dead]  # doctest: +NORMALIZE_WHITESPACE
['time jumped ahead: 2024-06-01T00:00:00.000Z is more than 1 day past the newest tick of its
  feed, 2024-01-01T00:00:05.000Z, and the rows after it are not']
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator

from operators.stage import stage_builder
from schemas.dead_letters import TS_UNKNOWN, DeadLetters, Stage
from schemas.ticks import (
    MS_MAX,
    MS_MIN,
    ORIGIN_CODE,
    PRICE_MAX,
    PRICE_MIN,
    SIZE_MAX,
    BlockTag,
    SymbolTicks,
    TickBatch,
    TickOrigin,
    TickRows,
)
from schemas.timeutil import from_ms, iso

QUOTE = ORIGIN_CODE[TickOrigin.QUOTE]
NEVER = -(2**62)  # "no tick seen yet"; far from int64 overflow when the tolerance is subtracted
DAY_MS = 86_400_000
EARLIEST_MS = 631_152_000_000  # 1990-01-01T00:00:00Z: nothing earlier is a sane tick time
MAX_JUMP_MS = DAY_MS  # a tick this far past the partition's newest needs confirmation
FUTURE_MS = DAY_MS  # ... and one this far past the wall clock is never accepted
JUMP_CONFIRMATIONS = 2  # rows after a jump that must be past the same point to accept it
# The range of the dead_letters table's DateTime64(3) column: a dead letter's time outside it
# is stored as unknown (its raw text keeps it).
STORABLE_MS = (-2_208_988_800_000, 10_413_791_999_999)  # 1900-01-01 .. 2299-12-31


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class Validated:
    """One input block after validation."""

    partition: str
    rows_in: int
    batches: dict[str, TickBatch]
    dead: DeadLetters
    tag: BlockTag
    input_bytes: int = 0  # of the source's input: the progress line's share read

    @property
    def ticks(self) -> int:
        return sum(len(b) for b in self.batches.values())

    def pieces(self) -> list[tuple[str, SymbolTicks]]:
        """Keyed per-symbol items, in symbol order, each tagged with the block's provenance."""
        return [(sym, SymbolTicks(self.tag, self.batches[sym])) for sym in sorted(self.batches)]


@dataclass
class TickValidator:
    """Stateful validator for one partition. State: newest event time per symbol."""

    max_backwards_ms: int = 1000
    universe: frozenset[str] = frozenset()
    newest_ms: dict[str, int] = field(default_factory=dict)
    blocks: int = 0
    clock_ms: int = NEVER
    now_ms: Callable[[], int] = wall_clock_ms
    held: TickRows | None = None  # rows from a time jump on, waiting for its confirmation

    def validate(self, rows: TickRows) -> Validated:
        if self.held is not None and (len(rows) or rows.extra_dead or rows.final):
            rows = _prepend(self.held, rows)
            self.held = None
        n = len(rows)
        reason = np.full(n, None, dtype=object)
        stage = np.full(n, None, dtype=object)

        def reject(mask: np.ndarray, why: str | Iterable[str], at: Stage) -> None:
            fresh = mask & (reason == None)  # noqa: E711 - elementwise on an object array
            if fresh.any():
                idx = np.flatnonzero(fresh)
                reason[idx] = why if isinstance(why, str) else np.asarray(why, object)[idx]
                stage[idx] = at

        for i, why in rows.errors.items():
            reason[i], stage[i] = why, Stage.DECODE
        if self.universe:
            known = np.isin(rows.symbol, list(self.universe))
            reject(~known, "unknown symbol", Stage.VALIDATE)
        with np.errstate(invalid="ignore", over="ignore"):
            is_quote = rows.origin == QUOTE
            # a quote's mid can overflow where its bid and ask do not: judge the quoted sides
            reject(~is_quote & ~np.isfinite(rows.price), "non-finite price", Stage.VALIDATE)
            reject(is_quote & ~(np.isfinite(rows.bid) & np.isfinite(rows.ask)),
                   "non-finite price", Stage.VALIDATE)
            reject(~is_quote & (rows.price <= 0), "non-positive price", Stage.VALIDATE)
            reject(is_quote & ((rows.bid <= 0) | (rows.ask <= 0)), "non-positive price",
                   Stage.VALIDATE)
            reject(~is_quote & _outside(rows.price), PRICE_RANGE, Stage.VALIDATE)
            reject(is_quote & (_outside(rows.bid) | _outside(rows.ask)), PRICE_RANGE,
                   Stage.VALIDATE)
            if rows.candle is not None:
                o, h, lo = rows.candle
                is_candle = ~np.isnan(h)
                reject(is_candle & ~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo)),
                       "non-finite price", Stage.VALIDATE)
                reject(is_candle & ((o <= 0) | (lo <= 0)), "non-positive price", Stage.VALIDATE)
                reject(is_candle & (_outside(o) | _outside(h) | _outside(lo)), PRICE_RANGE,
                       Stage.VALIDATE)
            reject(rows.size < 0, "negative size", Stage.VALIDATE)
            reject(rows.size > SIZE_MAX, SIZE_RANGE, Stage.VALIDATE)
            reject(is_quote & (rows.bid > rows.ask), "crossed quote (bid > ask)",
                   Stage.VALIDATE)
            if rows.candle is not None:
                c = rows.price
                reject(is_candle & ((h < lo) | (o > h) | (o < lo) | (c > h) | (c < lo)),
                       "inconsistent candle", Stage.VALIDATE)
        latest = self.now_ms() + FUTURE_MS
        early = rows.ts_ms < EARLIEST_MS
        late = rows.ts_ms > latest
        if early.any() or late.any():
            reject(early | late, [
                "" if not (e or f) else
                f"time outside the sane range: {_when(t)} is "
                + ("before 1990-01-01" if e else "more than 1 day after the wall clock")
                for e, f, t in zip(early.tolist(), late.tolist(), rows.ts_ms.tolist(),
                                   strict=True)], Stage.VALIDATE)

        # time jumping ahead of the partition (module docstring); may hold back a tail
        cand = np.flatnonzero(reason == None)  # noqa: E711
        jumped, hold_at = self._jumps(rows.ts_ms[cand], rows.final)
        for k, ref in jumped:
            i = int(cand[k])
            reason[i] = (f"time jumped ahead: {_when(int(rows.ts_ms[i]))} is more than 1 day "
                         f"past the newest tick of its feed, {_when(ref)}, and the rows after "
                         "it are not")
            stage[i] = Stage.ORDER
        if hold_at is not None:
            cut = int(cand[hold_at])
            self.held = rows.slice(cut, n)
            self.held.extra_dead = []  # undecodable lines go out with this block
            rows = rows.slice(0, cut)  # (rows_in then counts the held rows when they go out)
            reason, stage, n = reason[:cut], stage[:cut], cut

        ok = reason == None  # noqa: E711
        accepted: dict[str, np.ndarray] = {}
        if ok.any():
            good = np.flatnonzero(ok)
            symbols = rows.symbol[good]
            for sym in sorted(set(symbols.tolist())):
                idx = good[symbols == sym]
                ts = rows.ts_ms[idx]
                prior = self.newest_ms.get(sym, NEVER)
                newest_before = np.maximum.accumulate(np.concatenate(([prior], ts[:-1])))
                late = ts < newest_before - self.max_backwards_ms
                if late.any():
                    bad = idx[late]
                    reason[bad] = [f"time went backwards by {int(d)} ms"
                                   for d in (newest_before[late] - ts[late])]
                    stage[bad] = Stage.ORDER
                    idx = idx[~late]
                    ts = ts[~late]
                if len(idx) == 0:
                    continue
                self.newest_ms[sym] = max(prior, int(ts.max()))
                accepted[sym] = idx
        # the partition clock: running max of the valid ticks' times, in input order
        valid = np.zeros(n, dtype=bool)
        for idx in accepted.values():
            valid[idx] = True
        times = np.where(valid, rows.ts_ms, NEVER)
        clock = np.maximum.accumulate(np.concatenate(([self.clock_ms], times)))[1:]
        if n:
            self.clock_ms = int(clock[-1])
        batches = {sym: _take(rows, sym, idx, clock) for sym, idx in accepted.items()}

        dead = DeadLetters()
        for src, row, raw, why in rows.extra_dead:
            dead.add(src, row, None, "", Stage.DECODE, why, raw)
        bad = np.flatnonzero(reason != None)  # noqa: E711
        if len(bad):
            ts = rows.ts_ms
            ts = np.where((ts < STORABLE_MS[0]) | (ts > STORABLE_MS[1]), TS_UNKNOWN, ts)
            for at in (Stage.DECODE, Stage.VALIDATE, Stage.ORDER):
                idx = bad[stage[bad] == at]
                if len(idx) == 0:
                    continue
                dead.extend([rows.sources[s] for s in rows.src[idx]], rows.row_no[idx],
                            ts[idx],
                            rows.symbol[idx].tolist(), at, reason[idx].tolist(), rows.raw(idx))

        tag = BlockTag(rows.partition, self.blocks, len(batches), self.clock_ms, rows.final,
                       rows.idle)
        self.blocks += 1
        return Validated(rows.partition, rows.rows_in, batches, dead, tag,
                         rows.input_bytes)

    def _jumps(self, t: np.ndarray, final: bool) -> tuple[list[tuple[int, int]], int | None]:
        """Time jumps among the candidate rows' times ``t`` (input order): the positions
        rejected (with the reference they jumped from), and the position from which rows
        must wait for the next block (a jump whose confirmation has not arrived), or None.

        Sequential semantics (a rejected row does not move the reference), vectorised
        between jumps: each search looks at a window that doubles until a jump shows up.
        """
        rejected: list[tuple[int, int]] = []
        ref, s, n = self.clock_ms, 0, len(t)
        window = n
        while s < n:
            if ref == NEVER:  # the partition's first tick: the sane range was its only test
                ref, s = int(t[s]), s + 1
                continue
            seg = t[s:s + window]
            before = np.maximum.accumulate(np.concatenate(([ref], seg[:-1])))
            jumps = seg > before + MAX_JUMP_MS
            if not jumps.any():
                ref, s = max(ref, int(seg.max())), s + len(seg)
                window *= 2
                continue
            j = int(np.argmax(jumps))
            k, ref = s + j, int(before[j])
            after = t[k + 1:k + 1 + JUMP_CONFIRMATIONS]
            if len(after) < JUMP_CONFIRMATIONS and not final:
                return rejected, k
            if len(after) and bool((after > ref + MAX_JUMP_MS).all()):
                ref = int(t[k])  # a real gap: the feed moved on
            else:
                rejected.append((k, ref))
            s, window = k + 1, 256
        return rejected, None

    # --- as a stage (see operators.stage) --------------------------------------------------
    def push(self, rows: TickRows) -> list[Validated]:
        return [self.validate(rows)]

    def finish(self) -> list[Validated]:
        return []

    def snapshot(self) -> tuple[dict[str, int], int, int, TickRows | None]:
        return dict(self.newest_ms), self.blocks, self.clock_ms, self.held

    def restored(self, state: tuple) -> TickValidator:
        self.newest_ms, self.blocks, self.clock_ms = dict(state[0]), state[1], state[2]
        self.held = state[3] if len(state) > 3 else None  # (snapshots before time jumps)
        return self


@operator
def validate_ticks(step_id: str, up: Stream[TickRows], max_backwards_ms: int,
                   universe: Iterable[str] = ()) -> Stream[Validated]:
    """Validate decoded input blocks, keyed by input partition (which owns its symbols)."""
    symbols = frozenset(universe)

    def fresh() -> TickValidator:
        return TickValidator(max_backwards_ms, symbols)

    keyed = op.key_on("by_partition", up, lambda rows: rows.partition)
    out = op.stateful("validate", keyed, stage_builder(
        lambda _: fresh(), lambda state: fresh().restored(state)))
    return op.key_rm("unkey", out)


PRICE_RANGE = f"price outside the sane range ({PRICE_MIN:g} to {PRICE_MAX:g})"
SIZE_RANGE = f"size outside the sane range (above {SIZE_MAX:g})"


def _outside(x: np.ndarray) -> np.ndarray:
    """Positive finite values outside [PRICE_MIN, PRICE_MAX] (other rules judge the rest)."""
    return (x > 0) & ((x < PRICE_MIN) | (x > PRICE_MAX))


def _when(ms: int) -> str:
    """A tick time for a reason: ISO-8601, or the raw number if no date can hold it."""
    return iso(from_ms(ms)) if MS_MIN <= ms <= MS_MAX else f"{ms} ms since 1970"


def _prepend(held: TickRows, rows: TickRows) -> TickRows:
    """The held rows followed by a new block (keeping the block's provenance)."""
    merged = TickRows.concat([held, rows], np.arange(len(held) + len(rows)))
    merged.partition, merged.seq, merged.final, merged.idle = (
        rows.partition, rows.seq, rows.final, rows.idle)
    return merged


def _take(rows: TickRows, symbol: str, idx: np.ndarray, clock: np.ndarray) -> TickBatch:
    candle = None if rows.candle is None else tuple(a[idx] for a in rows.candle)
    return TickBatch(symbol, rows.ts_ms[idx], rows.price[idx], rows.bid[idx], rows.ask[idx],
                     rows.size[idx], rows.side[idx], rows.origin[idx],
                     candle, clock[idx])  # type: ignore[arg-type]

"""Validation: decoded input rows -> per-symbol valid ticks + dead letters with reasons.

One :class:`TickValidator` per input partition (the step is keyed by partition, and a
partition owns its symbols), because "time going backwards" needs the newest time seen per
symbol. Rules, first match wins:

==============  =======================================================================
stage           reason
==============  =======================================================================
decode          the row could not be decoded (wrong field count, bad number or time,
                missing required field)
validate        unknown symbol (when ``QT_SYMBOLS`` is set); non-finite price;
                non-positive price; negative size; crossed quote (bid > ask);
                inconsistent candle (high < low, open/close outside [low, high])
order           older than the newest tick of its symbol by more than
                ``QT_MAX_BACKWARDS_MS``
==============  =======================================================================

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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator

from operators.stage import stage_builder
from schemas.dead_letters import DeadLetters, Stage
from schemas.ticks import ORIGIN_CODE, BlockTag, SymbolTicks, TickBatch, TickOrigin, TickRows

QUOTE = ORIGIN_CODE[TickOrigin.QUOTE]
NEVER = -(2**62)  # "no tick seen yet"; far from int64 overflow when the tolerance is subtracted


@dataclass(slots=True)
class Validated:
    """One input block after validation."""

    partition: str
    rows_in: int
    batches: dict[str, TickBatch]
    dead: DeadLetters
    tag: BlockTag

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

    def validate(self, rows: TickRows) -> Validated:
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
        with np.errstate(invalid="ignore"):
            is_quote = rows.origin == QUOTE
            reject(~np.isfinite(rows.price), "non-finite price", Stage.VALIDATE)
            reject(is_quote & ~(np.isfinite(rows.bid) & np.isfinite(rows.ask)),
                   "non-finite price", Stage.VALIDATE)
            reject(rows.price <= 0, "non-positive price", Stage.VALIDATE)
            reject(is_quote & ((rows.bid <= 0) | (rows.ask <= 0)), "non-positive price",
                   Stage.VALIDATE)
            reject(rows.size < 0, "negative size", Stage.VALIDATE)
            reject(is_quote & (rows.bid > rows.ask), "crossed quote (bid > ask)",
                   Stage.VALIDATE)
            if rows.candle is not None:
                o, h, lo = rows.candle
                c = rows.price
                is_candle = ~np.isnan(h)
                reject(is_candle & ~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo)),
                       "non-finite price", Stage.VALIDATE)
                reject(is_candle & ((o <= 0) | (lo <= 0)), "non-positive price", Stage.VALIDATE)
                reject(is_candle & ((h < lo) | (o > h) | (o < lo) | (c > h) | (c < lo)),
                       "inconsistent candle", Stage.VALIDATE)

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
            for at in (Stage.DECODE, Stage.VALIDATE, Stage.ORDER):
                idx = bad[stage[bad] == at]
                if len(idx) == 0:
                    continue
                dead.extend([rows.sources[s] for s in rows.src[idx]], rows.row_no[idx],
                            rows.ts_ms[idx],
                            rows.symbol[idx].tolist(), at, reason[idx].tolist(), rows.raw(idx))

        tag = BlockTag(rows.partition, self.blocks, len(batches), self.clock_ms, rows.final,
                       rows.idle)
        self.blocks += 1
        return Validated(rows.partition, rows.rows_in, batches, dead, tag)

    # --- as a stage (see operators.stage) --------------------------------------------------
    def push(self, rows: TickRows) -> list[Validated]:
        return [self.validate(rows)]

    def finish(self) -> list[Validated]:
        return []

    def snapshot(self) -> tuple[dict[str, int], int, int]:
        return dict(self.newest_ms), self.blocks, self.clock_ms

    def restored(self, state: tuple[dict[str, int], int, int]) -> TickValidator:
        self.newest_ms, self.blocks, self.clock_ms = dict(state[0]), state[1], state[2]
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


def _take(rows: TickRows, symbol: str, idx: np.ndarray, clock: np.ndarray) -> TickBatch:
    candle = None if rows.candle is None else tuple(a[idx] for a in rows.candle)
    return TickBatch(symbol, rows.ts_ms[idx], rows.price[idx], rows.bid[idx], rows.ask[idx],
                     rows.size[idx], rows.side[idx], rows.origin[idx],
                     candle, clock[idx])  # type: ignore[arg-type]

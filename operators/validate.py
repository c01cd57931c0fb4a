"""Validation: decoded input rows -> per-symbol valid ticks + dead letters with reasons.

One :class:`TickValidator` per input partition (the step is keyed by partition, and a
partition owns its symbols), because "time going backwards" needs the newest time seen per
symbol, and "time jumping ahead" the newest time of the partition. Rules, first match wins,
in three stages: ``decode`` (the row could not be decoded), ``validate`` (unknown symbol,
non-finite or non-positive price, a value outside the sane ranges, crossed quote, inconsistent
candle) and ``order`` (a jump of more than 1 day ahead that the next 2 rows do not confirm; a
tick older than its symbol's newest by more than ``QT_MAX_BACKWARDS_MS``). A tick rejected by
a time rule moves neither its symbol's clock nor the partition's.

Every input row ends up in exactly one place: a :class:`TickBatch` or a dead letter.

>>> from schemas.ticks import Tick, TickOrigin
>>> from connectors.decode import tick_rows_from_ticks
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

Design notes: docs/validation.md.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator

from metrics import DEAD_LETTER_REASON, reason_kind
from operators.stage import stage_builder
from operators.summary import Counts
from schemas.dead_letters import TS_UNKNOWN, DeadLetters, RejectedAt
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


SHARDS = 64  # symbols are spread over this many keys downstream (see shard_of)
_SHARD_OF: dict[str, str] = {}


def shard_of(symbol: str) -> str:
    """The key a symbol's bars and features are computed under: one of :data:`SHARDS`, by a
    stable hash of the symbol (the same in every process and run). A shard's symbols are
    handled together, vectorised across them (bars, features, the engine's intake), so a
    block of a thousand symbols is a few dozen items downstream instead of a thousand; and 64
    keys still spread evenly over a cluster's workers."""
    key = _SHARD_OF.get(symbol)
    if key is None:
        if len(_SHARD_OF) >= 1 << 16:
            _SHARD_OF.clear()
        key = _SHARD_OF[symbol] = f"shard-{zlib.crc32(symbol.encode()) % SHARDS:02d}"
    return key


@dataclass(slots=True)
class ShardTicks(SymbolTicks):
    """The keyed stream item after validation: the valid ticks of one block's symbols that
    share a shard key. ``ticks`` holds them symbol after symbol (its ``symbol`` is the shard
    key); ``symbols`` names each symbol's span of it and ``batches`` are those spans as the
    symbols' own batches (views, no copies)."""

    symbols: list[tuple[str, int, int]] = field(default_factory=list)
    batches: list[TickBatch] = field(default_factory=list)


@dataclass(slots=True)
class Validated:
    """One input block after validation."""

    partition: str
    rows_in: int
    batches: dict[str, TickBatch]
    dead: DeadLetters
    tag: BlockTag
    input_bytes: int = 0  # of the source's input: the progress line's share read
    shards: list[tuple[str, ShardTicks]] = field(default_factory=list)

    @property
    def ticks(self) -> int:
        return sum(len(b) for b in self.batches.values())

    def pieces(self) -> list[tuple[str, SymbolTicks]]:
        """Keyed items, one per shard key (:func:`shard_of`) in key order, each tagged with the
        block's provenance (the block's ``parts`` count symbols: a piece carries several)."""
        if self.shards or not self.batches:
            return list(self.shards)
        return [(sym, SymbolTicks(self.tag, self.batches[sym])) for sym in sorted(self.batches)]

    def summary_counts(self) -> Counts:
        """Rows, ticks and dead letters of the block, by stage and by reason kind (the run
        summary's and the metrics' counters)."""
        c = {
            "rows_in": self.rows_in,
            "ticks": self.ticks,
            "dead_letters": len(self.dead),
            "input.bytes": self.input_bytes,
        }
        # counted by distinct (stage, reason) first: a month of quotes has 136k dead letters of
        # one reason, and a Python loop per row was 6% of the flow's CPU
        pairs = Counter(zip(self.dead.stage, self.dead.reason, strict=True))
        for (stage, reason), n in pairs.items():
            for key in (
                f"dead_letters.{stage.value}",
                f"{DEAD_LETTER_REASON}{stage.value}.{reason_kind(reason)}",
            ):
                c[key] = c.get(key, 0) + n
        return {k: n for k, n in c.items() if n}


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
        free = np.ones(n, dtype=bool)  # no reason yet (cheaper than comparing the objects)

        def reject(mask: np.ndarray, why: str | Iterable[str], at: RejectedAt) -> None:
            fresh = mask & free
            if fresh.any():
                idx = np.flatnonzero(fresh)
                reason[idx] = why if isinstance(why, str) else np.asarray(why, object)[idx]
                stage[idx] = at
                free[idx] = False

        for i, why in rows.errors.items():
            reason[i], stage[i], free[i] = why, RejectedAt.DECODE, False
        if self.universe:
            known = np.isin(rows.symbol, list(self.universe))
            reject(~known, "unknown symbol", RejectedAt.VALIDATE)
        _check_values(rows, reject)
        _check_times(rows, self.now_ms() + FUTURE_MS, reject)

        # time jumping ahead of the partition (module docstring); may hold back a tail
        cut = self._reject_jumps(rows, reason, stage, free)
        if cut is not None:
            self.held = rows.slice(cut, n)
            self.held.extra_dead = []  # undecodable lines go out with this block
            rows = rows.slice(0, cut)  # (rows_in then counts the held rows when they go out)
            reason, stage, free, n = reason[:cut], stage[:cut], free[:cut], cut

        batches, shards = self._accept(rows, free, reason, stage, n)
        dead = _dead_letters(rows, reason, stage)

        tag = BlockTag(
            rows.partition, self.blocks, len(batches), self.clock_ms, rows.final, rows.idle
        )
        self.blocks += 1
        pieces = [
            (key, ShardTicks(tag, ticks, members, views)) for key, ticks, members, views in shards
        ]
        return Validated(rows.partition, rows.rows_in, batches, dead, tag, rows.input_bytes, pieces)

    def _reject_jumps(
        self, rows: TickRows, reason: np.ndarray, stage: np.ndarray, free: np.ndarray
    ) -> int | None:
        """Reject the rows still free that jump ahead of the partition (module docstring);
        the row from which a tail is to be held back for confirmation, if any."""
        cand = np.flatnonzero(free)
        jumped, hold_at = self._jumps(rows.ts_ms[cand], rows.final)
        for k, ref in jumped:
            i = int(cand[k])
            reason[i] = (
                f"time jumped ahead: {_when(int(rows.ts_ms[i]))} is more than 1 day "
                f"past the newest tick of its feed, {_when(ref)}, and the rows after "
                "it are not"
            )
            stage[i] = RejectedAt.ORDER
            free[i] = False
        return None if hold_at is None else int(cand[hold_at])

    def _accept(
        self, rows: TickRows, free: np.ndarray, reason: np.ndarray, stage: np.ndarray, n: int
    ) -> tuple[dict[str, TickBatch], list[ShardSpans]]:
        """The rows still free, in order (:meth:`_order`), as batches and shard pieces; moves
        the partition clock to the block's last row."""
        batches: dict[str, TickBatch] = {}
        shards: list[ShardSpans] = []
        clock = np.empty(0, dtype=np.int64)
        if free.any():
            good = np.flatnonzero(free)
            kept, spans, clock = self._order(rows, good, reason, stage)
            batches, shards = _split(rows, kept, spans, clock)
        elif n:
            clock = np.full(n, self.clock_ms, dtype=np.int64)
        if n:
            self.clock_ms = int(clock[-1])
        return batches, shards

    def _order(
        self, rows: TickRows, good: np.ndarray, reason: np.ndarray, stage: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[str, int, int]], np.ndarray]:
        """The "time going backwards" rule for all symbols at once: rejects the late rows
        among ``good`` (in ``reason``/``stage``), moves each symbol's newest time, and returns
        the accepted rows grouped by shard and symbol (:func:`shard_of`, then the symbol;
        input order inside), each symbol's span in that order, and the partition clock at
        every row of the block.

        One pass of numpy over the block, not one per symbol: a symbol's running maximum is a
        running maximum over the whole block once every symbol's times are lifted above the
        previous symbol's (offsets), and a symbol's newest time from earlier blocks enters as
        a first row (floored just below the block's earliest time, which changes no verdict).
        """
        names, group = _factorize(rows.symbol[good])
        order = np.argsort(group, kind="stable")
        idx = good[order]
        g = group[order]
        ts = rows.ts_ms[idx]
        counts = np.bincount(g, minlength=len(names))
        heads = np.concatenate(([0], np.cumsum(counts)[:-1]))
        lo = int(ts.min()) - 1
        prior = np.array([max(self.newest_ms.get(sym, NEVER), lo) for sym in names], dtype=np.int64)
        span = max(int(ts.max()), int(prior.max())) - lo + 1
        offset = np.arange(len(names), dtype=np.int64) * span
        # each symbol's rows, led by its prior newest time, lifted by its offset
        lifted = np.empty(len(ts) + len(names), dtype=np.int64)
        pos = np.arange(len(ts)) + g + 1  # after the heads inserted before each group
        head_pos = heads + np.arange(len(names))
        lifted[pos] = ts - lo + offset[g]
        lifted[head_pos] = prior - lo + offset
        running = np.maximum.accumulate(lifted)
        newest_before = running[pos - 1] - offset[g] + lo
        late = ts < newest_before - self.max_backwards_ms
        if late.any():
            bad = idx[late]
            reason[bad] = [
                f"time went backwards by {int(d)} ms" for d in (newest_before[late] - ts[late])
            ]
            stage[bad] = RejectedAt.ORDER
        keep = ~late
        kept, gk = idx[keep], g[keep]
        kept_counts = np.bincount(gk, minlength=len(names))
        newest = running[head_pos + counts] - offset + lo  # the last row of each group
        spans: list[tuple[str, int, int]] = []
        at = 0
        for sym, k, top in zip(names, kept_counts.tolist(), newest.tolist(), strict=True):
            if k:
                self.newest_ms[sym] = int(top)
                spans.append((sym, at, at + k))
                at += k
        # the partition clock: running max of the accepted ticks' times, in input order
        times = np.full(len(rows), NEVER, dtype=np.int64)
        times[kept] = rows.ts_ms[kept]
        clock = np.maximum.accumulate(np.concatenate(([self.clock_ms], times)))[1:]
        return kept, spans, clock

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
            seg = t[s : s + window]
            before = np.maximum.accumulate(np.concatenate(([ref], seg[:-1])))
            jumps = seg > before + MAX_JUMP_MS
            if not jumps.any():
                ref, s = max(ref, int(seg.max())), s + len(seg)
                window *= 2
                continue
            j = int(np.argmax(jumps))
            k, ref = s + j, int(before[j])
            after = t[k + 1 : k + 1 + JUMP_CONFIRMATIONS]
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
def validate_ticks(
    step_id: str, up: Stream[TickRows], max_backwards_ms: int, universe: Iterable[str] = ()
) -> Stream[Validated]:
    """Validate decoded input blocks, keyed by input partition (which owns its symbols)."""
    symbols = frozenset(universe)

    def fresh() -> TickValidator:
        return TickValidator(max_backwards_ms, symbols)

    keyed = op.key_on("by_partition", up, lambda rows: rows.partition)
    out = op.stateful(
        "validate", keyed, stage_builder(lambda _: fresh(), lambda state: fresh().restored(state))
    )
    return op.key_rm("unkey", out)


PRICE_RANGE = f"price outside the sane range ({PRICE_MIN:g} to {PRICE_MAX:g})"
SIZE_RANGE = f"size outside the sane range (above {SIZE_MAX:g})"


_Reject = Callable[[np.ndarray, str | Iterable[str], RejectedAt], None]


def _check_values(rows: TickRows, reject: _Reject) -> None:
    """The per-value rules (finite, positive, in range; quotes not crossed; candles
    consistent), each one vectorised over the whole block."""
    with np.errstate(invalid="ignore", over="ignore"):
        is_quote = rows.origin == QUOTE
        # a quote's mid can overflow where its bid and ask do not: judge the quoted sides
        reject(~is_quote & ~np.isfinite(rows.price), "non-finite price", RejectedAt.VALIDATE)
        reject(
            is_quote & ~(np.isfinite(rows.bid) & np.isfinite(rows.ask)),
            "non-finite price",
            RejectedAt.VALIDATE,
        )
        reject(~is_quote & (rows.price <= 0), "non-positive price", RejectedAt.VALIDATE)
        reject(
            is_quote & ((rows.bid <= 0) | (rows.ask <= 0)),
            "non-positive price",
            RejectedAt.VALIDATE,
        )
        reject(~is_quote & _outside(rows.price), PRICE_RANGE, RejectedAt.VALIDATE)
        reject(
            is_quote & (_outside(rows.bid) | _outside(rows.ask)),
            PRICE_RANGE,
            RejectedAt.VALIDATE,
        )
        if rows.candle is not None:
            o, h, lo = rows.candle
            is_candle = ~np.isnan(h)
            reject(
                is_candle & ~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo)),
                "non-finite price",
                RejectedAt.VALIDATE,
            )
            reject(is_candle & ((o <= 0) | (lo <= 0)), "non-positive price", RejectedAt.VALIDATE)
            reject(
                is_candle & (_outside(o) | _outside(h) | _outside(lo)),
                PRICE_RANGE,
                RejectedAt.VALIDATE,
            )
        reject(rows.size < 0, "negative size", RejectedAt.VALIDATE)
        reject(rows.size > SIZE_MAX, SIZE_RANGE, RejectedAt.VALIDATE)
        reject(is_quote & (rows.bid > rows.ask), "crossed quote (bid > ask)", RejectedAt.VALIDATE)
        if rows.candle is not None:
            c = rows.price
            reject(
                is_candle & ((h < lo) | (o > h) | (o < lo) | (c > h) | (c < lo)),
                "inconsistent candle",
                RejectedAt.VALIDATE,
            )


def _check_times(rows: TickRows, latest: int, reject: _Reject) -> None:
    """Event times before 1990 or after ``latest`` (the wall clock's tolerance) are no
    sane tick times; the reasons are only built when a row is outside."""
    early = rows.ts_ms < EARLIEST_MS
    late = rows.ts_ms > latest
    if early.any() or late.any():
        reject(
            early | late,
            [
                ""
                if not (e or f)
                else f"time outside the sane range: {_when(t)} is "
                + ("before 1990-01-01" if e else "more than 1 day after the wall clock")
                for e, f, t in zip(early.tolist(), late.tolist(), rows.ts_ms.tolist(), strict=True)
            ],
            RejectedAt.VALIDATE,
        )


def _dead_letters(rows: TickRows, reason: np.ndarray, stage: np.ndarray) -> DeadLetters:
    """The block's dead letters: undecodable lines, then the rejected rows grouped by stage
    (one vectorised extend per stage)."""
    dead = DeadLetters()
    for src, row, raw, why in rows.extra_dead:
        dead.add(src, row, None, "", RejectedAt.DECODE, why, raw)
    bad = np.flatnonzero(reason != None)  # noqa: E711
    if len(bad):
        ts = rows.ts_ms
        ts = np.where((ts < STORABLE_MS[0]) | (ts > STORABLE_MS[1]), TS_UNKNOWN, ts)
        for at in (RejectedAt.DECODE, RejectedAt.VALIDATE, RejectedAt.ORDER):
            idx = bad[stage[bad] == at]
            if len(idx) == 0:
                continue
            dead.extend(
                [rows.sources[s] for s in rows.src[idx]],
                rows.row_no[idx],
                ts[idx],
                rows.symbol[idx].tolist(),
                at,
                reason[idx].tolist(),
                rows.raw(idx),
            )
    return dead


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
        rows.partition,
        rows.seq,
        rows.final,
        rows.idle,
    )
    return merged


def _factorize(symbols: np.ndarray, peel: int = 4) -> tuple[list[str], np.ndarray]:
    """The distinct symbols, sorted by shard and symbol, and each row's index among them.
    A feed of a few
    symbols is split by comparing against each in turn (one numpy pass per symbol); many
    symbols by one hash pass over the rows (sorting the object array would cost a Python
    comparison per step)."""
    n = len(symbols)
    hit = symbols == symbols[0]
    if hit.all():
        return [symbols[0]], np.zeros(n, dtype=np.intp)
    first = np.zeros(n, dtype=np.intp)
    seen: list[str] = [symbols[0]]
    rest = np.flatnonzero(~hit)
    while len(rest) and len(seen) < peel:
        sym = symbols[rest[0]]
        hit = symbols[rest] == sym
        first[rest[hit]] = len(seen)
        seen.append(sym)
        rest = rest[~hit]
    if len(rest):
        codes = {sym: k for k, sym in enumerate(seen)}
        first[rest] = np.fromiter(
            (codes.setdefault(x, len(codes)) for x in symbols[rest].tolist()),
            dtype=np.intp,
            count=len(rest),
        )
        seen = list(codes)
    rank = sorted(range(len(seen)), key=lambda i: (shard_of(seen[i]), seen[i]))
    remap = np.empty(len(seen), dtype=np.intp)
    remap[rank] = np.arange(len(seen))
    return [seen[i] for i in rank], remap[first]


ShardSpans = tuple[str, TickBatch, list[tuple[str, int, int]], list[TickBatch]]


def _split(
    rows: TickRows, kept: np.ndarray, spans: list[tuple[str, int, int]], clock: np.ndarray
) -> tuple[dict[str, TickBatch], list[ShardSpans]]:
    """One gather of every column in (shard, symbol) order, then each symbol's batch and each
    shard's ticks as views of it (one numpy call per column per block, not per symbol).
    The symbols' batches come in symbol order; the shards (key, ticks, each member's span in
    them, the members' batches) in key order."""
    cols = [
        rows.ts_ms[kept],
        rows.price[kept],
        rows.bid[kept],
        rows.ask[kept],
        rows.size[kept],
        rows.side[kept],
        rows.origin[kept],
        clock[kept],
    ]
    candle = None if rows.candle is None else [a[kept] for a in rows.candle]

    def view(name: str, a: int, b: int) -> TickBatch:
        ts, px, bid, ask, size, side, origin, clk = (c[a:b] for c in cols)
        return TickBatch(
            name,
            ts,
            px,
            bid,
            ask,
            size,
            side,
            origin,
            None if candle is None else (candle[0][a:b], candle[1][a:b], candle[2][a:b]),
            clk,
        )

    batches = {sym: view(sym, a, b) for sym, a, b in spans}
    shards: list[ShardSpans] = []
    k = 0
    while k < len(spans):
        key, start = shard_of(spans[k][0]), spans[k][1]
        end = k
        while end < len(spans) and shard_of(spans[end][0]) == key:
            end += 1
        members = spans[k:end]
        stop = members[-1][2]
        shards.append(
            (
                key,
                view(key, start, stop),
                [(sym, a - start, b - start) for sym, a, b in members],
                [batches[sym] for sym, _, _ in members],
            )
        )
        k = end
    return dict(sorted(batches.items())), shards

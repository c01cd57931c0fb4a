"""Many symbols at once (issue 11): a block's symbols travel as one piece per shard key, bars
are built for a whole piece in one pass, and every result is the one the per-symbol code
gives (BarBuilder, FeatureEngine, the engine fed one symbol at a time), bit for bit.

The inputs mix trades and quotes of symbols that share a shard key, with late ticks (inside
and beyond the tolerance) and random block boundaries.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.decode import tick_rows_from_ticks
from models.base import MODEL_NAMES
from models.registry import ModelRegistry
from operators.bars import BarBuilder, ShardBars, ShardBarStep
from operators.engine import DecisionEngine, EngineConfig, EngineDeps
from operators.ensemble import ScoredStep
from operators.features import FeatureEngine, ShardFeatures
from operators.validate import NEVER, ShardTicks, TickValidator, Validated, shard_of
from schemas.decisions import Progress
from schemas.signals import Action, Vote
from schemas.ticks import Aggressor, SymbolTicks, Tick, TickOrigin
from schemas.timeutil import from_ms

T0 = 1_700_000_000_000
# names chosen so that several share a shard key (and others do not)
SHARED = ("T:S029", "T:S057", "T:S171", "T:S039", "T:S047", "T:S009")


def ticks_of(seed: int, n: int, symbols: tuple[str, ...] = SHARED) -> list[Tick]:
    """Random trades and quotes of ``symbols`` in time order, with some late ticks."""
    rng = random.Random(seed)
    ms, out = T0, []
    for _ in range(n):
        ms += rng.choice((0, 10, 900, 4_000, 25_000, 61_000))
        sym = rng.choice(symbols)
        late = rng.random() < 0.08
        t = ms - rng.choice((400, 3_000)) if late else ms
        px = 100.0 + rng.random()
        if rng.random() < 0.5:
            out.append(
                Tick(
                    from_ms(t),
                    sym,
                    TickOrigin.TRADE,
                    px,
                    size=rng.choice((0.0, 1.5)),
                    side=rng.choice(tuple(Aggressor)),
                )
            )
        else:
            out.append(Tick(from_ms(t), sym, TickOrigin.QUOTE, px, bid=px - 0.01, ask=px + 0.01))
    return out


def validated_blocks(ticks: list[Tick], cuts: list[int]) -> list[Validated]:
    validator = TickValidator(max_backwards_ms=1_000)
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(ticks)}), len(ticks)]
    return [
        validator.validate(tick_rows_from_ticks(ticks[a:b])) for a, b in itertools.pairwise(bounds)
    ]


def test_symbols_share_shards_in_these_inputs() -> None:
    keys = [shard_of(s) for s in SHARED]
    assert len(set(keys)) == 3 and shard_of("T:S029") == shard_of("T:S057")
    assert all(k.startswith("shard-") for k in keys)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(1, 399), max_size=5))
def test_shard_pieces_bars_and_features_equal_the_per_symbol_code(
    seed: int, cuts: list[int]
) -> None:
    blocks = validated_blocks(ticks_of(seed, 400), cuts)
    # per symbol, as before: one BarBuilder and one FeatureEngine each
    builders: dict[str, BarBuilder] = {}
    engines: dict[str, FeatureEngine] = {}
    ref_steps: dict[str, list] = {}
    for v in blocks:
        for sym, batch in v.batches.items():
            b = builders.setdefault(sym, BarBuilder(sym, 60))
            ref_steps.setdefault(sym, []).extend(b.push(SymbolTicks(v.tag, batch)))
    for sym, b in builders.items():
        ref_steps[sym] += b.finish()
    ref_vectors = {
        sym: [
            engines.setdefault(sym, FeatureEngine(sym, 60, 8)).update(bar)
            for step in steps
            for bar in step.bars
        ]
        for sym, steps in ref_steps.items()
    }
    # per shard
    shards: dict[str, ShardBars] = {}
    feats: dict[str, ShardFeatures] = {}
    got: dict[str, list] = {}
    got_vectors: dict[str, list] = {}
    for v in blocks:
        pieces = v.pieces()
        assert all(isinstance(p, ShardTicks) for _, p in pieces)
        assert sorted(
            sym
            for _, p in pieces
            for sym, _, _ in p.symbols  # type: ignore[attr-defined]
        ) == sorted(v.batches)
        for key, piece in pieces:
            assert isinstance(piece, ShardTicks)
            for sym, lo, hi in piece.symbols:
                assert shard_of(sym) == key
                assert np.array_equal(piece.ticks.ts_ms[lo:hi], v.batches[sym].ts_ms)
            (step,) = shards.setdefault(key, ShardBars(60)).push(piece)
            _collect(step, got, feats.setdefault(key, ShardFeatures(60, 8)), got_vectors)
    for key, stage in sorted(shards.items()):
        for step in stage.finish():
            _collect(step, got, feats[key], got_vectors)
    for sym, steps in ref_steps.items():
        ref = [
            (bar, ci, clock)
            for s in steps
            for bar, ci, clock in zip(s.bars, s.close_index, s.clocks, strict=True)
        ]
        assert got.get(sym, []) == ref, sym
        assert repr(got_vectors.get(sym, [])) == repr(ref_vectors[sym]), sym


def _collect(step: ShardBarStep, got: dict, feats: ShardFeatures, vectors: dict) -> None:
    """Each symbol's (bar, close index in its own ticks, clock), and its vectors."""
    (fs,) = feats.push(step)
    assert len(fs.vectors) == len(step.bars)
    for part in step.symbols:
        for k in range(part.bars_from, part.bars_to):
            got.setdefault(part.symbol, []).append(
                (step.bars[k], step.close_index[k] - part.offset, step.clocks[k])
            )
            vectors.setdefault(part.symbol, []).append(fs.vectors[k])


def test_a_shard_resumes_from_its_snapshot_exactly() -> None:
    blocks = validated_blocks(ticks_of(3, 300), [100, 200])
    key = shard_of("T:S029")

    def pieces(vs: list[Validated]) -> list:
        return [p for v in vs for k, p in v.pieces() if k == key]

    whole, whole_f = ShardBars(60), ShardFeatures(60, 8)
    ref = [fs.vectors for p in pieces(blocks) for s in whole.push(p) for fs in whole_f.push(s)]
    first, first_f = ShardBars(60), ShardFeatures(60, 8)
    head = [fs.vectors for p in pieces(blocks[:1]) for s in first.push(p) for fs in first_f.push(s)]
    bars, feats = ShardBars.restore(first.snapshot()), ShardFeatures.restore(first_f.snapshot())
    tail = [fs.vectors for p in pieces(blocks[1:]) for s in bars.push(p) for fs in feats.push(s)]
    assert repr(head + tail) == repr(ref)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(1, 299), max_size=4))
def test_time_going_backwards_for_all_symbols_at_once_equals_one_at_a_time(
    seed: int, cuts: list[int]
) -> None:
    """The vectorised rule against the plain per-symbol loop it replaced."""
    ticks = ticks_of(seed, 300)
    newest: dict[str, int] = {}
    expected_dead, expected_kept = [], []
    for t in ticks:  # one row at a time: late beyond 1 s of the symbol's newest is dead
        ms = int(t.ts.timestamp() * 1000)
        prior = newest.get(t.symbol, NEVER)
        if ms < prior - 1_000:
            expected_dead.append(f"time went backwards by {prior - ms} ms")
        else:
            newest[t.symbol] = max(prior, ms)
            expected_kept.append((t.symbol, ms))
    blocks = validated_blocks(ticks, cuts)
    assert [d.reason for v in blocks for d in v.dead] == expected_dead
    kept = sorted((sym, int(ms)) for v in blocks for sym, b in v.batches.items() for ms in b.ts_ms)
    assert kept == sorted(expected_kept)


Votes = Callable[[Any], tuple[Vote, ...]]


def _symbol_steps(
    v: Validated,
    builders: dict[str, BarBuilder],
    engines: dict[str, FeatureEngine],
    votes: Votes,
) -> list[ScoredStep]:
    """The block's scored steps the per-symbol way: one bar builder and engine a symbol."""
    out = []
    for sym, batch in v.batches.items():
        (step,) = builders.setdefault(sym, BarBuilder(sym, 60)).push(SymbolTicks(v.tag, batch))
        (fs,) = engines.setdefault(sym, FeatureEngine(sym, 60, 8)).push(step)
        out.append(ScoredStep(sym, fs, [votes(x) for x in fs.vectors]))
    return out


def _shard_steps(
    v: Validated,
    shards: dict[str, ShardBars],
    feats: dict[str, ShardFeatures],
    votes: Votes,
) -> list[ScoredStep]:
    """The block's scored steps the sharded way: one stage a shard piece."""
    out = []
    for key, piece in v.pieces():
        (step,) = shards.setdefault(key, ShardBars(60)).push(piece)
        (fs,) = feats.setdefault(key, ShardFeatures(60, 8)).push(step)
        out.append(ScoredStep(key, fs, [votes(x) for x in fs.vectors]))
    return out


def _finish_symbols(
    builders: dict[str, BarBuilder], engines: dict[str, FeatureEngine], votes: Votes
) -> list[ScoredStep]:
    """The per-symbol stages' last steps at the end of input."""
    out = []
    for sym, b in builders.items():
        for step in b.finish():
            (fs,) = engines[sym].push(step)
            out.append(ScoredStep(sym, fs, [votes(x) for x in fs.vectors]))
    return out


def _finish_shards(
    shards: dict[str, ShardBars], feats: dict[str, ShardFeatures], votes: Votes
) -> list[ScoredStep]:
    """The shard stages' last steps at the end of input."""
    out = []
    for key, stage in shards.items():
        for step in stage.finish():
            (fs,) = feats[key].push(step)
            out.append(ScoredStep(key, fs, [votes(x) for x in fs.vectors]))
    return out


def test_the_engine_takes_a_shard_piece_like_its_symbols_one_by_one(trained_registry: Path) -> None:
    """Signals, verdicts and trades from shard pieces equal those from per-symbol items."""
    registry = ModelRegistry(trained_registry)
    versions = {m: str(registry.production_version(m)) for m in MODEL_NAMES}
    rng = random.Random(5)
    votes_of: dict = {}

    def votes(vector) -> tuple[Vote, ...]:
        key = (vector.symbol, vector.ts)
        if key not in votes_of:  # unanimous BUY / SELL now and then: trades happen
            a = rng.choice((Action.BUY, Action.SELL, *[Action.HOLD] * 6))
            votes_of[key] = tuple(Vote(m, versions[m], a, 0.9) for m in MODEL_NAMES)
        return votes_of[key]

    blocks = validated_blocks(ticks_of(11, 3_000), [700, 1_500, 2_200])
    per_symbol: list = []
    sharded: list = []
    builders: dict[str, BarBuilder] = {}
    engines: dict[str, FeatureEngine] = {}
    shards: dict[str, ShardBars] = {}
    feats: dict[str, ShardFeatures] = {}
    for v in blocks:
        progress = Progress(v.tag.partition, v.tag.seq, v.tag.parts, v.tag.clock_ms, v.tag.final)
        per_symbol += _symbol_steps(v, builders, engines, votes)
        per_symbol.append(progress)
        sharded += _shard_steps(v, shards, feats, votes)
        sharded.insert(len(sharded) - 1, progress)  # a progress message may overtake a piece
    per_symbol += _finish_symbols(builders, engines, votes)
    sharded += _finish_shards(shards, feats, votes)

    def run(items: list) -> tuple:
        engine = DecisionEngine(EngineConfig(), EngineDeps(registry, [""]))
        out = [o for item in items for o in engine.push(item)] + engine.finish()
        return (
            tuple(s for o in out for s in o.signals),
            tuple(v for o in out for v in o.verdicts),
            tuple(e.event for o in out for e in o.trades),
        )

    reference = run(per_symbol)
    assert len(reference[0]) > 300 and len(reference[2]) > 4
    assert repr(run(sharded)) == repr(reference)


@pytest.mark.parametrize("price", [0.1, 1e-9, 123456.789])
def test_a_shard_of_one_symbol_is_its_builder(price: float) -> None:
    ticks = [
        Tick(from_ms(T0 + i * 7_000), "T:S029", TickOrigin.TRADE, price * (1 + i / 100), size=1.0)
        for i in range(40)
    ]
    (v,) = validated_blocks(ticks, [])
    ((_, piece),) = v.pieces()
    (step,) = ShardBars(60).push(piece)
    (ref,) = BarBuilder("T:S029", 60).push(SymbolTicks(v.tag, v.batches["T:S029"]))
    assert step.bars == ref.bars and step.close_index == ref.close_index
    assert step.clocks == ref.clocks


def test_a_quiet_symbol_keeps_a_copy_of_its_ticks_not_the_whole_block() -> None:
    """Validation hands each symbol a view of its block; the execution tape of a symbol that
    goes quiet copies what it keeps, so the block's other symbols' ticks can be freed."""
    from operators.portfolio import ExecConfig, Portfolio

    blocks = validated_blocks(ticks_of(2, 200, ("T:S029", "T:S057")), [100])
    pf = Portfolio(ExecConfig())
    for sym, batch in blocks[0].batches.items():
        assert batch.ts_ms.base is not None  # a view
        pf.add(sym, batch, [])
    pf.trim()
    assert all(b.tape.blocks[-1].ts_ms.base is not None for b in pf.books.values())
    pf.add("T:S029", blocks[1].batches["T:S029"], [])  # T:S057 is quiet from now on
    pf.trim()
    busy, quiet = pf.books["T:S029"].tape, pf.books["T:S057"].tape
    assert busy.blocks[-1].ts_ms.base is not None
    assert all(t.ts_ms.base is None for t in quiet.blocks)
    assert np.array_equal(quiet.blocks[-1].price, blocks[0].batches["T:S057"].price)

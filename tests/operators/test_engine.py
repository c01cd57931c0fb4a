"""The decision engine on real data: one event order whatever the arrival order, and a snapshot
that later processing cannot change and a resume continues exactly.

Two input partitions (the sample's EURUSD and NZDUSD quotes as two files) are run through the
live flow's own stages in plain Python (validation, bars, features, the scoring step's votes
with the session's trained models) into the items the engine receives; the engine then gets
them in different interleavings, as workers and timing would deliver them.
"""

from __future__ import annotations

import gzip
import pickle
import random
from pathlib import Path

import pytest

from connectors.replay import ReplaySource
from models.registry import ModelRegistry
from operators.bars import BarBuilder
from operators.engine import DecisionEngine, EngineConfig, EngineDeps, EngineOutput
from operators.ensemble import EnsembleConfig, RegistryModels, ScoredStep, Scorer
from operators.features import FeatureEngine
from operators.validate import TickValidator
from schemas.decisions import Progress
from schemas.ticks import SymbolTicks

CFG = EngineConfig()


@pytest.fixture(scope="module")
def partitions(
    sample_ticks: Path, trained_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list]:
    """Per input partition, the engine's items in the order that partition produces them."""
    tmp = tmp_path_factory.mktemp("partitions")
    with gzip.open(sample_ticks, "rt") as f:
        header, *lines = f.readlines()
    files = []
    for symbol in ("EURUSD", "NZDUSD"):
        path = tmp / f"{symbol}.csv"
        path.write_text(header + "".join(x for x in lines if f"FXCM:{symbol}," in x))
        files.append(path)
    scorer = Scorer(RegistryModels(ModelRegistry(trained_registry)), EnsembleConfig())
    source = ReplaySource(files, block_bytes=256 * 1024)
    out: dict[str, list] = {}
    for part in source.list_parts():
        items: list = []
        validator = TickValidator()
        bars: dict[str, BarBuilder] = {}
        features: dict[str, FeatureEngine] = {}
        partition = source.build_part("test", part, None)

        def score(step, features: dict[str, FeatureEngine] = features) -> ScoredStep:
            engine = features.setdefault(step.symbol, FeatureEngine(step.symbol, 60, 64))
            (fs,) = engine.push(step)
            return ScoredStep(step.symbol, fs, scorer.all_votes(fs.vectors))

        try:
            while True:
                for rows in partition.next_batch():
                    v = validator.validate(rows)
                    for symbol, ticks in sorted(v.batches.items()):
                        builder = bars.setdefault(symbol, BarBuilder(symbol, 60))
                        items.append(score(builder.push(SymbolTicks(v.tag, ticks))[0]))
                    items.append(
                        Progress(
                            v.tag.partition, v.tag.seq, v.tag.parts, v.tag.clock_ms, v.tag.final
                        )
                    )
        except StopIteration:
            pass
        items += [score(step) for b in bars.values() for step in b.finish()]
        out[part] = items
    assert len(out) == 2
    return out


def run(engine: DecisionEngine, items: list) -> list[EngineOutput]:
    return [o for item in items for o in engine.push(item)] + engine.finish()


def flat(outputs: list[EngineOutput]) -> tuple:
    return (
        tuple(s for o in outputs for s in o.signals),
        tuple(v for o in outputs for v in o.verdicts),
        tuple(e.event for o in outputs for e in o.trades),
    )


def interleave(partitions: dict[str, list], rng: random.Random) -> list:
    """Each partition's items in their order, partitions interleaved at random; a block's
    progress message may overtake its pieces (it travels its own path)."""
    queues = {p: list(items) for p, items in partitions.items()}
    for items in queues.values():
        for i in range(len(items) - 1, 0, -1):
            if isinstance(items[i], Progress) and rng.random() < 0.5:
                items[i - 1], items[i] = items[i], items[i - 1]
    out = []
    while any(queues.values()):
        p = rng.choice([p for p, q in queues.items() if q])
        out.append(queues[p].pop(0))
    return out


def engine(registry: Path, names: list[str]) -> DecisionEngine:
    return DecisionEngine(CFG, EngineDeps(ModelRegistry(registry), names))


def test_decisions_do_not_depend_on_arrival_order(partitions, trained_registry: Path) -> None:
    names = list(partitions)
    reference = flat(
        run(engine(trained_registry, names), [x for p in names for x in partitions[p]])
    )
    signals, verdicts, trades = reference
    assert len(signals) > 5_000 and len(verdicts) > 20 and len(trades) > 10
    for seed in (1, 2):
        got = flat(
            run(engine(trained_registry, names), interleave(partitions, random.Random(seed)))
        )
        assert got == reference


def test_snapshot_is_frozen_and_a_resume_continues_exactly(
    partitions, trained_registry: Path
) -> None:
    names = list(partitions)
    items = interleave(partitions, random.Random(7))
    reference = flat(run(engine(trained_registry, names), items))
    first = engine(trained_registry, names)
    cut = len(items) // 2
    before = [o for item in items[:cut] for o in first.push(item)]
    snap = first.snapshot()
    frozen = pickle.dumps(snap, protocol=5)  # as Bytewax pickles
    first.push(items[cut])  # later processing must not change the snapshot
    assert pickle.dumps(snap, protocol=5) == frozen
    resumed = DecisionEngine(
        CFG, EngineDeps(ModelRegistry(trained_registry), names), pickle.loads(frozen)
    )
    after = run(resumed, items[cut:])
    # repr, not ==: a NaN feature (no quote sizes: imbalance) that went through pickle is
    # another float object, and NaN equals only itself; repr shows every field exactly.
    assert repr(flat(before + after)) == repr(reference)

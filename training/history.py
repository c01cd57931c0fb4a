"""History replayed into training data by the live flow's own stage code.

:func:`history_from_ticks` replays tick files through exactly the classes the live dataflow
runs (:class:`~connectors.replay.ReplaySource`, :class:`~operators.validate.TickValidator`,
:class:`~operators.bars.BarBuilder`, :class:`~operators.features.FeatureEngine`), in plain
Python: there is no second feature implementation to drift from the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from connectors.layouts import LayoutOptions
from connectors.replay import ReplayPartition, ReplaySource, expand_paths
from models.dataset import History
from operators.bars import BarBuilder
from operators.features import FeatureEngine
from operators.validate import TickValidator, Validated
from schemas.bars import Bar, BarStep
from schemas.ticks import SymbolTicks
from settings import Settings


def history_from_ticks(
    spec: str, settings: Settings, progress: bool = False, keep_ticks: bool = False
) -> History:
    """Replay ``spec`` (the ``QT_TICKS`` file forms) through validation, bars and features
    (and keep the bar steps with their ticks when ``keep_ticks``)."""
    source = ReplaySource(
        expand_paths(spec),
        settings.candle_seconds,
        settings.replay_block_bytes,
        layouts=LayoutOptions.from_settings(settings),
    )
    bar_progress = None
    if progress:
        from tqdm import tqdm

        bar_progress = tqdm(desc="replaying history", unit=" rows", unit_scale=True)
    replay = _Replay(settings, keep_ticks, bar_progress)
    for part in source.list_parts():
        replay.part(source.build_part("history", part, None))
    if bar_progress is not None:
        bar_progress.close()
    return replay.history


@dataclass
class _Replay:
    """What a replay carries across partitions: the history it fills and one feature engine
    a symbol (partitions own disjoint symbols)."""

    settings: Settings
    keep_ticks: bool
    bar_progress: Any = None  # a tqdm bar, when asked for progress
    history: History = field(default_factory=History)
    engines: dict[str, FeatureEngine] = field(default_factory=dict)

    def part(self, partition: ReplayPartition) -> None:
        """One partition to its end: validation, then bars, a builder per symbol."""
        settings = self.settings
        validator = TickValidator(settings.max_backwards_ms, frozenset(settings.symbols))
        builders: dict[str, BarBuilder] = {}
        try:
            while True:
                for rows in partition.next_batch():
                    self.block(validator.validate(rows), builders)
        except StopIteration:
            pass
        finally:
            partition.close()
        for symbol in sorted(builders):
            for step in builders[symbol].finish():
                self.step(symbol, step)

    def block(self, validated: Validated, builders: dict[str, BarBuilder]) -> None:
        """Count one validated block into the history and push its symbols' ticks to bars
        (in symbol order)."""
        history = self.history
        history.rows_in += validated.rows_in
        history.ticks += validated.ticks
        history.dead_letters += len(validated.dead)
        if self.bar_progress is not None:
            self.bar_progress.update(validated.rows_in)
        for symbol, ticks in sorted(validated.batches.items()):
            builder = builders.get(symbol)
            if builder is None:
                builder = builders[symbol] = BarBuilder(symbol, self.settings.bar_seconds)
            self.step(symbol, builder.push(SymbolTicks(validated.tag, ticks))[0])

    def step(self, symbol: str, step: BarStep) -> None:
        """The step's bars to features; the step itself too when ticks are kept."""
        self.emit(step.bars)
        if self.keep_ticks:
            self.history.steps.setdefault(symbol, []).append(step)

    def emit(self, bars: Iterable[Bar]) -> None:
        """Each bar with its feature vector into the history."""
        for bar in bars:
            eng = self.engines.get(bar.symbol)
            if eng is None:
                eng = self.engines[bar.symbol] = FeatureEngine(
                    bar.symbol, self.settings.bar_seconds, self.settings.seq_window
                )
            self.history.add(bar, eng.update(bar))

"""History replayed into training data by the live flow's own stage code.

:func:`history_from_ticks` replays tick files through exactly the classes the live dataflow
runs (:class:`~connectors.replay.ReplaySource`, :class:`~operators.validate.TickValidator`,
:class:`~operators.bars.BarBuilder`, :class:`~operators.features.FeatureEngine`), in plain
Python: there is no second feature implementation to drift from the first.
"""

from __future__ import annotations

from collections.abc import Iterable

from connectors.layouts import LayoutOptions
from connectors.replay import ReplaySource, expand_paths
from models.dataset import History
from operators.bars import BarBuilder
from operators.features import FeatureEngine
from operators.validate import TickValidator
from schemas.bars import Bar
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
    history = History()
    bar_progress = None
    if progress:
        from tqdm import tqdm

        bar_progress = tqdm(desc="replaying history", unit=" rows", unit_scale=True)
    engines: dict[str, FeatureEngine] = {}  # partitions own disjoint symbols

    def emit(bars: Iterable[Bar]) -> None:
        for bar in bars:
            eng = engines.get(bar.symbol)
            if eng is None:
                eng = engines[bar.symbol] = FeatureEngine(
                    bar.symbol, settings.bar_seconds, settings.seq_window
                )
            history.add(bar, eng.update(bar))

    for part in source.list_parts():
        partition = source.build_part("history", part, None)
        validator = TickValidator(settings.max_backwards_ms, frozenset(settings.symbols))
        builders: dict[str, BarBuilder] = {}
        try:
            while True:
                for rows in partition.next_batch():
                    validated = validator.validate(rows)
                    history.rows_in += validated.rows_in
                    history.ticks += validated.ticks
                    history.dead_letters += len(validated.dead)
                    if bar_progress is not None:
                        bar_progress.update(validated.rows_in)
                    for symbol, ticks in sorted(validated.batches.items()):
                        builder = builders.get(symbol)
                        if builder is None:
                            builder = builders[symbol] = BarBuilder(symbol, settings.bar_seconds)
                        step = builder.push(SymbolTicks(validated.tag, ticks))[0]
                        emit(step.bars)
                        if keep_ticks:
                            history.steps.setdefault(symbol, []).append(step)
        except StopIteration:
            pass
        finally:
            partition.close()
        for symbol in sorted(builders):
            for step in builders[symbol].finish():
                emit(step.bars)
                if keep_ticks:
                    history.steps.setdefault(symbol, []).append(step)
    if bar_progress is not None:
        bar_progress.close()
    return history

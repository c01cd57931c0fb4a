"""Input file layouts: every file the replay reads becomes batches of one internal layout.

The replay (:mod:`connectors.replay`) reads the three layouts of ``../shared/data`` (trades,
quotes, candles) and these, each in its own module, converted batch by batch into those
three, so decoding, validation, dead letters (with raw text and row numbers), recovery by
rows consumed and partitioning by symbol stay one implementation:

- :mod:`~connectors.layouts.binance`: Binance public data (klines, trades, aggTrades,
  bookTicker; ``.csv`` or ``.zip``), by file name;
- :mod:`~connectors.layouts.tardis`: Tardis.dev trades and quotes CSV, by header;
- :mod:`~connectors.layouts.freqtrade`: freqtrade candles (Feather, Parquet, JSON), by name;
- :mod:`~connectors.layouts.mapped`: anything else, through ``QT_TICKS_COLUMNS``.

:mod:`~connectors.layouts.detect` decides which one a file is in.
"""

from connectors.layouts.base import FileLayout, InputFileError, LayoutOptions

__all__ = ["FileLayout", "InputFileError", "LayoutOptions"]

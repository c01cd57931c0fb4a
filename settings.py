"""The one typed settings object, read from the environment.

Every knob of the pipeline is a field of :class:`Settings`, named after the
environment variable that sets it (the audited system's ``QT_*`` names are kept
so that people who ran it recognise them). Defaults are documented here and
nowhere else; ``python -m cli.settings`` prints the table.

>>> s = Settings.from_env({"QT_BAR_SECONDS": "30"})
>>> s.bar_seconds
30
>>> Settings.from_env({"QT_BAR_SECONDS": "zero"})
Traceback (most recent call last):
...
ValueError: QT_BAR_SECONDS='zero': expected int
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent
SAMPLE_TICKS = PROJECT_ROOT / "data" / "sample" / "fxcm_EURUSD-NZDUSD_2014-05-06_07_quotes.csv.gz"


def _env(name: str, doc: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    meta = {"env": name, "doc": doc}
    if "default_factory" in kw:
        return field(default_factory=kw["default_factory"], metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Pipeline configuration. Field docs are the reference for each ``QT_*`` variable."""

    # --- where things live ---------------------------------------------------------------
    home: Path = _env("QT_HOME", "Local state directory (embedded store, registry, recovery).",
                      Path(".qt"))
    ticks: str = _env(
        "QT_TICKS",
        "Tick input: a file or glob (CSV, CSV.gz, Parquet; trades/quotes/candles layouts), "
        "comma-separated for several, or kafka://host:port/topic[?tail=false]. "
        "Default: the bundled FXCM sample (QuantConnect Lean, Apache-2.0).",
        str(SAMPLE_TICKS),
    )
    clickhouse_url: str = _env(
        "QT_CLICKHOUSE_URL",
        "Empty: embedded chDB under $QT_HOME/clickhouse. Otherwise "
        "http(s)://user:pass@host:port/db for a ClickHouse server.",
        "",
    )
    database: str = _env("QT_CLICKHOUSE_DATABASE",
                         "Database name in the embedded store (a server URL names its own).",
                         "qt")

    # --- input -----------------------------------------------------------------------------
    symbols: tuple[str, ...] = _env(
        "QT_SYMBOLS",
        "Comma-separated symbol universe; ticks of other symbols are dead letters. "
        "Empty: accept every symbol.",
        default_factory=tuple,
    )
    replay_speed: float = _env(
        "QT_REPLAY_SPEED",
        "Replay pacing: 0 = as fast as possible, 1 = real time, N = N times real time.",
        0.0,
    )
    replay_block_bytes: int = _env(
        "QT_REPLAY_BLOCK_BYTES", "Bytes of CSV parsed per chunk (one chunk = one stream item).",
        1 << 20,
    )
    candle_seconds: int = _env(
        "QT_CANDLE_SECONDS",
        "Length of input candles. A candle is stamped at the last millisecond of its "
        "interval, the first moment all of it is known.",
        60,
    )
    max_backwards_ms: int = _env(
        "QT_MAX_BACKWARDS_MS",
        "Per-symbol tolerance for time going backwards. A tick up to this much older than "
        "the newest seen is accepted into the open bar; older ones are dead letters.",
        1000,
    )
    kafka_batch_size: int = _env("QT_KAFKA_BATCH_SIZE",
                                 "Messages per Kafka poll (one poll = one stream item).", 5000)

    # --- bars and features -----------------------------------------------------------------
    bar_seconds: int = _env("QT_BAR_SECONDS", "Bar length in seconds (event time).", 60)
    seq_window: int = _env(
        "QT_SEQ_WINDOW",
        "Number of recent bar log-returns kept for the sequence models (N-HiTS, PatchTST).",
        64,
    )

    # --- storage -----------------------------------------------------------------------------
    sink_batch_rows: int = _env("QT_SINK_BATCH_ROWS",
                                "Rows buffered per table before an insert.", 50_000)
    sink_flush_seconds: float = _env(
        "QT_SINK_FLUSH_SECONDS", "Longest time a row waits in the sink buffer.", 1.0
    )

    # ------------------------------------------------------------------------------------------
    @property
    def store_path(self) -> Path:
        return self.home / "clickhouse"

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"

    @property
    def recovery_dir(self) -> Path:
        return self.home / "recovery"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then apply overrides."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in environ:
                values[f.name] = _parse(name, environ[name], hints[f.name])
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def reference(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for every setting, in declaration order."""
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if isinstance(default, tuple):
                default = ",".join(default)
            rows.append((f.metadata["env"], str(default), f.metadata["doc"]))
        return rows


def _parse(name: str, raw: str, hint: Any) -> Any:
    """Parse one environment value into the field's type, with the variable in any error."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw.strip() == "":
            return None
        return _parse(name, raw, inner[0])
    try:
        if hint is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            return int(raw.strip().replace("_", ""))
        if hint is float:
            return float(raw)
        if hint is Path:
            return Path(raw)
        if origin is tuple:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if hint is str:
            return raw
    except ValueError:
        pass
    else:
        raise TypeError(f"{name}: unsupported settings type {hint!r}")
    type_name = getattr(hint, "__name__", str(hint))
    raise ValueError(f"{name}={raw!r}: expected {type_name}")

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
>>> Settings.from_env({"QT_MODEL_SUPERVISOR_SCOPE": "Symbol"}).supervisor_scope
<SupervisorScope.SYMBOL: 'symbol'>
>>> Settings.from_env({"QT_CLM_BUDGET": "tiny"})
Traceback (most recent call last):
...
ValueError: QT_CLM_BUDGET='tiny': expected full or quick
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from schemas.decisions import SupervisorMode

PROJECT_ROOT = Path(__file__).resolve().parent
SAMPLE_DIR = PROJECT_ROOT / "data" / "sample"
# The default run is out-of-sample: the models train on the days before the ones replayed.
SAMPLE_TICKS = SAMPLE_DIR / "fxcm_EURUSD-NZDUSD_2014-05-06_07_quotes.csv.gz"
SAMPLE_TRAINING_TICKS = SAMPLE_DIR / "fxcm_EURUSD-NZDUSD_2014-05-01_05_quotes.csv.gz"


class SupervisorScope(StrEnum):
    GLOBAL = "global"  # one bias window over every symbol (the audit's)
    SYMBOL = "symbol"  # one window per symbol


class ClmBudget(StrEnum):
    FULL = "full"  # the tuned cycle budget (learning.trainer.CycleConfig)
    QUICK = "quick"  # a small one, for tests and demos


class ForwardProcessMode(StrEnum):
    AUTO = "auto"  # on when the machine has two cores per process of the cluster
    ON = "on"
    OFF = "off"


class ProgressMode(StrEnum):
    AUTO = "auto"  # redrawn on a terminal, a line every 30 s in a log
    ALWAYS = "always"  # a line every second, terminal or not
    NEVER = "never"


def _env(name: str, doc: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    meta = {"env": name, "doc": doc}
    if "default_factory" in kw:
        return field(default_factory=kw["default_factory"], metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Pipeline configuration. Field docs are the reference for each ``QT_*`` variable."""

    # --- where things live ---------------------------------------------------------------
    home: Path = _env(
        "QT_HOME", "Local state directory (embedded store, registry, recovery).", Path(".qt")
    )
    ticks: str = _env(
        "QT_TICKS",
        "Tick input: a file or glob (CSV, CSV.gz, zip, Parquet, Feather, JSON; the trades/"
        "quotes/candles layouts, Binance public data, Tardis.dev CSV, freqtrade candles, or "
        "any columns through QT_TICKS_COLUMNS; python -m cli.inspect FILE says how a file is "
        "read), comma-separated for several, or kafka://host:port/topic[?tail=false]. "
        "Default: the bundled FXCM sample (QuantConnect Lean, Apache-2.0).",
        str(SAMPLE_TICKS),
    )
    clickhouse_url: str = _env(
        "QT_CLICKHOUSE_URL",
        "Empty: embedded chDB under $QT_HOME/clickhouse. Otherwise "
        "http(s)://user:pass@host:port/db for a ClickHouse server.",
        "",
    )
    database: str = _env(
        "QT_CLICKHOUSE_DATABASE",
        "Database name in the embedded store (a server URL names its own).",
        "qt",
    )

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
        "QT_REPLAY_BLOCK_BYTES",
        "Bytes of CSV parsed per chunk (one chunk = one stream item).",
        1 << 20,
    )
    candle_seconds: int = _env(
        "QT_CANDLE_SECONDS",
        "Length of input candles. A candle is stamped at the last millisecond of its "
        "interval, the first moment all of it is known.",
        60,
    )
    symbol_prefix: str = _env(
        "QT_SYMBOL_PREFIX",
        "Venue prefix of symbols that come from file names (Binance public data, freqtrade "
        "candles): BTCUSDT-1m-2024-01-01.zip replays as BINANCE:BTCUSDT, BTC_USDT-1m.feather "
        "as BINANCE:BTCUSDT.",
        "BINANCE:",
    )
    ticks_columns: str = _env(
        "QT_TICKS_COLUMNS",
        "Column mapping for CSV/Parquet/Feather files of no known layout: field=column pairs "
        "of one layout's fields (trades ts,symbol,price,size,side; quotes ts,symbol,bid,ask,"
        "bid_size,ask_size; candles ts,symbol,open,high,low,close,volume), e.g. ts=open_time,"
        "open=o,high=h,low=l,close=c,volume=v,symbol=@BTCUSDT (symbol=@NAME: one fixed symbol "
        "for every row). Empty: no mapping.",
        "",
    )
    ticks_ts_unit: str = _env(
        "QT_TICKS_TS_UNIT",
        "Unit of the mapped ts column (QT_TICKS_COLUMNS): s, ms, us, ns since 1970, iso "
        "(ISO-8601 with a UTC offset), or auto: told from the magnitude of the first values "
        "(times between 1990 and 2100), an error when they do not say.",
        "auto",
    )
    max_backwards_ms: int = _env(
        "QT_MAX_BACKWARDS_MS",
        "Per-symbol tolerance for time going backwards. A tick up to this much older than "
        "the newest seen is accepted into the open bar; older ones are dead letters.",
        1000,
    )
    kafka_batch_size: int = _env(
        "QT_KAFKA_BATCH_SIZE", "Messages per Kafka poll (one poll = one stream item).", 5000
    )
    idle_partition_ms: int = _env(
        "QT_IDLE_PARTITION_MS",
        "Wall time a live input partition may have nothing to read before it stops holding "
        "back the decisions of the others (it counts again with its next data).",
        10_000,
    )
    kafka_outage_s: float = _env(
        "QT_KAFKA_OUTAGE_S",
        "Seconds the Kafka source waits for a lost broker or partition to come back before "
        "the flow stops with an error naming them (resume from recovery: nothing is lost).",
        120.0,
    )
    max_decision_queue: int = _env(
        "QT_MAX_DECISION_QUEUE",
        "Bars the decision engine may hold waiting for a slow input partition; beyond it, "
        "that partition is treated as idle (a warning says which).",
        200_000,
    )
    metrics_port: int = _env(
        "QT_METRICS_PORT",
        "Port of the Prometheus metrics endpoint (http://host:PORT/metrics). 0: off.",
        0,
    )
    progress: ProgressMode = _env(
        "QT_PROGRESS",
        "Progress line on stderr: auto (redrawn every second on a terminal, a line every 30 s "
        "in a log), always (a line every second) or never.",
        ProgressMode.AUTO,
    )

    # --- bars and features -----------------------------------------------------------------
    bar_seconds: int = _env("QT_BAR_SECONDS", "Bar length in seconds (event time).", 60)
    seq_window: int = _env(
        "QT_SEQ_WINDOW",
        "Number of recent bar log-returns kept for the sequence models (N-HiTS, PatchTST).",
        64,
    )

    # --- storage -----------------------------------------------------------------------------
    sink_batch_rows: int = _env(
        "QT_SINK_BATCH_ROWS", "Rows buffered per table before an insert.", 50_000
    )
    sink_flush_seconds: float = _env(
        "QT_SINK_FLUSH_SECONDS", "Longest time a row waits in the sink buffer.", 1.0
    )

    # --- labels, models, ensemble ---------------------------------------------------------
    registry_path: Path | None = _env(
        "QT_REGISTRY_DIR", "Model registry directory. Empty: $QT_HOME/registry.", None
    )
    label_horizon_bars: int = _env(
        "QT_LABEL_HORIZON_BARS",
        "Bars ahead whose return labels a bar (and that the sequence models forecast).",
        10,
    )
    label_vol_mult: float = _env(
        "QT_LABEL_VOL_MULT",
        "Label threshold = max(round-trip costs, this x EWMA volatility x sqrt(horizon)).",
        1.0,
    )
    fee_bps: float = _env("QT_FEE_BPS", "Fee per fill, basis points of notional.", 0.5)
    slippage_bps: float = _env(
        "QT_SLIPPAGE_BPS", "Slippage per fill, basis points, on top of the quoted side.", 0.5
    )
    vote_threshold: float = _env(
        "QT_ENSEMBLE_VOTE_THRESHOLD", "Summed model weight a BUY or SELL needs (audit: 0.6).", 0.6
    )
    high_vol_threshold: float = _env(
        "QT_ENSEMBLE_HIGH_VOL",
        "Daily-scaled EWMA volatility above which a signal needs more confidence (audit: 5%).",
        0.05,
    )
    high_vol_min_confidence: float = _env(
        "QT_ENSEMBLE_HIGH_VOL_MIN_CONFIDENCE",
        "Confidence a signal needs when volatility is high (audit: 0.70).",
        0.70,
    )
    forward_process: ForwardProcessMode = _env(
        "QT_FORWARD_PROCESS",
        "Run the models' arithmetic (the N-HiTS and PatchTST forwards, the trees' "
        "probabilities) in a child process beside the flow's work on the next block (the "
        "same votes): on, off (in the flow's process) or auto (on when there are at least "
        "two CPU cores per process of the cluster).",
        ForwardProcessMode.AUTO,
    )
    bootstrap_ticks: str = _env(
        "QT_BOOTSTRAP_TICKS",
        "Ticks the first run trains on when the registry is empty. Default: the bundled FXCM "
        "days before the replayed sample (2014-05-01..05), so the default run is out-of-sample.",
        str(SAMPLE_TRAINING_TICKS),
    )

    # --- model supervisor (bias window) --------------------------------------------------
    supervisor_mode: SupervisorMode = _env(
        "QT_MODEL_SUPERVISOR_MODE",
        "ENFORCED (block), OBSERVE (record only) or OFF.",
        SupervisorMode.ENFORCED,
    )
    supervisor_bias_threshold: float = _env(
        "QT_MODEL_SUPERVISOR_BIAS_THRESHOLD",
        "A BUY (SELL) is blocked while the BUY (SELL) share of the window exceeds this.",
        0.70,
    )
    supervisor_min_samples: int = _env(
        "QT_MODEL_SUPERVISOR_MIN_SAMPLES", "Signals in the window before bias is judged.", 20
    )
    supervisor_window: int = _env(
        "QT_MODEL_SUPERVISOR_WINDOW", "Signals the window keeps (bounded).", 100
    )
    supervisor_scope: SupervisorScope = _env(
        "QT_MODEL_SUPERVISOR_SCOPE",
        "global (one window, the audit's) or symbol.",
        SupervisorScope.GLOBAL,
    )

    # --- RL sizing (PPO) --------------------------------------------------------------------
    rl_enabled: bool = _env("QT_RL_V3_ENABLED", "Size trades with the PPO policy.", True)
    rl_shadow_mode: bool = _env(
        "QT_RL_V3_SHADOW_MODE",
        "Compute and record the RL decision but trade QT_FIXED_POSITION_USD.",
        False,
    )
    rl_training_enabled: bool = _env(
        "QT_RL_V3_TRAINING_ENABLED",
        "Act stochastically and update the policy from closed trades.",
        True,
    )
    rl_checkpoint_dir: Path | None = _env(
        "QT_RL_V3_CHECKPOINT_DIR", "PPO checkpoints. Empty: the registry's ppo folder.", None
    )
    rl_update_interval: int = _env("QT_RL_V3_UPDATE_INTERVAL", "Transitions per PPO update.", 100)
    rl_max_policy_lag: int = _env(
        "QT_RL_V3_MAX_POLICY_LAG",
        "Transitions recorded more than this many policy versions ago are dropped (counted).",
        2,
    )

    # --- paper execution -----------------------------------------------------------------
    start_equity: float = _env(
        "QT_START_EQUITY",
        "Paper equity, split equally into one sub-account per symbol: QT_START_EQUITY / N, with "
        "N the number of QT_SYMBOLS, or QT_SUBACCOUNTS when QT_SYMBOLS is empty.",
        100_000.0,
    )
    subaccounts: int = _env(
        "QT_SUBACCOUNTS", "N of the equity split when QT_SYMBOLS does not list the symbols.", 10
    )
    fixed_position_usd: float = _env(
        "QT_FIXED_POSITION_USD", "Trade size when RL is off or in shadow mode.", 1_000.0
    )
    max_holding_seconds: int = _env(
        "QT_MAX_HOLDING_SECONDS", "A position is closed after this long (event time).", 3600
    )
    exec_latency_ms: int = _env(
        "QT_EXEC_LATENCY_MS",
        "A decision made at a bar close fills at the first tick at least this much later.",
        0,
    )

    # --- learning -------------------------------------------------------------------------
    learning: bool = _env(
        "QT_LEARNING", "Run the learning graph in the live process (embedded mode).", True
    )
    trade_events: str = _env(
        "QT_TRADE_EVENTS",
        "kafka://host:port/trade-events to publish/consume trade events; empty: in-process.",
        "",
    )
    join_ttl_hours: float = _env(
        "QT_JOIN_TTL_HOURS",
        "Event time a trade's half waits for the other before it is a dead letter (keep it "
        "above QT_MAX_HOLDING_SECONDS).",
        24.0,
    )
    clm_enabled: bool = _env("QT_CLM_ENABLED", "Continuous learning on.", True)
    clm_retrain_hours: float = _env(
        "QT_CLM_RETRAIN_HOURS", "Time trigger period (event time).", 168.0
    )
    clm_drift_hours: float = _env("QT_CLM_DRIFT_HOURS", "Drift check period (event time).", 24.0)
    clm_perf_hours: float = _env("QT_CLM_PERF_HOURS", "Performance check period (event time).", 6.0)
    clm_drift_threshold: float = _env(
        "QT_CLM_DRIFT_THRESHOLD",
        "Drift beyond sampling noise that triggers retraining: the recent window's mean PSI "
        "against the training data, less the level same-size windows of the training data "
        "reach by chance (95%).",
        0.05,
    )
    clm_shadow_min: int = _env(
        "QT_CLM_SHADOW_MIN", "Scored shadow bars before a challenger is first judged.", 100
    )
    clm_shadow_max: int = _env(
        "QT_CLM_SHADOW_MAX",
        "Scored shadow bars after which a challenger not proven better or worse is retired "
        "as unproven (the sequential test looks at QT_CLM_SHADOW_MIN x 2^k bars up to this).",
        3200,
    )
    clm_auto_retrain: bool = _env(
        "QT_CLM_AUTO_RETRAIN", "Triggers start cycles by themselves.", True
    )
    clm_auto_promote: bool = _env(
        "QT_CLM_AUTO_PROMOTE", "Promote a challenger that is more than 2% better.", True
    )
    clm_promote_margin: float = _env(
        "QT_CLM_PROMOTE_MARGIN",
        "Relative macro-F1 improvement over production a challenger must be proven to have.",
        0.02,
    )
    clm_promote_confidence: float = _env(
        "QT_CLM_PROMOTE_CONFIDENCE",
        "Confidence at which a challenger must be proven better (or not better) than "
        "production, on the same bars, allowing for serial correlation.",
        0.95,
    )
    clm_lookback_days: float = _env("QT_CLM_LOOKBACK_DAYS", "Training window of a cycle.", 90.0)
    clm_blocking: bool = _env(
        "QT_CLM_BLOCKING",
        "Wait for a cycle's training in the flow (deterministic replays and tests). Default: "
        "train in a child process while the flow keeps going.",
        False,
    )
    clm_budget: ClmBudget = _env(
        "QT_CLM_BUDGET",
        "Training budget of a cycle: full (tuned, < 60 s on 10 symbols x 10 "
        "days) or quick (tests).",
        ClmBudget.FULL,
    )
    dynamic_weights: bool = _env(
        "QT_DYNAMIC_WEIGHTS", "Ensemble weights follow recent realised accuracy (bounded).", False
    )

    # ------------------------------------------------------------------------------------------
    @property
    def store_path(self) -> Path:
        return self.home / "clickhouse"

    @property
    def registry_dir(self) -> Path:
        return self.registry_path or self.home / "registry"

    @property
    def subaccount_equity(self) -> float:
        """The starting equity of each symbol's paper sub-account."""
        return self.start_equity / max(1, len(self.symbols) or self.subaccounts)

    @property
    def clm_dir(self) -> Path:
        """Manual retrain requests and cycle work files."""
        return self.home / "clm"

    @property
    def ppo_dir(self) -> Path:
        return self.rl_checkpoint_dir or self.registry_dir / "ppo"

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

    def changed(self) -> dict[str, str]:
        """``QT_*`` variable -> value of every setting that differs from its default."""
        out = {}
        for f in dataclasses.fields(self):
            default = _default(f)
            value = getattr(self, f.name)
            if value != default:
                out[f.metadata["env"]] = ",".join(value) if isinstance(value, tuple) else str(value)
        return out

    @classmethod
    def reference(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for every setting, in declaration order."""
        rows = []
        for f in dataclasses.fields(cls):
            default = _default(f)
            if isinstance(default, tuple):
                default = ",".join(default)
            if default is None:
                default = ""
            rows.append((f.metadata["env"], str(default), f.metadata["doc"]))
        return rows


# Every default, once: the *Config classes of the stages take theirs from here, so a default
# changed in Settings changes everywhere (tests/test_settings.py checks each config).
DEFAULTS = Settings()


def _default(f: dataclasses.Field[Any]) -> Any:
    """A settings field's default value (its factory's product for a mutable one)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    assert f.default_factory is not dataclasses.MISSING, f"{f.name} has no default"
    return f.default_factory()


def _parse(name: str, raw: str, hint: Any) -> Any:
    """Parse one environment value into the field's type, with the variable in any error."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw.strip() == "":
            return None
        return _parse(name, raw, inner[0])
    if isinstance(hint, type) and issubclass(hint, StrEnum):  # in any case: "observe"
        return _parse_enum(name, raw, hint)
    try:
        value = _parse_plain(name, raw, hint, origin)
    except ValueError:
        pass
    else:
        return value
    type_name = getattr(hint, "__name__", str(hint))
    raise ValueError(f"{name}={raw!r}: expected {type_name}")


def _parse_enum(name: str, raw: str, hint: type[StrEnum]) -> StrEnum:
    """A member by its value in any case; the error lists the values."""
    by_value = {m.value.lower(): m for m in hint}
    if raw.strip().lower() in by_value:
        return by_value[raw.strip().lower()]
    raise ValueError(f"{name}={raw!r}: expected " + " or ".join(m.value for m in hint))


def _parse_plain(name: str, raw: str, hint: Any, origin: Any) -> Any:
    """A bool, number, path, string tuple or string; ValueError when ``raw`` is not one
    (:func:`_parse` words the message), TypeError for a type settings cannot hold."""
    if hint is bool:
        return _parse_bool(raw)
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
    raise TypeError(f"{name}: unsupported settings type {hint!r}")


def _parse_bool(raw: str) -> bool:
    """The usual words for on and off, in any case; ValueError for any other."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError

"""Graph-building functions shared by every dataflow.

These functions only wire operators together; the logic lives in ``operators/``. The same
functions build the graph whether ticks come from files or Kafka, and whether the learning
graph is fed in-process or from a topic.
"""

from __future__ import annotations

import atexit
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, Source
from bytewax.operators import KeyedStream

from connectors.clickhouse import ClickHouseSink, StoreOwner, TableWriter, flush_seconds
from connectors.kafka import KafkaTickSource, KafkaUrl
from connectors.layouts import LayoutOptions
from connectors.replay import ReplaySource, expand_paths
from connectors.stoppable import Stoppable
from learning.clm import ClmConfig, ContinuousLearner
from learning.cycles import ClmDeps, CycleRunner
from learning.learner import LearnedOutput, LearnerDeps, Sequenced, learn_in_order
from learning.rl_learner import LearnerConfig, PolicyLearner
from learning.trainer import CycleConfig, InlineTraining, TrainingJob
from learning.triggers import RetrainRequests
from metrics import DEAD_LETTER_REASON, METRICS, reason_kind
from models.labels import LabelConfig
from models.registry import ModelRegistry, open_registry
from operators.bars import build_bars
from operators.engine import ENGINE_KEY, EngineConfig, EngineDeps, EngineOutput, decide_and_trade
from operators.ensemble import EnsembleConfig, RegistryModels, ScoredStep, Scorer, score_votes
from operators.features import compute_features
from operators.sizing import PolicySource
from operators.summary import Counts, EventTime, PnlPoint, ProgressLine, run_summary
from operators.validate import Validated, validate_ticks
from operators.versions import ActiveModels
from runtime import cluster
from schemas.bars import Bar, BarStep
from schemas.dead_letters import DeadLetters
from schemas.decisions import Progress
from schemas.features import FeatureStep
from schemas.learning import ChallengerDecision, ClmCycle, CycleStatus
from schemas.tables import (
    BARS,
    CLM_CYCLES,
    DEAD_LETTERS,
    DRIFT_CHECKS,
    FEATURES,
    RL_UPDATES,
    SHADOW_PREDICTIONS,
    SIGNALS,
    TRADE_OUTCOMES,
    TRADES,
    VERDICTS,
    TableRows,
    bar_rows,
    dead_letter_rows,
    event_rows,
    feature_rows,
    outcome_rows,
    signal_rows,
    trade_rows,
    verdict_rows,
)
from schemas.ticks import TickRows
from schemas.timeutil import to_ms
from schemas.trades import (
    TradeClosed,
    TradeOpened,
    encode_event,
    opened_from_row,
)
from settings import Settings
from storage.store import DeferredStore, Store

log = logging.getLogger(__name__)
KAFKA_PRODUCER = {"linger.ms": "5"}


def lazy_flow(build: Callable[[], Dataflow]) -> Callable[[str], Dataflow]:
    """A module ``__getattr__`` that builds ``flow`` on first access (``bytewax.run`` reads
    ``module.flow``), so importing a dataflow module has no side effects."""
    built: list[Dataflow] = []

    def module_getattr(name: str) -> Dataflow:
        if name != "flow":
            raise AttributeError(name)
        if not built:
            built.append(build())
        return built[0]

    return module_getattr


def tick_source(settings: Settings) -> Source[TickRows]:
    """``QT_TICKS``: kafka://... for a topic (a quiet partition says it is idle after
    ``QT_IDLE_PARTITION_MS``; a lost broker or partition is waited for ``QT_KAFKA_OUTAGE_S``),
    anything else for files."""
    if settings.ticks.startswith("kafka://"):
        return KafkaTickSource(
            KafkaUrl.parse(settings.ticks),
            settings.kafka_batch_size,
            idle_ms=settings.idle_partition_ms,
            outage_s=settings.kafka_outage_s,
        )
    return ReplaySource(
        expand_paths(settings.ticks),
        settings.candle_seconds,
        settings.replay_block_bytes,
        settings.replay_speed,
        LayoutOptions.from_settings(settings),
    )


@dataclass
class MarketData:
    """The streams of the market-data half of the live flow."""

    validated: Stream[Validated]
    bars: KeyedStream[BarStep]
    features: KeyedStream[FeatureStep]
    partitions: list[str]


def market_data(
    flow: Dataflow, settings: Settings, source: Source[TickRows] | None = None
) -> MarketData:
    """source -> validate -> per-symbol bars -> features."""
    source = source if source is not None else tick_source(settings)
    partitions = []
    if isinstance(source, FixedPartitionedSource):
        partitions = list(source.list_parts())
        source = Stoppable(source)  # SIGINT / SIGTERM end it early, state kept (runtime.py)
    rows = op.input("ticks", flow, source)
    validated = validate_ticks("validate", rows, settings.max_backwards_ms, settings.symbols)
    pieces = op.flat_map("by_symbol", validated, Validated.pieces)
    bars = build_bars("bars", pieces, settings.bar_seconds)
    features = compute_features("features", bars, settings.bar_seconds, settings.seq_window)
    return MarketData(validated, bars, features, partitions)


def market_data_rows(market: MarketData, features: bool = True) -> list[Stream[TableRows]]:
    """Table blocks of the market-data streams (bars, dead letters, and features unless the
    engine's continuous learner archives them itself)."""
    rows = [
        op.filter_map(
            "dead_letter_rows",
            market.validated,
            lambda v: dead_letter_rows(v.dead) if len(v.dead) else None,
        ),
        op.filter_map(
            "bar_rows",
            op.key_rm("bars_unkeyed", market.bars),
            lambda s: bar_rows(s.bars) if s.bars else None,
        ),
    ]
    if features:
        rows.append(
            op.filter_map(
                "feature_rows",
                op.key_rm("features_unkeyed", market.features),
                lambda s: feature_rows(s.vectors) if s.vectors else None,
            )
        )
    return rows


def market_data_counts(
    market: MarketData,
    training: tuple[datetime, datetime] | None = None,
) -> list[Stream[Any]]:
    """The summary's market-data counters; with the production models' ``training`` span,
    also how many bars fall inside it (the summary says whether the run is out-of-sample)."""
    return [
        op.map("count_validated", market.validated, validated_counts),
        op.flat_map("count_bars", market.bars, lambda kv: _bar_counts(kv[1].bars, training)),
        op.map(
            "count_features",
            market.features,
            lambda kv: {
                "features": len(kv[1].vectors),
                "features.warm": sum(1 for v in kv[1].vectors if v.warm),
            },
        ),
    ]


def validated_counts(v: Validated) -> Counts:
    """Rows, ticks and dead letters of a validated block, by stage and by reason kind."""
    c = {
        "rows_in": v.rows_in,
        "ticks": v.ticks,
        "dead_letters": len(v.dead),
        "input.bytes": v.input_bytes,
    }
    # counted by distinct (stage, reason) first: a month of quotes has 136k dead letters of
    # one reason, and a Python loop per row was 6% of the flow's CPU
    for (stage, reason), n in Counter(zip(v.dead.stage, v.dead.reason, strict=True)).items():
        for key in (
            f"dead_letters.{stage.value}",
            f"{DEAD_LETTER_REASON}{stage.value}.{reason_kind(reason)}",
        ):
            c[key] = c.get(key, 0) + n
    return {k: n for k, n in c.items() if n}


def _bar_counts(
    bars: list[Bar],
    training: tuple[datetime, datetime] | None,
) -> list[Counts | EventTime]:
    """Bars closed (and how many fall in the models' training span), and the event time
    they reached, for the progress line."""
    if not bars:
        return []
    inside = (
        0
        if training is None
        else sum(training[0] <= b.start and b.end <= training[1] for b in bars)
    )
    counts = {"bars": len(bars), **({"bars.in_training": inside} if inside else {})}
    return [counts, EventTime(max(to_ms(b.end) for b in bars))]


def scoring(market: MarketData, settings: Settings) -> KeyedStream[ScoredStep]:
    """features -> every production and shadow model version's votes (per symbol, parallel;
    models loaded now so the flow does not pay for imports and loading at its first bar)."""
    models = RegistryModels(open_registry(settings))
    models.current()
    return score_votes(
        "ensemble", market.features, Scorer(models, EnsembleConfig.from_settings(settings))
    )


def inline_learning(settings: Settings) -> bool:
    """The learners run inside the engine: embedded mode with learning on."""
    return settings.learning and not settings.trade_events.startswith("kafka://")


def engine(
    market: MarketData, scored: KeyedStream[ScoredStep], settings: Settings
) -> Stream[EngineOutput]:
    """scored bars + input progress -> the decision engine (decisions, trades, learning)."""
    progress = op.map(
        "progress",
        market.validated,
        lambda v: Progress(
            v.tag.partition, v.tag.seq, v.tag.parts, v.tag.clock_ms, v.tag.final, v.tag.idle
        ),
    )
    # the registry's records, the CLM's data: opened where the engine runs, when it first
    # needs them (in a cluster, the other processes never open the embedded store)
    store = DeferredStore(settings)
    atexit.register(store.close)
    registry = open_registry(settings, store)
    cfg = EngineConfig.from_settings(settings)
    publish = settings.trade_events.startswith("kafka://")
    deps = EngineDeps(
        registry,
        market.partitions,
        learning=inline_learning(settings),
        publish=publish,
        dynamic_weights=settings.dynamic_weights,
    )
    if deps.learning:
        learner_cfg = LearnerConfig.from_settings(settings)
        if learner_cfg.enabled:
            deps.rl = lambda policy, state: PolicyLearner(learner_cfg, registry, policy, state)
        if settings.clm_enabled:
            deps.clm = _clm_factory(settings, registry, store)
    PolicySource(registry).current()  # load now, not at the first order
    return decide_and_trade("engine", op.key_rm("scored_unkeyed", scored), progress, cfg, deps)


def _clm_factory(
    settings: Settings, registry: ModelRegistry, store: Store
) -> Callable[[ActiveModels, Any], ContinuousLearner]:
    trainer = InlineTraining() if settings.clm_blocking else TrainingJob()
    atexit.register(trainer.shutdown)
    cfg = ClmConfig.from_settings(settings)
    label_cfg = LabelConfig.from_settings(settings)
    archive = TableWriter(store, settings.sink_batch_rows, flush_seconds(settings))
    clm_deps = ClmDeps(
        registry,
        store,
        trainer,
        RetrainRequests(settings.clm_dir),
        settings.clm_dir,
        CycleConfig.quick() if settings.clm_budget == "quick" else CycleConfig(),
        archive,
    )

    def build(models: ActiveModels, state: Any) -> ContinuousLearner:
        runner = CycleRunner(
            clm_deps, label_cfg, cfg.lookback_ms, None if state is None else state["runner"]
        )
        return ContinuousLearner(cfg, label_cfg, runner, models, state)

    return build


def engine_rows(out: Stream[EngineOutput]) -> Stream[TableRows]:
    """Table blocks of everything the engine decided and learned."""

    def rows(o: EngineOutput) -> list[TableRows]:
        blocks = []
        if o.signals:
            blocks.append(signal_rows(o.signals))
        if o.verdicts:
            blocks.append(verdict_rows(o.verdicts))
        if o.shadow:
            blocks.append(event_rows(SHADOW_PREDICTIONS, o.shadow))
        if o.trades:
            blocks.append(trade_rows([e.record for e in o.trades]))
        if o.outcomes:
            blocks.append(outcome_rows(o.outcomes))
        if o.updates:
            blocks.append(event_rows(RL_UPDATES, o.updates))
        if o.cycles:
            blocks.append(event_rows(CLM_CYCLES, o.cycles))
        if o.drift:
            blocks.append(event_rows(DRIFT_CHECKS, o.drift))
        return blocks

    return op.flat_map("engine_rows", out, rows)


def engine_counts(out: Stream[EngineOutput]) -> Stream[Counts | PnlPoint]:
    """The summary's counters of the engine's outputs, and the closed trades' PnL."""

    def counts(o: EngineOutput) -> list[Counts | PnlPoint]:
        c: Counts = dict(o.counts)

        def bump(key: str, n: int = 1) -> None:
            c[key] = c.get(key, 0) + n

        for sig in o.signals:
            bump("signals")
            bump(f"signals.{sig.action.value.lower()}")
            for v in sig.votes:
                if v.failed:
                    bump(f"model_failures.{v.model}")
        bump("signals.blocked", sum(not v.allowed for v in o.verdicts))
        pnl: list[Counts | PnlPoint] = []
        for e in o.trades:
            ev = e.event
            if isinstance(ev, TradeClosed):
                pnl.append(PnlPoint(to_ms(ev.exit_ts), ev.trade_id, ev.net_pnl))
            else:
                bump("trades.opened")
        for outcome in o.outcomes:
            bump(f"trades.joined.{outcome.joined_from}")
        bump("rl.updates", len(o.updates))
        bump("clm.drift_checks", len(o.drift))
        bump("clm.drift_fired", sum(d.fired for d in o.drift))
        for cycle in o.cycles:
            for key, n in cycle_counts(cycle).items():
                bump(key, n)
        return [{k: v for k, v in c.items() if v}, *pnl]

    return op.flat_map("engine_counts", out, counts)


def cycle_counts(c: ClmCycle) -> Counts:
    """How a ``clm_cycles`` record moves the summary's CLM counters."""
    if c.status in (CycleStatus.TRAINING, CycleStatus.FAILED) and not c.versions:
        return {"clm.cycles": 1, "clm.failed_at_start": int(c.status is CycleStatus.FAILED)}
    if c.status is CycleStatus.SHADOW and not c.shadow_metrics:  # entered shadow
        return {"clm.shadow": 1}
    if c.status is not CycleStatus.DECIDED:
        return {}
    out: Counts = {"clm.decided": 1}
    for decision in c.decisions.values():
        key = "clm.promoted" if decision == ChallengerDecision.PROMOTED else "clm.retired"
        out[key] = out.get(key, 0) + 1
    return out


def publish_learning_events(out: Stream[EngineOutput], url: str) -> None:
    """The engine's learning events (decided bars, trade events, numbered in its order) to a
    Kafka topic (``QT_TRADE_EVENTS=kafka://host:port/trade-events``), all with one key so that
    one partition keeps the order, for the learning flow in another process."""
    target = KafkaUrl.parse(url)
    messages = op.flat_map(
        "learning_event_messages",
        out,
        lambda o: [
            KafkaSinkMessage(b"engine", encode_event(event, seq)) for seq, event in o.published
        ],
    )
    op.output(
        "learning_events_out",
        messages,
        KafkaSink(list(target.brokers), target.topic, add_config=KAFKA_PRODUCER),
    )


def learning(events: Stream[Sequenced | DeadLetters], settings: Settings) -> Stream[LearnedOutput]:
    """The live flow's ordered learning events -> the learners (the learning process of the
    Kafka deployment; the embedded live flow runs the same learners inside its engine)."""
    # the join's fallback, the CLM's data, the registry's records: opened where the learner runs
    store = DeferredStore(settings)
    atexit.register(store.close)

    def stored_entry(trade_id: str) -> TradeOpened | None:
        rows = store.query("queries/trade_by_id", trade_id=trade_id)
        return opened_from_row(rows[0]) if rows else None

    registry = open_registry(settings, store)
    learner_cfg = LearnerConfig.from_settings(settings)
    deps = LearnerDeps(
        registry, int(settings.join_ttl_hours * 3_600_000), stored_entry, learner_cfg.weights
    )
    if learner_cfg.enabled:
        deps.rl = lambda policy, state: PolicyLearner(learner_cfg, registry, policy, state)
    if settings.clm_enabled:
        deps.clm = _clm_factory(settings, registry, store)
    return learn_in_order("learner", events, deps)


def learned_rows(out: Stream[LearnedOutput]) -> Stream[TableRows]:
    def rows(o: LearnedOutput) -> list[TableRows]:
        blocks = [dead_letter_rows(d) for d in o.dead]
        if o.outcomes:
            blocks.append(outcome_rows(o.outcomes))
        if o.updates:
            blocks.append(event_rows(RL_UPDATES, o.updates))
        if o.cycles:
            blocks.append(event_rows(CLM_CYCLES, o.cycles))
        if o.drift:
            blocks.append(event_rows(DRIFT_CHECKS, o.drift))
        return blocks

    return op.flat_map("learned_rows", out, rows)


def learned_counts(out: Stream[LearnedOutput]) -> Stream[Counts]:
    def counts(o: LearnedOutput) -> Counts:
        c: Counts = dict(o.counts)
        c["rl.updates"] = len(o.updates)
        c["clm.drift_checks"] = len(o.drift)
        c["clm.drift_fired"] = sum(d.fired for d in o.drift)
        for cycle in o.cycles:
            for key, n in cycle_counts(cycle).items():
                c[key] = c.get(key, 0) + n
        return {k: v for k, v in c.items() if v}

    return op.map("learned_counts", out, counts)


def store(
    flow_step: str,
    blocks: list[Stream[TableRows]],
    settings: Settings,
    tables: list[str],
    owner_key: str = ENGINE_KEY,
    live: bool | None = None,
) -> None:
    """Write table blocks to ClickHouse. A server: one sink, one partition per table, on any
    worker of any process. The embedded store: every block to the worker of ``owner_key``,
    the key of the step that uses the store itself (the engine's, the learner's), so that
    one process opens it (chDB allows one per data path; see connectors/clickhouse.py).
    ``live``: whether rows must be stored within ``QT_SINK_FLUSH_SECONDS`` (default: Kafka
    or a paced replay)."""
    merged = op.merge(f"{flow_step}_merge", *blocks)
    flush_s = flush_seconds(settings, live)
    if settings.clickhouse_url.strip():
        keyed = op.key_on(f"{flow_step}_by_table", merged, lambda b: b.table)
        op.output(flow_step, keyed, ClickHouseSink(settings, tables, flush_s))
        return
    known = set(tables)

    def to_owner(b: TableRows) -> str:
        if b.table not in known:
            raise ValueError(f"{flow_step}: no table {b.table!r} in this flow's {tables}")
        return owner_key

    keyed = op.key_on(f"{flow_step}_to_store_owner", merged, to_owner)
    written = op.stateful_batch(flow_step, keyed, lambda _: StoreOwner(settings, flush_s))
    op.inspect(f"{flow_step}_end", written, lambda _step, _item: None)  # (emits nothing)


LEARNING_SUMMARY = ("rl.transitions", "rl.updates", "clm.cycles", "clm.promoted")


def progress_line(settings: Settings) -> Callable[[], ProgressLine | None]:
    """``QT_PROGRESS``: the progress line of this run, with the share of the input read when
    its size is known (files), and the event-time lag when the input is live (Kafka)."""
    if settings.progress == "never":
        return lambda: None
    live = settings.ticks.startswith("kafka://")
    size = 0 if live else sum(p.stat().st_size for p in expand_paths(settings.ticks))
    always = settings.progress == "always"
    return lambda: ProgressLine(
        tty=False if always else None,
        log_every_s=1.0 if always else 30.0,
        input_bytes=size,
        lag=live,
    )


def print_summary(
    counts: Sequence[Stream[Any]],
    started: float,
    title: str,
    settings: Settings,
    always: tuple[str, ...] = (),
    footer: str = "",
) -> None:
    """The run's totals: a progress line while it runs (``QT_PROGRESS``), Prometheus metrics
    (``QT_METRICS_PORT``), and the summary (with ``footer``) on stdout at its end."""
    if settings.metrics_port:  # one port per process of a cluster: port + process id
        METRICS.serve(settings.metrics_port + cluster().process_id)
        log.info("metrics on http://0.0.0.0:%d/metrics", METRICS.port)
    summary = run_summary(
        "summary",
        op.merge("all_counts", *counts),
        started,
        settings.start_equity,
        always,
        progress_line(settings),
    )
    op.output(
        "print_summary", op.map("render", summary, lambda s: s.render(title) + footer), StdOutSink()
    )


MARKET_DATA_TABLES = [BARS, FEATURES, DEAD_LETTERS]
LIVE_TABLES = [
    *MARKET_DATA_TABLES,
    SIGNALS,
    VERDICTS,
    TRADES,
    SHADOW_PREDICTIONS,
    TRADE_OUTCOMES,
    RL_UPDATES,
    CLM_CYCLES,
    DRIFT_CHECKS,
]
LEARNING_TABLES = [TRADE_OUTCOMES, RL_UPDATES, CLM_CYCLES, DRIFT_CHECKS, FEATURES, DEAD_LETTERS]

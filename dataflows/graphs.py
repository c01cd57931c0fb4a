"""Graph-building functions shared by every dataflow.

These functions only wire operators together; the logic lives in ``operators/``. The same
functions build the graph whether ticks come from files or Kafka, and whether the learning
graph is fed in-process or from a topic.
"""

from __future__ import annotations

import logging
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

from connectors.clickhouse import ClickHouseSink, StoreOwner
from connectors.kafka import KafkaTickSource, KafkaUrl
from connectors.layouts import LayoutOptions
from connectors.replay import ReplaySource, expand_paths
from connectors.stoppable import Stoppable
from learning.clm import clm_factory
from learning.learner import LearnedOutput, LearnerDeps, Sequenced, learn_in_order, stored_entries
from metrics import METRICS
from models.forward_process import ForwardProcess, use_forward_process
from models.registry import open_registry
from operators.bars import bar_counts, build_bars
from operators.engine import ENGINE_KEY, EngineConfig, EngineDeps, EngineOutput, decide_and_trade
from operators.ensemble import EnsembleConfig, RegistryModels, ScoredStep, Scorer, score_votes
from operators.features import compute_features
from operators.policy_learner import LearnerConfig, PolicyLearner
from operators.sizing import PolicySource
from operators.summary import Counts, PnlPoint, ProgressLine, run_summary
from operators.validate import Validated, validate_ticks
from runtime import cluster
from schemas.bars import BarStep
from schemas.dead_letters import DeadLetters
from schemas.decisions import Progress
from schemas.features import FeatureStep
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
    feature_rows,
)
from schemas.ticks import TickRows
from schemas.trades import encode_event
from settings import Settings
from storage.store import DeferredStore

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
        op.map("count_validated", market.validated, Validated.summary_counts),
        op.flat_map("count_bars", market.bars, lambda kv: bar_counts(kv[1].bars, training)),
        op.map(
            "count_features",
            market.features,
            lambda kv: {
                "features": len(kv[1].vectors),
                "features.warm": sum(1 for v in kv[1].vectors if v.warm),
            },
        ),
    ]


def scoring(market: MarketData, settings: Settings) -> KeyedStream[ScoredStep]:
    """features -> every production and shadow model version's votes (per symbol, parallel;
    models loaded now so the flow does not pay for imports and loading at its first bar)."""
    models = RegistryModels(open_registry(settings))
    loaded = models.current()
    forwards = None
    if use_forward_process(settings.forward_process, cluster().processes):
        forwards = ForwardProcess.shared()
        for m in loaded:  # the child loads the models while this process goes on
            if m.begin_vote_arrays is not None:
                forwards.preload(m.model)
    scorer = Scorer(models, EnsembleConfig.from_settings(settings))
    return score_votes("ensemble", market.features, scorer, forwards)


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
            deps.clm = clm_factory(settings, registry, store)
    PolicySource(registry).current()  # load now, not at the first order
    return decide_and_trade("engine", op.key_rm("scored_unkeyed", scored), progress, cfg, deps)


def engine_rows(out: Stream[EngineOutput]) -> Stream[TableRows]:
    """Table blocks of everything the engine decided and learned."""
    return op.flat_map("engine_rows", out, EngineOutput.table_rows)


def engine_counts(out: Stream[EngineOutput]) -> Stream[Counts | PnlPoint]:
    """The summary's counters of the engine's outputs, and the closed trades' PnL."""
    return op.flat_map("engine_counts", out, EngineOutput.summary_counts)


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
    registry = open_registry(settings, store)
    learner_cfg = LearnerConfig.from_settings(settings)
    deps = LearnerDeps(
        registry,
        int(settings.join_ttl_hours * 3_600_000),
        stored_entries(store),
        learner_cfg.weights,
    )
    if learner_cfg.enabled:
        deps.rl = lambda policy, state: PolicyLearner(learner_cfg, registry, policy, state)
    if settings.clm_enabled:
        deps.clm = clm_factory(settings, registry, store)
    return learn_in_order("learner", events, deps)


def learned_rows(out: Stream[LearnedOutput]) -> Stream[TableRows]:
    return op.flat_map("learned_rows", out, LearnedOutput.table_rows)


def learned_counts(out: Stream[LearnedOutput]) -> Stream[Counts]:
    return op.map("learned_counts", out, LearnedOutput.summary_counts)


def store(
    flow_step: str,
    blocks: list[Stream[TableRows]],
    settings: Settings,
    tables: list[str],
    owner_key: str = ENGINE_KEY,
) -> list[Stream[Counts]]:
    """Write table blocks to ClickHouse. A server: one sink, one partition per table, on any
    worker of any process. The embedded store: every block to the worker of ``owner_key``,
    the key of the step that uses the store itself (the engine's, the learner's), so that
    one process opens it (chDB allows one per data path; see connectors/clickhouse.py).
    Rows are stored within ``QT_SINK_FLUSH_SECONDS``.

    Returns the summary's counters of the rows written (the embedded store's; a server's
    sink has no output: none): a summary fed them ends after the last insert."""
    merged = op.merge(f"{flow_step}_merge", *blocks)
    if settings.clickhouse_url.strip():
        keyed = op.key_on(f"{flow_step}_by_table", merged, lambda b: b.table)
        op.output(flow_step, keyed, ClickHouseSink(settings, tables))
        return []
    known = set(tables)

    def to_owner(b: TableRows) -> str:
        if b.table not in known:
            raise ValueError(f"{flow_step}: no table {b.table!r} in this flow's {tables}")
        return owner_key

    keyed = op.key_on(f"{flow_step}_to_store_owner", merged, to_owner)
    stored = op.stateful_batch(flow_step, keyed, lambda _: StoreOwner(settings))
    # an inspect ends the branch, so a flow that only stores is a whole flow to Bytewax
    return [op.inspect(f"{flow_step}_end", op.key_rm(f"{flow_step}_stored", stored), _ignore)]


def _ignore(_step_id: str, _item: object) -> None:
    pass


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

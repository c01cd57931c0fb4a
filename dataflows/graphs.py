"""Graph-building functions shared by every dataflow.

These functions only wire operators together; the logic lives in ``operators/``. The same
functions build the graph whether ticks come from files or Kafka, and whether the learning
graph is fed in-process or from a topic.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, Source
from bytewax.operators import KeyedStream

from connectors.clickhouse import ClickHouseSink, flush_all
from connectors.kafka import KafkaTickSource, KafkaUrl
from connectors.replay import ReplaySource, expand_paths
from learning.clm import ClmConfig, ClockTick, continuous_learning
from learning.rl_learner import LearnerConfig, learn_policy, trade_reward, transition_of
from learning.trainer import CycleConfig, TrainingJob
from learning.triggers import RetrainRequests
from models.labels import LabelConfig
from models.registry import open_registry
from operators.bars import build_bars
from operators.ensemble import EnsembleConfig, RegistryModels, Scorer, SignalStep, ensemble
from operators.execution import ExecConfig, ExecEvent, execute
from operators.features import FEATURE_NAMES, compute_features
from operators.sizing import RegistryPolicy, Sizer, SizingConfig
from operators.summary import Counts, PnlPoint, run_summary
from operators.supervisor import SupervisorConfig, supervise
from operators.trade_join import join_trades
from operators.validate import Validated, validate_ticks
from operators.weights import DynamicWeights
from rl.reward import RewardWeights
from schemas.bars import BarStep
from schemas.dead_letters import DeadLetters
from schemas.decisions import BarDecision, Progress
from schemas.features import FeatureStep
from schemas.learning import ClmCycle, RLUpdate
from schemas.tables import (
    BARS,
    CLM_CYCLES,
    DEAD_LETTERS,
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
    trade_outcome,
    trade_rows,
    verdict_rows,
)
from schemas.ticks import TickRows
from schemas.timeutil import to_ms
from schemas.trades import JoinedTrade, TradeClosed, TradeOpened, encode_event, opened_from_row
from settings import Settings
from storage.store import open_store

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
    """``QT_TICKS``: kafka://... for a topic, anything else for files."""
    if settings.ticks.startswith("kafka://"):
        return KafkaTickSource(KafkaUrl.parse(settings.ticks), settings.kafka_batch_size)
    return ReplaySource(expand_paths(settings.ticks), settings.candle_seconds,
                        settings.replay_block_bytes, settings.replay_speed)


@dataclass
class MarketData:
    """The streams of the market-data half of the live flow."""

    validated: Stream[Validated]
    bars: KeyedStream[BarStep]
    features: KeyedStream[FeatureStep]
    partitions: list[str]


def market_data(flow: Dataflow, settings: Settings,
                source: Source[TickRows] | None = None) -> MarketData:
    """source -> validate -> per-symbol bars -> features."""
    source = source if source is not None else tick_source(settings)
    partitions = list(source.list_parts()) if isinstance(source, FixedPartitionedSource) else []
    rows = op.input("ticks", flow, source)
    validated = validate_ticks("validate", rows, settings.max_backwards_ms, settings.symbols)
    pieces = op.flat_map("by_symbol", validated, Validated.pieces)
    bars = build_bars("bars", pieces, settings.bar_seconds)
    features = compute_features("features", bars, settings.bar_seconds, settings.seq_window)
    return MarketData(validated, bars, features, partitions)


def market_data_rows(md: MarketData) -> list[Stream[TableRows]]:
    """Table blocks of the market-data streams (bars, features, dead letters)."""
    return [
        op.filter_map("dead_letter_rows", md.validated,
                      lambda v: dead_letter_rows(v.dead) if len(v.dead) else None),
        op.filter_map("bar_rows", op.key_rm("bars_unkeyed", md.bars),
                      lambda s: bar_rows(s.bars) if s.bars else None),
        op.filter_map("feature_rows", op.key_rm("features_unkeyed", md.features),
                      lambda s: feature_rows(s.vectors) if s.vectors else None),
    ]


def market_data_counts(md: MarketData) -> list[Stream[Counts]]:
    def validated_counts(v: Validated) -> Counts:
        c = {"rows_in": v.rows_in, "ticks": v.ticks, "dead_letters": len(v.dead)}
        for stage in v.dead.stage:
            key = f"dead_letters.{stage.value}"
            c[key] = c.get(key, 0) + 1
        return c

    return [
        op.map("count_validated", md.validated, validated_counts),
        op.map("count_bars", md.bars, lambda kv: {"bars": len(kv[1].bars)}),
        op.map("count_features", md.features, lambda kv: {
            "features": len(kv[1].vectors),
            "features.warm": sum(1 for v in kv[1].vectors if v.warm)}),
    ]


def signals(md: MarketData, settings: Settings,
            weights: DynamicWeights | None = None) -> KeyedStream[SignalStep]:
    """features -> the four-model ensemble (production models from the registry, loaded now
    so the flow does not pay for imports and loading at its first bar; shadow challengers
    vote beside them)."""
    models = RegistryModels(open_registry(settings))
    models.current()
    return ensemble("ensemble", md.features,
                    Scorer(models, EnsembleConfig.from_settings(settings), dynamic=weights))


def signal_table_rows(steps: KeyedStream[SignalStep]) -> list[Stream[TableRows]]:
    return [op.filter_map("signal_rows", steps, lambda kv: signal_rows(
                [sig for sig, _ in kv[1].scored]) if kv[1].scored else None),
            op.filter_map("shadow_rows", steps, lambda kv: event_rows(
                SHADOW_PREDICTIONS, kv[1].shadow) if kv[1].shadow else None)]


def signal_counts(steps: KeyedStream[SignalStep]) -> Stream[Counts]:
    def count(kv: tuple[str, SignalStep]) -> Counts:
        c: Counts = {}
        for sig, _ in kv[1].scored:
            c["signals"] = c.get("signals", 0) + 1
            key = f"signals.{sig.action.value.lower()}"
            c[key] = c.get(key, 0) + 1
            for v in sig.votes:
                if v.failed:
                    c[f"model_failures.{v.model}"] = c.get(f"model_failures.{v.model}", 0) + 1
        return c

    return op.map("count_signals", steps, count)


@dataclass
class Trading:
    """The streams of the trading half: per-bar decisions and execution events."""

    decisions: KeyedStream[BarDecision]
    events: KeyedStream[ExecEvent]


def trading(md: MarketData, signal_steps: KeyedStream[SignalStep],
            settings: Settings) -> Trading:
    """signals -> bias window -> RL sizing + paper execution (against the bar step's ticks)."""
    progress = op.map("progress", md.validated, lambda v: Progress(
        v.tag.partition, v.tag.seq, v.tag.parts, v.tag.clock_ms, v.tag.final))
    decisions = supervise("supervisor", signal_steps, progress,
                          SupervisorConfig.from_settings(settings), md.partitions)
    exec_inputs = op.merge("execution_inputs", md.bars, decisions)
    policy = RegistryPolicy(open_registry(settings))
    policy.current()  # load now, not at the first order
    events = execute("execution", exec_inputs, ExecConfig.from_settings(settings),
                     Sizer(SizingConfig.from_settings(settings), policy))
    return Trading(decisions, events)


def publish_trade_events(tr: Trading, url: str) -> None:
    """Trade events to a Kafka topic (``QT_TRADE_EVENTS=kafka://host:port/trade-events``),
    JSON keyed by trade id, for a learning flow in another process."""
    target = KafkaUrl.parse(url)
    messages = op.map("trade_event_messages", tr.events, lambda kv: KafkaSinkMessage(
        kv[1].event.trade_id.encode(), encode_event(kv[1].event)))
    op.output("trade_events_out", messages,
              KafkaSink(list(target.brokers), target.topic, add_config=KAFKA_PRODUCER))


def trading_rows(tr: Trading) -> list[Stream[TableRows]]:
    return [
        op.filter_map("verdict_rows", tr.decisions,
                      lambda kv: verdict_rows([kv[1].verdict]) if kv[1].verdict else None),
        op.map("trade_rows", tr.events, lambda kv: trade_rows([kv[1].record])),
    ]


def trading_counts(tr: Trading) -> list[Stream[Counts | PnlPoint]]:
    def decision_counts(kv: tuple[str, BarDecision]) -> Counts:
        v = kv[1].verdict
        return {"signals.blocked": 1} if v is not None and not v.allowed else {}

    def event_counts(kv: tuple[str, ExecEvent]) -> Counts | PnlPoint:
        e = kv[1].event
        if isinstance(e, TradeClosed):
            return PnlPoint(to_ms(e.exit_ts), e.trade_id, e.net_pnl)
        return {"trades.opened": 1}

    return [op.map("count_decisions", tr.decisions, decision_counts),
            op.map("count_trades", tr.events, event_counts)]


@dataclass
class Learning:
    """The streams of the learning graph."""

    joined: Stream[JoinedTrade]
    updates: Stream[RLUpdate]
    dead: Stream[DeadLetters]
    cycles: Stream[ClmCycle] | None


def clm_clock(md: MarketData) -> Stream[ClockTick]:
    """Event time for the CLM step (the newest bar close of each feature step), with the
    step's warm feature rows for the drift check."""
    def tick(kv: tuple[str, FeatureStep]) -> ClockTick | None:
        vectors = kv[1].vectors
        if not vectors:
            return None
        rows = tuple((to_ms(v.ts), tuple(v.values[n] for n in FEATURE_NAMES))
                     for v in vectors if v.warm)
        return ClockTick(to_ms(vectors[-1].ts), rows)

    return op.filter_map("clm_clock", md.features, tick)


def learning(events: Stream[TradeOpened | TradeClosed], settings: Settings,
             weights: DynamicWeights | None = None,
             clock: Stream[ClockTick] | None = None) -> Learning:
    """trade events -> join with the entry state -> PPO updates and CLM (and dynamic weights).

    The same graph whether the events come in-process from the live flow or from Kafka;
    without a ``clock`` the CLM step's event time is the closed trades' exit times.
    """
    store = open_store(settings)  # the join's fallback, CLM's data, the registry's records
    atexit.register(store.close)

    def stored_entry(trade_id: str) -> TradeOpened | None:
        rows = store.query("queries/trade_by_id", trade_id=trade_id)
        return opened_from_row(rows[0]) if rows else None

    join = join_trades("trade_join", events, int(settings.join_ttl_hours * 3_600_000),
                       stored_entry)
    if weights is not None:
        op.inspect("dynamic_weights", join.joined,
                   lambda _step, j: weights.observe_trade(j))
    registry = open_registry(settings, store)
    updates = learn_policy("rl_learner", join.joined, LearnerConfig.from_settings(settings),
                           registry)
    cycles = None
    if settings.clm_enabled:
        trainer = TrainingJob()
        atexit.register(trainer.shutdown)
        deps = {"registry": registry, "store": store, "trainer": trainer, "flush": flush_all,
                "requests": RetrainRequests(settings.clm_dir), "work_dir": settings.clm_dir,
                "train_config": (CycleConfig.quick() if settings.clm_budget == "quick"
                                 else CycleConfig())}
        inputs = join.joined if clock is None else op.merge("clm_inputs", join.joined, clock)
        cycles = continuous_learning("clm", inputs, ClmConfig.from_settings(settings),
                                     LabelConfig.from_settings(settings), deps)
    return Learning(join.joined, updates, join.dead, cycles)


def learning_rows(ln: Learning, settings: Settings) -> list[Stream[TableRows]]:
    weights = LearnerConfig.from_settings(settings).weights
    rows = [
        op.map("outcome_rows", ln.joined,
               lambda j: outcome_rows([trade_outcome(j, trade_reward(j, weights))])),
        op.map("rl_update_rows", ln.updates, lambda u: event_rows(RL_UPDATES, [u])),
        op.map("join_dead_letter_rows", ln.dead, dead_letter_rows),
    ]
    if ln.cycles is not None:
        rows.append(op.map("clm_cycle_rows", ln.cycles, lambda c: event_rows(CLM_CYCLES, [c])))
    return rows


def learning_counts(ln: Learning) -> list[Stream[Counts]]:
    def joined_counts(j: JoinedTrade) -> Counts:
        learnable = transition_of(j, RewardWeights()) is not None
        return {f"trades.joined.{j.source.value}": 1, "rl.transitions": int(learnable)}

    counts = [
        op.map("count_joined", ln.joined, joined_counts),
        op.map("count_updates", ln.updates, lambda u: {"rl.updates": 1}),
        op.map("count_join_dead", ln.dead, lambda d: {"dead_letters.join": len(d)})]
    if ln.cycles is not None:
        def cycle_counts(c: ClmCycle) -> Counts:
            if c.status in ("training", "failed") and not c.versions:
                return {"clm.cycles": 1, "clm.failed_at_start": int(c.status == "failed")}
            if c.status == "shadow" and not c.shadow_metrics:  # entered shadow (not a re-check)
                return {"clm.shadow": 1}
            if c.status != "decided":
                return {}
            out: Counts = {"clm.decided": 1}
            for decision in c.decisions.values():
                key = "clm.promoted" if decision == "promoted" else "clm.retired"
                out[key] = out.get(key, 0) + 1
            return out

        counts.append(op.map("count_cycles", ln.cycles, cycle_counts))
    return counts


def store(flow_step: str, blocks: list[Stream[TableRows]], settings: Settings,
          tables: list[str]) -> None:
    """Write table blocks to ClickHouse (one sink, one partition per table)."""
    merged = op.merge(f"{flow_step}_merge", *blocks)
    keyed = op.key_on(f"{flow_step}_by_table", merged, lambda b: b.table)
    op.output(flow_step, keyed, ClickHouseSink(settings, tables))


LEARNING_SUMMARY = ("rl.transitions", "rl.updates", "clm.cycles", "clm.promoted")


def print_summary(counts: list[Stream[Counts | PnlPoint]], started: float, title: str,
                  start_equity: float = 0.0, always: tuple[str, ...] = ()) -> None:
    summary = run_summary("summary", op.merge("all_counts", *counts), started, start_equity,
                          always)
    op.output("print_summary", op.map("render", summary, lambda s: s.render(title)),
              StdOutSink())


MARKET_DATA_TABLES = [BARS, FEATURES, DEAD_LETTERS]
LIVE_TABLES = [*MARKET_DATA_TABLES, SIGNALS, VERDICTS, TRADES, SHADOW_PREDICTIONS]
LEARNING_TABLES = [TRADE_OUTCOMES, RL_UPDATES, CLM_CYCLES, DEAD_LETTERS]

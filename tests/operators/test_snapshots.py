"""Every stateful stage's snapshot is an independent copy (the estimator-check style of River).

Bytewax keeps a snapshot as it was taken: processing after it must not change it. A snapshot
that shares a dict, list, deque or array with the live state would change under the stage's
feet and resume from a state that never existed. For each stage below, one check:

1. build the stage and push the first part of its input (real ticks replayed from the bundled
   sample, or what the earlier stages made of them; a few small synthetic inputs where the
   real data cannot reach a state);
2. ``snap = stage.snapshot()``, ``frozen = pickle.dumps(snap)``;
3. push the rest of the input, then ``finish()`` where the stage has one;
4. ``pickle.dumps(snap) == frozen``: the snapshot did not change;
5. where the stage restores, a stage restored from ``pickle.loads(frozen)`` fed the same rest
   gives the same outputs as the uninterrupted stage, and ends in the same state.

No model is trained: decisions come from a plain rule on the real features, sizes from a fixed
policy. The stages of the Bytewax flow (validation, bars, features, run totals) run behind
:class:`operators.stage.StageLogic`, the adapter the flow uses; the others are driven through
their own methods, as the decision engine and the learners drive them.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import random
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors.decode import tick_rows_from_ticks
from connectors.replay import ReplaySource
from learning.judge import ShadowJudge
from learning.triggers import Check, TriggerConfig, TriggerSchedule
from models.labels import LabelConfig
from models.registry import ModelRegistry
from operators.bars import BarBuilder, ShardBars, ShardBarStep
from operators.clocks import PartitionClocks
from operators.features import FeatureEngine, ShardFeatures
from operators.portfolio import EventKind, ExecConfig, Portfolio
from operators.sizing import Sizer, SizingConfig
from operators.stage import StageLogic
from operators.summary import EventTime, PnlPoint, RunTotals
from operators.supervisor import Supervisor, SupervisorConfig
from operators.trade_join import TradeJoiner, TradeJoins
from operators.validate import TickValidator, Validated
from operators.versions import ActiveModels
from operators.weights import DynamicWeights
from rl.state import SubAccount
from schemas.bars import Bar
from schemas.decisions import BarDecision, Progress, SupervisorMode
from schemas.features import FeatureVector
from schemas.learning import ScoredBar, ShadowPrediction
from schemas.registry import ModelStage
from schemas.signals import Action, Consensus, Signal, Vote
from schemas.ticks import Aggressor, SymbolTicks, Tick, TickOrigin, TickRows
from schemas.timeutil import from_ms, parse_iso, to_ms
from schemas.trades import TradeClosed, TradeOpened
from tests.operators.test_portfolio import FixedPolicy

BLOCKS = 12  # replayed blocks of the sample (64 KiB each: ~1,200 quotes, ~15 minutes)
MODELS = ("xgboost", "lightgbm", "nhits", "patchtst")
WEIGHTS = {"xgboost": 0.25, "lightgbm": 0.25, "nhits": 0.3, "patchtst": 0.2}  # the audit's
TTL_MS = 20 * 60_000


# --- comparable values --------------------------------------------------------------------


def plain(x: Any) -> Any:
    """``x`` as nested lists/tuples of scalars, for equality (NaN equals NaN, arrays by value)."""
    if isinstance(x, float):
        return "nan" if math.isnan(x) else x
    if isinstance(x, np.ndarray):
        return ("array", str(x.dtype), plain(x.tolist()))
    if isinstance(x, np.generic):
        return plain(x.item())
    if isinstance(x, str | int | bool | Enum | datetime) or x is None:
        return x
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x).__name__, *[plain(getattr(x, f.name)) for f in dataclasses.fields(x)])
    if isinstance(x, Mapping):
        return ("map", sorted(((repr(k), plain(v)) for k, v in x.items()), key=lambda kv: kv[0]))
    if isinstance(x, list | tuple | deque):
        return [plain(v) for v in x]
    if hasattr(x, "__dict__"):
        return (type(x).__name__, plain(vars(x)))
    if hasattr(x, "__slots__"):
        return (type(x).__name__, [plain(getattr(x, s, None)) for s in x.__slots__])
    return x


# --- the data: the bundled sample replayed, and what each stage makes of it ----------------


@dataclass
class Data:
    rows: list[TickRows]
    validated: list[Validated]
    steps: list[tuple[str, ShardBarStep, list[FeatureVector]]]  # (shard key, bars, vectors)
    symbol: str  # the sample's first symbol
    symbol_ticks: list[SymbolTicks]  # its pieces, as one symbol's stage sees them
    bars: list[Bar]  # its bars
    vectors: list[FeatureVector]  # every vector, in the order the steps made them
    trade_events: list[TradeOpened | TradeClosed]  # a whole portfolio run over the steps
    registry_dir: Callable[[], Path]


@pytest.fixture(scope="module")
def data(sample_ticks: Path, tmp_path_factory: pytest.TempPathFactory) -> Data:
    src = ReplaySource([sample_ticks], block_bytes=1 << 16)
    part = src.build_part("snapshots", src.list_parts()[0], None)
    rows: list[TickRows] = []
    while len(rows) < BLOCKS:
        rows += [r for r in part.next_batch() if len(r)]
    rows = rows[:BLOCKS]
    validator = TickValidator(max_backwards_ms=1000)
    validated = [validator.validate(r) for r in rows]
    bars: dict[str, ShardBars] = {}
    feats: dict[str, ShardFeatures] = {}
    steps = []
    for v in validated:
        for key, piece in v.pieces():
            for bs in bars.setdefault(key, ShardBars(60)).push(piece):
                for fs in feats.setdefault(key, ShardFeatures(60, 16)).push(bs):
                    steps.append((key, bs, fs.vectors))
    symbol = sorted(validated[0].batches)[0]
    symbol_ticks = [SymbolTicks(v.tag, v.batches[symbol]) for v in validated if symbol in v.batches]
    builder = BarBuilder(symbol, 60)
    sym_bars = [b for t in symbol_ticks for s in builder.push(t) for b in s.bars]
    vectors = [vec for _, _, vs in steps for vec in vs]
    d = Data(
        rows,
        validated,
        steps,
        symbol,
        symbol_ticks,
        sym_bars,
        vectors,
        [],
        lambda: tmp_path_factory.mktemp("registry"),
    )
    broker = Broker(ExecConfig(equity=10_000.0, max_holding_ms=20 * 60_000))
    for step in steps:
        broker.push(step)
    d.trade_events = [e.event for e in broker.events] + [e.event for e in broker.finish()]
    assert len(sym_bars) > 100 and sum(v.warm for v in vectors) > 100
    assert sum(isinstance(e, TradeClosed) for e in d.trade_events) >= 4
    return d


# --- a rule instead of the models, a fixed policy instead of PPO --------------------------


def action_of(v: FeatureVector) -> Action:
    r = v.values.get("ret_5", math.nan)
    if not v.warm or not math.isfinite(r) or abs(r) < 5e-5:
        return Action.HOLD
    return Action.BUY if r > 0 else Action.SELL


def signal_of(v: FeatureVector) -> Signal:
    action = action_of(v)
    votes = tuple(
        Vote(m, "v0001", action if k != 3 else Action.HOLD, 0.5 + 0.1 * k)
        for k, m in enumerate(MODELS)
    )
    return Signal(
        v.symbol,
        v.ts,
        v.bar_start,
        action,
        0.8,
        Consensus.STRONG,
        0.75 if action is Action.BUY else 0.0,
        0.75 if action is Action.SELL else 0.0,
        v.values.get("vol_daily", math.nan),
        False,
        v.warm,
        v.feature_set,
        votes,
        tuple(WEIGHTS.values()),
    )


SIZER = Sizer(SizingConfig(training=False), FixedPolicy(1_000.0, 0.02, 0.01))


class Broker:
    """The decision engine's loop over a :class:`Portfolio` (tests/operators/test_portfolio.py's
    driver), fed the shard steps: each symbol's ticks and bars, then every event up to the
    step's clock. Its snapshot is the portfolio's."""

    def __init__(self, cfg: ExecConfig, portfolio: Portfolio | None = None) -> None:
        self.cfg = cfg
        self.portfolio = portfolio or Portfolio(cfg)
        self.events: list = []

    def push(self, item: tuple[str, ShardBarStep, list[FeatureVector]]) -> list:
        _, bs, vectors = item
        for sym, ticks, offset, a, b in bs.symbols:
            bars = [
                (ci - offset, clock, to_ms(bar.end), vec)
                for ci, clock, bar, vec in zip(
                    bs.close_index[a:b], bs.clocks[a:b], bs.bars[a:b], vectors[a:b], strict=True
                )
            ]
            self.portfolio.add(sym, ticks, bars)
        t = bs.ticks
        return self._run(t.clock_at(len(t) - 1) if len(t) else math.inf)

    def _run(self, horizon: float) -> list:
        pf, out = self.portfolio, []
        while (ev := pf.pop(horizon)) is not None:
            if ev.kind is EventKind.DECIDE:
                bar = pf.bar(ev)
                vec = bar.payload
                d = BarDecision(ev.symbol, bar.bar_end_ms, bar.clock, signal_of(vec), vec, None)
                pf.apply(ev, bar, d)
            elif ev.kind is EventKind.FILL:
                closes, req = pf.begin_fill(ev)
                out += closes
                if req is not None:
                    out += pf.complete_fill(req, SIZER.size(req.symbol, req.bar_end_ms, req.state))
            else:
                out += pf.exit(ev)
            pf.done(ev)
        pf.trim()
        self.events += out
        return out

    def finish(self) -> list:
        return self._run(math.inf) + self.portfolio.finish()

    def snapshot(self) -> dict[str, Any]:
        return self.portfolio.snapshot()


# --- the cases -------------------------------------------------------------------------------


def _push(stage: Any, item: Any) -> list:
    return list(stage.push(item))


def _finish(stage: Any) -> list:
    return list(stage.finish())


@dataclass(frozen=True)
class Case:
    """One stage: how to make it, its input, how to drive it, how to restore it."""

    id: str
    create: Callable[[Data], Any]
    items: Callable[[Data], list]
    restore: Callable[[Any, Data], Any] | None
    push: Callable[[Any, Any], list] = _push
    finish: Callable[[Any], list] | None = _finish
    cut: float = 0.5  # the share of the input pushed before the snapshot
    view: Callable[[list], Any] = plain  # outputs, comparable
    same_end_state: bool = True  # the restored stage's last snapshot equals the uninterrupted's


def logic_case(
    id: str,
    create: Callable[[Data], Callable[[Any], Any]],
    restore: Callable[[Data], Callable[[Any], Any]],
    items: Callable[[Data], list],
    **kw: Any,
) -> Case:
    """A flow stage behind :class:`StageLogic` (its ``create`` gets the first item)."""
    return Case(
        id,
        lambda d: StageLogic(create(d), restore(d), None),
        items,
        lambda state, d: StageLogic(create(d), restore(d), state),
        push=lambda lg, x: list(lg.on_item(x)[0]),
        finish=lambda lg: list(lg.on_eof()[0]),
        **kw,
    )


def jump_blocks(_: Data) -> list[TickRows]:
    """A time jump at the end of a block is held until the next rows confirm it (the
    validator's ``held`` rows are in its snapshot)."""

    def block(*times: str) -> TickRows:
        rows = tick_rows_from_ticks(
            [Tick(parse_iso(t), "X", TickOrigin.TRADE, 10.0, size=1.0) for t in times]
        )
        rows.partition = "p"
        return rows

    return [
        block("2014-05-02T20:59:58Z", "2014-05-02T20:59:59Z", "2014-05-04T21:00:00Z"),
        block("2014-05-04T21:00:01Z"),
        block("2014-05-04T21:00:02Z", "2014-05-04T21:00:03Z"),
        block("2014-05-04T21:00:04Z", "2014-06-20T00:00:00Z"),
        block("2014-05-04T21:00:05Z", "2014-05-04T21:00:06Z", "2014-05-04T21:00:07Z"),
    ]


SHARED = ("T:S029", "T:S057", "T:S171")  # symbols of one shard key (tests/operators/test_shards)


def shared_shard_pieces(_: Data) -> list:
    """Random trades and quotes of three symbols that share a shard, with late ticks
    (tests/operators/test_shards.py's input): a piece carries several symbols' open bars."""
    rng = random.Random(5)
    ms, ticks = 1_700_000_000_000, []
    for _ in range(600):
        ms += rng.choice((0, 10, 900, 4_000, 25_000, 61_000))
        sym = rng.choice(SHARED)
        t = ms - 400 if rng.random() < 0.08 else ms
        px = 100.0 + rng.random()
        if rng.random() < 0.5:
            side = rng.choice(tuple(Aggressor))
            ticks.append(Tick(from_ms(t), sym, TickOrigin.TRADE, px, size=1.5, side=side))
        else:
            ticks.append(Tick(from_ms(t), sym, TickOrigin.QUOTE, px, bid=px - 0.01, ask=px + 0.01))
    v = TickValidator(max_backwards_ms=1_000)
    blocks = [v.validate(tick_rows_from_ticks(ticks[a : a + 50])) for a in range(0, 600, 50)]
    return [p for b in blocks for _, p in b.pieces()]


def shared_shard_steps(d: Data) -> list:
    bars = ShardBars(60)
    return [s for p in shared_shard_pieces(d) for s in bars.push(p)] + bars.finish()


def clock_items(d: Data) -> list:
    """The engine's clock messages: each block's pieces arrive before its progress message,
    and a second partition goes idle midway (``arrived`` and ``expected`` hold entries)."""
    out: list = []
    for k, v in enumerate(d.validated):
        for _, piece in v.pieces():
            out.append(("arrived", piece.tag, len(piece.symbols)))
        t = v.tag
        out.append(("progress", Progress(t.partition, t.seq, t.parts, t.clock_ms, t.final, t.idle)))
        out.append(("progress", Progress("other", k, 0, t.clock_ms - 1, False, k == 5)))
    return out


def push_clock(c: PartitionClocks, item: tuple) -> list:
    if item[0] == "arrived":
        c.arrived(item[1], item[2])
    else:
        c.progress(item[1])
    return [c.horizon()]


def push_weights(w: DynamicWeights, item: tuple[str, bool]) -> list:
    w.observe(*item)
    return [w.current()]


def weight_items(d: Data) -> list:
    """Each model scored right when its rule's call matched the next bar's move."""
    vs = [v for v in d.vectors if v.symbol == d.symbol and v.warm]
    return [
        (m, (a.values["ret_5"] > 0) == (b.values["ret_1"] > 0) if k % 3 else k % 2 == 0)
        for k, (a, b) in enumerate(pairwise(vs))
        for m in MODELS[: 1 + k % 4]
    ]


def restore_weights(state: Any, _: Data) -> DynamicWeights:
    w = DynamicWeights(WEIGHTS, window=8, min_trades=3)
    w.restore(state)
    return w


def push_supervised(s: Supervisor, v: FeatureVector) -> list:
    return [s.decide(v.symbol, to_ms(v.ts), signal_of(v), v)]


SUPERVISOR = SupervisorConfig(
    mode=SupervisorMode.ENFORCED, threshold=0.6, min_samples=5, window=12, scope="global"
)


def trade_items(d: Data) -> list:
    """The portfolio's trade events as the learning flow reads them, with at-least-once
    duplicates and some closes before their opens."""
    ev = list(d.trade_events)
    out: list = []
    for k, e in enumerate(ev):
        out.append(e)
        if k % 3 == 0:
            out.append(e)  # a redelivery
    for k in range(0, len(out) - 1, 5):  # a close overtaking its open
        if isinstance(out[k], TradeOpened) and isinstance(out[k + 1], TradeClosed):
            out[k], out[k + 1] = out[k + 1], out[k]
    return out


def no_lookup(_: str) -> TradeOpened | None:
    return None


def one_trade_items(d: Data) -> list:
    """One trade's join state: its close first (looked up, waits), its open, a duplicate."""
    o = next(e for e in d.trade_events if isinstance(e, TradeOpened))
    c = next(e for e in d.trade_events if isinstance(e, TradeClosed) and e.trade_id == o.trade_id)
    now = to_ms(c.exit_ts)
    return [(c, now), (o, now + 1), (c, now + 2), (o, now + TTL_MS + 5)]


def push_joiner(j: TradeJoiner, item: tuple) -> list:
    return j.push(*item)


def totals_items(d: Data) -> list:
    out: list = []
    closed = [e for e in d.trade_events if isinstance(e, TradeClosed)]
    for k, v in enumerate(d.validated):
        out.append(v.summary_counts())
        out.append(EventTime(v.tag.clock_ms))
        out += [
            PnlPoint(to_ms(c.exit_ts), c.trade_id, c.net_pnl)
            for c in closed[k * len(closed) // BLOCKS : (k + 1) * len(closed) // BLOCKS]
        ]
    return out


def restore_totals(state: tuple, _: Data) -> RunTotals:
    totals, closes, event_ms = state  # as operators.summary.run_summary restores it
    return RunTotals(0.0, 10_000.0, Counter(totals), list(closes), event_ms)


def summary_view(out: list) -> Any:
    return plain([dataclasses.replace(s, elapsed_s=0.0) for s in out])


def scored_bars(d: Data) -> list:
    return [
        ScoredBar(
            v.symbol,
            to_ms(v.ts),
            v,
            signal_of(v),
            tuple(
                ShadowPrediction(m, "v0002", v.symbol, v.ts, a, 0.6, False)
                for m, a in (("xgboost", Action.BUY), ("nhits", action_of(v)))
            ),
        )
        for v in d.vectors
    ]


def new_judge(_: Data) -> ShadowJudge:
    judge = ShadowJudge(LabelConfig(horizon=5))
    judge.watch(("xgboost", "v0002"))
    judge.watch(("nhits", "v0002"))
    return judge


def push_judge(j: ShadowJudge, bar: ScoredBar) -> list:
    j.push(bar)
    return [j.call_hit_rate(0), {k: len(r) for k, r in j.rows.items()}]


TRIGGERS = TriggerConfig(retrain_hours=1.0, drift_hours=0.5, perf_hours=0.25)


def push_schedule(s: TriggerSchedule, ms: int) -> list:
    due = s.due(ms)
    if Check.TIME in due or Check.DRIFT in due:
        s.record_cycle(ms)  # a cycle started
    return [due]


def push_account(a: SubAccount, item: tuple[float, float]) -> list:
    a.close_trade(*item)
    s = a.state(vol_daily=0.004, confidence=0.8, direction=Action.BUY, exposure=0.1)
    return [s.to_array().tolist()]


def account_items(d: Data) -> list:
    """Closed trades' (net PnL, notional): the portfolio's, then one per bar's move."""
    real = [(e.net_pnl, 1_000.0) for e in d.trade_events if isinstance(e, TradeClosed)]
    moves = [(1_000.0 * v.values["ret_1"], 1_000.0) for v in d.vectors if v.warm]
    return real + moves


def new_registry(d: Data) -> ModelRegistry:
    """Two models, each with a production version and two candidates (tiny artifacts)."""
    reg = ModelRegistry(d.registry_dir())

    def tiny(directory: Path) -> list[Path]:
        (directory / "model.bin").write_bytes(b"weights")
        return [directory / "model.bin"]

    for model in ("xgboost", "lightgbm"):
        reg.publish(model, tiny, stage=ModelStage.PRODUCTION, feature_set="fs")
        for _ in range(2):
            reg.publish(model, tiny, stage=ModelStage.SHADOW, feature_set="fs")
    return reg


def version_items(_: Data) -> list:
    """The in-process learner's changes; the first half writes nothing to the registry (so a
    resume on a registry in the same state continues from the snapshot)."""
    return [
        ("add_shadow", "xgboost", "v0002"),
        ("poll",),
        ("add_shadow", "lightgbm", "v0002"),
        ("add_shadow", "xgboost", "v0003"),
        ("promote", "xgboost", "v0002"),
        ("add_shadow", "lightgbm", "v0003"),
        ("retire", "lightgbm", "v0002"),
        ("park", "xgboost", "v0003"),
        ("poll",),
    ]


def push_version(m: ActiveModels, op: tuple) -> list:
    if op[0] == "poll":
        m.poll()
    else:
        getattr(m, op[0])(*op[1:])
    return [(dict(m.production), list(m.shadows))]


CASES = [
    logic_case(
        "validate",
        lambda d: lambda _: TickValidator(max_backwards_ms=1000),
        lambda d: lambda s: TickValidator(max_backwards_ms=1000).restored(s),
        lambda d: d.rows,
    ),
    logic_case(
        "validate-held-time-jump",
        lambda d: lambda _: TickValidator(),
        lambda d: lambda s: TickValidator().restored(s),
        jump_blocks,
        cut=0.2,
    ),
    logic_case(
        "bar-builder",
        lambda d: lambda _: BarBuilder(d.symbol, 60),
        lambda d: BarBuilder.restore,
        lambda d: d.symbol_ticks,
    ),
    logic_case(
        "shard-bars",
        lambda d: lambda _: ShardBars(60),
        lambda d: ShardBars.restore,
        lambda d: [p for v in d.validated for _, p in v.pieces()],
    ),
    logic_case(
        "shard-bars-shared-shard",
        lambda d: lambda _: ShardBars(60),
        lambda d: ShardBars.restore,
        shared_shard_pieces,
    ),
    Case(
        "feature-engine",
        lambda d: FeatureEngine(d.symbol, 60, seq_window=16),
        lambda d: d.bars,
        lambda s, d: FeatureEngine.restore(s),
        push=lambda e, bar: [e.update(bar)],
        finish=None,
    ),
    logic_case(
        "shard-features",
        lambda d: lambda _: ShardFeatures(60, 16),
        lambda d: ShardFeatures.restore,
        lambda d: [bs for _, bs, _ in d.steps],
        cut=0.3,
    ),
    logic_case(
        "shard-features-shared-shard",
        lambda d: lambda _: ShardFeatures(60, 8),
        lambda d: ShardFeatures.restore,
        shared_shard_steps,
    ),
    Case(
        "supervisor",
        lambda d: Supervisor(SUPERVISOR),
        lambda d: [v for v in d.vectors if action_of(v) is not Action.HOLD],
        lambda s, d: Supervisor.restore(SUPERVISOR, s),
        push=push_supervised,
        finish=None,
    ),
    Case(
        "dynamic-weights",
        lambda d: DynamicWeights(WEIGHTS, window=8, min_trades=3),
        weight_items,
        restore_weights,
        push=push_weights,
        finish=None,
    ),
    Case(
        "partition-clocks",
        lambda d: PartitionClocks([d.validated[0].partition, "other"]),
        clock_items,
        lambda s, d: PartitionClocks(state=s),
        push=push_clock,
        finish=None,
        cut=0.4,
    ),
    Case(
        "portfolio",
        lambda d: Broker(ExecConfig(equity=10_000.0, max_holding_ms=20 * 60_000)),
        lambda d: d.steps,
        lambda s, d: Broker(
            ExecConfig(equity=10_000.0, max_holding_ms=20 * 60_000),
            Portfolio.restore(ExecConfig(equity=10_000.0, max_holding_ms=20 * 60_000), s),
        ),
        cut=0.4,
        view=lambda out: plain([e.event for e in out]),
    ),
    Case(
        "trade-joins",
        lambda d: TradeJoins(TTL_MS, no_lookup),
        trade_items,
        lambda s, d: TradeJoins(TTL_MS, no_lookup, s),
    ),
    Case(
        "trade-joiner",
        lambda d: TradeJoiner(one_trade_items(d)[0][0].trade_id, TTL_MS, no_lookup),
        one_trade_items,
        lambda s, d: TradeJoiner.restore(TTL_MS, no_lookup, s),
        push=push_joiner,
        cut=0.25,
    ),
    logic_case(
        "run-totals",
        lambda d: lambda _: RunTotals(0.0, 10_000.0),
        lambda d: lambda s: restore_totals(s, d),
        totals_items,
        view=summary_view,
    ),
    Case(
        "active-models",
        lambda d: ActiveModels(new_registry(d), owned=True, names=("xgboost", "lightgbm")),
        version_items,
        lambda s, d: ActiveModels(
            new_registry(d), owned=True, names=("xgboost", "lightgbm"), state=s
        ),
        push=push_version,
        finish=None,
        cut=0.4,
    ),
    Case(
        "shadow-judge",
        new_judge,
        scored_bars,
        lambda s, d: ShadowJudge(LabelConfig(horizon=5), s),
        push=push_judge,
        finish=None,
    ),
    Case(
        "trigger-schedule",
        lambda d: TriggerSchedule(TRIGGERS),
        lambda d: [to_ms(b.end) for b in d.bars],
        lambda s, d: TriggerSchedule.restore(TRIGGERS, s),
        push=push_schedule,
        finish=None,
    ),
    Case(
        "rl-sub-account",
        lambda d: SubAccount(10_000.0, window=5),
        account_items,
        lambda s, d: SubAccount.restore(s),
        push=push_account,
        finish=None,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_snapshot_does_not_change_with_later_pushes(case: Case, data: Data) -> None:
    items = case.items(data)
    cut = max(1, int(len(items) * case.cut))
    assert 0 < cut < len(items), "the case needs input on both sides of the snapshot"

    stage = case.create(data)
    for item in items[:cut]:
        case.push(stage, item)
    snap = stage.snapshot()
    frozen = pickle.dumps(snap)
    rest = [out for item in items[cut:] for out in case.push(stage, item)]
    if case.finish is not None:
        rest += case.finish(stage)
    assert pickle.dumps(snap) == frozen, f"{case.id}: processing changed a snapshot taken before"

    if case.restore is None:
        return
    resumed = case.restore(pickle.loads(frozen), data)
    again = [out for item in items[cut:] for out in case.push(resumed, item)]
    if case.finish is not None:
        again += case.finish(resumed)
    assert case.view(again) == case.view(rest)
    if case.same_end_state:
        assert plain(resumed.snapshot()) == plain(stage.snapshot())

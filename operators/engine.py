"""The decision engine: every bar decided, every order filled, every trade learned from, in one
event-time order.

Upstream, per shard of symbols and in parallel, the flow builds bars and features and scores
every model version's votes (:func:`operators.ensemble.score_votes`); a shard's piece reaches
the engine as one item, taken symbol by symbol. Everything that couples
symbols or feeds back from outcomes to decisions happens here, on one key, in the order of
:mod:`operators.portfolio` (clock, symbol, tick, kind), once every input partition's clock has
passed an event (:mod:`operators.clocks`):

- **decide** a bar: the votes of the versions the engine holds as production
  (:mod:`operators.versions`, :class:`~operators.ensemble.VoteBook`), the audit's rules
  (:func:`~operators.ensemble.signal_of`, with dynamic weights when enabled), the bias window
  (:mod:`operators.supervisor`, global or per symbol), shadow challengers' votes;
- **fill** an order: the portfolio builds the RL state, the PPO policy sizes it
  (:mod:`operators.sizing`), the position opens;
- **exit**: a stop, target or holding limit closes a position;
- **learn**, inline, from each closed trade (both halves are here, so the join is exact):
  the PPO learner (:mod:`operators.policy_learner`) and the continuous learner (:mod:`learning.clm`)
  see trades and bars in this same order, and their changes (a new policy version, a promoted
  model) apply from the next event.

So the same input and settings give the same signals, verdicts, trades, policy updates and
model promotions with 1 or 2 workers, whatever the block sizes or timing (training in a
background process, ``QT_CLM_BLOCKING=false``, is the documented exception: its result
arrives when it arrives).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from models.base import MODEL_NAMES
from operators.bars import ShardBarStep
from operators.clocks import PartitionClocks
from operators.ensemble import EnsembleConfig, ScoredStep, VoteBook, shadow_votes, signal_of
from operators.policy_learner import LearnerConfig, PolicyLearner, transition_of
from operators.portfolio import EventKind, ExecConfig, ExecEvent, Portfolio
from operators.sizing import PolicySource, Sizer, SizingConfig
from operators.stage import stage_builder
from operators.summary import Counts, PnlPoint, learning_counts
from operators.supervisor import Supervisor, SupervisorConfig
from operators.versions import ActiveModels
from operators.weights import DynamicWeights
from rl.reward import RewardWeights, trade_reward
from schemas.decisions import BarDecision, Progress, Verdict
from schemas.learning import (
    ClmCycle,
    DriftCheck,
    RLUpdate,
    ScoredBar,
    ShadowPrediction,
    TradeOutcome,
)
from schemas.signals import Signal, Vote
from schemas.tables import (
    ROWS_WRITTEN,
    SHADOW_PREDICTIONS,
    TableRows,
    event_rows,
    learning_rows,
    signal_rows,
    trade_outcome,
    trade_rows,
    verdict_rows,
)
from schemas.timeutil import to_ms
from schemas.trades import JoinedTrade, JoinSource, LearningEvent, TradeClosed
from settings import DEFAULTS, Settings, SupervisorScope

log = logging.getLogger(__name__)
_MODEL_VERSION = attrgetter("model", "version")
# A manual stage change (python -m cli.registry) is looked for before a bar at most this often
# (wall time): a person's change is seen within it, a replay pays one stat per interval.
POLL_EVERY_S = 0.05
# The engine's one key: every decision in one order on one worker (and, in a cluster, the
# worker whose process owns the embedded store: dataflows.graphs routes rows to it).
ENGINE_KEY = "engine"


class BarLearner(Protocol):
    """What the engine needs of a learner that watches bars and trades (the CLM)."""

    def on_bar(self, bar: ScoredBar) -> list[ClmCycle | DriftCheck]: ...
    def on_trade(self, joined: JoinedTrade) -> list[ClmCycle]: ...
    def finish(self) -> list[ClmCycle]: ...
    def snapshot(self) -> Any: ...
    def take_archived(self) -> int: ...  # bars' features it took for the store since asked


@dataclass(frozen=True)
class EngineConfig:
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    execution: ExecConfig = field(default_factory=ExecConfig)
    sizing: SizingConfig = field(default_factory=SizingConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    max_queue: int = DEFAULTS.max_decision_queue

    @classmethod
    def from_settings(cls, s: Settings) -> EngineConfig:
        return cls(
            EnsembleConfig.from_settings(s),
            SupervisorConfig.from_settings(s),
            ExecConfig.from_settings(s),
            SizingConfig.from_settings(s),
            LearnerConfig.from_settings(s),
            s.max_decision_queue,
        )

    @property
    def reward(self) -> RewardWeights:
        return self.learner.weights


@dataclass
class EngineDeps:
    """The engine's outside world. ``learning``: the learners run here (embedded mode), so
    each closed trade is joined with its entry state and recorded as a ``trade_outcomes``
    row; ``rl`` / ``clm`` build the inline learners (None: no such learner here) from their
    recovery state (None when starting fresh). ``publish``: the learners run in another
    process, so every decided bar and trade event is handed out, numbered in this order
    (``EngineOutput.published``)."""

    registry: Any
    partitions: Sequence[str] = ()
    learning: bool = False
    publish: bool = False
    rl: Callable[[PolicySource, Any], PolicyLearner] | None = None
    clm: Callable[[ActiveModels, Any], BarLearner] | None = None
    dynamic_weights: bool = False


@dataclass
class EngineOutput:
    """What one engine activation produced."""

    signals: list[Signal] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    shadow: list[ShadowPrediction] = field(default_factory=list)
    trades: list[ExecEvent] = field(default_factory=list)
    outcomes: list[TradeOutcome] = field(default_factory=list)
    updates: list[RLUpdate] = field(default_factory=list)
    cycles: list[ClmCycle] = field(default_factory=list)
    drift: list[DriftCheck] = field(default_factory=list)
    published: list[tuple[int, LearningEvent]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def __bool__(self) -> bool:
        return bool(
            self.signals
            or self.trades
            or self.updates
            or self.cycles
            or self.counts
            or self.shadow
            or self.drift
        )

    def learned(self, records: list[ClmCycle | DriftCheck]) -> None:
        """File the continuous learner's records."""
        for r in records:
            if isinstance(r, DriftCheck):
                self.drift.append(r)
            else:
                self.cycles.append(r)

    def table_rows(self) -> list[TableRows]:
        """Table blocks of everything decided and learned."""
        blocks = []
        if self.signals:
            blocks.append(signal_rows(self.signals))
        if self.verdicts:
            blocks.append(verdict_rows(self.verdicts))
        if self.shadow:
            blocks.append(event_rows(SHADOW_PREDICTIONS, self.shadow))
        if self.trades:
            blocks.append(trade_rows([e.record for e in self.trades]))
        return blocks + learning_rows(self.outcomes, self.updates, self.cycles, self.drift)

    def summary_counts(self) -> list[Counts | PnlPoint]:
        """The run summary's counters of this output, and the closed trades' PnL."""
        c: Counts = dict(self.counts)

        def bump(key: str, n: int = 1) -> None:
            c[key] = c.get(key, 0) + n

        for signal in self.signals:
            bump("signals")
            bump(f"signals.{signal.action.value.lower()}")
            for v in signal.votes:
                if v.failed:
                    bump(f"model_failures.{v.model}")
        bump("signals.blocked", sum(not v.allowed for v in self.verdicts))
        pnl: list[Counts | PnlPoint] = []
        for e in self.trades:
            ev = e.event
            if isinstance(ev, TradeClosed):
                pnl.append(PnlPoint(to_ms(ev.exit_ts), ev.trade_id, ev.net_pnl))
            else:
                bump("trades.opened")
        for outcome in self.outcomes:
            bump(f"trades.joined.{outcome.joined_from}")
        for key, n in learning_counts(self.updates, self.drift, self.cycles).items():
            bump(key, n)
        return [{k: v for k, v in c.items() if v}, *pnl]


class DecisionEngine:
    """The engine's state and event loop (plain Python; see the module docstring)."""

    def __init__(
        self, cfg: EngineConfig, deps: EngineDeps, state: dict[str, Any] | None = None
    ) -> None:
        self.cfg = cfg
        self.deps = deps
        state = state or {}
        registry = deps.registry
        self.clocks = PartitionClocks(deps.partitions, state.get("clocks"))
        self.portfolio = (
            Portfolio.restore(cfg.execution, state["portfolio"])
            if "portfolio" in state
            else Portfolio(cfg.execution)
        )
        self.models = ActiveModels(registry, owned=deps.clm is not None, state=state.get("models"))
        self.votes = VoteBook(registry)
        self.policy = PolicySource(registry, state.get("pinned"))
        self._polled_at = -math.inf  # wall clock of the last look for manual stage changes
        self.sizer = Sizer(cfg.sizing, self.policy)
        self.weights = (
            DynamicWeights(cfg.ensemble.weights, pair_limit=cfg.ensemble.vote_threshold)
            if deps.dynamic_weights
            else None
        )
        if self.weights is not None and "weights" in state:
            self.weights.restore(state["weights"])
        scope = cfg.supervisor.scope
        self.supervisors: dict[str, Supervisor] = {
            k: Supervisor.restore(cfg.supervisor, v)
            for k, v in state.get("supervisors", {}).items()
        }
        self._global = scope == SupervisorScope.GLOBAL
        self.rl = None if deps.rl is None else deps.rl(self.policy, state.get("rl"))
        if self.rl is not None and self.policy.pinned is None:
            version = self.policy.version  # the learner acts on what it started with
            if version is not None:
                self.policy.pin(version)
        self.clm = None if deps.clm is None else deps.clm(self.models, state.get("clm"))
        self._stamp: tuple[str, ...] | None = None  # the versions _expected was made of
        self._expected: list[tuple[str, str]] = []  # production (model, version)s
        self.max_waiting: int = state.get("max_waiting", 0)
        self.seq: int = state.get("seq", 0)  # of the published learning events

    # --- input ---------------------------------------------------------------------------------
    def push(self, item: ScoredStep | Progress) -> list[EngineOutput]:
        if isinstance(item, Progress):
            self.clocks.progress(item)
        else:
            self._add(item)
        out = self._run(self.clocks.horizon())
        self.max_waiting = max(self.max_waiting, self.portfolio.waiting)
        if self.portfolio.waiting > self.cfg.max_queue:
            slow = self.clocks.force_idle()
            if slow is not None:
                log.warning(
                    "decision engine: %d bars wait for input partition %s; treating it "
                    "as idle (QT_MAX_DECISION_QUEUE=%d)",
                    self.portfolio.waiting,
                    slow,
                    self.cfg.max_queue,
                )
                out += self._run(self.clocks.horizon())
                if out:
                    out[-1].counts["engine.partitions_forced_idle"] += 1
        return out

    def _add(self, step: ScoredStep) -> None:
        fs = step.features
        bs = fs.bar_step
        if bs is None:
            raise ValueError(f"engine: the feature step of {step.symbol} carries no bar step")
        if not isinstance(bs, ShardBarStep):  # one symbol's step
            bars = [
                (ci, clock, to_ms(bar.end), (vector, votes))
                for ci, clock, bar, vector, votes in zip(
                    bs.close_index, bs.clocks, bs.bars, fs.vectors, step.votes, strict=True
                )
            ]
            self.portfolio.add(step.symbol, bs.ticks, bars)
            self.clocks.arrived(fs.tag)
            return
        # several symbols' ticks and bars (operators.bars.ShardBarStep), symbol by symbol
        for sym, ticks, offset, a, b in bs.symbols:
            bars = [
                (ci - offset, clock, to_ms(bar.end), (vector, votes))
                for ci, clock, bar, vector, votes in zip(
                    bs.close_index[a:b],
                    bs.clocks[a:b],
                    bs.bars[a:b],
                    fs.vectors[a:b],
                    step.votes[a:b],
                    strict=True,
                )
            ]
            self.portfolio.add(sym, ticks, bars)
        self.clocks.arrived(fs.tag, len(bs.symbols))

    def finish(self) -> list[EngineOutput]:
        """End of input: everything left, then open positions closed and learners told."""
        out = self._run(math.inf)
        last = out[0] if out else EngineOutput()
        self._trades(self.portfolio.finish(), last)
        if self.rl is not None:
            last.updates += self.rl.finish()
        if self.clm is not None:
            last.cycles += self.clm.finish()
        last.counts.update(self._book_counts())
        last.counts["engine.decision_queue_max"] = self.max_waiting
        return [last]

    def stopped(self) -> list[EngineOutput]:
        """A requested stop: what arrived and can be decided is, nothing is closed; the
        archive is flushed and a partial PPO batch kept, as at the end of input."""
        out = self._run(self.clocks.horizon())
        last = out[0] if out else EngineOutput()
        if self.rl is not None:
            last.updates += self.rl.finish()
        if self.clm is not None:
            self.clm.runner.flush()  # type: ignore[attr-defined]
        last.counts.update(self._book_counts())
        last.counts["engine.decision_queue_max"] = self.max_waiting
        return [last]

    # --- the event loop ----------------------------------------------------------------------
    def _run(self, horizon: float) -> list[EngineOutput]:
        pf = self.portfolio
        if not pf.ready(horizon):
            # most items (a symbol's piece of a block) move no horizon: nothing to decide, so
            # no registry read and no trim (both were per item, the cost of many symbols)
            return []
        out = EngineOutput()
        self.models.refresh()
        while (ev := pf.pop(horizon)) is not None:
            if ev.kind is EventKind.DECIDE:
                # a stage change made by hand votes from the next bar: looked for before a bar
                # (one stat) when POLL_EVERY_S of wall time passed since the last look, so a
                # replay's run of hundreds of ready bars costs one stat, not hundreds
                now = time.monotonic()
                if now - self._polled_at >= POLL_EVERY_S:
                    self._polled_at = now
                    if self.models.poll():
                        self.policy.adopt()
                bar = pf.bar(ev)
                pf.apply(
                    ev, bar, self._decide(ev.symbol, ev.clock, bar.bar_end_ms, bar.payload, out)
                )
            elif ev.kind is EventKind.FILL:
                closes, request = pf.begin_fill(ev)
                self._trades(closes, out)
                if request is not None:
                    sized = self.sizer.size(request.symbol, request.bar_end_ms, request.state)
                    self._trades(pf.complete_fill(request, sized), out)
            else:
                self._trades(pf.exit(ev), out)
            pf.done(ev)
        pf.trim()
        if self.clm is not None and (archived := self.clm.take_archived()):
            out.counts[ROWS_WRITTEN] += archived  # the features table, written by the CLM
        return [out] if out else []

    def _decide(
        self, symbol: str, clock: int, bar_end_ms: int, payload: Any, out: EngineOutput
    ) -> BarDecision:
        vector, scored = payload
        votes = self._production_votes(vector, scored)
        weights = None if self.weights is None else self.weights.current()
        signal = signal_of(vector, votes, self.cfg.ensemble, weights)
        key = "global" if self._global else symbol
        supervisor = self.supervisors.get(key)
        if supervisor is None:
            supervisor = self.supervisors[key] = Supervisor(self.cfg.supervisor)
        decision = supervisor.decide(symbol, clock, signal, vector, bar_end_ms)
        out.signals.append(signal)
        if decision.verdict is not None:
            out.verdicts.append(decision.verdict)
        shadow = shadow_votes(self.votes, self.models.shadows, vector, scored)
        out.shadow += shadow
        if self.clm is not None or self.deps.publish:
            bar = ScoredBar(symbol, bar_end_ms, vector, signal, shadow)
            if self.clm is not None:
                out.learned(self.clm.on_bar(bar))
            if self.deps.publish:
                self._publish(bar, out)
        return decision

    def _production_votes(self, vector: Any, scored: Sequence[Vote]) -> list[Vote]:
        """The votes of the versions the engine holds as production, in MODEL_NAMES order.
        The scoring step puts the production votes it knew first, in that order: when they
        are the engine's versions (nearly always) they are taken as they are, the same votes
        :meth:`VoteBook.vote` would find; otherwise the book looks each one up (or scores it)."""
        prod = self.models.production
        stamp = tuple(prod.values())
        if stamp != self._stamp:  # production changed (a refresh, a poll, a promotion)
            self._stamp = stamp
            self._expected = [(m, prod[m]) for m in MODEL_NAMES]
        expected = self._expected
        head = list(scored[: len(expected)])
        if list(map(_MODEL_VERSION, head)) == expected:
            return head
        return [self.votes.vote(m, prod[m], vector, scored) for m in MODEL_NAMES]

    def _publish(self, event: LearningEvent, out: EngineOutput) -> None:
        out.published.append((self.seq, event))
        self.seq += 1

    def _trades(self, events: list[ExecEvent], out: EngineOutput) -> None:
        for e in events:
            out.trades.append(e)
            if self.deps.publish:
                self._publish(e.event, out)
            if not isinstance(e.event, TradeClosed) or not self.deps.learning:
                continue
            joined = JoinedTrade(e.record.opened, e.event, JoinSource.STREAM)
            out.outcomes.append(
                trade_outcome(joined, trade_reward(joined.opened, joined.closed, self.cfg.reward))
            )
            if transition_of(joined, self.cfg.reward) is not None:
                out.counts["rl.transitions"] += 1
            if self.weights is not None:
                self.weights.observe_trade(joined)
            if self.rl is not None:
                out.updates += self.rl.push(joined)
            if self.clm is not None:
                out.cycles += self.clm.on_trade(joined)

    def _book_counts(self) -> Counter:
        counts = Counter(
            {
                f"execution.{k}": v
                for k, v in self.portfolio.counts().items()
                if not k.startswith(("trades_", "exits.", "signals_blocked"))
            }
        )
        if self.votes.late:
            counts["ensemble.votes_scored_in_engine"] = self.votes.late
        return counts

    # --- recovery ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "clocks": self.clocks.snapshot(),
            "portfolio": self.portfolio.snapshot(),
            "models": self.models.snapshot(),
            "pinned": self.policy.pinned,
            "supervisors": {k: s.snapshot() for k, s in self.supervisors.items()},
            "weights": None if self.weights is None else self.weights.snapshot(),
            "rl": None if self.rl is None else self.rl.snapshot(),
            "clm": None if self.clm is None else self.clm.snapshot(),
            "max_waiting": self.max_waiting,
            "seq": self.seq,
        }


@operator
def decide_and_trade(
    step_id: str,
    scored: Stream[ScoredStep],
    progress: Stream[Progress],
    cfg: EngineConfig,
    deps: EngineDeps,
) -> Stream[EngineOutput]:
    """The decision engine on one key (see the module docstring)."""
    merged = op.merge("with_progress", scored, progress)
    keyed = op.key_on("one_engine", merged, lambda _: ENGINE_KEY)
    out = op.stateful(
        "engine",
        keyed,
        stage_builder(
            lambda _: DecisionEngine(cfg, deps), lambda state: DecisionEngine(cfg, deps, state)
        ),
    )
    return op.key_rm("unkey", out)

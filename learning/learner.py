"""The learning process of the two-process deployment: the live flow's learning events, learned
from in the live engine's order, exactly as its own engine would in embedded mode.

With Kafka (``QT_TRADE_EVENTS=kafka://.../trade-events``) the live flow's decision engine
publishes every decided bar (``bar.decided``: the vector, the production signal with its
votes) and every trade event, numbered by ``seq`` in its event order, all with one key (one
partition: one order). ``python -m bytewax.run dataflows.learning`` reads them and runs one
:class:`OrderedLearner`:

- events are taken in ``seq`` order; one seen before is a duplicate (the topic is
  at-least-once, a resumed live flow republishes its last epoch) and is dropped, counted;
- trade events are joined with their entry state (:class:`operators.trade_join.TradeJoins`:
  TTL, store fallback, dead letters), and each joined trade goes to the PPO learner and the
  continuous learner, with its ``trade_outcomes`` row;
- each bar goes to the continuous learner, with the challengers' votes on it computed here
  (:func:`operators.ensemble.shadow_votes`, the models this process holds in shadow): the
  judge sees the same votes from the same bar on as the embedded engine's would, whenever the
  live flow learns of a new challenger.

So, given the same live decisions, the same trades, drift checks, CLM cycles and PPO updates
come out as in embedded mode. What cannot be the same: the live flow learns of promotions
and policy updates through the registry, a little later than an embedded engine uses them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from operators.ensemble import VoteBook, shadow_votes
from operators.policy_learner import PolicyLearner, transition_of
from operators.sizing import PolicySource
from operators.stage import stage_builder
from operators.summary import Counts, learning_counts
from operators.trade_join import TradeJoins
from operators.versions import ActiveModels
from rl.reward import RewardWeights, trade_reward
from schemas.dead_letters import DeadLetters
from schemas.learning import ClmCycle, DriftCheck, RLUpdate, ScoredBar, TradeOutcome
from schemas.signals import Vote
from schemas.tables import TableRows, dead_letter_rows, learning_rows, trade_outcome
from schemas.trades import JoinedTrade, LearningEvent, TradeOpened, opened_from_row
from storage.store import Store

log = logging.getLogger(__name__)
# The learning flow's one key: the learners see events in one order on one worker.
LEARNER_KEY = "learner"


@dataclass(frozen=True, slots=True)
class Sequenced:
    """A learning event with its number in the live engine's order."""

    seq: int
    event: LearningEvent


@dataclass
class LearnedOutput:
    """What one activation of the learner produced."""

    outcomes: list[TradeOutcome] = field(default_factory=list)
    updates: list[RLUpdate] = field(default_factory=list)
    cycles: list[ClmCycle] = field(default_factory=list)
    drift: list[DriftCheck] = field(default_factory=list)
    dead: list[DeadLetters] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def __bool__(self) -> bool:
        return bool(
            self.outcomes or self.updates or self.cycles or self.drift or self.dead or self.counts
        )

    def learned(self, records: list[ClmCycle | DriftCheck]) -> None:
        for r in records:
            if isinstance(r, DriftCheck):
                self.drift.append(r)
            else:
                self.cycles.append(r)

    def table_rows(self) -> list[TableRows]:
        blocks = [dead_letter_rows(d) for d in self.dead]
        return blocks + learning_rows(self.outcomes, self.updates, self.cycles, self.drift)

    def summary_counts(self) -> Counts:
        c: Counts = dict(self.counts)
        for key, n in learning_counts(self.updates, self.drift, self.cycles).items():
            c[key] = c.get(key, 0) + n
        return {k: v for k, v in c.items() if v}


def stored_entries(store: Store) -> Callable[[str], TradeOpened | None]:
    """The join's fallback: a trade's entry as the store recorded it (a trade opened before
    this process started, or whose entry event was lost)."""

    def stored_entry(trade_id: str) -> TradeOpened | None:
        rows = store.query("queries/trade_by_id", trade_id=trade_id)
        return opened_from_row(rows[0]) if rows else None

    return stored_entry


@dataclass
class LearnerDeps:
    """The learner's outside world (as :class:`operators.engine.EngineDeps`)."""

    registry: Any
    ttl_ms: int
    lookup: Callable[[str], Any]
    weights: RewardWeights = field(default_factory=RewardWeights)
    rl: Callable[[PolicySource, Any], PolicyLearner] | None = None
    clm: Callable[[ActiveModels, Any], Any] | None = None


class OrderedLearner:
    """The learners over the ordered event stream (plain Python; module docstring)."""

    def __init__(self, deps: LearnerDeps, state: dict[str, Any] | None = None) -> None:
        self.deps = deps
        state = state or {}
        self.next_seq: int = state.get("next_seq", 0)
        self.joins = TradeJoins(deps.ttl_ms, deps.lookup, state.get("joins"))
        self.models = ActiveModels(
            deps.registry, owned=deps.clm is not None, state=state.get("models")
        )
        self.votes = VoteBook(deps.registry)
        self.policy = PolicySource(deps.registry, state.get("pinned"))
        self.rl = None if deps.rl is None else deps.rl(self.policy, state.get("rl"))
        if self.rl is not None and self.policy.pinned is None:
            version = self.policy.version  # the learner updates what it started with
            if version is not None:
                self.policy.pin(version)
        self.clm = None if deps.clm is None else deps.clm(self.models, state.get("clm"))

    def push(self, item: Sequenced | DeadLetters) -> list[LearnedOutput]:
        out = LearnedOutput()
        if isinstance(item, DeadLetters):  # an undecodable message: recorded, not learned
            out.dead.append(item)
            return [out]
        if item.seq < self.next_seq:
            out.counts["learning.duplicates"] += 1
            return [out]
        if item.seq > self.next_seq:
            log.warning(
                "learning events %d..%d are missing from the stream (started late, or "
                "the topic lost them)",
                self.next_seq,
                item.seq - 1,
            )
            out.counts["learning.missing"] += item.seq - self.next_seq
        self.next_seq = item.seq + 1
        event = item.event
        if isinstance(event, ScoredBar):
            if self.clm is not None:
                scored = [
                    Vote(s.model, s.version, s.action, s.confidence, s.failed) for s in event.shadow
                ]
                shadow = shadow_votes(self.votes, self.models.shadows, event.vector, scored)
                bar = ScoredBar(event.symbol, event.ts_ms, event.vector, event.signal, shadow)
                out.learned(self.clm.on_bar(bar))
        else:
            for j in self.joins.push(event):
                self._joined(j, out)
        return [out] if out else []

    def _joined(self, j: JoinedTrade | DeadLetters, out: LearnedOutput) -> None:
        if isinstance(j, DeadLetters):
            out.dead.append(j)
            out.counts["dead_letters.join"] += len(j)
            return
        out.outcomes.append(trade_outcome(j, trade_reward(j.opened, j.closed, self.deps.weights)))
        out.counts[f"trades.joined.{j.source.value}"] += 1
        if transition_of(j, self.deps.weights) is not None:
            out.counts["rl.transitions"] += 1
        if self.rl is not None:
            out.updates += self.rl.push(j)
        if self.clm is not None:
            out.cycles += [c for c in self.clm.on_trade(j) if isinstance(c, ClmCycle)]

    def finish(self) -> list[LearnedOutput]:
        out = LearnedOutput()
        for j in self.joins.finish():
            self._joined(j, out)
        if self.rl is not None:
            out.updates += self.rl.finish()
        if self.clm is not None:
            out.learned(self.clm.finish())
        return [out] if out else []

    def stopped(self) -> list[LearnedOutput]:
        """A requested stop: keep what is pending, save a partial PPO batch, flush."""
        out = LearnedOutput()
        if self.rl is not None:
            out.updates += self.rl.finish()
        if self.clm is not None:
            self.clm.runner.flush()
        return [out] if out else []

    def snapshot(self) -> dict[str, Any]:
        return {
            "next_seq": self.next_seq,
            "joins": self.joins.snapshot(),
            "models": self.models.snapshot(),
            "pinned": self.policy.pinned,
            "rl": None if self.rl is None else self.rl.snapshot(),
            "clm": None if self.clm is None else self.clm.snapshot(),
        }


@operator
def learn_in_order(
    step_id: str, events: Stream[Sequenced | DeadLetters], deps: LearnerDeps
) -> Stream[LearnedOutput]:
    """The learners on one key, over the live engine's ordered learning events."""
    keyed = op.key_on("one_learner", events, lambda _: LEARNER_KEY)
    out = op.stateful(
        "learner",
        keyed,
        stage_builder(lambda _: OrderedLearner(deps), lambda state: OrderedLearner(deps, state)),
    )
    return op.key_rm("unkey", out)

"""The ensemble: four models vote, the audit's rules decide.

Weights XGBoost 0.25, LightGBM 0.25, N-HiTS 0.30, PatchTST 0.20; a model that fails votes HOLD
with confidence 0 (counted and logged). BUY if ``buy > sell and buy >= 0.6`` (the summed
weights of the BUY / SELL voters), SELL likewise, else HOLD; a 2-2 split is HOLD. Confidence:
the weight-averaged confidence of the decided action's voters, x1.2 unanimous, x1.1 all but
one, x0.8 split, capped at 1. When ``vol_daily`` exceeds 5% a BUY/SELL needs confidence > 0.70.
Every bar of every symbol gets exactly one signal.

Two halves: :func:`score_votes` scores vectors in batches, in parallel, with every production
or shadow version; the decision engine (:mod:`operators.engine`) then decides bar by bar, in
event-time order, with the votes of the versions it holds as production (:class:`VoteBook`,
:func:`signal_of`). A vote never depends on which other vectors shared its call.

>>> from schemas.signals import Vote
>>> cfg = EnsembleConfig()
>>> votes = [Vote("xgboost", "v1", Action.BUY, 0.8), Vote("lightgbm", "v1", Action.BUY, 0.6),
...          Vote("nhits", "v1", Action.BUY, 0.7), Vote("patchtst", "v1", Action.SELL, 0.9)]
>>> d = decide(votes, volatility=0.01, cfg=cfg)
>>> d.action, d.consensus, round(d.buy_votes, 2), round(d.confidence, 4)
(<Action.BUY: 'BUY'>, <Consensus.STRONG: 'strong'>, 0.8, 0.77)

Design notes: docs/ensemble.md.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from metrics import METRICS
from models.base import MODEL_NAMES, VectorBatch
from models.forward_process import ForwardProcess
from runtime import MODEL_LOCK
from schemas.features import FeatureStep, FeatureVector
from schemas.learning import ShadowPrediction
from schemas.records import quick_init
from schemas.signals import Action, Consensus, Signal, Vote
from settings import DEFAULTS, Settings

log = logging.getLogger(__name__)

AUDIT_WEIGHTS: dict[str, float] = {
    "xgboost": 0.25,
    "lightgbm": 0.25,
    "nhits": 0.30,
    "patchtst": 0.20,
}
MULTIPLIER = {Consensus.UNANIMOUS: 1.2, Consensus.STRONG: 1.1, Consensus.SPLIT: 0.8}


@dataclass(frozen=True)
class EnsembleConfig:
    """The audit's constants (defaults) and the two the volatility rule uses."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(AUDIT_WEIGHTS))
    vote_threshold: float = DEFAULTS.vote_threshold
    high_vol: float = DEFAULTS.high_vol_threshold
    high_vol_min_confidence: float = DEFAULTS.high_vol_min_confidence

    @classmethod
    def from_settings(cls, s: Settings) -> EnsembleConfig:
        return cls(
            vote_threshold=s.vote_threshold,
            high_vol=s.high_vol_threshold,
            high_vol_min_confidence=s.high_vol_min_confidence,
        )


@quick_init
@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    confidence: float
    consensus: Consensus
    buy_votes: float
    sell_votes: float
    vol_blocked: bool


def decide(
    votes: Sequence[Vote],
    volatility: float,
    cfg: EnsembleConfig,
    weights: Mapping[str, float] | None = None,
) -> Decision:
    """Combine votes with the audit's rules (see the module docstring)."""
    weights = cfg.weights if weights is None else weights
    # one pass over the votes: per action, how many, their weight and weight x confidence,
    # as [count, weight, weight x confidence] (accumulated in vote order from 0, as sum()
    # would: the same floats to the last bit); enums compared by identity (hashing is slow)
    hold: list = [0, 0, 0]
    buy_acc: list = [0, 0, 0]
    sell_acc: list = [0, 0, 0]
    for v in votes:
        acc = buy_acc if v.action is Action.BUY else sell_acc if v.action is Action.SELL else hold
        w_v = weights[v.model]
        acc[0] += 1
        acc[1] += w_v
        acc[2] += w_v * v.confidence
    buy, sell = buy_acc[1], sell_acc[1]
    eps = 1e-12  # weights are decimals: 0.25 + 0.25 + 0.1 must count as 0.6
    if buy_acc[0] == sell_acc[0]:  # a 2-2 (or 1-1) split is HOLD whatever the weights
        action, agreed = Action.HOLD, hold
    elif buy > sell + eps and buy >= cfg.vote_threshold - eps:
        action, agreed = Action.BUY, buy_acc
    elif sell > buy + eps and sell >= cfg.vote_threshold - eps:
        action, agreed = Action.SELL, sell_acc
    else:
        action, agreed = Action.HOLD, hold
    if agreed[0] == len(votes):
        consensus = Consensus.UNANIMOUS
    elif agreed[0] == len(votes) - 1:
        consensus = Consensus.STRONG
    else:
        consensus = Consensus.SPLIT
    w = agreed[1]
    base = agreed[2] / w if w > 0 else 0.0
    confidence = min(1.0, base * MULTIPLIER[consensus])
    blocked = False
    if (
        action is not Action.HOLD
        and volatility > cfg.high_vol
        and not confidence > cfg.high_vol_min_confidence
    ):
        action, blocked = Action.HOLD, True
    return Decision(action, confidence, consensus, buy, sell, blocked)


# ---------------------------------------------------------------------------------------------
# Scoring with live models
# ---------------------------------------------------------------------------------------------

Predict = Callable[[Sequence[FeatureVector]], list[tuple[Action, float]]]
VoteArrays = Callable[[VectorBatch], tuple[np.ndarray, np.ndarray]]
BeginVotes = Callable[
    [VectorBatch, "ForwardProcess | None"], Callable[[], tuple[np.ndarray, np.ndarray]]
]
_ACTIONS = (Action.HOLD, Action.BUY, Action.SELL)  # by class id


@dataclass
class LoadedModel:
    """A model version as the scorer calls it: ``predict`` (vectors -> (action, confidence)
    pairs) and, for the project's models, ``vote_arrays`` (a shared :class:`VectorBatch` ->
    class ids and confidences), the fast path at many symbols; and ``begin_vote_arrays``,
    the same in two halves (the arithmetic in a forward process)."""

    name: str
    version: str
    predict: Predict
    vote_arrays: VoteArrays | None = None
    begin_vote_arrays: BeginVotes | None = None
    model: Any = None

    @classmethod
    def of(cls, name: str, version: str, model: Any) -> LoadedModel:
        return cls(
            name,
            version,
            model.predict,
            getattr(model, "vote_arrays", None),
            getattr(model, "begin_vote_arrays", None),
            model,
        )


class ModelSource:
    """Where the ensemble gets its production models: normally the registry."""

    def current(self) -> list[LoadedModel]:  # pragma: no cover - interface
        raise NotImplementedError

    def shadows(self) -> list[LoadedModel]:
        return []


class RegistryModels(ModelSource):
    """Production models from the registry, reloaded when a new version is promoted; and the
    shadow (challenger) versions a CLM cycle registered, which vote beside them untraded."""

    def __init__(self, registry: Any, names: Sequence[str] = MODEL_NAMES) -> None:
        self.registry = registry
        self.names = tuple(names)
        self._loaded: dict[str, LoadedModel] = {}
        self._shadows: dict[tuple[str, str], LoadedModel] = {}

    def shadows(self) -> list[LoadedModel]:
        from schemas.registry import ModelStage

        wanted = {
            (n, v) for n in self.names for v in self.registry.versions_in(n, ModelStage.SHADOW)
        }
        for key in set(self._shadows) - wanted:
            del self._shadows[key]
        for name, version in sorted(wanted - set(self._shadows)):
            model = self.registry.load(name, version)
            self._shadows[(name, version)] = LoadedModel.of(name, version, model)
            log.info("ensemble: %s %s votes in shadow", name, version)
        return [self._shadows[k] for k in sorted(self._shadows)]

    def current(self) -> list[LoadedModel]:
        out = []
        for name in self.names:
            version = self.registry.production_version(name)
            if version is None:
                raise RuntimeError(f"ensemble: no production version of {name} in the registry")
            held = self._loaded.get(name)
            if held is None or held.version != version:
                model = self.registry.load(name, version)
                held = self._loaded[name] = LoadedModel.of(name, version, model)
                log.info("ensemble: %s %s is now voting", name, version)
            out.append(held)
        return out


def _vote_problem(action: Any, conf: Any) -> str | None:
    if not isinstance(action, Action):
        return f"action {action!r} is not BUY/SELL/HOLD"
    if not isinstance(conf, float | int) or math.isnan(conf):
        return f"confidence {conf!r} is not a number"
    if not 0.0 <= conf <= 1.0:
        return f"confidence {conf!r} outside [0, 1]"
    return None


def signal_of(
    vector: FeatureVector,
    votes: Sequence[Vote],
    cfg: EnsembleConfig,
    weights: Mapping[str, float] | None = None,
) -> Signal:
    """The ensemble's signal for one bar from its four votes (``votes`` in
    :data:`models.base.MODEL_NAMES` order). A warm-up vector's signal is HOLD (consensus
    ``warmup``) whatever the votes say: its features are incomplete."""
    weights = cfg.weights if weights is None else weights
    v = vector
    vol = v.values["vol_daily"]
    w = tuple(weights[x.model] for x in votes)
    if not v.warm:
        return Signal(
            v.symbol,
            v.ts,
            v.bar_start,
            Action.HOLD,
            0.0,
            Consensus.WARMUP,
            0.0,
            0.0,
            vol,
            False,
            False,
            v.feature_set,
            tuple(votes),
            w,
        )
    d = decide(votes, vol if vol == vol else 0.0, cfg, weights)
    return Signal(
        v.symbol,
        v.ts,
        v.bar_start,
        d.action,
        d.confidence,
        d.consensus,
        d.buy_votes,
        d.sell_votes,
        vol,
        d.vol_blocked,
        True,
        v.feature_set,
        tuple(votes),
        w,
    )


def model_votes(
    m: LoadedModel, vectors: Sequence[FeatureVector] | VectorBatch, failures: Counter
) -> list[Vote]:
    """``m``'s vote on each vector; a raise, or a bad action or confidence, votes HOLD 0 and
    is counted in ``failures`` (and logged, sparingly). With ``vote_arrays`` the model scores
    a shared :class:`VectorBatch` and the checks run on arrays."""
    return begin_model_votes(m, vectors, failures)()


def begin_model_votes(
    m: LoadedModel,
    vectors: Sequence[FeatureVector] | VectorBatch,
    failures: Counter,
    forwards: ForwardProcess | None = None,
) -> Callable[[], list[Vote]]:
    """:func:`model_votes` in two halves: a model with ``begin_vote_arrays`` (the project's
    nets and trees) hands its arithmetic to ``forwards`` now and the returned call waits for
    it; any other model votes now."""
    batch = vectors if isinstance(vectors, VectorBatch) else VectorBatch(vectors)
    n = len(batch)

    def failed(k: int, why: str) -> None:
        failures[m.name] += k
        if failures[m.name] <= 10 or failures[m.name] % 1000 == 0:
            log.warning(
                "ensemble: model %s %s failed (%d so far): %s",
                m.name,
                m.version,
                failures[m.name],
                why,
            )

    if m.begin_vote_arrays is not None:
        try:
            finish = m.begin_vote_arrays(batch, forwards)
        except Exception as exc:  # raised where the votes are taken, as a failure
            finish = _raising(exc)
        return lambda: _array_votes(m, lambda _: finish(), batch, n, failed)
    votes = (
        _array_votes(m, m.vote_arrays, batch, n, failed)
        if m.vote_arrays is not None
        else _predicted_votes(m, batch, n, failed)
    )
    return lambda: votes


def _raising(exc: Exception) -> Callable[[], Any]:
    def again() -> Any:
        raise exc

    return again


def _array_votes(
    m: LoadedModel,
    vote_arrays: VoteArrays,
    batch: VectorBatch,
    n: int,
    failed: Callable[[int, str], None],
) -> list[Vote]:
    """:func:`model_votes` through ``m.vote_arrays``: the checks run on whole arrays, and
    only the (rare) bad votes are looked at one by one."""
    try:
        ids, conf = vote_arrays(batch)
        ids, conf = np.asarray(ids), np.asarray(conf, dtype=np.float64)
        if ids.shape != (n,) or conf.shape != (n,):
            raise ValueError(f"returned {ids.shape}/{conf.shape} votes for {n}")
    except Exception as exc:  # a model failure must not stop trading decisions
        failed(n, repr(exc))
        return [Vote(m.name, m.version, Action.HOLD, 0.0, True)] * n
    bad = ~((conf >= 0.0) & (conf <= 1.0) & (ids >= 0) & (ids <= 2))
    name, version = m.name, m.version
    out = [
        Vote(name, version, _ACTIONS[a], c)
        for a, c in zip(np.where(bad, 0, ids).tolist(), conf.tolist(), strict=True)
    ]
    for i in np.flatnonzero(bad).tolist():
        failed(
            1,
            _vote_problem(_ACTIONS[ids[i]] if ids[i] in (0, 1, 2) else ids[i], float(conf[i]))
            or "bad vote",
        )
        out[i] = Vote(name, version, Action.HOLD, 0.0, True)
    return out


def _predicted_votes(
    m: LoadedModel, batch: VectorBatch, n: int, failed: Callable[[int, str], None]
) -> list[Vote]:
    """:func:`model_votes` through ``m.predict``, checking each (action, confidence)."""
    try:
        preds = m.predict(batch.vectors)
        if len(preds) != n:
            raise ValueError(f"returned {len(preds)} predictions for {n}")
    except Exception as exc:  # a model failure must not stop trading decisions
        failed(n, repr(exc))
        return [Vote(m.name, m.version, Action.HOLD, 0.0, True)] * n
    out = []
    for action, value in preds:
        problem = _vote_problem(action, value)
        if problem is None:
            out.append(Vote(m.name, m.version, action, float(value)))
        else:
            failed(1, problem)
            out.append(Vote(m.name, m.version, Action.HOLD, 0.0, True))
    return out


@dataclass
class Scorer:
    """Scores feature vectors with the current models (plain Python).

    :meth:`all_votes` is what the live flow's parallel scoring step runs: every vector gets a
    vote from each production version and each warm vector one from each shadow version.
    :meth:`score` decides as well (training and benchmarks use it).
    """

    models: ModelSource
    cfg: EnsembleConfig = field(default_factory=EnsembleConfig)
    failures: Counter = field(default_factory=Counter)

    def votes(self, vectors: Sequence[FeatureVector]) -> list[list[Vote]]:
        """Per vector, one vote per production model (MODEL_NAMES order)."""
        return [list(vs) for vs in self.submit(vectors, shadows=False)()]

    def all_votes(self, vectors: Sequence[FeatureVector]) -> list[tuple[Vote, ...]]:
        """Per vector, the votes of every production version and, on warm vectors, of every
        shadow version (a challenger votes beside production, never traded)."""
        return self.submit(vectors)()

    def submit(
        self,
        vectors: Sequence[FeatureVector],
        forwards: ForwardProcess | None = None,
        shadows: bool = True,
    ) -> Callable[[], list[tuple[Vote, ...]]]:
        """:meth:`all_votes` (:meth:`votes` without ``shadows``) in two halves: the models'
        arithmetic goes to ``forwards`` now (:func:`begin_model_votes`), and the returned
        call waits for it and gives the votes."""
        if not vectors:
            return lambda: []
        batch = VectorBatch(vectors)
        warm = [i for i, v in enumerate(vectors) if v.warm] if shadows else []
        with MODEL_LOCK:
            production = [
                begin_model_votes(m, batch, self.failures, forwards) for m in self.models.current()
            ]
            challengers = []
            if warm:
                versions = self.models.shadows()
                if versions:
                    warm_batch = batch.subset(warm) if len(warm) < len(vectors) else batch
                    challengers = [
                        begin_model_votes(m, warm_batch, self.failures, forwards) for m in versions
                    ]

        def result() -> list[tuple[Vote, ...]]:
            with MODEL_LOCK:
                columns = [finish() for finish in production]  # one list of votes per model
                if not columns:
                    return [()] * len(vectors)
                if not challengers:
                    return list(zip(*columns, strict=True))
                per_vector = [list(vs) for vs in zip(*columns, strict=True)]
                for finish in challengers:
                    for i, vote in zip(warm, finish(), strict=True):
                        per_vector[i].append(vote)
            return [tuple(vs) for vs in per_vector]

        return result

    def score(self, vectors: Sequence[FeatureVector]) -> list[Signal]:
        """One signal per vector, each with every production model's vote."""
        return [
            signal_of(v, vs, self.cfg) for v, vs in zip(vectors, self.votes(vectors), strict=True)
        ]


@dataclass(slots=True)
class ScoredStep:
    """What the scoring step emits per feature step: the step (bars, vectors and the ticks
    they came from) and, per vector, the votes of every model version the scorer knew."""

    symbol: str
    features: FeatureStep
    votes: list[tuple[Vote, ...]]


class VoteBook:
    """The votes the engine decides with: one per model from the version *it* holds as
    production (and per shadow version), taken from the scoring step's votes, or computed here
    when the scoring step did not know that version yet (it follows the registry a little
    later than the engine changes it). Both paths run the same models on the same vector, so
    a vote does not depend on which path made it."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self.failures: Counter = Counter()
        self.late = 0  # votes computed here (for the summary)

    def vote(self, model: str, version: str, vector: FeatureVector, scored: Sequence[Vote]) -> Vote:
        for v in scored:
            if v.model == model and v.version == version:
                return v
        key = (model, version)
        m = self._models.get(key)
        if m is None:
            with MODEL_LOCK:
                loaded = self.registry.load(model, version)
            m = self._models[key] = LoadedModel.of(model, version, loaded)
        self.late += 1
        with MODEL_LOCK:
            return model_votes(m, [vector], self.failures)[0]

    def forget(self, keep: set[tuple[str, str]]) -> None:
        for key in set(self._models) - keep:
            del self._models[key]


def shadow_votes(
    book: VoteBook,
    shadows: Sequence[tuple[str, str]],
    vector: FeatureVector,
    scored: Sequence[Vote],
) -> tuple[ShadowPrediction, ...]:
    """The challengers' votes on a warm bar (none on a warm-up bar), as shadow predictions."""
    if not vector.warm:
        return ()
    out = []
    for model, version in shadows:
        v = book.vote(model, version, vector, scored)
        out.append(
            ShadowPrediction(
                v.model, v.version, vector.symbol, vector.ts, v.action, v.confidence, v.failed
            )
        )
    return tuple(out)


POLL_EVERY = timedelta(milliseconds=1)  # how often a key holding steps looks for its forwards
HELD_BATCHES = 2  # batches a key may hold unanswered before it waits for the oldest


class SubmittedVotes:
    """The votes of one scoring call over the feature steps of every key that reached a
    worker together (one call per model across keys: at many symbols, per-key calls cost
    more than the models), taken once, when the first key asks."""

    def __init__(
        self,
        step_id: str,
        scorer: Scorer,
        forwards: ForwardProcess | None,
        steps: Sequence[FeatureStep],
    ) -> None:
        self.step_id = step_id
        vectors = [v for step in steps for v in step.vectors]
        started = time.perf_counter()
        try:
            self._result: Callable[[], list[tuple[Vote, ...]]] | None = scorer.submit(
                vectors, forwards
            )
        except Exception as exc:
            raise RuntimeError(f"{step_id}: scoring {len(vectors)} vectors failed") from exc
        self._seconds = time.perf_counter() - started
        self.has_vectors = bool(vectors)
        # forward requests sent once this call's were (the child answers in order)
        self.sent = 0 if forwards is None else forwards.submitted
        self._votes: list[tuple[Vote, ...]] = []

    def votes(self) -> list[tuple[Vote, ...]]:
        if self._result is not None:
            started = time.perf_counter()
            try:
                self._votes = self._result()
            except Exception as exc:
                raise RuntimeError(f"{self.step_id}: scoring failed") from exc
            self._result = None
            if self.has_vectors:
                METRICS.inference(self._seconds + time.perf_counter() - started)
        return self._votes


@dataclass(slots=True)
class PendingScore:
    """One key's feature step and where its votes are in a :class:`SubmittedVotes`."""

    step: FeatureStep
    call: SubmittedVotes
    start: int

    @property
    def sent(self) -> int:
        return self.call.sent

    def scored(self) -> ScoredStep:
        votes = self.call.votes()[self.start : self.start + len(self.step.vectors)]
        return ScoredStep(self.step.symbol, self.step, votes)

    def __reduce__(self) -> tuple:
        # never expected to leave its worker (the next step is keyed alike); if it does, it
        # travels scored
        return (_Scored, (self.scored(),))


@dataclass(slots=True)
class _Scored:
    """A :class:`PendingScore` after pickling: its votes taken."""

    done: ScoredStep
    sent = 0  # (answered)

    @property
    def step(self) -> FeatureStep:
        return self.done.features

    def scored(self) -> ScoredStep:
        return self.done


Held = PendingScore | _Scored


def submit_scoring(
    step_id: str, scorer: Scorer, forwards: ForwardProcess | None
) -> Callable[[list[tuple[str, FeatureStep]]], list[tuple[str, Held]]]:
    """The stateless half of :func:`score_votes`: one scoring call over a worker's items."""

    def submit(items: list[tuple[str, FeatureStep]]) -> list[tuple[str, Held]]:
        call = SubmittedVotes(step_id, scorer, forwards, [step for _, step in items])
        out: list[tuple[str, Held]] = []
        start = 0
        for key, step in items:
            out.append((key, PendingScore(step, call, start)))
            start += len(step.vectors)
        return out

    return submit


class DeferredScoring(StatefulBatchLogic[PendingScore | _Scored, ScoredStep, list[FeatureStep]]):
    """One key's scored steps, emitted once the forward process has answered them.

    A batch arrives already submitted (:func:`submit_scoring`): the child computes its
    forwards while this process goes on with the next block (bars, features, the engine).
    Each ``on_batch`` and each look (every :data:`POLL_EVERY`, so a quiet live input waits
    for no next block) emits the held steps whose forwards are answered, in order, without
    waiting; only a key holding more than :data:`HELD_BATCHES` batches waits for its oldest
    (the child is behind: the flow must not run away from it). At end of input whatever is
    left is emitted. The snapshot is the feature steps not emitted yet; a resume scores them
    again (a vote depends only on its vector: the same votes). Without a forward process each
    batch is emitted at once.
    """

    def __init__(
        self,
        step_id: str,
        scorer: Scorer,
        forwards: ForwardProcess | None,
        resume: list[FeatureStep] | None = None,
    ) -> None:
        self.forwards = forwards
        self._held: list[list[Held]] = []  # batches, oldest first
        if resume:
            submitted = submit_scoring(step_id, scorer, forwards)([("", s) for s in resume])
            self._held = [[pending for _, pending in submitted]]

    def _emit(self, answered: int | None = None) -> list[ScoredStep]:
        """The held steps, scored, in order: all of them, or those whose forwards are among
        the first ``answered``."""
        out: list[ScoredStep] = []
        while self._held:
            batch = self._held[0]
            n = 0
            while n < len(batch) and (answered is None or batch[n].sent <= answered):
                n += 1
            out += [p.scored() for p in batch[:n]]
            if n < len(batch):
                del batch[:n]
                break
            del self._held[0]
        return out

    def on_batch(self, values: list[Held]) -> tuple[list[ScoredStep], bool]:
        if self.forwards is None:
            return [p.scored() for p in values], self.RETAIN
        self._held.append(list(values))
        out = self._emit(self.forwards.poll())
        while len(self._held) > HELD_BATCHES:  # the child is behind: wait for the oldest
            out += [p.scored() for p in self._held.pop(0)]
        return out, self.RETAIN

    def on_notify(self) -> tuple[list[ScoredStep], bool]:
        answered = None if self.forwards is None else self.forwards.poll()
        return self._emit(answered), self.RETAIN

    def on_eof(self) -> tuple[list[ScoredStep], bool]:
        return self._emit(), self.RETAIN

    def notify_at(self) -> datetime | None:
        return datetime.now(UTC) + POLL_EVERY if self._held else None

    def snapshot(self) -> list[FeatureStep]:
        return [p.step for batch in self._held for p in batch]


@operator
def score_votes(
    step_id: str,
    up: KeyedStream[FeatureStep],
    scorer: Scorer,
    forwards: ForwardProcess | None = None,
) -> KeyedStream[ScoredStep]:
    """Every model version's votes on every feature step: one call per model over all the
    steps that reach a worker together (the parallel, expensive half of the ensemble; the
    engine decides). With ``forwards`` the models' arithmetic runs in that child process and
    each key's steps come out once the child has answered them (:class:`DeferredScoring`).

    One :class:`Scorer` serves all the worker threads of the process; its model calls hold
    :data:`runtime.MODEL_LOCK`.
    """
    submitted = op.flat_map_batch("submit", up, submit_scoring(step_id, scorer, forwards))
    return op.stateful_batch(
        "score", submitted, lambda resume: DeferredScoring(step_id, scorer, forwards, resume)
    )

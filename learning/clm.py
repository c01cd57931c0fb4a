"""Continuous learning (CLM): triggers, a retraining cycle off the hot path, shadow, promotion.

The audit's cycle, on event time (the ticks' clock, so a replay of weeks exercises it):

1. **Triggers** (:mod:`learning.triggers`): time (``QT_CLM_RETRAIN_HOURS`` since the last
   cycle), drift checked every ``QT_CLM_DRIFT_HOURS`` (mean PSI of the warm features of that
   window against the production feature reference, :mod:`learning.drift`, above
   ``QT_CLM_DRIFT_THRESHOLD``), performance checked every ``QT_CLM_PERF_HOURS`` (win rate of the
   trades closed in that window below the production ensemble's validation hit rate by more
   than 0.05, with at least 10 trades), and manual (``python -m cli.retrain``). Automatic
   triggers need ``QT_CLM_AUTO_RETRAIN``; manual ones always run. One cycle at a time: checks
   that fall due during a cycle are skipped, manual requests wait for the next idle tick.
2. **Data**: the feature vectors stored in the last ``QT_CLM_LOOKBACK_DAYS`` of event time
   (features table), labelled from realised forward returns by the project's label code, plus
   the entry features of the trades closed since the last cycle, labelled by their outcome (a
   winning long is BUY, a winning short SELL, a loser HOLD).
3. **Training** of all four models runs in a child process (:mod:`learning.trainer`) while the
   flow keeps processing ticks; each tick polls it. (``QT_CLM_BLOCKING`` waits instead, which
   makes replays deterministic.)
4. **Shadow**: the new versions are registered as ``shadow``; the live ensemble step runs them
   beside production on every bar without trading on them (``shadow_predictions``).
5. **Compare** (:mod:`learning.shadow`): every 10 minutes of event time, each challenger's
   shadow votes are compared with the production model's votes on the same bars whose
   realised label is known, by macro-F1. Once every challenger has ``QT_CLM_SHADOW_MIN``
   compared bars, each is promoted if it is more than ``QT_CLM_PROMOTE_MARGIN`` (2%) better
   (and ``QT_CLM_AUTO_PROMOTE`` is on) and retired otherwise. A promoted version takes effect
   at the next bar. The cycle's feature reference is promoted with the first promoted model.
6. Every step of a cycle rewrites its ``clm_cycles`` row.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator

from learning.drift import MODEL_NAME as REFERENCE
from learning.drift import FeatureReference
from learning.shadow import ShadowComparison
from learning.trainer import TrainingError, copy_writer
from learning.triggers import (
    Check,
    Trigger,
    TriggerConfig,
    TriggerSchedule,
    performance_degraded,
)
from models.base import MODEL_NAMES
from models.dataset import History, TrainingSet, feature_matrix
from models.labels import LabelConfig, classify, label_threshold
from operators.features import FEATURE_SET_VERSION
from operators.stage import stage_builder
from schemas import codec
from schemas.features import FeatureVector
from schemas.learning import ClmCycle
from schemas.registry import Stage
from schemas.signals import CLASS_OF, Action
from schemas.timeutil import from_ms, iso, to_ms
from schemas.trades import JoinedTrade, Side

log = logging.getLogger(__name__)

EVAL_EVERY_MS = 10 * 60_000
MIN_TRAIN_ROWS = 500


@dataclass(frozen=True)
class ClmConfig:
    enabled: bool = True
    auto_retrain: bool = True
    auto_promote: bool = True
    drift_threshold: float = 0.05
    shadow_min: int = 100
    promote_margin: float = 0.02
    lookback_ms: int = 90 * 86_400_000
    blocking: bool = False
    budget: str = "full"
    triggers: TriggerConfig = field(default_factory=TriggerConfig)

    @classmethod
    def from_settings(cls, s: Any) -> ClmConfig:
        return cls(s.clm_enabled, s.clm_auto_retrain, s.clm_auto_promote,
                   s.clm_drift_threshold, s.clm_shadow_min, s.clm_promote_margin,
                   int(s.clm_lookback_days * 86_400_000), s.clm_blocking, s.clm_budget,
                   TriggerConfig.from_settings(s))


@dataclass(frozen=True, slots=True)
class ClockTick:
    """The flow's event time moved to ``ts_ms``; ``features`` carries the step's warm feature
    rows (bar close ms, values in FEATURE_NAMES order) for the drift check."""

    ts_ms: int
    features: tuple[tuple[int, tuple[float, ...]], ...] = ()


@dataclass
class Cycle:
    cycle_id: str
    trigger: str
    reason: str
    started_ms: int
    status: str = "training"
    data_from: int | None = None
    data_to: int | None = None
    rows: int = 0
    train_metrics: dict[str, float] = field(default_factory=dict)
    shadow_metrics: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    decisions: dict[str, str] = field(default_factory=dict)
    reference_version: str = ""
    reference_json: str = ""  # the drift reference of this cycle's training data
    work_dir: str = ""

    def record(self, now_ms: int) -> ClmCycle:
        return ClmCycle(self.cycle_id, self.trigger, self.reason, self.status,
                        from_ms(self.started_ms),
                        None if self.data_from is None else from_ms(self.data_from),
                        None if self.data_to is None else from_ms(self.data_to), self.rows,
                        dict(self.train_metrics), dict(self.shadow_metrics),
                        dict(self.versions), dict(self.decisions), from_ms(now_ms))


class ContinuousLearner:
    """The CLM state machine (plain Python; one per flow, keyed ``clm``).

    ``deps`` gives the outside world: ``registry``, ``store``, ``requests``
    (:class:`RetrainRequests`), ``trainer`` (a :class:`learning.trainer.TrainingJob`),
    ``train_config`` and ``work_dir``. State that recovery must keep is in :meth:`snapshot`.
    """

    def __init__(self, cfg: ClmConfig, label_cfg: LabelConfig, deps: dict[str, Any],
                 state: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.label_cfg = label_cfg
        self.deps = deps
        state = state or {}
        self.schedule = (TriggerSchedule.restore(cfg.triggers, state["schedule"])
                         if "schedule" in state else TriggerSchedule(cfg.triggers))
        self.now_ms: int = state.get("now_ms", -(2**62))
        self.next_eval_ms: int = state.get("next_eval_ms", 0)
        self.outcomes: deque[tuple[int, bool]] = deque(state.get("outcomes", ()), maxlen=10_000)
        self.trade_rows: deque[tuple[FeatureVector, int]] = deque(
            state.get("trade_rows", ()), maxlen=20_000)
        self.cycle: Cycle | None = state.get("cycle")
        self.cycles: int = state.get("cycles", 0)
        # the warm feature rows of the last drift period, straight from the stream (the store
        # may not hold the newest rows yet when a check falls due in a fast replay)
        self.recent: deque[tuple[int, tuple[float, ...]]] = deque(state.get("recent", ()))
        # a manual request waits here until the store holds enough data to train on
        self.waiting_manual: str | None = state.get("waiting_manual")
        self.retry_ms: int = state.get("retry_ms", 0)
        if self.cycle is not None and self.cycle.status == "training":
            # a resume lost the child process: train again from the recorded trigger
            self.cycle = None

    # --- inputs ------------------------------------------------------------------------------
    def push(self, item: ClockTick | JoinedTrade) -> list[ClmCycle]:
        if not self.cfg.enabled:
            return []
        if isinstance(item, JoinedTrade):
            self._observe(item)
            now = to_ms(item.closed.exit_ts)
        else:
            now = item.ts_ms
            self.recent.extend(item.features)
            horizon = max(now, self.now_ms) - self.cfg.triggers.period_ms(Check.DRIFT)
            while self.recent and self.recent[0][0] <= horizon:
                self.recent.popleft()
        if now <= self.now_ms:
            return self._progress(self.now_ms) if self.cycle is not None else []
        self.now_ms = now
        return self._advance(now)

    def finish(self) -> list[ClmCycle]:
        """End of input: wait for a training cycle, judge a shadow one if it can be."""
        out: list[ClmCycle] = []
        if self.cycle is not None and self.cycle.status == "training":
            try:
                out += self._trained(self.deps["trainer"].wait(), self.now_ms)
            except TrainingError as exc:
                out += self._failed(exc, self.now_ms)
        if self.cycle is not None and self.cycle.status == "shadow":
            out += self._evaluate(self.now_ms, final=True)
        return out

    def _observe(self, j: JoinedTrade) -> None:
        won = j.closed.net_pnl > 0
        exit_ms = to_ms(j.closed.exit_ts)
        self.outcomes.append((exit_ms, won))
        side = Action.BUY if j.opened.side is Side.LONG else Action.SELL
        label = CLASS_OF[side] if won else CLASS_OF[Action.HOLD]
        e = j.opened.entry
        vector = FeatureVector(j.opened.symbol, j.opened.entry_ts, j.opened.entry_ts,
                               e.feature_set, True, j.opened.entry_price, dict(e.features),
                               e.window)
        self.trade_rows.append((vector, label))

    # --- triggers ----------------------------------------------------------------------------
    def _advance(self, now: int) -> list[ClmCycle]:
        due = self.schedule.due(now)
        if self.cycle is not None:
            return self._progress(now)
        trigger = self._manual()
        if trigger is None and self.cfg.auto_retrain:
            for check in due:
                trigger = self._check(check, now)
                if trigger is not None:
                    break
        return [] if trigger is None else self._start(*trigger, now)

    def _progress(self, now: int) -> list[ClmCycle]:
        assert self.cycle is not None
        if self.cycle.status == "training":
            try:
                result = self.deps["trainer"].poll()
            except TrainingError as exc:
                return self._failed(exc, now)
            return [] if result is None else self._trained(result, now)
        if now >= self.next_eval_ms:
            return self._evaluate(now)
        return []

    def _manual(self) -> tuple[Trigger, str] | None:
        claimed = self.deps["requests"].claim()
        if claimed:
            reasons = "; ".join(str(r.get("reason", "manual")) for r in claimed)
            self.waiting_manual = (f"{self.waiting_manual}; {reasons}" if self.waiting_manual
                                   else reasons)
        if self.waiting_manual is None or self.now_ms < self.retry_ms:
            return None
        return Trigger.MANUAL, self.waiting_manual

    def _check(self, check: Check, now: int) -> tuple[Trigger, str] | None:
        if check is Check.TIME:
            return Trigger.TIME, f"{self.cfg.triggers.retrain_hours:g} h since the last cycle"
        if check is Check.DRIFT:
            score = self.drift(now)
            if score is not None and score > self.cfg.drift_threshold:
                return Trigger.DRIFT, (f"drift {score:.4f} > {self.cfg.drift_threshold:g} "
                                       f"over the last {self.cfg.triggers.drift_hours:g} h")
            return None
        period = self.cfg.triggers.period_ms(Check.PERFORMANCE)
        recent = [won for t, won in self.outcomes if t > now - period]
        hit_rate = self._validation_hit_rate()
        if hit_rate is not None and performance_degraded(sum(recent), len(recent), hit_rate):
            return Trigger.PERFORMANCE, (f"win rate {sum(recent)}/{len(recent)} below the "
                                         f"validation hit rate {hit_rate:.3f}")
        return None

    def drift(self, now: int) -> float | None:
        """Mean PSI of the last drift window's warm features against the production reference;
        None without a reference or with too few rows (100) to judge."""
        registry = self.deps["registry"]
        version = registry.production_version(REFERENCE)
        if version is None:
            return None
        ref: FeatureReference = registry.load(REFERENCE, version)
        since = now - self.cfg.triggers.period_ms(Check.DRIFT)
        rows = [values for ts, values in self.recent if since < ts <= now]
        if len(rows) < 100:
            return None
        return ref.drift_score(np.array(rows, dtype=np.float64))

    def _validation_hit_rate(self) -> float | None:
        registry = self.deps["registry"]
        version = registry.production_version("xgboost")
        if version is None:
            return None
        value = registry.get("xgboost", version).metrics.get("val_call_hit_rate")
        return None if value is None or not math.isfinite(value) else value

    # --- a cycle ---------------------------------------------------------------------------
    def _vectors(self, since: int, until: int) -> list[FeatureVector]:
        self.deps.get("flush", lambda: None)()  # the sinks' buffered rows count too
        rows = self.deps["store"].query("queries/features_between",
                                        feature_set=FEATURE_SET_VERSION, since=from_ms(since),
                                        until=from_ms(until))
        return [codec.from_row(FeatureVector, r) for r in rows]

    def _start(self, trigger: Trigger, reason: str, now: int) -> list[ClmCycle]:
        self.cycles += 1
        cycle = Cycle(f"clm-{self.cycles:04d}-{iso(from_ms(now))}", trigger.value, reason, now)
        history = History()
        for v in self._vectors(now - self.cfg.lookback_ms, now):
            history.vectors.setdefault(v.symbol, []).append(v)
        warm = sum(v.warm for vs in history.vectors.values() for v in vs)
        if warm < MIN_TRAIN_ROWS and trigger is Trigger.MANUAL:
            self.retry_ms = now + EVAL_EVERY_MS  # keep the request until there is data
            self.cycles -= 1
            return []
        if trigger is Trigger.MANUAL:
            self.waiting_manual = None
        self.schedule.record_cycle(now)
        if warm < MIN_TRAIN_ROWS:
            cycle.status = "failed"
            cycle.reason += f"; not trained: {warm} warm bars stored, {MIN_TRAIN_ROWS} needed"
            return [cycle.record(now)]
        work = Path(self.deps["work_dir"]) / cycle.cycle_id.replace(":", "")
        cycle.work_dir = str(work)
        warm_vectors = [v for vs in history.vectors.values() for v in vs if v.warm]
        cycle.reference_json = FeatureReference.fit(feature_matrix(warm_vectors)).to_json()
        self.deps["trainer"].start(history, self._extra_rows(now), self.label_cfg,
                                   self.deps["train_config"], work)
        self.cycle = cycle
        out = [cycle.record(now)]
        if self.cfg.blocking:
            try:
                out += self._trained(self.deps["trainer"].wait(), now)
            except TrainingError as exc:
                out += self._failed(exc, now)
        return out

    def _failed(self, exc: Exception, now: int) -> list[ClmCycle]:
        """A cycle whose training failed is recorded and ends; the flow goes on."""
        cycle = self.cycle
        assert cycle is not None
        log.error("CLM cycle %s failed: %s", cycle.cycle_id, exc)
        cycle.status = "failed"
        cycle.reason += f"; training failed: {str(exc)[:300]}"
        shutil.rmtree(cycle.work_dir, ignore_errors=True)
        self.cycle = None
        return [cycle.record(now)]

    def _extra_rows(self, now: int) -> TrainingSet | None:
        """Closed trades' entry features labelled by outcome (see the module docstring)."""
        since = now - self.cfg.lookback_ms
        rows = [(v, y) for v, y in self.trade_rows
                if v.feature_set == FEATURE_SET_VERSION and to_ms(v.ts) > since]
        if not rows:
            return None
        vectors = [v for v, _ in rows]
        n = len(rows)
        return TrainingSet(X=feature_matrix(vectors), y=np.array([y for _, y in rows], np.int64),
                           ts_ms=np.array([to_ms(v.ts) for v in vectors], dtype=np.int64),
                           symbols=np.array([v.symbol for v in vectors], dtype=object),
                           forward_return=np.full(n, np.nan), threshold=np.full(n, np.nan),
                           vectors=vectors)

    def _trained(self, result: Any, now: int) -> list[ClmCycle]:
        cycle = self.cycle
        assert cycle is not None
        registry = self.deps["registry"]
        cycle.rows = int(result.rows.get("train", 0))
        cycle.data_from, cycle.data_to = result.train_from_ms, result.train_to_ms
        for name in MODEL_NAMES:
            metrics = result.metrics.get(name, {})
            cycle.train_metrics.update({f"{name}.{k}": float(v) for k, v in metrics.items()
                                        if isinstance(v, int | float)})
            mv = registry.publish(
                name, copy_writer(Path(result.paths[name])), stage=Stage.SHADOW,
                feature_set=FEATURE_SET_VERSION, data_from=from_ms(result.train_from_ms),
                data_to=from_ms(result.train_to_ms), metrics=metrics,
                params={"trigger": cycle.trigger, "cycle": cycle.cycle_id})
            cycle.versions[name] = mv.version
        reference = FeatureReference.from_json(cycle.reference_json)
        cycle.reference_version = registry.publish(
            REFERENCE, reference.save, stage=Stage.SHADOW, feature_set=FEATURE_SET_VERSION,
            params={"cycle": cycle.cycle_id}).version
        shutil.rmtree(cycle.work_dir, ignore_errors=True)
        cycle.status = "shadow"
        self.next_eval_ms = now + EVAL_EVERY_MS
        return [cycle.record(now)]

    def _evaluate(self, now: int, final: bool = False) -> list[ClmCycle]:
        cycle = self.cycle
        assert cycle is not None
        self.next_eval_ms = now + EVAL_EVERY_MS
        results = {name: self.compare(name, cycle.versions[name], cycle.started_ms)
                   for name in MODEL_NAMES}
        for name, r in results.items():
            cycle.shadow_metrics.update({f"{name}.production_f1": r.production_score,
                                         f"{name}.challenger_f1": r.challenger_score,
                                         f"{name}.n": float(r.n)})
        if not all(r.ready for r in results.values()):
            if final:  # the input ended first: the challengers stay in shadow
                cycle.reason += "; input ended before the shadow test was complete"
                return [cycle.record(now)]
            return []
        registry = self.deps["registry"]
        promoted = False
        for name, r in results.items():
            if r.promote and self.cfg.auto_promote:
                registry.set_stage(name, cycle.versions[name], Stage.PRODUCTION)
                cycle.decisions[name] = "promoted"
                promoted = True
            elif r.promote:
                cycle.decisions[name] = "qualified (auto-promote off)"
            else:
                registry.set_stage(name, cycle.versions[name], Stage.RETIRED)
                cycle.decisions[name] = "retired"
        registry.set_stage(REFERENCE, cycle.reference_version,
                           Stage.PRODUCTION if promoted else Stage.RETIRED)
        cycle.status = "decided"
        self.cycle = None
        return [cycle.record(now)]

    def compare(self, model: str, version: str, since_ms: int) -> ShadowComparison:
        """Challenger vs production on the shadow bars whose label is realised."""
        self.deps.get("flush", lambda: None)()
        rows = self.deps["store"].query(
            "queries/shadow_outcomes", model=model, version=version,
            horizon=self.label_cfg.horizon, feature_set=FEATURE_SET_VERSION,
            since=from_ms(since_ms))
        known = [r for r in rows if r["close_ahead"] > 0]
        fwd = np.array([math.log(r["close_ahead"] / r["close"]) for r in known])
        thr = np.array([label_threshold(r["vol_ewma"], r["spread_bps"], self.label_cfg)
                        for r in known])
        y = classify(fwd, thr) if known else np.zeros(0, dtype=np.int64)
        prod = np.array([CLASS_OF[Action(r["production"])] for r in known], dtype=np.int64)
        chal = np.array([CLASS_OF[Action(r["challenger"])] for r in known], dtype=np.int64)
        return ShadowComparison.compare(y, prod, chal, margin=self.cfg.promote_margin,
                                        min_predictions=self.cfg.shadow_min)

    # --- recovery ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {"schedule": self.schedule.snapshot(), "now_ms": self.now_ms,
                "recent": list(self.recent),
                "next_eval_ms": self.next_eval_ms, "outcomes": list(self.outcomes),
                "trade_rows": list(self.trade_rows),
                "cycle": None if self.cycle is None else replace(self.cycle),
                "cycles": self.cycles, "waiting_manual": self.waiting_manual,
                "retry_ms": self.retry_ms}


@operator
def continuous_learning(step_id: str, inputs: Stream[ClockTick | JoinedTrade], cfg: ClmConfig,
                        label_cfg: LabelConfig, deps: dict[str, Any]) -> Stream[ClmCycle]:
    """The CLM state machine on one key (see the module docstring)."""
    keyed = op.key_on("one_clm", inputs, lambda _: "clm")
    out = op.stateful("clm", keyed, stage_builder(
        lambda _: ContinuousLearner(cfg, label_cfg, deps),
        lambda state: ContinuousLearner(cfg, label_cfg, deps, state)))
    return op.key_rm("unkey", out)

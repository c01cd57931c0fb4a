"""Continuous learning (CLM): triggers, retraining cycles, shadow tests and promotions.

The learner runs inside the decision engine (:mod:`operators.engine`) and sees what the engine
decides, in its event order: every bar (:meth:`ContinuousLearner.on_bar`) and every closed
trade (:meth:`ContinuousLearner.on_trade`). All periods are event time (the ticks' clock), so a
replay of weeks exercises them, and a replay fires them at the same bars every time.

1. **Triggers** (:mod:`learning.triggers`): time (``QT_CLM_RETRAIN_HOURS`` since the last
   cycle), drift checked every ``QT_CLM_DRIFT_HOURS`` (:mod:`learning.drift`, beyond chance,
   above ``QT_CLM_DRIFT_THRESHOLD``), performance checked every ``QT_CLM_PERF_HOURS`` (the
   production ensemble's realised call hit rate in that window against its reference: the
   validation hit rate recorded when it was trained, or after a promotion its own realised
   hit rate over its first calls; like with like), and manual (``python -m cli.retrain``).
   Automatic triggers need ``QT_CLM_AUTO_RETRAIN``. One cycle at a time.
2. **Data** (:class:`~learning.cycles.CycleRunner`): the stored feature vectors of the last
   ``QT_CLM_LOOKBACK_DAYS`` up to the trigger's event time, read after this learner's own
   feature archive was flushed up to there (so the data does not depend on timing), and the
   entry features of recently closed trades labelled by their outcome.
3. **Training** of all four models, from scratch and warm-started from production, in a child
   process while the flow goes on (``QT_CLM_BLOCKING`` waits instead, which replays need).
4. **Shadow**: the new versions vote beside production on every bar from the next one on
   (``shadow_predictions``) and :class:`~learning.judge.ShadowJudge` pairs their votes with
   production's on the realised labels.
5. **Decide** (:mod:`learning.evidence`): each challenger is promoted once it is *proven*
   better than its production model by more than ``QT_CLM_PROMOTE_MARGIN`` at
   ``QT_CLM_PROMOTE_CONFIDENCE`` and earns at least as much, retired once proven not better,
   or retired as unproven after ``QT_CLM_SHADOW_MAX`` bars. At most one variant per model is
   promoted; a promotion votes from the next bar. The cycle's drift reference is promoted with
   its first promoted model. A challenger a person took out of shadow (promoted, retired by
   ``python -m cli.registry``; the engine adopts such changes, :mod:`operators.versions`) is
   closed as ``abandoned`` at the next evaluation and its stage left as that person set it.
6. Every step of a cycle rewrites its ``clm_cycles`` row (status, data, training metrics, the
   shadow evidence with its intervals, and each decision with its reason).

Challengers left in shadow by a run that ended (or crashed) before their test concluded are
resumed by the next run that starts fresh: their cycle is read back from ``clm_cycles`` and
judged on new bars; if it cannot be found they are retired, with the reason recorded.
"""

from __future__ import annotations

import atexit
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.clickhouse import TableWriter
from learning.cycles import MIN_TRAIN_ROWS, ClmDeps, Cycle, CycleRunner
from learning.drift import MODEL_NAME as REFERENCE
from learning.drift import FeatureReference
from learning.evidence import EvidenceConfig, PromotionEvidence, judge_challenger
from learning.judge import ShadowJudge
from learning.trainer import CycleConfig, InlineTraining, TrainingJob
from learning.triggers import (
    Check,
    RetrainRequests,
    Trigger,
    TriggerConfig,
    TriggerSchedule,
    performance_degraded,
)
from models.labels import LabelConfig
from models.registry import ModelRegistry
from operators.versions import ActiveModels
from schemas.features import FEATURE_NAMES
from schemas.learning import ChallengerDecision, ClmCycle, CycleStatus, DriftCheck, ScoredBar
from schemas.timeutil import from_ms
from schemas.trades import JoinedTrade
from settings import DEFAULTS, ClmBudget, Settings
from storage.store import Store

log = logging.getLogger(__name__)

EVAL_EVERY_MS = 10 * 60_000
PERF_BASELINE_CALLS = 30  # realised calls that make a promoted ensemble's own reference


@dataclass(frozen=True)
class ClmConfig:
    """The continuous learner's knobs (``QT_CLM_*``; defaults: :data:`settings.DEFAULTS`)."""

    enabled: bool = DEFAULTS.clm_enabled
    auto_retrain: bool = DEFAULTS.clm_auto_retrain
    auto_promote: bool = DEFAULTS.clm_auto_promote
    drift_threshold: float = DEFAULTS.clm_drift_threshold
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    lookback_ms: int = int(DEFAULTS.clm_lookback_days * 86_400_000)
    blocking: bool = DEFAULTS.clm_blocking
    budget: ClmBudget = DEFAULTS.clm_budget
    triggers: TriggerConfig = field(default_factory=TriggerConfig)

    @classmethod
    def from_settings(cls, s: Settings) -> ClmConfig:
        return cls(
            s.clm_enabled,
            s.clm_auto_retrain,
            s.clm_auto_promote,
            s.clm_drift_threshold,
            EvidenceConfig.from_settings(s),
            int(s.clm_lookback_days * 86_400_000),
            s.clm_blocking,
            s.clm_budget,
            TriggerConfig.from_settings(s),
        )


class ContinuousLearner:
    """The CLM state machine (plain Python; one per engine). See the module docstring."""

    def __init__(
        self,
        cfg: ClmConfig,
        label_cfg: LabelConfig,
        runner: CycleRunner,
        models: ActiveModels,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.label_cfg = label_cfg
        self.runner = runner
        self.models = models
        fresh = state is None
        state = state or {}
        self.schedule = (
            TriggerSchedule.restore(cfg.triggers, state["schedule"])
            if "schedule" in state
            else TriggerSchedule(cfg.triggers)
        )
        self.now_ms: int = state.get("now_ms", -(2**62))
        self.next_eval_ms: int = state.get("next_eval_ms", 0)
        self.judge = ShadowJudge(label_cfg, state.get("judge"))
        self.cycle: Cycle | None = state.get("cycle")
        if self.cycle is not None:
            self.cycle = self.cycle.copy()
        self.recent: deque[tuple[int, tuple[float, ...]]] = deque(state.get("recent", ()))
        self.perf_reference: float | None = state.get("perf_reference")
        self.perf_since: int | None = state.get("perf_since")
        self.pending: list[ClmCycle] = []
        if fresh:
            self.perf_reference = self._trained_hit_rate()
            self.pending += self._adopt_orphans()
        elif self.cycle is not None and self.cycle.status is CycleStatus.TRAINING:
            # the resumed run lost the training process: train again from the recorded
            # trigger, into a fresh directory
            self.pending += self.runner.restart(self.cycle, self.now_ms)

    # --- inputs ------------------------------------------------------------------------------
    def on_bar(self, bar: ScoredBar) -> list[ClmCycle | DriftCheck]:
        out: list[ClmCycle | DriftCheck] = [*self.pending]
        self.pending = []
        if not self.cfg.enabled:
            return out
        self.runner.archive(bar.vector)
        self.judge.push(bar)
        if bar.vector.warm:
            self.recent.append((bar.ts_ms, tuple(bar.vector.values[n] for n in FEATURE_NAMES)))
        return out + self._advance(bar.ts_ms)

    def on_trade(self, joined: JoinedTrade) -> list[ClmCycle]:
        if not self.cfg.enabled:
            return []
        self.runner.observe(joined)
        return []

    def take_archived(self) -> int:
        """Feature vectors taken for the features table since the last call (the run
        summary's rows written)."""
        return self.runner.take_archived()

    def finish(self) -> list[ClmCycle]:
        """End of input: wait for a training cycle; a shadow test carries over to the next run
        (module docstring)."""
        out, self.pending = self.pending, []
        if self.cycle is not None and self.cycle.status is CycleStatus.TRAINING:
            out += self._trained(self.runner.wait(self.cycle, self.now_ms))
        if self.cycle is not None and self.cycle.status is CycleStatus.SHADOW:
            out += self._evaluate(self.now_ms)
            if self.cycle is not None:
                self.cycle.note(
                    "input ended before the shadow test concluded; the next run continues it"
                )
                out.append(self.cycle.record(self.now_ms))
        self.runner.flush()
        return out

    # --- time ---------------------------------------------------------------------------------
    def _advance(self, now: int) -> list[ClmCycle | DriftCheck]:
        if now <= self.now_ms:
            return []
        self.now_ms = now
        horizon = now - self.cfg.triggers.period_ms(Check.DRIFT)
        while self.recent and self.recent[0][0] <= horizon:
            self.recent.popleft()
        due = self.schedule.due(now)
        if self.cycle is not None:
            return [*self._progress(now)]
        checks: list[ClmCycle | DriftCheck] = []
        trigger = self._trigger(due, now, checks)
        if trigger is None:
            return checks
        out: list[ClmCycle | DriftCheck] = [*checks, *self.runner.start(*trigger, now)]
        if len(out) == len(checks):
            return out  # a manual request waits for data
        self.schedule.record_cycle(now)
        cycle = self.runner.cycle
        if cycle is not None and cycle.status is CycleStatus.TRAINING:
            self.cycle = cycle
            if self.cfg.blocking:
                out += self._trained(self.runner.wait(cycle, now))
        return out

    def _trigger(
        self, due: list[Check], now: int, checks: list[ClmCycle | DriftCheck]
    ) -> tuple[Trigger, str] | None:
        """What starts a cycle now: a manual request first, else (with auto-retrain on) the
        first due check that fires; the checks run are recorded in ``checks``."""
        trigger = self.runner.manual(now)
        if trigger is None and self.cfg.auto_retrain:
            for check in due:
                trigger = self._check(check, now, checks)
                if trigger is not None:
                    break
        return trigger

    def _progress(self, now: int) -> list[ClmCycle]:
        cycle = self.cycle
        assert cycle is not None
        if cycle.status is CycleStatus.TRAINING:
            result = self.runner.poll(cycle, now)
            return [] if result is None else self._trained(result)
        if now >= self.next_eval_ms:
            return self._evaluate(now)
        return []

    def _trained(self, records: list[ClmCycle]) -> list[ClmCycle]:
        cycle = self.cycle
        assert cycle is not None
        if cycle.status is CycleStatus.SHADOW:
            for model, version in cycle.challengers():
                self.models.add_shadow(model, version)
                self.judge.watch((model, version))
            self.next_eval_ms = self.now_ms + EVAL_EVERY_MS
        else:
            self.cycle = None  # failed
        return records

    def _check(
        self, check: Check, now: int, records: list[ClmCycle | DriftCheck]
    ) -> tuple[Trigger, str] | None:
        if check is Check.TIME:
            return Trigger.TIME, f"{self.cfg.triggers.retrain_hours:g} h since the last cycle"
        if check is Check.DRIFT:
            record = self.drift(now)
            if record is None:
                return None
            records.append(record)
            if record.fired:
                return Trigger.DRIFT, (
                    f"drift {record.corrected:.4f} beyond noise (raw PSI {record.raw:.4f}, "
                    f"noise {record.null_level:.4f}, {record.rows} rows) > "
                    f"{self.cfg.drift_threshold:g} over the last "
                    f"{self.cfg.triggers.drift_hours:g} h"
                )
            return None
        return self._performance(now)

    def drift(self, now: int) -> DriftCheck | None:
        """The last drift window's warm features checked against the production reference,
        beyond sampling noise (:mod:`learning.drift`); None without a reference or with too
        few rows (100) to judge."""
        registry = self.runner.registry
        version = registry.production_version(REFERENCE)
        if version is None:
            return None
        since = now - self.cfg.triggers.period_ms(Check.DRIFT)
        recent = [(ts, values) for ts, values in self.recent if since < ts <= now]
        if len(recent) < 100:
            return None
        ref: FeatureReference = registry.load(REFERENCE, version)
        score = ref.drift_check(
            np.array([v for _, v in recent], dtype=np.float64),
            ts_ms=np.array([t for t, _ in recent], dtype=np.int64),
        )
        return DriftCheck(
            from_ms(now),
            version,
            score.rows,
            score.method,
            score.raw,
            score.score,
            score.expected,
            score.null,
            score.corrected,
            self.cfg.drift_threshold,
            score.drifted(self.cfg.drift_threshold),
        )

    def _performance(self, now: int) -> tuple[Trigger, str] | None:
        period = self.cfg.triggers.period_ms(Check.PERFORMANCE)
        if self.perf_reference is None:
            if self.perf_since is not None:  # a promoted ensemble earns its own reference
                hits, calls = self.judge.call_hit_rate(self.perf_since)
                if calls >= PERF_BASELINE_CALLS:
                    self.perf_reference = hits / calls
            return None
        hits, calls = self.judge.call_hit_rate(now - period)
        if performance_degraded(hits, calls, self.perf_reference):
            return Trigger.PERFORMANCE, (
                f"ensemble call hit rate {hits}/{calls} below its reference "
                f"{self.perf_reference:.3f}"
            )
        return None

    def _trained_hit_rate(self) -> float | None:
        """The production ensemble's call hit rate on held-out data, as its training recorded
        it with the drift reference (None when not recorded)."""
        registry = self.runner.registry
        version = registry.production_version(REFERENCE)
        if version is None:
            return None
        metrics = registry.get(REFERENCE, version).metrics
        for key in ("ensemble.test_call_hit_rate", "ensemble.val_call_hit_rate"):
            value = metrics.get(key)
            if value is not None and math.isfinite(value):
                return float(value)
        return None

    # --- the shadow test -----------------------------------------------------------------------
    def _evaluate(self, now: int) -> list[ClmCycle]:
        cycle = self.cycle
        assert cycle is not None
        self.next_eval_ms = now + EVAL_EVERY_MS
        changed = False
        promoted_models = {
            name.split(".")[0]
            for name, d in cycle.decisions.items()
            if d == ChallengerDecision.PROMOTED
        }
        for name, version in cycle.versions.items():
            if name in cycle.decisions:
                continue
            if self._judge_challenger(cycle, name, version, promoted_models, now):
                changed = True
        if len(cycle.decisions) == len(cycle.versions):
            if cycle.reference_version and not cycle.reference_promoted:
                self.runner.retire_reference(cycle)
            cycle.status = CycleStatus.DECIDED
            self.cycle = None
            return [cycle.record(now)]
        return [cycle.record(now)] if changed else []

    def _judge_challenger(
        self, cycle: Cycle, name: str, version: str, promoted_models: set[str], now: int
    ) -> bool:
        """Decide one undecided challenger if its shadow rows (or a hand-made change) say
        enough; whether the cycle's record changed."""
        model = name.split(".")[0]
        key = (model, version)
        if key not in self.models.shadows:  # taken out of shadow by hand: its stage stays
            stage = self.runner.registry.get(model, version).stage.value
            self._decide(
                cycle,
                name,
                key,
                ChallengerDecision.ABANDONED,
                f"moved to {stage} by hand (python -m cli.registry) during the shadow test",
                retire=False,
            )
            return True
        if model in promoted_models:
            self._decide(
                cycle,
                name,
                key,
                ChallengerDecision.SUPERSEDED,
                "another variant of this model was promoted first",
            )
            return True
        rows = self.judge.rows.get(key)
        if rows is None or len(rows) == 0:
            return False
        evidence = judge_challenger(
            rows.arrays(), self.cfg.evidence, seed=f"{cycle.cycle_id}/{name}"
        )
        cycle.shadow_metrics.update({f"{name}.{k}": v for k, v in evidence.metrics().items()})
        self._act_on(cycle, name, key, evidence, promoted_models, now)
        return True

    def _act_on(
        self,
        cycle: Cycle,
        name: str,
        key: tuple[str, str],
        evidence: PromotionEvidence,
        promoted_models: set[str],
        now: int,
    ) -> None:
        """Carry out the evidence's decision: promote (or, with auto-promote off, keep as a
        candidate), retire, or nothing yet ("wait")."""
        model, version = key
        decision = evidence.decision
        if decision.value == "wait":
            return
        if decision.value == "promote":
            if self.cfg.auto_promote:
                self.models.promote(model, version)
                promoted_models.add(model)
                self._on_promotion(cycle, now)
                self._decide(
                    cycle, name, key, ChallengerDecision.PROMOTED, evidence.reason, retire=False
                )
            else:
                self._decide(
                    cycle,
                    name,
                    key,
                    ChallengerDecision.QUALIFIED,
                    evidence.reason + " (QT_CLM_AUTO_PROMOTE is off: kept as a "
                    "candidate to promote by hand)",
                    retire=False,
                )
                self.models.park(model, version)
        elif decision.value == "retire_not_better":
            self._decide(cycle, name, key, ChallengerDecision.RETIRED_NOT_BETTER, evidence.reason)
        else:
            self._decide(cycle, name, key, ChallengerDecision.RETIRED_UNPROVEN, evidence.reason)

    def _decide(
        self,
        cycle: Cycle,
        name: str,
        key: tuple[str, str],
        decision: ChallengerDecision,
        reason: str,
        retire: bool = True,
    ) -> None:
        cycle.decisions[name] = decision
        cycle.reasons[name] = reason
        if retire:
            self.models.retire(*key)
        self.judge.forget(key)

    def _on_promotion(self, cycle: Cycle, now: int) -> None:
        if not cycle.reference_promoted and cycle.reference_version:
            self.runner.promote_reference(cycle)
        self.perf_reference, self.perf_since = None, now

    # --- orphans ---------------------------------------------------------------------------------
    def _adopt_orphans(self) -> list[ClmCycle]:
        """Shadow versions left by an earlier run: resume their cycle or retire them."""
        if not self.models.shadows:
            return []
        cycle, orphans = self.runner.resume_orphans(self.models.shadows, self.now_ms)
        out = []
        if cycle is not None:
            self.cycle = cycle
            for model, version in cycle.challengers():
                self.judge.watch((model, version))
            out.append(cycle.record(cycle.started_ms))
        for model, version, record in orphans:
            self.models.retire(model, version)
            if record is not None:
                out.append(record)
        return out

    # --- recovery ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        self.runner.flush()  # the archive holds every bar this snapshot counts as done
        return {
            "schedule": self.schedule.snapshot(),
            "now_ms": self.now_ms,
            "next_eval_ms": self.next_eval_ms,
            "judge": self.judge.snapshot(),
            "cycle": None if self.cycle is None else self.cycle.copy(),
            "recent": list(self.recent),
            "perf_reference": self.perf_reference,
            "perf_since": self.perf_since,
            "runner": self.runner.snapshot(),
        }


__all__ = ["MIN_TRAIN_ROWS", "ClmConfig", "ContinuousLearner"]


def clm_factory(
    settings: Settings, registry: ModelRegistry, store: Store
) -> Callable[[ActiveModels, Any], ContinuousLearner]:
    """How the engine (or the learning flow) builds its continuous learner from ``settings``:
    a training job (a child process, or inline with ``QT_CLM_BLOCKING``; shut down at exit),
    the retrain requests' directory and an archive writer for the cycles' data."""
    trainer = InlineTraining() if settings.clm_blocking else TrainingJob()
    atexit.register(trainer.shutdown)
    cfg = ClmConfig.from_settings(settings)
    label_cfg = LabelConfig.from_settings(settings)
    archive = TableWriter(store, settings.sink_batch_rows, settings.sink_flush_seconds)
    clm_deps = ClmDeps(
        registry,
        store,
        trainer,
        RetrainRequests(settings.clm_dir),
        settings.clm_dir,
        CycleConfig.from_settings(settings),
        archive,
    )

    def build(models: ActiveModels, state: Any) -> ContinuousLearner:
        runner = CycleRunner(
            clm_deps, label_cfg, cfg.lookback_ms, None if state is None else state["runner"]
        )
        return ContinuousLearner(cfg, label_cfg, runner, models, state)

    return build

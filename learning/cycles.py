"""One CLM cycle, from its trigger to challengers in shadow: data, training, publishing.

:class:`CycleRunner` does what a cycle needs from the outside world, with typed dependencies:
the feature archive and the store (training data), the training job (a child process), the
registry (challengers in, stages changed), manual retrain requests, and the entry features of
closed trades. :class:`~learning.clm.ContinuousLearner` decides *when*; this module does *how*.

Deterministic by construction:

- The cycle id is the count of cycles and the trigger's event time.
- Training data is every stored feature vector of the lookback window up to the trigger's
  event time, read after the archive (:meth:`CycleRunner.archive`, the features table, written
  by this runner from the bars the engine decided) was flushed: the store then holds every bar
  up to there, whatever the sink's timing.
- Trade rows (closed trades' entry features labelled by their outcome, a winning long BUY, a
  winning short SELL, a loser HOLD) carry their exit time as the time their label became
  known, so the trainer purges those whose label ends after its validation cut.
- Every publish is keyed (``<cycle id>/<challenger>``, ``<cycle id>/reference``), so a cycle
  retrained after a crash reuses what was already published, and a retraining always writes a
  fresh work directory.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from learning.drift import MODEL_NAME as REFERENCE
from learning.drift import FeatureReference
from learning.trainer import (
    CycleConfig,
    CycleResult,
    InlineTraining,
    TrainingError,
    TrainingJob,
    copy_writer,
)
from learning.triggers import RetrainRequests, Trigger
from models.base import MODEL_NAMES
from models.dataset import History, TrainingSet, feature_matrix
from models.labels import LabelConfig
from models.registry import ModelRegistry
from schemas import codec
from schemas.features import FEATURE_SET_VERSION, FeatureVector
from schemas.learning import ChallengerDecision, ClmCycle, CycleStatus
from schemas.registry import ModelStage
from schemas.signals import CLASS_OF, Action
from schemas.tables import feature_rows
from schemas.timeutil import from_ms, iso, to_ms
from schemas.trades import JoinedTrade, Side
from storage.store import Store

log = logging.getLogger(__name__)

MIN_TRAIN_ROWS = 500
RETRY_MS = 10 * 60_000


@dataclass
class Cycle:
    """A cycle's state and its ``clm_cycles`` row (challengers keyed ``<model>[.warm]``)."""

    cycle_id: str
    trigger: str
    reason: str
    started_ms: int
    status: CycleStatus = CycleStatus.TRAINING
    data_from: int | None = None
    data_to: int | None = None
    rows: int = 0
    train_metrics: dict[str, float] = field(default_factory=dict)
    shadow_metrics: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    decisions: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    reference_version: str = ""
    reference_json: str = ""
    reference_promoted: bool = False
    work_dir: str = ""

    def challengers(self) -> list[tuple[str, str]]:
        """(model, version) of every challenger still waiting for its verdict."""
        return [
            (name.split(".")[0], v)
            for name, v in self.versions.items()
            if name not in self.decisions
        ]

    def note(self, text: str) -> None:
        self.reason += f"; {text}"

    def record(self, now_ms: int) -> ClmCycle:
        return ClmCycle(
            self.cycle_id,
            self.trigger,
            self.reason,
            self.status,
            from_ms(self.started_ms),
            None if self.data_from is None else from_ms(self.data_from),
            None if self.data_to is None else from_ms(self.data_to),
            self.rows,
            dict(self.train_metrics),
            dict(self.shadow_metrics),
            dict(self.versions),
            {k: str(v) for k, v in self.decisions.items()},
            from_ms(now_ms),
            dict(self.reasons),
            self.reference_version,
        )

    def copy(self) -> Cycle:
        return replace(
            self,
            train_metrics=dict(self.train_metrics),
            shadow_metrics=dict(self.shadow_metrics),
            versions=dict(self.versions),
            decisions=dict(self.decisions),
            reasons=dict(self.reasons),
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Cycle:
        return cls(
            cycle_id=row["cycle_id"],
            trigger=row["trigger"],
            reason=row["reason"],
            started_ms=to_ms(row["started_ts"]),
            status=CycleStatus(row["status"]),
            data_from=None if row["data_from"] is None else to_ms(row["data_from"]),
            data_to=None if row["data_to"] is None else to_ms(row["data_to"]),
            rows=int(row["rows"]),
            train_metrics=dict(row["train_metrics"]),
            shadow_metrics=dict(row["shadow_metrics"]),
            versions=dict(row["versions"]),
            decisions={k: ChallengerDecision(v) for k, v in row["decisions"].items()},
            reasons=dict(row["reasons"]),
            reference_version=row["reference_version"],
        )


@dataclass
class ClmDeps:
    """A cycle's outside world. ``archive`` is the buffered writer of the features table
    (``None`` when the flow writes features itself and this runner only reads them)."""

    registry: ModelRegistry
    store: Store
    trainer: TrainingJob | InlineTraining
    requests: RetrainRequests
    work_dir: Path
    train_config: CycleConfig
    archive: Any = None


class CycleRunner:
    """Starts, trains and publishes cycles (module docstring)."""

    def __init__(
        self,
        deps: ClmDeps,
        label_cfg: LabelConfig,
        lookback_ms: int,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.deps = deps
        self.label_cfg = label_cfg
        self.lookback_ms = lookback_ms
        state = state or {}
        self.cycles: int = state.get("cycles", 0)
        self.trade_rows: deque[tuple[FeatureVector, int, int]] = deque(
            state.get("trade_rows", ()), maxlen=20_000
        )
        self.waiting_manual: str | None = state.get("waiting_manual")
        self.retry_ms: int = state.get("retry_ms", 0)
        self.cycle: Cycle | None = None
        self._features: list[FeatureVector] = []
        self._archived = 0  # vectors taken for the archive since :meth:`take_archived`

    @property
    def registry(self) -> ModelRegistry:
        return self.deps.registry

    # --- what the engine hands over ----------------------------------------------------------
    def archive(self, vector: FeatureVector) -> None:
        """A decided bar's feature vector, for the features table (when this runner writes it)."""
        if self.deps.archive is None:
            return
        self._features.append(vector)
        self._archived += 1
        if len(self._features) >= 5_000:
            self._write()

    def take_archived(self) -> int:
        """How many vectors were taken for the archive since the last call (the run
        summary's rows written; all stored once :meth:`flush` returns)."""
        n, self._archived = self._archived, 0
        return n

    def _write(self) -> None:
        if self._features:
            self.deps.archive.write_batch([feature_rows(self._features)])
            self._features = []

    def flush(self) -> None:
        """Every archived vector stored (before a read, and at snapshots)."""
        if self.deps.archive is not None:
            self._write()
            self.deps.archive.flush()

    def observe(self, j: JoinedTrade) -> None:
        """A closed trade's entry features, labelled by its outcome, known at its exit."""
        won = j.closed.net_pnl > 0
        side = Action.BUY if j.opened.side is Side.LONG else Action.SELL
        label = CLASS_OF[side] if won else CLASS_OF[Action.HOLD]
        e = j.opened.entry
        vector = FeatureVector(
            j.opened.symbol,
            j.opened.entry_ts,
            j.opened.entry_ts,
            e.feature_set,
            True,
            j.opened.entry_price,
            dict(e.features),
            e.window,
        )
        self.trade_rows.append((vector, label, to_ms(j.closed.exit_ts)))

    def manual(self, now: int) -> tuple[Trigger, str] | None:
        """A manual request, once there may be data to train on."""
        claimed = self.deps.requests.claim()
        if claimed:
            reasons = "; ".join(str(r.get("reason", "manual")) for r in claimed)
            self.waiting_manual = (
                f"{self.waiting_manual}; {reasons}" if self.waiting_manual else reasons
            )
        if self.waiting_manual is None or now < self.retry_ms:
            return None
        return Trigger.MANUAL, self.waiting_manual

    # --- a cycle -------------------------------------------------------------------------------
    def _vectors(self, since: int, until: int) -> list[FeatureVector]:
        self.flush()
        rows = self.deps.store.query(
            "queries/features_between",
            feature_set=FEATURE_SET_VERSION,
            since=from_ms(since),
            until=from_ms(until),
        )
        return [codec.from_row(FeatureVector, r) for r in rows]

    def start(self, trigger: Trigger, reason: str, now: int) -> list[ClmCycle]:
        """Start a cycle at event time ``now``: its ``clm_cycles`` row, or nothing when a
        manual request has to wait for data (it is retried 10 minutes of event time later)."""
        history = History()
        for v in self._vectors(now - self.lookback_ms, now):
            history.vectors.setdefault(v.symbol, []).append(v)
        warm = sum(v.warm for vs in history.vectors.values() for v in vs)
        if warm < MIN_TRAIN_ROWS and trigger is Trigger.MANUAL:
            self.retry_ms = now + RETRY_MS
            return []
        if trigger is Trigger.MANUAL:
            self.waiting_manual = None
        self.cycles += 1
        cycle = Cycle(f"clm-{self.cycles:04d}-{iso(from_ms(now))}", trigger.value, reason, now)
        self.cycle = cycle
        if warm < MIN_TRAIN_ROWS:
            cycle.status = CycleStatus.FAILED
            cycle.note(f"not trained: {warm} warm bars stored, {MIN_TRAIN_ROWS} needed")
            return [cycle.record(now)]
        warm_vectors = [v for vs in history.vectors.values() for v in vs if v.warm]
        cycle.reference_json = FeatureReference.fit(
            feature_matrix(warm_vectors),
            ts_ms=np.array([to_ms(v.ts) for v in warm_vectors], dtype=np.int64),
        ).to_json()
        self._train(cycle, history, now)
        return [cycle.record(now)]

    def _train(self, cycle: Cycle, history: History, now: int) -> None:
        work = self.deps.work_dir / f"{cycle.cycle_id.replace(':', '')}-{uuid.uuid4().hex[:8]}"
        cycle.work_dir = str(work)
        warm_from = {}
        for name in MODEL_NAMES:  # warm-started challengers continue from production
            version = self.registry.production_version(name)
            if version is not None:
                warm_from[name] = self.registry.verified_path(name, version)
        self.deps.trainer.start(
            history,
            self._extra_rows(now),
            self.label_cfg,
            self.deps.train_config,
            work,
            warm_from=warm_from,
        )

    def restart(self, cycle: Cycle, now: int) -> list[ClmCycle]:
        """Train a cycle again after a resume lost its training process."""
        history = History()
        for v in self._vectors(cycle.started_ms - self.lookback_ms, cycle.started_ms):
            history.vectors.setdefault(v.symbol, []).append(v)
        cycle.note("training restarted after a resume")
        self.cycle = cycle
        self._train(cycle, history, cycle.started_ms)
        return [cycle.record(now)]

    def _extra_rows(self, now: int) -> TrainingSet | None:
        """Closed trades' entry features labelled by outcome, known by ``now``."""
        rows = [
            (v, y, exit_ms)
            for v, y, exit_ms in self.trade_rows
            if v.feature_set == FEATURE_SET_VERSION and exit_ms <= now
        ]
        if not rows:
            return None
        vectors = [v for v, _, _ in rows]
        n = len(rows)
        return TrainingSet(
            X=feature_matrix(vectors),
            y=np.array([y for _, y, _ in rows], np.int64),
            ts_ms=np.array([to_ms(v.ts) for v in vectors], dtype=np.int64),
            symbols=np.array([v.symbol for v in vectors], dtype=object),
            forward_return=np.full(n, np.nan),
            threshold=np.full(n, np.nan),
            vectors=vectors,
            label_end_ms=np.array([e for _, _, e in rows], dtype=np.int64),
        )

    def poll(self, cycle: Cycle, now: int) -> list[ClmCycle] | None:
        """The cycle's records once its training ended (None while it runs)."""
        try:
            result = self.deps.trainer.poll()
        except TrainingError as exc:
            return self._failed(cycle, exc, now)
        return None if result is None else self._publish(cycle, result, now)

    def wait(self, cycle: Cycle, now: int) -> list[ClmCycle]:
        try:
            return self._publish(cycle, self.deps.trainer.wait(), now)
        except TrainingError as exc:
            return self._failed(cycle, exc, now)

    def _failed(self, cycle: Cycle, exc: Exception, now: int) -> list[ClmCycle]:
        log.error("CLM cycle %s failed: %s", cycle.cycle_id, exc)
        cycle.status = CycleStatus.FAILED
        cycle.note(f"training failed: {str(exc)[:300]}")
        shutil.rmtree(cycle.work_dir, ignore_errors=True)
        return [cycle.record(now)]

    def _publish(self, cycle: Cycle, result: CycleResult, now: int) -> list[ClmCycle]:
        registry = self.registry
        cycle.rows = int(result.rows.get("train", 0))
        cycle.data_from, cycle.data_to = result.train_from_ms, result.val_from_ms
        for name in sorted(result.paths, key=_challenger_order):
            metrics = result.metrics.get(name, {})
            cycle.train_metrics.update(
                {f"{name}.{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
            )
            model = name.split(".")[0]
            mv = registry.publish(
                model,
                copy_writer(Path(result.paths[name])),
                stage=ModelStage.SHADOW,
                feature_set=FEATURE_SET_VERSION,
                data_from=from_ms(result.train_from_ms),
                data_to=from_ms(result.val_from_ms),
                metrics=metrics,
                params={"trigger": cycle.trigger, "cycle": cycle.cycle_id, "challenger": name},
                key=f"{cycle.cycle_id}/{name}",
            )
            cycle.versions[name] = mv.version
        for key, seconds in result.seconds.items():
            cycle.train_metrics[f"seconds.{key}"] = float(seconds)
        reference = FeatureReference.from_json(cycle.reference_json)
        ensemble = result.metrics.get("ensemble", {})
        cycle.reference_version = registry.publish(
            REFERENCE,
            reference.save,
            stage=ModelStage.SHADOW,
            feature_set=FEATURE_SET_VERSION,
            data_from=from_ms(result.train_from_ms),
            data_to=from_ms(result.val_from_ms),
            metrics={
                f"ensemble.{k}": float(v) for k, v in ensemble.items() if isinstance(v, int | float)
            },
            params={"cycle": cycle.cycle_id},
            key=f"{cycle.cycle_id}/reference",
        ).version
        shutil.rmtree(cycle.work_dir, ignore_errors=True)
        cycle.status = CycleStatus.SHADOW
        return [cycle.record(now)]

    def promote_reference(self, cycle: Cycle) -> None:
        self.registry.set_stage(REFERENCE, cycle.reference_version, ModelStage.PRODUCTION)
        cycle.reference_promoted = True

    def retire_reference(self, cycle: Cycle) -> None:
        self.registry.set_stage(REFERENCE, cycle.reference_version, ModelStage.RETIRED)

    # --- challengers an earlier run left in shadow --------------------------------------------
    def resume_orphans(
        self, shadows: list[tuple[str, str]], now: int
    ) -> tuple[Cycle | None, list[tuple[str, str, ClmCycle | None]]]:
        """Resume the cycle the shadow versions belong to (read back from ``clm_cycles``), or
        give the ones that cannot be resumed back for retirement with their cycle's record."""
        by_cycle: dict[str, list[tuple[str, str]]] = {}
        for model, version in shadows:
            params = self.registry.manifest(model, version).get("params", {})
            by_cycle.setdefault(str(params.get("cycle", "")), []).append((model, version))
        resumed: Cycle | None = None
        retired: list[tuple[str, str, ClmCycle | None]] = []
        for cycle_id in sorted(by_cycle):
            rows = (
                self.deps.store.query("queries/clm_cycle_by_id", cycle_id=cycle_id)
                if cycle_id
                else []
            )
            members = by_cycle[cycle_id]
            if rows and resumed is None and rows[0]["status"] == CycleStatus.SHADOW:
                resumed = _resumed_cycle(rows[0], members)
                self.cycle = resumed
                continue
            record = _abandoned_record(rows[0], members, now) if rows else None
            for model, version in members:
                log.warning(
                    "retiring orphan shadow challenger %s %s (cycle %r)", model, version, cycle_id
                )
                retired.append((model, version, None))
            if record is not None:
                retired[-1] = (*retired[-1][:2], record)
        return resumed, retired

    def snapshot(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "trade_rows": list(self.trade_rows),
            "waiting_manual": self.waiting_manual,
            "retry_ms": self.retry_ms,
        }


def _resumed_cycle(row: dict[str, Any], members: list[tuple[str, str]]) -> Cycle:
    """The shadow cycle read back from ``row``, its challengers no longer in shadow
    (``members`` are those still there) marked abandoned."""
    resumed = Cycle.from_row(row)
    live = set(members)
    for name, version in list(resumed.versions.items()):
        if name not in resumed.decisions and (name.split(".")[0], version) not in live:
            resumed.decisions[name] = ChallengerDecision.ABANDONED
            resumed.reasons[name] = "no longer in shadow in the registry"
    resumed.note(
        "shadow test resumed by a new run (earlier paired bars are not kept: the test starts again)"
    )
    return resumed


def _abandoned_record(row: dict[str, Any], members: list[tuple[str, str]], now: int) -> ClmCycle:
    """The final record of a cycle that cannot be resumed: abandoned, with its orphan
    challengers (``members``) retired."""
    cycle = Cycle.from_row(row)
    cycle.status = CycleStatus.ABANDONED
    for name, version in cycle.versions.items():
        if (name.split(".")[0], version) in set(members):
            cycle.decisions[name] = ChallengerDecision.ABANDONED
            cycle.reasons[name] = "left in shadow by an earlier run; retired"
    return cycle.record(now if now > 0 else cycle.started_ms)


def _challenger_order(name: str) -> tuple[int, str]:
    model = name.split(".")[0]
    return (MODEL_NAMES.index(model) if model in MODEL_NAMES else len(MODEL_NAMES), name)

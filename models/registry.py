"""The model registry: versioned artifacts on disk, stages, checksums, and a ClickHouse record.

Layout under ``QT_REGISTRY_DIR`` (default ``$QT_HOME/registry``)::

    <model>/<version>/            immutable once published: native artifact files
    <model>/<version>/manifest.json   file digests, feature set, data range, metrics, params
    <model>/stages.json           {version: {stage, promoted_at}} - the stage authority

- **Atomic publish**: files are written into a hidden temporary directory and renamed into
  place, so a reader never sees a half-written version.
- **Atomic stage changes**: ``stages.json`` is replaced with ``os.replace``; promoting a version
  to production retires the previous production version in the same write.
- **Integrity**: loading recomputes every file's SHA-256 and refuses a mismatch
  (:class:`IntegrityError`), so a tampered or truncated artifact never runs.
- **No pickles**: artifacts are native formats (XGBoost UBJ, LightGBM text, torch state dicts
  loaded with ``weights_only=True``, SB3 zip); the manifest is JSON.
- Every publish and stage change is also upserted into the ``model_registry`` table.
- **Idempotent publish**: a publish may carry a ``key`` (for example PPO update n of a policy
  lineage, or a CLM cycle's challenger); publishing the same key again returns the version
  already published instead of writing another, so a replay after a crash never applies a
  learning step twice.

Readers (the live ensemble step) call :meth:`ModelRegistry.production_version` on every bar;
it re-reads ``stages.json`` only when its modification time changed.

``stages.json`` is the only record of which version is in production, so a model directory
that has versions but no readable ``stages.json`` (deleted, or not valid JSON) is an error
(:class:`StagesMissing`) that says how to repair it, never "no versions" (which would make
the live flow retrain everything and retire the other models' production versions). The first
publish of a model writes an empty ``stages.json`` before its version appears, so a model
directory with versions always has one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cli.errors import UserError
from schemas.registry import ModelVersion, Stage
from schemas.timeutil import iso, parse_iso
from storage.store import Store

MANIFEST = "manifest.json"
STAGES = "stages.json"


class IntegrityError(RuntimeError):
    """An artifact's bytes differ from the digest recorded when it was published."""


class RegistryError(RuntimeError):
    """A missing model/version or an impossible stage change."""


REPAIR_COMMAND = "python -m cli.registry repair"


class StagesMissing(RegistryError, UserError):
    """A model has versions on disk but no readable ``stages.json``."""


def version_span(versions: list[str]) -> str:
    """``v0001`` or ``v0001..v0003`` (sorted), for messages."""
    vs = sorted(versions)
    return vs[0] if len(vs) == 1 else f"{vs[0]}..{vs[-1]}" if vs else "none"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_digest(files: Mapping[str, str]) -> str:
    """One SHA-256 over the (file name, file digest) pairs, in name order."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _dt(text: str | None) -> datetime | None:
    return None if not text else parse_iso(text)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _StagesCache:
    mtime_ns: int
    stages: dict[str, dict[str, Any]]


class ModelRegistry:
    """Versioned model store. Thread-safe; several processes may read it."""

    def __init__(self, root: Path, store: Store | None = None,
                 model_dirs: Mapping[str, Path] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = store
        self._dirs = {k: Path(v) for k, v in (model_dirs or {}).items()}
        self._lock = threading.RLock()
        self._cache: dict[str, _StagesCache] = {}
        self._keys: dict[str, dict[str, str]] = {}  # model -> publish key -> version

    def model_dir(self, model: str) -> Path:
        """Where a model's versions live (``QT_RL_V3_CHECKPOINT_DIR`` may move ``ppo``)."""
        return self._dirs.get(model, self.root / model)

    # --- writing ----------------------------------------------------------------------------
    def publish(self, model: str, write: Callable[[Path], list[Path]], *, stage: Stage,
                feature_set: str, data_from: datetime | None = None,
                data_to: datetime | None = None, metrics: Mapping[str, float] | None = None,
                params: Mapping[str, Any] | None = None,
                key: str | None = None) -> ModelVersion:
        """Write a new version with ``write(directory)`` and give it ``stage``.

        With a ``key`` that was published before, nothing is written or changed: the version
        published under it is returned (module docstring, "idempotent publish").
        """
        if key is not None:
            with self._lock:
                existing = self.keyed(model).get(key)
            if existing is not None:
                mv = self.get(model, existing)
                if mv.stage is Stage.CANDIDATE:  # a crash came between publish and stage
                    mv = self.set_stage(model, existing, stage)
                return mv
        model_dir = self.model_dir(model)
        model_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._read_stages(model)  # a registry missing its stages: stop before writing
        tmp = model_dir / f".publish-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            write(tmp)
            files = {p.name: _file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            if not files:
                raise RegistryError(f"{model}: the writer produced no artifact files")
            created = _now()
            with self._lock:
                version = self._next_version(model)
                manifest = {
                    "model": model, "version": version, "files": files,
                    "sha256": artifact_digest(files), "feature_set": feature_set,
                    "data_from": iso(data_from) if data_from else None,
                    "data_to": iso(data_to) if data_to else None,
                    "metrics": {k: float(v) for k, v in (metrics or {}).items()},
                    "params": dict(params or {}), "created_at": iso(created),
                    "key": key,
                }
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
                if not (model_dir / STAGES).exists():  # never versions without stages.json
                    _write_json_atomic(model_dir / STAGES, {})
                os.rename(tmp, model_dir / version)  # atomic: the version appears whole
                if key is not None:
                    self.keyed(model)[key] = version
                self._set_stage_locked(model, version, stage)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(model, version)

    def keyed(self, model: str) -> dict[str, str]:
        """Publish key -> version of ``model`` (read from the manifests once, then kept)."""
        known = self._keys.get(model)
        if known is None:
            known = {}
            for path in sorted(self.model_dir(model).glob("v[0-9]*/" + MANIFEST)):
                key = json.loads(path.read_text()).get("key")
                if key is not None:
                    known[key] = path.parent.name
            self._keys[model] = known
        return known

    def version_names(self, model: str) -> list[str]:
        """Versions of ``model`` on disk (published, whatever ``stages.json`` says)."""
        directory = self.model_dir(model)
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.glob("v[0-9]*")
                      if p.name[1:].isdigit() and (p / MANIFEST).is_file())

    def _next_version(self, model: str) -> str:
        existing = [int(p.name[1:]) for p in self.model_dir(model).glob("v[0-9]*")
                    if p.name[1:].isdigit()]
        return f"v{max(existing, default=0) + 1:04d}"

    def set_stage(self, model: str, version: str, stage: Stage) -> ModelVersion:
        """Move a version to ``stage``; a new production version retires the previous one."""
        with self._lock:
            self._set_stage_locked(model, version, stage)
        return self.get(model, version)

    def _set_stage_locked(self, model: str, version: str, stage: Stage) -> None:
        if not (self.model_dir(model) / version / MANIFEST).is_file():
            raise RegistryError(f"{model} {version}: no such version in {self.root}")
        stages = dict(self._read_stages(model))
        now = iso(_now())
        changed = [version]
        if stage is Stage.PRODUCTION:
            for v, entry in stages.items():
                if v != version and entry["stage"] == Stage.PRODUCTION:
                    stages[v] = {**entry, "stage": Stage.RETIRED.value}
                    changed.append(v)
        entry = dict(stages.get(version, {}))
        entry["stage"] = stage.value
        if stage is Stage.PRODUCTION:
            entry["promoted_at"] = now
        stages[version] = entry
        _write_json_atomic(self.model_dir(model) / STAGES, stages)
        self._cache.pop(model, None)
        if self.store is not None:
            for v in changed:
                self._record(self.get(model, v))

    def _record(self, mv: ModelVersion) -> None:
        assert self.store is not None
        row = [mv.model, mv.version, mv.stage.value, mv.sha256, mv.feature_set, mv.data_from,
               mv.data_to, mv.metrics, mv.created_at, mv.promoted_at, _now()]
        self.store.insert("model_registry", REGISTRY_COLUMNS, [row])

    # --- reading ----------------------------------------------------------------------------
    def _read_stages(self, model: str) -> dict[str, dict[str, Any]]:
        path = self.model_dir(model) / STAGES
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            self._cache.pop(model, None)
            versions = self.version_names(model)
            if versions:
                raise self._stages_missing(model, "is missing", versions) from None
            return {}
        cached = self._cache.get(model)
        if cached is not None and cached.mtime_ns == mtime:
            return cached.stages
        try:
            stages = json.loads(path.read_text())
            if not isinstance(stages, dict) or not all(
                    isinstance(e, dict) and "stage" in e for e in stages.values()):
                raise ValueError("not a {version: {stage: ...}} object")
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise self._stages_missing(model, f"is corrupt ({exc})",
                                       self.version_names(model)) from None
        self._cache[model] = _StagesCache(mtime, stages)
        return stages

    def _stages_missing(self, model: str, what: str, versions: list[str]) -> StagesMissing:
        exist = ("(no versions)" if not versions else
                 f"but version {versions[0]} exists" if len(versions) == 1 else
                 f"but versions {version_span(versions)} exist")
        return StagesMissing(
            f"model registry {self.model_dir(model)}: {STAGES} {what} {exist}; restore it "
            f"from a backup, or rebuild it from the model_registry table with: "
            f"{REPAIR_COMMAND}")

    def manifest(self, model: str, version: str) -> dict[str, Any]:
        path = self.model_dir(model) / version / MANIFEST
        if not path.is_file():
            raise RegistryError(f"{model} {version}: no such version in {self.root}")
        return json.loads(path.read_text())

    def get(self, model: str, version: str) -> ModelVersion:
        m = self.manifest(model, version)
        entry = self._read_stages(model).get(version, {"stage": Stage.CANDIDATE.value})
        return ModelVersion(
            model=model, version=version, stage=Stage(entry["stage"]), sha256=m["sha256"],
            feature_set=m["feature_set"], data_from=_dt(m["data_from"]),
            data_to=_dt(m["data_to"]), metrics=dict(m["metrics"]),
            created_at=_dt(m["created_at"]), promoted_at=_dt(entry.get("promoted_at")),
        )

    def versions(self, model: str, stage: Stage | None = None) -> list[ModelVersion]:
        with self._lock:
            stages = self._read_stages(model)
        out = [self.get(model, v) for v in sorted(stages)]
        return [v for v in out if stage is None or v.stage is stage]

    def production_version(self, model: str) -> str | None:
        """The production version of ``model`` (cheap: re-reads only after a change)."""
        with self._lock:
            for version, entry in self._read_stages(model).items():
                if entry["stage"] == Stage.PRODUCTION:
                    return version
        return None

    def versions_in(self, model: str, stage: Stage) -> list[str]:
        """Versions of ``model`` in ``stage`` (cheap, like :meth:`production_version`)."""
        with self._lock:
            return sorted(v for v, e in self._read_stages(model).items()
                          if e["stage"] == stage)

    def production_span(self, models: tuple[str, ...]) -> tuple[datetime, datetime] | None:
        """The event-time span the production versions of ``models`` were trained on (the
        earliest ``data_from`` to the latest ``data_to``), None when none records one."""
        spans = []
        for m in models:
            version = self.production_version(m)
            if version is not None:
                mv = self.get(m, version)
                if mv.data_from is not None and mv.data_to is not None:
                    spans.append((mv.data_from, mv.data_to))
        if not spans:
            return None
        return min(a for a, _ in spans), max(b for _, b in spans)

    def has_production(self, models: tuple[str, ...]) -> bool:
        return all(self.production_version(m) is not None for m in models)

    def verified_path(self, model: str, version: str) -> Path:
        """The version's directory, after checking every file against its recorded digest."""
        m = self.manifest(model, version)
        directory = self.model_dir(model) / version
        for name, digest in m["files"].items():
            path = directory / name
            if not path.is_file():
                raise IntegrityError(f"{model} {version}: artifact file {name} is missing")
            actual = _file_sha256(path)
            if actual != digest:
                raise IntegrityError(
                    f"{model} {version}: {name} has SHA-256 {actual[:12]}..., the registry "
                    f"recorded {digest[:12]}...; refusing to load a modified artifact")
        extra = {p.name for p in directory.iterdir()} - set(m["files"]) - {MANIFEST}
        if extra:
            raise IntegrityError(f"{model} {version}: unexpected files {sorted(extra)}")
        if artifact_digest(m["files"]) != m["sha256"]:
            raise IntegrityError(f"{model} {version}: manifest digest does not match its files")
        return directory

    def load(self, model: str, version: str | None = None) -> Any:
        """Load a verified version (default: production) with its model class."""
        from models.base import MODEL_LOCK

        version = version or self.production_version(model)
        if version is None:
            raise RegistryError(f"{model}: no production version in {self.root}")
        with MODEL_LOCK:
            return loader(model)(self.verified_path(model, version))


REGISTRY_COLUMNS = ("model", "version", "stage", "sha256", "feature_set", "data_from",
                    "data_to", "metrics", "created_at", "promoted_at", "updated_at")


# model name -> (module, class) whose ``load(directory)`` rebuilds a version; imported only
# when needed (neuralforecast takes seconds to import)
LOADERS: dict[str, tuple[str, str]] = {
    "xgboost": ("models.trees", "XGBoostModel"),
    "lightgbm": ("models.trees", "LightGBMModel"),
    "nhits": ("models.sequence", "NHITSModel"),
    "patchtst": ("models.sequence", "PatchTSTModel"),
    "ppo": ("rl.policy", "PolicyRuntime"),
    "feature_reference": ("learning.drift", "FeatureReference"),
}


def loader(model: str) -> Callable[[Path], Any]:
    """The ``load(directory)`` of a model name."""
    if model not in LOADERS:
        raise RegistryError(f"unknown model name {model!r}")
    module, cls = LOADERS[model]
    return getattr(importlib.import_module(module), cls).load


def open_registry(settings: Any, store: Store | None = None) -> ModelRegistry:
    """The registry ``settings`` name (``QT_REGISTRY_DIR``, ``QT_RL_V3_CHECKPOINT_DIR``)."""
    return ModelRegistry(settings.registry_dir, store, {"ppo": settings.ppo_dir})

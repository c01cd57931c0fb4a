"""The model registry: versioned artifacts on disk, stages, checksums, and a ClickHouse record.

Layout under ``QT_REGISTRY_DIR`` (default ``$QT_HOME/registry``): ``<model>/<version>/``
(immutable once published: native artifact files and ``manifest.json``) and
``<model>/stages.json``, the stage authority. Publishes and stage changes are atomic (a
temporary directory renamed into place; ``os.replace`` under a thread lock and an ``flock``),
loading refuses an artifact whose SHA-256 does not match (:class:`IntegrityError`), artifacts
are native formats (no pickles), and every publish and stage change is also upserted into the
``model_registry`` table (or spooled until a store records it). Publishing the same ``key``
again returns the version already published, so a replay after a crash never applies a
learning step twice.

A model directory that has versions but no readable ``stages.json`` is an error
(:class:`StagesMissing`), never "no versions"; ``python -m cli.registry repair`` rebuilds it.

Design notes: docs/registry.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from errors import UserError
from schemas.registry import ModelStage, ModelVersion
from schemas.timeutil import iso, parse_iso
from storage.store import Store

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAGES = "stages.json"
GENERATION = "generation.json"
HISTORY = "history.jsonl"
UNRECORDED = "unrecorded.jsonl"
LOCK = ".lock"
PUBLISHED = "published"


class IntegrityError(RuntimeError):
    """An artifact's bytes differ from the digest recorded when it was published."""


class RegistryError(RuntimeError):
    """A missing model/version or an impossible stage change."""


REPAIR_COMMAND = "python -m cli.registry repair"


class StagesMissing(RegistryError, UserError):
    """A model has versions on disk but no readable ``stages.json``."""


class NoPreviousProduction(RegistryError, UserError):
    """A rollback with no earlier production version to go back to."""


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
    """Replace ``path`` with ``data`` in one rename. Its modification time moves forward
    with every write (at least 1 ns past the last one), so a reader's (inode, mtime) key
    changes even when two writes fall in one tick of the file system's clock and the second
    file gets the first one's freed inode back."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    before = _stat_key(path)
    mtime = max(time.time_ns(), before[1] + 1) if before is not None else time.time_ns()
    os.utime(tmp, ns=(mtime, mtime))
    os.replace(tmp, path)


def _dt(text: str | None) -> datetime | None:
    return None if not text else parse_iso(text)


def _now() -> datetime:
    return datetime.now(UTC)


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten (None: no such file)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def rolled_back(entry: Mapping[str, Any]) -> bool:
    """Whether a rollback retired this version (and nothing promoted it since)."""
    return entry["stage"] == ModelStage.RETIRED and bool(entry.get("rolled_back"))


@dataclass
class _StagesCache:
    key: tuple[int, int, int]
    stages: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class FileCheck:
    """The integrity of one version: each file's status (``ok``, ``MISMATCH``, ``missing
    file``, ``unexpected file``) and one message per problem."""

    files: dict[str, str]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


class ModelRegistry:
    """Versioned model store. Thread-safe; several processes may read and change it."""

    def __init__(
        self,
        root: Path,
        store: Store | None = None,
        model_dirs: Mapping[str, Path] | None = None,
        spool: bool = False,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.spool = spool
        self._dirs = {k: Path(v) for k, v in (model_dirs or {}).items()}
        self._lock = threading.RLock()
        self._depth = 0  # nesting of _changing() in this process
        self._lock_fd: int | None = None
        self._cache: dict[str, _StagesCache] = {}
        self._keys: dict[str, dict[str, str]] = {}  # model -> publish key -> version
        self._generation_path = os.fspath(self.root / GENERATION)

    def model_dir(self, model: str) -> Path:
        """Where a model's versions live (``QT_RL_V3_CHECKPOINT_DIR`` may move ``ppo``)."""
        return self._dirs.get(model, self.root / model)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """The stage-change lock: this process's threads, then other processes (``flock``)."""
        with self._lock:
            if self._depth == 0:
                fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # releases the flock
                    self._lock_fd = None

    # --- writing ----------------------------------------------------------------------------
    def publish(
        self,
        model: str,
        write: Callable[[Path], list[Path]],
        *,
        stage: ModelStage,
        feature_set: str,
        data_from: datetime | None = None,
        data_to: datetime | None = None,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> ModelVersion:
        """Write a new version with ``write(directory)`` and give it ``stage``.

        With a ``key`` that was published before, nothing is written or changed: the version
        published under it is returned (module docstring, "idempotent publish").
        """
        if key is not None:
            with self._lock:
                existing = self.keyed(model).get(key)
                entry = self._read_stages(model).get(existing or "")
                if entry is not None and rolled_back(entry):
                    existing = None  # rolled back: the learner's next step is a new version
            if existing is not None:
                mv = self.get(model, existing)
                if mv.stage is ModelStage.CANDIDATE:  # a crash came between publish and stage
                    mv = self.set_stage(model, existing, stage, PUBLISHED)
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
            with self._changing():
                version = self._next_version(model)
                manifest = {
                    "model": model,
                    "version": version,
                    "files": files,
                    "sha256": artifact_digest(files),
                    "feature_set": feature_set,
                    "data_from": iso(data_from) if data_from else None,
                    "data_to": iso(data_to) if data_to else None,
                    "metrics": {k: float(v) for k, v in (metrics or {}).items()},
                    "params": dict(params or {}),
                    "created_at": iso(created),
                    "key": key,
                }
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
                if not (model_dir / STAGES).exists():  # never versions without stages.json
                    _write_json_atomic(model_dir / STAGES, {})
                os.rename(tmp, model_dir / version)  # atomic: the version appears whole
                if key is not None:
                    self.keyed(model)[key] = version
                self._set_stage_locked(model, version, stage, PUBLISHED)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(model, version)

    def keyed(self, model: str) -> dict[str, str]:
        """Publish key -> version of ``model`` (read from the manifests once, then kept; the
        newest version published under a key wins)."""
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
        return sorted(
            p.name
            for p in directory.glob("v[0-9]*")
            if p.name[1:].isdigit() and (p / MANIFEST).is_file()
        )

    def _next_version(self, model: str) -> str:
        existing = [
            int(p.name[1:]) for p in self.model_dir(model).glob("v[0-9]*") if p.name[1:].isdigit()
        ]
        return f"v{max(existing, default=0) + 1:04d}"

    def set_stage(
        self, model: str, version: str, stage: ModelStage, reason: str = "", manual: bool = False
    ) -> ModelVersion:
        """Move a version to ``stage``; a new production version retires the previous one.
        ``reason`` says who made the change (the history's ``by``); ``manual``: a person did,
        and an engine that owns its versions adopts it at its next bar."""
        with self._changing():
            self._set_stage_locked(model, version, stage, reason, manual)
        return self.get(model, version)

    def roll_back(self, model: str, reason: str) -> ModelVersion:
        """Give production back to the version that had it before the current one (see
        :meth:`previous_production`), after checking its files; the current one is retired
        and marked as rolled back, so a second rollback goes further back, not forth."""
        with self._changing():
            stages = self._read_stages(model, fresh=True)
            previous = previous_production(stages)
            if previous is None:
                current = production_of(stages)
                raise NoPreviousProduction(
                    f"{model}: no earlier production version to roll back to (production is "
                    f"{current or 'none'}; versions {version_span(list(stages))}); promote a "
                    f"version instead: python -m cli.registry promote {model} VERSION"
                )
            self.verified_path(model, previous)
            self._set_stage_locked(
                model, previous, ModelStage.PRODUCTION, reason, True, rollback=True
            )
        return self.get(model, previous)

    def _set_stage_locked(
        self,
        model: str,
        version: str,
        stage: ModelStage,
        reason: str,
        manual: bool = False,
        rollback: bool = False,
    ) -> None:
        """:meth:`set_stage` under :meth:`_changing` (``rollback``: mark what it retires)."""
        if not (self.model_dir(model) / version / MANIFEST).is_file():
            raise RegistryError(f"{model} {version}: no such version in {self.root}")
        stages = dict(self._read_stages(model, fresh=True))
        now = iso(_now())
        changed = {version: stage}
        if stage is ModelStage.PRODUCTION:
            changed |= {
                v: ModelStage.RETIRED
                for v, e in stages.items()
                if v != version and e["stage"] == ModelStage.PRODUCTION
            }
        for v, new in changed.items():
            entry = dict(stages.get(v, {}))
            entry.pop("rolled_back", None)
            if v == version and new is ModelStage.PRODUCTION:
                entry["promoted_at"] = now
            elif rollback:
                entry["rolled_back"] = True
            entry["stage"] = new.value
            stages[v] = entry
        self._commit(model, stages, list(changed), reason, manual)

    def replace_stages(
        self, model: str, stages: Mapping[str, Mapping[str, Any]], reason: str
    ) -> None:
        """Write a whole ``stages.json`` (a repair: :func:`stages_from_records`), as one
        manual change, recorded for every version it names."""
        with self._changing():
            self._commit(
                model, {v: dict(e) for v, e in stages.items()}, sorted(stages), reason, True
            )

    def _commit(
        self,
        model: str,
        stages: dict[str, dict[str, Any]],
        changed: list[str],
        reason: str,
        manual: bool,
    ) -> None:
        """Write ``stages.json``, append the change to ``history.jsonl``, count it in
        ``generation.json``, record the rows (under :meth:`_changing`)."""
        _write_json_atomic(self.model_dir(model) / STAGES, stages)
        self._cache.pop(model, None)
        now = iso(_now())
        with (self.model_dir(model) / HISTORY).open("a") as f:
            f.writelines(
                json.dumps(
                    {
                        "at": now,
                        "version": v,
                        "stage": stages[v]["stage"],
                        "by": reason or "unnamed",
                    }
                )
                + "\n"
                for v in changed
            )
        doc = self._generation_doc()
        doc["generation"] += 1
        doc["changed_at"], doc["by"] = now, reason
        if manual:
            doc["manual"] += 1
            doc["manual_at"], doc["manual_by"] = doc["changed_at"], f"{model}: {reason}"
        _write_json_atomic(self.root / GENERATION, doc)
        rows = [self._row(self.get(model, v)) for v in changed]
        if self.store is not None:
            self._flush_locked()
            self.store.insert("model_registry", REGISTRY_COLUMNS, rows)
        elif self.spool:
            with (self.root / UNRECORDED).open("a") as f:
                for row in rows:
                    f.write(
                        json.dumps([iso(x) if isinstance(x, datetime) else x for x in row]) + "\n"
                    )

    @staticmethod
    def _row(mv: ModelVersion) -> list[Any]:
        """A ``model_registry`` row (:data:`REGISTRY_COLUMNS`) of ``mv`` as it is now."""
        return [
            mv.model,
            mv.version,
            mv.stage.value,
            mv.sha256,
            mv.feature_set,
            mv.data_from,
            mv.data_to,
            mv.metrics,
            mv.created_at,
            mv.promoted_at,
            _now(),
        ]

    def flush_records(self) -> int:
        """Record the rows of changes made without a store (``unrecorded.jsonl``) in
        ``model_registry``, with their original times; the number of rows (0 without a store
        or nothing to record: one ``stat``)."""
        if self.store is None or not (self.root / UNRECORDED).exists():
            return 0
        with self._changing():
            return self._flush_locked()

    def _flush_locked(self) -> int:
        """:meth:`flush_records` under :meth:`_changing`."""
        assert self.store is not None
        path = self.root / UNRECORDED
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return 0
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by a crash while it was appended
                log.warning("model registry: skipping an unreadable line of %s", path)
                continue
            rows.append([_dt(x) if REGISTRY_COLUMNS[i] in _TIMES else x for i, x in enumerate(row)])
        if rows:
            self.store.insert("model_registry", REGISTRY_COLUMNS, rows)
        path.unlink()
        return len(rows)

    # --- the change counter -------------------------------------------------------------------
    def generation(self) -> tuple[int, int] | None:
        """A token that changes with every stage change, by any process (one ``stat``: the
        engine calls it before every bar)."""
        try:
            st = os.stat(self._generation_path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _generation_doc(self) -> dict[str, Any]:
        """``generation.json`` (zero counts when missing or unreadable)."""
        try:
            doc = json.loads((self.root / GENERATION).read_text())
            return {**doc, "generation": int(doc["generation"]), "manual": int(doc["manual"])}
        except (OSError, ValueError, KeyError, TypeError):
            return {"generation": 0, "manual": 0}

    def manual_changes(self) -> int:
        """How many stage changes were made by hand (``manual=True``), ever."""
        return self._generation_doc()["manual"]

    def last_manual_change(self) -> str:
        """Who made the last manual change and when, for logs."""
        doc = self._generation_doc()
        return f"{doc.get('manual_by', '?')} at {doc.get('manual_at', '?')}"

    # --- reading ----------------------------------------------------------------------------
    def _read_stages(self, model: str, fresh: bool = False) -> dict[str, dict[str, Any]]:
        path = self.model_dir(model) / STAGES
        key = _stat_key(path)
        if key is None:
            self._cache.pop(model, None)
            versions = self.version_names(model)
            if versions:
                raise self._stages_missing(model, "is missing", versions)
            return {}
        cached = self._cache.get(model)
        if not fresh and cached is not None and cached.key == key:
            return cached.stages
        try:
            stages = json.loads(path.read_text())
            if not isinstance(stages, dict) or not all(
                isinstance(e, dict) and "stage" in e for e in stages.values()
            ):
                raise ValueError("not a {version: {stage: ...}} object")
            for e in stages.values():
                ModelStage(e["stage"])
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise self._stages_missing(
                model, f"is corrupt ({exc})", self.version_names(model)
            ) from None
        except FileNotFoundError:  # replaced between the stat and the read: read it again
            return self._read_stages(model, fresh)
        self._cache[model] = _StagesCache(key, stages)
        return stages

    def _stages_missing(self, model: str, what: str, versions: list[str]) -> StagesMissing:
        exist = (
            "(no versions)"
            if not versions
            else f"but version {versions[0]} exists"
            if len(versions) == 1
            else f"but versions {version_span(versions)} exist"
        )
        return StagesMissing(
            f"model registry {self.model_dir(model)}: {STAGES} {what} {exist}; restore it "
            f"from a backup, or rebuild it from the model_registry table with: "
            f"{REPAIR_COMMAND}"
        )

    def stages(self, model: str) -> dict[str, dict[str, Any]]:
        """A copy of ``model``'s ``stages.json`` (stage and promoted_at per version)."""
        with self._lock:
            return {v: dict(e) for v, e in self._read_stages(model).items()}

    def history(self, model: str, version: str | None = None) -> list[dict[str, str]]:
        """The stage changes of ``model`` (of one ``version``), oldest first: ``at``,
        ``version``, ``stage``, ``by`` (none for changes made before it was kept)."""
        try:
            lines = (self.model_dir(model) / HISTORY).read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                change = json.loads(line)
            except ValueError:  # a line cut short by a crash while it was appended
                continue
            if version is None or change.get("version") == version:
                out.append(change)
        return out

    def manifest(self, model: str, version: str) -> dict[str, Any]:
        path = self.model_dir(model) / version / MANIFEST
        if not path.is_file():
            raise RegistryError(f"{model} {version}: no such version in {self.root}")
        return json.loads(path.read_text())

    def get(self, model: str, version: str) -> ModelVersion:
        m = self.manifest(model, version)
        entry = self._read_stages(model).get(version, {"stage": ModelStage.CANDIDATE.value})
        return ModelVersion(
            model=model,
            version=version,
            stage=ModelStage(entry["stage"]),
            sha256=m["sha256"],
            feature_set=m["feature_set"],
            data_from=_dt(m["data_from"]),
            data_to=_dt(m["data_to"]),
            metrics=dict(m["metrics"]),
            created_at=_dt(m["created_at"]),
            promoted_at=_dt(entry.get("promoted_at")),
        )

    def versions(self, model: str, stage: ModelStage | None = None) -> list[ModelVersion]:
        with self._lock:
            stages = self._read_stages(model)
        out = [self.get(model, v) for v in sorted(stages)]
        return [v for v in out if stage is None or v.stage is stage]

    def production_version(self, model: str) -> str | None:
        """The production version of ``model`` (cheap: re-reads only after a change)."""
        with self._lock:
            return production_of(self._read_stages(model))

    def previous_production(self, model: str) -> str | None:
        """The version a rollback of ``model`` would bring back (:func:`previous_production`)."""
        with self._lock:
            return previous_production(self._read_stages(model))

    def versions_in(self, model: str, stage: ModelStage) -> list[str]:
        """Versions of ``model`` in ``stage`` (cheap, like :meth:`production_version`)."""
        with self._lock:
            return sorted(v for v, e in self._read_stages(model).items() if e["stage"] == stage)

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

    def check_files(self, model: str, version: str) -> FileCheck:
        """Every file of a version against its recorded digest (nothing raised: the problems
        are listed, each as one line)."""
        directory = self.model_dir(model) / version
        try:
            m = self.manifest(model, version)
            recorded: dict[str, str] = dict(m["files"])
        except (ValueError, KeyError, TypeError) as exc:
            return FileCheck(
                {MANIFEST: "unreadable"}, [f"{model} {version}: {MANIFEST} is unreadable ({exc})"]
            )
        files: dict[str, str] = {}
        problems: list[str] = []
        for name, digest in sorted(recorded.items()):
            path = directory / name
            if not path.is_file():
                files[name] = "missing file"
                problems.append(f"{model} {version}: artifact file {name} is missing")
                continue
            actual = _file_sha256(path)
            files[name] = "ok" if actual == digest else "MISMATCH"
            if actual != digest:
                problems.append(
                    f"{model} {version}: {name} has SHA-256 {actual[:12]}..., the registry "
                    f"recorded {digest[:12]}...; refusing to load a modified artifact"
                )
        extra = sorted({p.name for p in directory.iterdir()} - set(recorded) - {MANIFEST})
        if extra:
            files |= dict.fromkeys(extra, "unexpected file")
            problems.append(f"{model} {version}: unexpected files {extra}")
        if artifact_digest(recorded) != m.get("sha256"):
            problems.append(f"{model} {version}: manifest digest does not match its files")
        return FileCheck(files, problems)

    def verified_path(self, model: str, version: str) -> Path:
        """The version's directory, after checking every file against its recorded digest."""
        self.manifest(model, version)  # an unknown version is a RegistryError
        check = self.check_files(model, version)
        if check.problems:
            raise IntegrityError(check.problems[0])
        return self.model_dir(model) / version

    def load(self, model: str, version: str | None = None) -> Any:
        """Load a verified version (default: production) with its model class."""
        from runtime import MODEL_LOCK

        version = version or self.production_version(model)
        if version is None:
            raise RegistryError(f"{model}: no production version in {self.root}")
        with MODEL_LOCK:
            return loader(model)(self.verified_path(model, version))


def production_of(stages: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The production version in a ``stages.json`` mapping."""
    for version, entry in stages.items():
        if entry["stage"] == ModelStage.PRODUCTION:
            return version
    return None


def previous_production(stages: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The version that was production before the current one: of the retired versions that
    were ever promoted, the one promoted last, skipping those a rollback retired (so rolling
    back twice goes two versions back; promote the rolled-back version to return to it)."""
    current = production_of(stages)
    candidates = [
        (e["promoted_at"], v)
        for v, e in stages.items()
        if v != current
        and e["stage"] == ModelStage.RETIRED
        and e.get("promoted_at")
        and not rolled_back(e)
    ]
    return max(candidates)[1] if candidates else None


def stages_from_records(
    on_disk: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """A ``stages.json`` rebuilt from ``model_registry`` rows (the latest row per version:
    ``version``, ``stage``, ``promoted_at``) for the versions on disk, and notes on what could
    not be taken as recorded: a version without a row is a candidate (it votes nowhere until
    promoted), a row without its version on disk is dropped, and of several production rows
    the one promoted last stays production (the others are retired)."""
    by_version = {r["version"]: r for r in rows}
    stages: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for version in sorted(on_disk):
        row = by_version.get(version)
        if row is None:
            stages[version] = {"stage": ModelStage.CANDIDATE.value}
            notes.append(f"{version}: no model_registry row; kept as a candidate")
            continue
        entry: dict[str, Any] = {"stage": ModelStage(row["stage"]).value}
        if row.get("promoted_at") is not None:
            entry["promoted_at"] = iso(row["promoted_at"])
        stages[version] = entry
    for version in sorted(set(by_version) - set(on_disk)):
        notes.append(
            f"{version}: recorded as {by_version[version]['stage']} but not on disk; left out"
        )
    producing = sorted(
        (e.get("promoted_at", ""), v)
        for v, e in stages.items()
        if e["stage"] == ModelStage.PRODUCTION
    )
    for _, version in producing[:-1]:
        stages[version]["stage"] = ModelStage.RETIRED.value
        notes.append(
            f"{version}: recorded as production too; retired (promoted earlier than "
            f"{producing[-1][1]})"
        )
    return stages, notes


REGISTRY_COLUMNS = (
    "model",
    "version",
    "stage",
    "sha256",
    "feature_set",
    "data_from",
    "data_to",
    "metrics",
    "created_at",
    "promoted_at",
    "updated_at",
)
_TIMES = {"data_from", "data_to", "created_at", "promoted_at", "updated_at"}


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


def open_registry(settings: Any, store: Store | None = None, spool: bool = False) -> ModelRegistry:
    """The registry ``settings`` name (``QT_REGISTRY_DIR``, ``QT_RL_V3_CHECKPOINT_DIR``)."""
    return ModelRegistry(settings.registry_dir, store, {"ppo": settings.ppo_dir}, spool)

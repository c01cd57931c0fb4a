"""Inspect and change the model registry by hand.

    python -m cli.registry list [--json]            # every model's versions, stage, checksums
    python -m cli.registry show MODEL [VERSION] [--json]   # default VERSION: production
    python -m cli.registry promote MODEL VERSION    # VERSION to production, the old one retired
    python -m cli.registry rollback MODEL           # the previous production version back
    python -m cli.registry retire MODEL VERSION     # never the production version
    python -m cli.registry verify                   # every checksum; exit 1 and one line each
    python -m cli.registry repair [MODEL] [--yes]   # rebuild stages.json from model_registry

Every change goes through the registry's locked stage change, as the learners' do
(:mod:`models.registry`): one atomic ``stages.json`` write, the change in the model's
``history.jsonl`` with who made it (``manual: cli.registry <command> by <user>``), and a row
per changed version in ``model_registry``. While the live flow holds the embedded store, the
rows wait in the registry's ``unrecorded.jsonl`` and the flow records them at its next bar.
The live flow uses a promotion or rollback from the next bar it decides, also with learning
on (the rule of :mod:`operators.versions`).

- ``promote`` checks the version's files and feature set first; promoting a version retires
  the previous production version, as a learner's promotion does.
- ``rollback`` brings back the version that was production before the current one (the
  latest promoted of the retired versions, skipping versions a rollback retired: rolling back
  twice goes two versions back). It is an error when there is none.
- ``retire`` refuses the production version: a model always keeps one (roll back or promote
  another version instead). Retiring a challenger in shadow ends its shadow test.
- ``repair`` rebuilds a ``stages.json`` that is missing, corrupt, or names no production
  version, from the latest ``model_registry`` row of each version on disk; it shows what it
  will write and asks first (``--yes`` skips the question; without a terminal it refuses).
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import errors
from cli.analytics import _jsonable, render
from models.registry import (
    HISTORY,
    LOADERS,
    STAGES,
    IntegrityError,
    ModelRegistry,
    StagesMissing,
    open_registry,
    production_of,
    stages_from_records,
    version_span,
)
from schemas.registry import ModelStage
from schemas.timeutil import iso, parse_iso
from settings import Settings
from storage.store import Store, StoreUnavailable, open_store

errors.install()  # a user error is one line, not a traceback (errors.py)

MODELS = tuple(LOADERS)  # xgboost, lightgbm, nhits, patchtst, ppo, feature_reference
KEY_METRICS = (
    "test_macro_f1",
    "val_macro_f1",
    "test_call_hit_rate",
    "ensemble.test_macro_f1",
    "mean_reward",
    "transitions",
)


def who(command: str) -> str:
    """The ``by`` of a change made here: the command and the user who ran it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown"
    return f"manual: cli.registry {command} by {user}@{socket.gethostname()}"


class Session:
    """The registry, with the store when it can be opened (closed by :meth:`close`)."""

    def __init__(self, settings: Settings, store: str) -> None:
        """``store``: ``none`` (not needed), ``try`` (changes: without it, spool the rows),
        ``need`` (repair: an unavailable store is the error)."""
        self.store: Store | None = None
        self.unavailable = ""
        if store != "none":
            try:
                self.store = open_store(settings)
            except StoreUnavailable as exc:
                if store == "need":
                    raise
                self.unavailable = errors.redact(str(exc)).split(";")[0]
        self.registry: ModelRegistry = open_registry(settings, self.store, spool=self.store is None)
        if self.store is not None:
            self.registry.flush_records()

    def note_spooled(self) -> None:
        """Say on stderr that the change's rows wait in the spool (no store now)."""
        if self.store is None and self.unavailable:
            print(
                f"note: model_registry not written now ({self.unavailable}); the change "
                "waits in the registry's unrecorded.jsonl and is recorded by the next "
                "process with the store (a running live flow: at its next bar)",
                file=sys.stderr,
            )

    def close(self) -> None:
        """Close the store, if one was opened."""
        if self.store is not None:
            self.store.close()


# --- reading --------------------------------------------------------------------------------
def _model(name: str) -> str:
    """``name`` if it is a registry model, else a UserError listing the models."""
    if name not in LOADERS:
        raise errors.UserError(f"unknown model {name!r}; models: {', '.join(MODELS)}")
    return name


def _version(registry: ModelRegistry, model: str, version: str) -> str:
    """``version`` if ``model`` has it on disk, else a UserError naming both."""
    on_disk = registry.version_names(model)
    if version not in on_disk:
        raise errors.UserError(
            f"{model} has no version {version} (versions on disk: {version_span(on_disk)})"
        )
    return version


def _day(dt: datetime | None) -> str:
    """``YYYY-MM-DD HH:MM`` (empty for None)."""
    return "" if dt is None else dt.strftime("%Y-%m-%d %H:%M")


def _integrity(files: Mapping[str, str]) -> str:
    """``ok``, or the problems with the files they concern: ``MISMATCH (model.ubj)``."""
    bad: dict[str, list[str]] = {}
    for name, status in files.items():
        if status != "ok":
            bad.setdefault(status, []).append(name)
    return "; ".join(f"{s} ({', '.join(n)})" for s, n in bad.items()) or "ok"


def _key_metrics(metrics: Mapping[str, float], n: int = 2) -> str:
    """The first ``n`` of :data:`KEY_METRICS` a version has, as ``name=value``."""
    found = [k for k in KEY_METRICS if k in metrics][:n]
    return " ".join(f"{k}={metrics[k]:.4g}" for k in found)


def describe(
    registry: ModelRegistry,
    model: str,
    version: str,
    stages: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One version: its manifest, stage, history and each file's checksum status (``stages``:
    the model's, read once by the caller; None: read here)."""
    try:
        manifest = registry.manifest(model, version)
    except ValueError:  # not JSON: the file check says so
        manifest = {}
    stages = registry.stages(model) if stages is None else stages
    entry = stages.get(version, {"stage": ModelStage.CANDIDATE.value})
    check = registry.check_files(model, version)
    return {
        "model": model,
        "version": version,
        "stage": entry["stage"],
        "promoted_at": entry.get("promoted_at"),
        "files": check.files,
        "integrity": _integrity(check.files),
        "problems": check.problems,
        "history": registry.history(model, version),
        "manifest": manifest,
    }


def list_rows(registry: ModelRegistry) -> list[dict[str, Any]]:
    """A row per version of every model (a model without versions: one row saying so; a
    model whose stages are unreadable: its versions with the stage ``?``)."""
    rows: list[dict[str, Any]] = []
    for model in MODELS:
        versions = registry.version_names(model)
        if not versions:
            rows.append({"model": model, "version": "", "stage": "(no versions)"})
        try:
            stages: Mapping[str, Mapping[str, Any]] = registry.stages(model)
        except StagesMissing:
            unknown = {"stage": f"? ({STAGES} unreadable)"}
            stages = dict.fromkeys(versions, unknown)
        for version in versions:
            d = describe(registry, model, version, stages)
            m = d["manifest"]
            rows.append(
                {
                    "model": model,
                    "version": version,
                    "stage": d["stage"],
                    "data_from": m.get("data_from"),
                    "data_to": m.get("data_to"),
                    "metrics": m.get("metrics", {}),
                    "created_at": m.get("created_at"),
                    "promoted_at": d["promoted_at"],
                    "files": d["files"],
                    "integrity": d["integrity"],
                }
            )
    return rows


def _listing(rows: list[dict[str, Any]]) -> str:
    """The ``list`` table."""

    def when(text: str | None) -> str:
        return _day(parse_iso(text)) if text else ""

    return render(
        [
            {
                "model": r["model"],
                "version": r["version"],
                "stage": r["stage"],
                "trained on": (
                    f"{when(r['data_from'])} .. {when(r['data_to'])}" if r.get("data_from") else ""
                ),
                "key metrics": _key_metrics(r.get("metrics", {})),
                "created": when(r.get("created_at")),
                "files": r.get("integrity", ""),
            }
            for r in rows
        ],
        max_width=80,
    )


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    """``list``: a row per version of every model."""
    rows = list_rows(Session(settings, "none").registry)
    if args.json:
        for r in rows:
            sys.stdout.write(json.dumps(_jsonable(r)) + "\n")
    else:
        print(_listing(rows))
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    """``show``: one version in full, with its history and its model_registry rows."""
    model = _model(args.model)
    session = Session(settings, "try")
    try:
        registry = session.registry
        version = args.version or registry.production_version(model)
        if version is None:
            raise errors.UserError(
                f"{model} has no production version; name one: python -m "
                f"cli.registry show {model} VERSION (versions on disk: "
                f"{version_span(registry.version_names(model))})"
            )
        d = describe(registry, model, _version(registry, model, version))
        if not d["manifest"]:
            raise errors.UserError(d["problems"][0])
        records = (
            []
            if session.store is None
            else session.store.query("queries/model_registry_history", model=model, version=version)
        )
    finally:
        session.close()
    if args.json:
        d["model_registry"] = records if session.store is not None else None
        sys.stdout.write(json.dumps(_jsonable(d), indent=2) + "\n")
        return 0
    m = d["manifest"]
    print(f"{model} {version}: {d['stage']}")
    print(
        _pairs(
            {
                "sha256": m["sha256"],
                "feature set": m["feature_set"],
                "trained on": (
                    f"{m['data_from']} .. {m['data_to']}"
                    if m.get("data_from")
                    else "(not recorded)"
                ),
                "created": m["created_at"],
                "promoted": d["promoted_at"] or "",
                "publish key": m.get("key") or "",
                "params": json.dumps(m.get("params", {}), sort_keys=True),
            }
        )
    )
    print("metrics")
    print(_pairs({k: f"{v:.6g}" for k, v in sorted(m.get("metrics", {}).items())}) or "  (none)")
    print("files")
    print(
        _pairs(
            {
                name: f"{status:<12}  {m['files'].get(name, '')[:16]}"
                for name, status in d["files"].items()
            }
        )
    )
    print(f"stage history ({HISTORY})")
    print(
        "\n".join(f"  {h['at']}  {h['stage']:<10}  {h['by']}" for h in d["history"])
        or f"  (none kept: changed before the registry kept {HISTORY})"
    )
    print("model_registry rows the table still holds (updated_at, stage, promoted_at)")
    if session.store is None:
        print(f"  (not read: {session.unavailable})")
    else:
        print(
            "\n".join(
                f"  {iso(r['updated_at'])}  {r['stage']:<10}  "
                f"{iso(r['promoted_at']) if r['promoted_at'] else ''}"
                for r in records
            )
            or "  (none)"
        )
    return 0


def _pairs(values: Mapping[str, Any]) -> str:
    """Indented ``key  value`` lines, keys aligned."""
    width = max((len(k) for k in values), default=0)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in values.items())


# --- changing -------------------------------------------------------------------------------
def _change(settings: Settings, change: Callable[[ModelRegistry], str]) -> int:
    """Run ``change(registry)`` with the store if it can be opened (the rows wait in the
    registry's spool otherwise) and print what it says."""
    session = Session(settings, "try")
    try:
        print(change(session.registry))
        session.note_spooled()
    finally:
        session.close()
    return 0


def _checked(registry: ModelRegistry, model: str, version: str, doing: str) -> None:
    """Refuse a version whose files fail their checksums."""
    try:
        registry.verified_path(model, version)
    except IntegrityError as exc:
        raise errors.UserError(f"cannot {doing} {model} {version}: {exc}") from None


def _same_features(
    registry: ModelRegistry, model: str, version: str, current: str | None, doing: str
) -> None:
    """Refuse a version trained on another feature set than the production one's."""
    if current is None:
        return
    have = registry.manifest(model, current)["feature_set"]
    want = registry.manifest(model, version)["feature_set"]
    if have != want:
        raise errors.UserError(
            f"cannot {doing} {model} {version}: it was trained on feature set {want}, "
            f"production {current} (and the live flow) use {have}"
        )


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    """``promote``: a checked version to production (the previous one retired)."""
    model = _model(args.model)

    def promote(registry: ModelRegistry) -> str:
        version = _version(registry, model, args.version)
        current = registry.production_version(model)
        if current == version:
            return f"{model} {version} is production already; nothing changed"
        _checked(registry, model, version, "promote")
        _same_features(registry, model, version, current, "promote")
        registry.set_stage(model, version, ModelStage.PRODUCTION, who("promote"), manual=True)
        was = f" ({current} retired)" if current else ""
        return (
            f"{model}: {version} is production{was}; the live flow decides with it from "
            "its next bar"
        )

    return _change(settings, promote)


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """``rollback``: the previous production version back to production."""
    model = _model(args.model)

    def rollback(registry: ModelRegistry) -> str:
        current = registry.production_version(model)
        previous = registry.previous_production(model)
        if previous is not None:
            _same_features(registry, model, previous, current, "roll back to")
        try:
            mv = registry.roll_back(model, who("rollback"))
        except IntegrityError as exc:
            raise errors.UserError(
                f"cannot roll {model} back to {previous}: {exc}; promote another version instead"
            ) from None
        was = f" ({current} retired)" if current else ""
        return (
            f"{model}: rolled back to {mv.version}{was}; the live flow decides with it "
            "from its next bar"
        )

    return _change(settings, rollback)


def cmd_retire(args: argparse.Namespace, settings: Settings) -> int:
    """``retire``: a version that is not production."""
    model = _model(args.model)

    def retire(registry: ModelRegistry) -> str:
        version = _version(registry, model, args.version)
        stage = registry.get(model, version).stage
        if stage is ModelStage.PRODUCTION:
            raise errors.UserError(
                f"{model} {version} is the production version and a model keeps one: roll back "
                f"(python -m cli.registry rollback {model}) or promote another version "
                f"(python -m cli.registry promote {model} VERSION), which retires it"
            )
        if stage is ModelStage.RETIRED:
            return f"{model} {version} is retired already; nothing changed"
        registry.set_stage(model, version, ModelStage.RETIRED, who("retire"), manual=True)
        ended = " (its shadow test ends)" if stage is ModelStage.SHADOW else ""
        return f"{model}: {version} retired, was {stage.value}{ended}"

    return _change(settings, retire)


# --- checking and repairing -------------------------------------------------------------------
def problems(registry: ModelRegistry) -> tuple[list[str], int]:
    """One line per problem of any model (unreadable stages, no production version, a file
    that fails its checksum), and how many versions were checked."""
    lines: list[str] = []
    checked = 0
    for model in MODELS:
        versions = registry.version_names(model)
        try:
            if versions and production_of(registry.stages(model)) is None:
                lines.append(
                    f"{model}: no production version ({version_span(versions)} on "
                    f"disk); rebuild its stages with: python -m cli.registry repair "
                    f"{model}"
                )
        except StagesMissing as exc:
            lines.append(f"{model}: {exc}")
        for version in versions:
            checked += 1
            lines += registry.check_files(model, version).problems
    return lines, checked


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """``verify``: every checksum; one line per problem and exit status 1."""
    lines, checked = problems(Session(settings, "none").registry)
    for line in lines:
        print(line)
    if lines:
        print(
            f"{len(lines)} problem(s) in the model registry {settings.registry_dir}",
            file=sys.stderr,
        )
        return 1
    print(f"ok: {checked} versions of {len(MODELS)} models, every file matches its checksum")
    return 0


def _needs_repair(registry: ModelRegistry, model: str) -> str | None:
    """Why ``model``'s stages need rebuilding, or None."""
    versions = registry.version_names(model)
    try:
        stages = registry.stages(model)
    except StagesMissing as exc:
        return str(exc).split(";")[0]
    if versions and production_of(stages) is None:
        return f"{model}: no production version in {STAGES} ({version_span(versions)} on disk)"
    return None


def _confirm(question: str, yes: bool) -> bool:
    """Ask at a terminal (``--yes``: do not); without a terminal, a UserError."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise errors.UserError(
            "repair: not confirmed (stdin is not a terminal); run again with "
            "--yes to write the stages shown above"
        )
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_repair(args: argparse.Namespace, settings: Settings) -> int:
    """``repair``: rebuild unreadable stages from model_registry, after confirmation."""
    models = [_model(args.model)] if args.model else list(MODELS)
    probe = open_registry(settings)
    broken = {m: why for m in models if (why := _needs_repair(probe, m)) is not None}
    if not broken:
        print(
            f"nothing to repair: {STAGES} of {', '.join(models)} readable, with a production "
            "version"
        )
        return 0
    session = Session(settings, "need")
    assert session.store is not None
    where = session.store.description
    try:
        registry = session.registry
        plans: dict[str, dict[str, dict[str, Any]]] = {}
        cannot: list[str] = []
        for model, why in broken.items():
            rows = session.store.query("queries/model_registry_versions", model=model)
            if not rows:
                cannot.append(f"{why}; model_registry in {where} has no rows for {model}")
                continue
            stages, notes = stages_from_records(registry.version_names(model), rows)
            plans[model] = stages
            print(f"{why}\nrebuilt from model_registry in {where}:")
            print(_plan(registry, model, stages))
            for note in notes:
                print(f"  note: {note}")
            if production_of(stages) is None:
                print(
                    f"  note: no production version recorded; after the repair promote one: "
                    f"python -m cli.registry promote {model} VERSION"
                )
        if plans:
            paths = ", ".join(str(registry.model_dir(m) / STAGES) for m in plans)
            if not _confirm(f"write {paths}?", args.yes):
                print("nothing written")
                return 1
            for model, stages in plans.items():
                registry.replace_stages(model, stages, who("repair"))
                print(f"wrote {registry.model_dir(model) / STAGES}")
    finally:
        session.close()
    if cannot:
        raise errors.UserError(
            f"cannot repair: {'; '.join(cannot)}; nothing to rebuild from: restore {STAGES} "
            "from a backup, or point QT_HOME / QT_CLICKHOUSE_URL at the store this registry "
            "was used with"
        )
    return 0


def _plan(registry: ModelRegistry, model: str, stages: Mapping[str, Mapping[str, Any]]) -> str:
    """What a repair will write, a line per version with its files' integrity."""
    return "\n".join(
        f"  {v}  {e['stage']:<10}  promoted {e.get('promoted_at') or '-':<24}  files "
        f"{_integrity(registry.check_files(model, v).files)}"
        for v, e in stages.items()
    )


# --- entry point ------------------------------------------------------------------------------
COMMANDS = {
    "list": cmd_list,
    "show": cmd_show,
    "promote": cmd_promote,
    "rollback": cmd_rollback,
    "retire": cmd_retire,
    "verify": cmd_verify,
    "repair": cmd_repair,
}


def parser() -> argparse.ArgumentParser:
    """The command line (module docstring)."""
    ap = argparse.ArgumentParser(
        prog="python -m cli.registry", description=__doc__.split("\n\n")[0]
    )
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every model's versions, stage, metrics, checksums")
    p.add_argument("--json", action="store_true", help="one JSON object per version")
    p = sub.add_parser("show", help="one version (default: production) in full")
    p.add_argument("model")
    p.add_argument("version", nargs="?")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("promote", help="make VERSION production (the old one is retired)")
    p.add_argument("model")
    p.add_argument("version")
    p = sub.add_parser("rollback", help="the previous production version back to production")
    p.add_argument("model")
    p = sub.add_parser("retire", help="retire a version that is not production")
    p.add_argument("model")
    p.add_argument("version")
    sub.add_parser("verify", help="check every file of every version; exit 1 on a problem")
    p = sub.add_parser("repair", help="rebuild stages.json from the model_registry table")
    p.add_argument("model", nargs="?")
    p.add_argument("--yes", action="store_true", help="write without asking")
    return ap


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    """Run one command; its exit status."""
    args = parser().parse_args(argv)
    return COMMANDS[args.command](args, settings or Settings.from_env())


if __name__ == "__main__":
    sys.exit(main())

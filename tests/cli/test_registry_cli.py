"""The registry CLI end to end on copies of the session's trained registry: list and show,
promote / rollback / retire through the learners' locked stage change (recorded in
``model_registry``), verify finding damaged files, repair rebuilding ``stages.json`` from the
table, and the live flow and the continuous learner taking a manual change up at the next bar.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bytewax.testing import run_main

from cli.registry import main
from dataflows.live import build_live_flow
from errors import UserError
from models.registry import GENERATION, UNRECORDED, ModelRegistry, StagesMissing
from operators.engine import DecisionEngine
from operators.versions import ActiveModels
from schemas.registry import ModelStage, ModelVersion
from schemas.timeutil import to_ms
from settings import PROJECT_ROOT, Settings
from storage.store import open_store


def copy_version(
    reg: ModelRegistry,
    model: str,
    stage: ModelStage,
    version: str = "v0001",
    params: dict[str, str] | None = None,
) -> ModelVersion:
    """Publish a byte-identical copy of ``version`` as a new version (votes do not change,
    only the version name the signals record)."""
    source = reg.model_dir(model) / version
    m = reg.manifest(model, version)

    def write(directory: Path) -> list[Path]:
        return [Path(shutil.copy(source / name, directory / name)) for name in m["files"]]

    return reg.publish(
        model,
        write,
        stage=stage,
        feature_set=m["feature_set"],
        metrics=m["metrics"],
        params={"copy_of": version, **(params or {})},
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str, settings: Settings) -> str:
    assert main(list(argv), settings) == 0
    return capsys.readouterr().out


def cli(
    env: dict[str, str], *argv: str, stdin: int | None = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.registry", *argv],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def reg_settings(settings: Settings, registry_copy: Path) -> Settings:
    return settings.replace(registry_path=registry_copy)


def test_list_and_show(capsys, reg_settings: Settings) -> None:
    out = run(capsys, "list", settings=reg_settings)
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["model", "version", "stage", "trained"]
    for model in ("xgboost", "lightgbm", "nhits", "patchtst", "ppo", "feature_reference"):
        (row,) = [x for x in lines if x.startswith(f"{model} ")]
        assert " v0001 " in row and " production " in row and row.rstrip().endswith(" ok")
    assert "test_macro_f1=" in out and "mean_reward=" in out and " .. 2014-05-0" in out
    rows = [
        json.loads(x) for x in run(capsys, "list", "--json", settings=reg_settings).splitlines()
    ]
    assert {r["model"] for r in rows} >= {"xgboost", "ppo"}
    assert all(r["integrity"] == "ok" and set(r["files"].values()) == {"ok"} for r in rows)
    shown = run(capsys, "show", "xgboost", settings=reg_settings)
    assert shown.startswith("xgboost v0001: production\n")
    assert "model.ubj    ok" in shown and "test_macro_f1" in shown
    doc = json.loads(run(capsys, "show", "ppo", "v0001", "--json", settings=reg_settings))
    assert doc["stage"] == "production" and set(doc["files"]) == {"policy.json", "ppo.zip"}
    assert doc["manifest"]["sha256"] and doc["model_registry"] == []
    with pytest.raises(
        UserError,
        match=r"xgboost has no version v0009 \(versions on disk: "
        r"v0001\)",
    ):
        main(["show", "xgboost", "v0009"], reg_settings)


def recorded(store, model: str) -> dict[str, str]:
    """The latest ``model_registry`` row's stage per version of ``model``."""
    return {
        r["version"]: r["stage"]
        for r in store.query("queries/model_registry_versions", model=model)
    }


def test_promote_rollback_and_retire(capsys, reg_settings: Settings, store) -> None:
    root = reg_settings.registry_dir
    reg = ModelRegistry(root, store)
    v2 = copy_version(reg, "xgboost", ModelStage.SHADOW).version
    assert recorded(store, "xgboost") == {"v0002": "shadow"}
    with pytest.raises(
        UserError,
        match=r"^xgboost has no version v0007 \(versions on disk: "
        r"v0001\.\.v0002\)$",
    ):
        main(["promote", "xgboost", "v0007"], reg_settings)
    out = run(capsys, "promote", "xgboost", v2, settings=reg_settings)
    assert out == (
        "xgboost: v0002 is production (v0001 retired); the live flow decides with "
        "it from its next bar\n"
    )
    fresh = ModelRegistry(root)
    assert fresh.production_version("xgboost") == "v0002"
    assert fresh.get("xgboost", "v0001").stage is ModelStage.RETIRED
    history = fresh.history("xgboost", "v0002")
    assert [h["stage"] for h in history] == ["shadow", "production"]
    assert history[0]["by"] == "published"
    assert history[1]["by"].startswith("manual: cli.registry promote by ")
    # every change lands in the table: a row per changed version (the latest row per version
    # is checked; older rows may be merged away by the ReplacingMergeTree)
    assert recorded(store, "xgboost") == {"v0001": "retired", "v0002": "production"}
    shown = json.loads(run(capsys, "show", "xgboost", "--json", settings=reg_settings))
    assert shown["version"] == "v0002" and shown["model_registry"][-1]["stage"] == "production"
    out = run(capsys, "rollback", "xgboost", settings=reg_settings)
    assert out.startswith("xgboost: rolled back to v0001 (v0002 retired)")
    assert fresh.production_version("xgboost") == "v0001"
    assert recorded(store, "xgboost") == {"v0001": "production", "v0002": "retired"}
    # rolled back from v0002: there is nothing earlier than v0001 to go back to
    with pytest.raises(
        UserError,
        match=r"xgboost: no earlier production version to roll back "
        r"to \(production is v0001",
    ):
        main(["rollback", "xgboost"], reg_settings)
    with pytest.raises(
        UserError,
        match=r"xgboost v0001 is the production version and a model "
        r"keeps one: roll back",
    ):
        main(["retire", "xgboost", "v0001"], reg_settings)
    v3 = copy_version(reg, "xgboost", ModelStage.SHADOW).version
    out = run(capsys, "retire", "xgboost", v3, settings=reg_settings)
    assert out == "xgboost: v0003 retired, was shadow (its shadow test ends)\n"
    assert recorded(store, "xgboost") == {
        "v0001": "production",
        "v0002": "retired",
        "v0003": "retired",
    }
    with pytest.raises(UserError, match=r"^xgboost has no version v0004 "):
        main(["retire", "xgboost", "v0004"], reg_settings)
    assert run(capsys, "retire", "xgboost", v3, settings=reg_settings).endswith(
        "retired already; nothing changed\n"
    )
    assert json.loads((root / GENERATION).read_text())["manual"] == 3
    with pytest.raises(UserError, match=r"unknown model 'xgb'; models: xgboost, lightgbm"):
        main(["promote", "xgb", "v0001"], reg_settings)


def test_promote_refuses_a_damaged_version(reg_settings: Settings) -> None:
    reg = ModelRegistry(reg_settings.registry_dir)
    v2 = copy_version(reg, "lightgbm", ModelStage.CANDIDATE).version
    (reg.model_dir("lightgbm") / v2 / "model.txt").write_text("tampered")
    with pytest.raises(
        UserError,
        match=r"cannot promote lightgbm v0002: lightgbm v0002: "
        r"model\.txt has SHA-256",
    ):
        main(["promote", "lightgbm", v2], reg_settings)
    assert reg.production_version("lightgbm") == "v0001"


def test_verify_finds_every_damaged_file(registry_copy: Path, tmp_path: Path) -> None:
    env = {"QT_HOME": str(tmp_path / "home"), "QT_REGISTRY_DIR": str(registry_copy)}
    ok = cli(env, "verify")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "ok: 6 versions of 6 models, every file matches its checksum\n"
    artifact = registry_copy / "xgboost" / "v0001" / "model.ubj"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    (registry_copy / "nhits" / "v0001" / "params.json").unlink()
    bad = cli(env, "verify")
    assert bad.returncode == 1
    problems = bad.stdout.splitlines()
    assert len(problems) == 2
    assert problems[0].startswith("xgboost v0001: model.ubj has SHA-256 ")
    assert problems[0].endswith("; refusing to load a modified artifact")
    assert problems[1] == "nhits v0001: artifact file params.json is missing"
    assert bad.stderr == f"2 problem(s) in the model registry {registry_copy}\n"
    listed = cli(env, "list").stdout
    assert "MISMATCH (model.ubj)" in listed and "missing file (params.json)" in listed
    # a user error is one line naming the model (and version), exit status 2, no traceback
    for argv, message in [
        (
            ("rollback", "ppo"),
            "error: ppo: no earlier production version to roll back to "
            "(production is v0001; versions v0001); promote a version instead: python -m "
            "cli.registry promote ppo VERSION\n",
        ),
        (
            ("promote", "xgb", "v0001"),
            "error: unknown model 'xgb'; models: xgboost, "
            "lightgbm, nhits, patchtst, ppo, feature_reference\n",
        ),
    ]:
        failed = cli(env, *argv)
        assert failed.returncode == 2 and failed.stderr.startswith(message), failed.stderr
        assert failed.stderr.count("\n") == 1 and failed.stdout == ""


def test_repair_rebuilds_stages_from_the_table(
    capsys, monkeypatch, reg_settings: Settings, store
) -> None:
    root = reg_settings.registry_dir
    reg = ModelRegistry(root, store)
    for model in ("xgboost", "lightgbm"):
        copy_version(reg, model, ModelStage.PRODUCTION)  # recorded: v0002 production, v0001 retired
    copy_version(reg, "xgboost", ModelStage.SHADOW)
    run(capsys, "rollback", "lightgbm", settings=reg_settings)
    expected = {
        m: {v: (e["stage"], e.get("promoted_at")) for v, e in reg.stages(m).items()}
        for m in ("xgboost", "lightgbm")
    }
    assert expected["lightgbm"]["v0001"][0] == "production"
    assert run(capsys, "repair", settings=reg_settings).startswith("nothing to repair")
    (root / "xgboost" / "stages.json").unlink()
    (root / "lightgbm" / "stages.json").write_text('{"v0001": {"stage"')
    with pytest.raises(StagesMissing):
        ModelRegistry(root).production_version("xgboost")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # not a terminal
    with pytest.raises(
        UserError,
        match=r"repair: not confirmed \(stdin is not a terminal\); "
        r"run again with --yes",
    ):
        main(["repair"], reg_settings)
    plan = capsys.readouterr().out
    assert "xgboost: stages.json is missing but versions v0001..v0003 exist" in plan
    assert "lightgbm: stages.json is corrupt" in plan
    assert "  v0003  shadow" in plan and "  v0001  production" in plan
    assert not (root / "xgboost" / "stages.json").exists()  # nothing written
    before = max(
        r["updated_at"]
        for m in ("xgboost", "lightgbm")
        for r in store.query("queries/model_registry_versions", model=m)
    )
    out = run(capsys, "repair", "--yes", settings=reg_settings)
    assert out.count("wrote ") == 2
    for model in ("xgboost", "lightgbm"):  # the repair is a change: a new row per version
        rows = store.query("queries/model_registry_versions", model=model)
        assert rows and all(r["updated_at"] > before for r in rows)
        assert {r["version"]: r["stage"] for r in rows} == {
            v: stage for v, (stage, _) in expected[model].items()
        }
    repaired = ModelRegistry(root)
    assert {
        m: {v: (e["stage"], e.get("promoted_at")) for v, e in repaired.stages(m).items()}
        for m in ("xgboost", "lightgbm")
    } == expected
    assert repaired.history("xgboost", "v0002")[-1]["by"].startswith(
        "manual: cli.registry repair by "
    )
    assert run(capsys, "verify", settings=reg_settings).startswith("ok: ")


class Terminal(io.StringIO):
    """A stdin that is a terminal, with the answers typed in advance."""

    def isatty(self) -> bool:
        return True


def test_repair_asks_at_a_terminal(capsys, monkeypatch, reg_settings: Settings, store) -> None:
    root = reg_settings.registry_dir
    copy_version(ModelRegistry(root, store), "ppo", ModelStage.PRODUCTION)
    stages = root / "ppo" / "stages.json"
    expected = stages.read_text()
    stages.unlink()
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert main(["repair", "ppo"], reg_settings) == 1
    out = capsys.readouterr().out
    assert "ppo: stages.json is missing but versions v0001..v0002 exist" in out
    assert f"write {stages}? [y/N] nothing written" in out
    assert not stages.exists()
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    assert main(["repair", "ppo"], reg_settings) == 0
    assert capsys.readouterr().out.endswith(f"? [y/N] wrote {stages}\n")
    assert json.loads(stages.read_text()) == json.loads(expected)
    assert ModelRegistry(root).production_version("ppo") == "v0002"


def test_the_learner_closes_a_challenger_taken_out_of_shadow_by_hand(
    reg_settings: Settings, store, capsys
) -> None:
    """Owned mode: the engine's versions follow a manual change at the next poll, and the
    continuous learner leaves the stages the person set."""
    from learning.clm import ClmConfig, ContinuousLearner
    from learning.cycles import ClmDeps, Cycle, CycleRunner
    from learning.triggers import RetrainRequests
    from models.labels import LabelConfig
    from schemas.learning import ChallengerDecision, CycleStatus
    from schemas.tables import CLM_CYCLES, event_rows

    reg = ModelRegistry(reg_settings.registry_dir, store)
    versions = {
        m: copy_version(reg, m, ModelStage.SHADOW, params={"cycle": "clm-0001-x"}).version
        for m in ("xgboost", "lightgbm")
    }
    cycle = Cycle(
        "clm-0001-x", "manual", "test", 1_000, CycleStatus.SHADOW, versions=dict(versions)
    )
    block = event_rows(CLM_CYCLES, [cycle.record(2_000)])
    store.insert_block(block)
    label_cfg = LabelConfig.from_settings(reg_settings)
    runner = CycleRunner(
        ClmDeps(
            reg, store, None, RetrainRequests(reg_settings.clm_dir), reg_settings.clm_dir, None
        ),
        label_cfg,
        0,
    )
    models = ActiveModels(reg, owned=True)
    clm = ContinuousLearner(ClmConfig(), label_cfg, runner, models)
    assert sorted(models.shadows) == [("lightgbm", "v0002"), ("xgboost", "v0002")]
    assert models.poll() is False  # nothing changed by hand
    run(capsys, "promote", "lightgbm", "v0002", settings=reg_settings)
    run(capsys, "retire", "xgboost", "v0002", settings=reg_settings)
    assert models.production["lightgbm"] == "v0001"  # owned: not before the next poll
    assert models.poll() is True
    assert models.production["lightgbm"] == "v0002" and models.shadows == []
    assert models.poll() is False
    records = clm._evaluate(10_000)
    assert clm.cycle is None and records[-1].status is CycleStatus.DECIDED
    decided = records[-1]
    assert dict(decided.decisions) == {
        "xgboost": ChallengerDecision.ABANDONED,
        "lightgbm": ChallengerDecision.ABANDONED,
    }
    assert "moved to production by hand" in decided.reasons["lightgbm"]
    assert "moved to retired by hand" in decided.reasons["xgboost"]
    assert reg.production_version("lightgbm") == "v0002"  # untouched by the learner
    assert reg.get("xgboost", "v0002").stage is ModelStage.RETIRED
    resumed = ActiveModels(
        reg, owned=True, state={"production": {"lightgbm": "v0001"}, "shadows": [], "manual": 0}
    )
    assert resumed.poll() is True and resumed.production["lightgbm"] == "v0002"


ROLLBACK_AT = 2_000  # decided bars before the rollback (of the sample's 5,722)


@pytest.mark.parametrize("learning", [False, True], ids=["following", "owned"])
def test_the_live_flow_decides_with_a_rollback_from_the_next_bar(
    learning: bool, settings: Settings, registry_copy: Path, sample_ticks: Path, monkeypatch, capsys
) -> None:
    """A rollback by ``python -m cli.registry`` in another process, made while the live flow
    runs (it holds the embedded store, so the CLI's rows wait in the spool): the bars decided
    before the change is seen vote with xgboost v0002 and size with ppo v0002, every bar after
    with v0001, learning off (the engine follows the registry) and on (it owns its versions).
    The CLI takes longer than the engine's polling interval, so the very next bar sees it."""
    reg = ModelRegistry(registry_copy)
    for model in ("xgboost", "ppo"):
        copy_version(reg, model, ModelStage.PRODUCTION)
    s = settings.replace(
        ticks=str(sample_ticks),
        registry_path=registry_copy,
        learning=learning,
        clm_auto_retrain=False,
    )
    env = {
        "QT_HOME": str(s.home),
        "QT_REGISTRY_DIR": str(registry_copy),
        "QT_CLICKHOUSE_DATABASE": s.database,
    }
    decided: list[tuple[str, int, str | None]] = []
    decide = DecisionEngine._decide

    def spy(self: DecisionEngine, symbol: str, *args):
        decision = decide(self, symbol, *args)
        out = args[-1]  # the engine's output of this step (its last argument)
        decided.append((symbol, to_ms(out.signals[-1].ts), self.policy.version))
        if len(decided) == ROLLBACK_AT:
            for model in ("xgboost", "ppo"):
                done = cli(env, "rollback", model)
                assert done.returncode == 0, done.stderr
                assert "note: model_registry not written now" in done.stderr
        return decision

    monkeypatch.setattr(DecisionEngine, "_decide", spy)
    run_main(build_live_flow(s))
    capsys.readouterr()
    store = open_store(s)
    try:
        signals = {
            (r["symbol"], to_ms(r["ts"])): dict(zip(r["models"], r["versions"], strict=True))
            for r in store.query("queries/signal_votes")
        }
        recorded = {
            r["version"]: r["stage"]
            for r in store.query("queries/model_registry_versions", model="xgboost")
        }
    finally:
        store.close()
    assert len(decided) == len(signals) > ROLLBACK_AT + 1000
    votes = [signals[(symbol, ts)]["xgboost"] for symbol, ts, _ in decided]
    policies = [policy for *_, policy in decided]
    n = ROLLBACK_AT
    assert votes[:n] == ["v0002"] * n and votes[n:] == ["v0001"] * (len(votes) - n)
    assert policies[:n] == ["v0002"] * n and policies[n:] == ["v0001"] * (len(votes) - n)
    assert recorded == {"v0001": "production", "v0002": "retired"}  # from the spool
    assert not (registry_copy / UNRECORDED).exists()

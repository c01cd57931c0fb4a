"""Grafana for docker-compose, checked without Docker (it does not run on the development
machines): the provisioning files say what Grafana needs, docker-compose.yml mounts them and
points the data source at the database the flows write, the dashboard is exactly what the
generator builds from sql/analytics, and every panel's SQL, with its variables substituted as
Grafana substitutes them, runs on the real schema (embedded chDB)."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from deploy.grafana import build_dashboard as gen
from settings import PROJECT_ROOT, Settings

GRAFANA = PROJECT_ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "qt-stream.yaml"
PROVISIONING = "/etc/grafana/provisioning"  # the grafana/grafana image's GF_PATHS_PROVISIONING


def _yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _compose() -> dict[str, Any]:
    return _yaml(PROJECT_ROOT / "docker-compose.yml")["services"]


def _datasource() -> dict[str, Any]:
    (ds,) = _yaml(DATASOURCES)["datasources"]
    return ds


def _provider() -> dict[str, Any]:
    (provider,) = _yaml(PROVIDERS)["providers"]
    return provider


def _binds(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a compose service: container path -> host path (relative to the repo)."""
    out = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            out[target] = source
    return out


def _dashboard() -> dict[str, Any]:
    return json.loads(gen.OUTPUT.read_text())


# --- provisioning files ----------------------------------------------------------------------
def test_the_datasource_file_provisions_the_clickhouse_plugin_under_the_panels_uid() -> None:
    doc = _yaml(DATASOURCES)
    assert doc["apiVersion"] == 1
    ds = _datasource()
    assert ds["type"] == gen.PLUGIN_ID == "grafana-clickhouse-datasource"
    assert ds["uid"] == gen.DATASOURCE_UID
    assert ds["name"] and ds["access"] == "proxy"
    # the plugin's required connection settings (host, port, protocol) and the login
    jd = ds["jsonData"]
    assert isinstance(jd["host"], str) and jd["host"]
    assert isinstance(jd["port"], int)
    assert jd["protocol"] in {"http", "native"}
    assert jd["username"] and jd["defaultDatabase"]


def test_the_dashboard_provider_reads_the_directory_compose_mounts_the_json_in() -> None:
    doc = _yaml(PROVIDERS)
    assert doc["apiVersion"] == 1
    provider = _provider()
    assert provider["name"] and provider.get("type", "file") == "file"
    path = provider["options"]["path"]
    binds = _binds(_compose()["grafana"])
    assert (PROJECT_ROOT / binds[path]).resolve() == gen.OUTPUT.parent
    assert gen.OUTPUT.is_file()


# --- docker-compose.yml ----------------------------------------------------------------------
def test_compose_grafana_mounts_exactly_the_provisioning_and_waits_for_clickhouse() -> None:
    services = _compose()
    grafana = services["grafana"]
    rel = {
        p: "./" + p.relative_to(PROJECT_ROOT).as_posix()
        for p in (DATASOURCES.parent, PROVIDERS.parent, gen.OUTPUT.parent)
    }
    assert _binds(grafana) == {
        f"{PROVISIONING}/datasources": rel[DATASOURCES.parent],
        f"{PROVISIONING}/dashboards": rel[PROVIDERS.parent],
        _provider()["options"]["path"]: rel[gen.OUTPUT.parent],
    }
    assert all(v.endswith(":ro") for v in grafana["volumes"] if v.startswith("./"))
    assert grafana["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    # a pinned image and a pinned plugin, installed before provisioning runs
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    assert re.fullmatch(
        rf"{gen.PLUGIN_ID}@\d+\.\d+\.\d+", grafana["environment"]["GF_PLUGINS_PREINSTALL_SYNC"]
    )
    assert "3000:3000" in grafana["ports"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{_provider()['options']['path']}/{gen.OUTPUT.name}"


def test_the_datasource_reads_the_server_and_database_the_flows_write() -> None:
    services = _compose()
    jd = _datasource()["jsonData"]
    flows = urlparse(services["live"]["environment"]["QT_CLICKHOUSE_URL"])
    assert jd["host"] == flows.hostname and jd["host"] in services
    assert jd["protocol"] == flows.scheme == "http" and jd["secure"] is False
    assert jd["port"] == flows.port
    assert f"{flows.port}" in {p.split(":")[-1] for p in services[jd["host"]]["ports"]}
    assert (
        jd["username"] == flows.username == services["clickhouse"]["environment"]["CLICKHOUSE_USER"]
    )
    database = flows.path.strip("/")
    assert (
        jd["defaultDatabase"] == database == services["clickhouse"]["environment"]["CLICKHOUSE_DB"]
    )
    assert database == Settings.from_env({}).database  # the embedded store's name too


# --- the dashboard ---------------------------------------------------------------------------
def test_the_dashboard_file_is_exactly_what_the_generator_builds_now() -> None:
    assert gen.OUTPUT.read_text() == gen.render(gen.build()), (
        "stale dashboard: run python -m deploy.grafana.build_dashboard"
    )
    assert gen.main(["--check"]) == 0


def _unmap(raw_sql: str) -> str:
    """Undo the documented parameter mapping: CAST(${name:sqlstring} AS Type) -> {name:Type}."""
    return re.sub(r"CAST\(\$\{(\w+):sqlstring\} AS (\w+(?:\([^()]*\))?)\)", r"{\1:\2}", raw_sql)


def test_every_panel_is_an_analytics_file_modulo_the_parameter_mapping() -> None:
    dash = _dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    queries = set()
    for panel in dash["panels"]:
        (target,) = panel["targets"]
        raw = target["rawSql"]
        files = [
            p
            for p in (PROJECT_ROOT / "sql" / "analytics").glob("*.sql")
            if p.read_text() == _unmap(raw)
        ]
        assert len(files) == 1, f"panel {panel['title']!r} is no sql/analytics file"
        queries.add(files[0].stem)
        # every Grafana variable in the SQL is a dashboard text box, and Grafana sees no other $
        used = re.findall(r"\$\{(\w+):sqlstring\}", raw)
        assert raw.count("$") == len(used)
        for name in used:
            assert variables[name]["type"] == "textbox"
            assert name in panel["description"]
        assert target["editorType"] == "sql"
        assert (target["format"], target["queryType"]) in {(0, "timeseries"), (1, "table")}
    assert len(queries) == len(dash["panels"])  # one panel per chosen query
    assert set(variables) == {
        n for q in queries for n, _ in gen.parameters(gen.sql_file(q).read_text())
    }


def test_every_panel_uses_the_provisioned_datasource_and_the_grid_does_not_overlap() -> None:
    dash = _dashboard()
    assert dash["uid"] == gen.DASHBOARD_UID and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        refs = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        assert all(r == {"type": gen.PLUGIN_ID, "uid": _datasource()["uid"]} for r in refs)
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine


# --- the panels' SQL on the real schema ------------------------------------------------------
T0 = datetime(2014, 5, 6, 10, 0, tzinfo=UTC)
TRADE_ID = "FXCM:EURUSD@2014-05-06T10:31:00.000Z"


def _seed(store) -> None:
    """A row or two in every table the dashboard reads, so each query returns rows."""

    def put(table: str, rows: list[dict[str, Any]]) -> None:
        store.insert(table, list(rows[0]), [list(r.values()) for r in rows])

    trade = {
        "trade_id": TRADE_ID,
        "symbol": "FXCM:EURUSD",
        "side": "long",
        "status": "closed",
        "version": 2,
        "entry_ts": T0,
        "exit_ts": T0 + timedelta(minutes=30),
        "net_pnl": 5.0,
        "pnl_pct": 0.05,
        "fees": 0.1,
        "exit_reason": "tp",
        "vote_models": ["xgb", "lgbm"],
        "vote_versions": ["v1", "v1"],
        "vote_actions": ["BUY", "SELL"],
        "features": {"ret_1": 0.1},
        "rl_state": [0.1],
        "rl_action": [0.5],
        "rl_log_prob": -1.2,
        "policy_version": "p1",
        "sizing": "ppo",
        "rl_size_usd": 1000.0,
        "rl_tp_pct": 0.2,
        "rl_sl_pct": 0.1,
    }
    put(
        "trades",
        [
            trade,
            {
                **trade,
                "trade_id": "FXCM:NZDUSD@2014-05-07T11:00:00.000Z",
                "symbol": "FXCM:NZDUSD",
                "side": "short",
                "net_pnl": -3.0,
                "pnl_pct": -0.03,
                "exit_reason": "sl",
                "entry_ts": T0 + timedelta(days=1),
                "exit_ts": T0 + timedelta(days=1, minutes=9),
            },
        ],
    )
    put(
        "supervisor_verdicts",
        [
            {
                "symbol": "FXCM:EURUSD",
                "ts": T0,
                "action": "BUY",
                "allowed": False,
                "biased": True,
                "buy_share": 0.9,
                "sell_share": 0.1,
            }
        ],
    )
    put(
        "rl_updates",
        [
            {
                "registry_version": "p2",
                "ts": T0,
                "policy_before": "p1",
                "policy_after": "p2",
                "transitions": 64,
                "mean_reward": 0.01,
            }
        ],
    )
    put(
        "drift_checks",
        [
            {
                "ts": T0,
                "reference": "v1",
                "rows": 500,
                "method": "psi",
                "raw": 0.3,
                "null_level": 0.1,
                "corrected": 0.2,
                "threshold": 0.15,
                "fired": True,
            }
        ],
    )
    put(
        "clm_cycles",
        [
            {
                "cycle_id": "c1",
                "trigger": "drift",
                "status": "decided",
                "started_ts": T0,
                "updated_ts": T0,
                "versions": {"xgb": "v2", "xgb.warm": "v3"},
                "decisions": {"xgb": "promoted", "xgb.warm": "retired"},
                "train_metrics": {"seconds.xgb": 1.5, "xgb.val_macro_f1": 0.4},
                "shadow_metrics": {
                    "xgb.production_f1": 0.3,
                    "xgb.challenger_f1": 0.4,
                    "xgb.n": 120.0,
                },
                "reasons": {"xgb": "better", "xgb.warm": "not better"},
            }
        ],
    )
    put(
        "signals",
        [
            {
                "symbol": "FXCM:EURUSD",
                "ts": T0,
                "bar_start": T0,
                "action": "BUY",
                "models": ["xgb"],
                "versions": ["v1"],
                "actions": ["BUY"],
            }
        ],
    )
    put(
        "shadow_predictions",
        [{"model": "xgb", "version": "v2", "symbol": "FXCM:EURUSD", "ts": T0, "action": "SELL"}],
    )
    put(
        "trade_outcomes",
        [
            {
                "trade_id": TRADE_ID,
                "symbol": "FXCM:EURUSD",
                "side": "long",
                "entry_ts": T0,
                "exit_ts": T0 + timedelta(minutes=30),
                "exit_reason": "tp",
                "net_pnl": 5.0,
                "pnl_pct": 0.05,
                "sizing": "ppo",
                "policy_version": "p1",
                "reward": 0.0005,
                "joined_from": "stream",
            }
        ],
    )
    put(
        "dead_letters",
        [
            {
                "id": "ticks.csv.gz:7",
                "source": "ticks.csv.gz",
                "row": 7,
                "ts": T0,
                "symbol": "FXCM:EURUSD",
                "stage": "validate",
                "reason": "time went backwards by 1200 ms",
                "raw": "...",
            }
        ],
    )
    put(
        "evaluations",
        [
            {
                "evaluation_id": "e1",
                "metric": "net_pnl",
                "off": 1.0,
                "on": 2.0,
                "diff": 1.0,
                "diff_low": -0.5,
                "diff_high": 2.5,
                "confidence": 0.9,
                "train_until": T0,
                "replay_from": T0,
                "replay_to": T0,
                "verdict": "inconclusive",
                "created_ts": T0,
            }
        ],
    )


def _grafana(raw_sql: str, values: dict[str, str]) -> str:
    """Interpolate as Grafana does ``${name:sqlstring}``: the value in quotes, ``'`` doubled."""
    out = re.sub(
        r"\$\{(\w+):sqlstring\}", lambda m: "'" + values[m[1]].replace("'", "''") + "'", raw_sql
    )
    assert "$" not in out
    return out


def _run(store, sql: str) -> list[dict[str, Any]]:
    # Store.query runs files only (by design); a panel's interpolated SQL is text.
    res = store._call(store._client.query, sql)
    return [dict(zip(res.column_names, row, strict=True)) for row in res.result_rows]


def _defaults() -> dict[str, str]:
    return {v["name"]: v["current"]["value"] for v in _dashboard()["templating"]["list"]}


@pytest.mark.parametrize("panel", _dashboard()["panels"], ids=lambda p: p["title"])
def test_the_panel_sql_runs_on_the_schema_as_grafana_sends_it(store, panel) -> None:
    _seed(store)
    (target,) = panel["targets"]
    values = _defaults()
    if "${trade_id:" in target["rawSql"]:
        assert _run(store, _grafana(target["rawSql"], values)) == []  # default: no trade
        values["trade_id"] = TRADE_ID
    rows = _run(store, _grafana(target["rawSql"], values))
    assert rows, f"{panel['title']}: no rows from seeded tables"
    if panel["type"] == "timeseries":  # drawn against its first time column, in time order
        time_col = next(c for c in rows[0] if all(isinstance(r[c], date) for r in rows))
        times = [r[time_col] for r in rows]
        assert times == sorted(times)  # the plugin pivots a long frame only when sorted
    if "${start_equity:" in target["rawSql"]:  # the cast value is the CLI's default
        start = float(values["start_equity"])
        if "peak_equity" in rows[0]:  # max_drawdown: the first trade won 5.0
            assert rows[0]["peak_equity"] == pytest.approx(start + 5.0)
        else:  # equity_curve: the equity after the first trade
            assert rows[0]["equity"] == pytest.approx(start + 5.0)


def test_a_quote_in_a_variable_stays_inside_the_sql_string(store) -> None:
    _seed(store)
    (panel,) = [p for p in _dashboard()["panels"] if "${trade_id:" in p["targets"][0]["rawSql"]]
    sql = panel["targets"][0]["rawSql"]
    assert _run(store, _grafana(sql, {"trade_id": "x' OR 1=1 --"})) == []
    assert len(_run(store, _grafana(sql, {"trade_id": TRADE_ID}))) == 1

"""Build the Grafana dashboard ``deploy/grafana/dashboards/qt-stream.json`` from
``sql/analytics/*.sql``.

    python -m deploy.grafana.build_dashboard           # (re)write the dashboard
    python -m deploy.grafana.build_dashboard --check   # exit 1 if it is not what this builds

Every panel's SQL is the text of an analytics file, the one ``python -m cli.analytics <name>``
runs, so the CLI, the report and the dashboard cannot disagree; edit the ``.sql`` file and
rebuild, never the JSON (tests/deploy/test_grafana.py fails on a stale or hand-edited file).

ClickHouse query parameters ``{name:Type}`` have no Grafana equivalent, so each becomes
``CAST(${name:sqlstring} AS Type)``: a dashboard variable ``name`` (a text box above the
panels), which Grafana writes into the SQL as a quoted string (``'`` doubled) and ClickHouse
casts to the parameter's type. That is the only difference from the file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from settings import Settings
from storage.store import SQL_DIR

PLUGIN_ID = "grafana-clickhouse-datasource"
DATASOURCE_UID = "qt-clickhouse"  # provisioning/datasources/clickhouse.yaml
DASHBOARD_UID = "qt-stream"
OUTPUT = Path(__file__).resolve().parent / "dashboards" / "qt-stream.json"
SCHEMA_VERSION = 41  # classic dashboard JSON; newer Grafanas migrate it on load
GRID_COLUMNS = 24

# {name:Type} as ClickHouse parses a query parameter (a comment's "{name}" is not one).
PARAMETER = re.compile(r"\{(\w+):([^{}]+)\}")

# The time series sit at event time: the bundled sample that docker-compose replays is
# 2014-05-06/07 (its CLM week starts Monday 05-05). The queries ignore the range.
TIME_RANGE = {"from": "2014-05-05T00:00:00.000Z", "to": "2014-05-08T00:00:00.000Z"}

# Plugin query formats (grafana/sqlds FormatQueryOption): time series pivots label columns
# into one series each; table leaves the frame as the query returned it.
FORMAT_TIME_SERIES, FORMAT_TABLE = 0, 1


@dataclass(frozen=True)
class Panel:
    """One panel: which analytics query, how it is drawn and how big it is."""

    query: str  # sql/analytics/<query>.sql
    title: str
    kind: str  # Grafana panel type: timeseries, table, barchart, stat
    width: int
    height: int = 8
    pivot: bool = False  # time series whose string columns name the series
    fields: tuple[str, ...] = ()  # draw only these columns (bar charts: x first)


PANELS: tuple[Panel, ...] = (
    Panel("run_overview", "The run at a glance", "table", 24, 4),
    Panel("max_drawdown", "Realised equity and max drawdown", "stat", 9, 5),
    Panel("entry_state_completeness", "Entry state completeness (expected: zeros)", "stat", 15, 5),
    Panel("pnl_by_day", "PnL, win rate and Sharpe by day", "timeseries", 12),
    Panel("model_win_rate_by_day", "Win rate by model and day", "timeseries", 12, pivot=True),
    Panel("equity_curve", "Realised equity and drawdown after every trade", "table", 12),
    Panel("pnl_by_symbol", "PnL by symbol", "table", 12),
    Panel("exit_reasons", "Exit reasons", "barchart", 6, fields=("exit_reason", "trades")),
    Panel("model_win_rate", "Win rate by model", "barchart", 6, fields=("model", "win_rate")),
    Panel("supervisor_blocks", "Bias window: verdicts and blocks per hour", "timeseries", 12),
    Panel("rl_sizing", "PPO sizing by mode and policy", "table", 12),
    Panel("rl_updates", "RL policy updates", "timeseries", 12),
    Panel("rl_rewards", "Rewards the learners consumed, with their trend", "table", 12),
    Panel("model_hit_rate_rolling", "Rolling hit rate by model (last 20 trades)", "table", 12),
    Panel("drift_checks", "Drift checks", "timeseries", 12),
    Panel("clm_cycles_per_week", "CLM cycles per week by trigger", "timeseries", 12, pivot=True),
    Panel("challenger_variants", "Challengers: warm-started vs from scratch", "table", 12),
    Panel("promotions", "Promotion decisions", "table", 24),
    Panel("shadow_vs_production", "Shadow vs production", "table", 12),
    Panel("evaluations", "Learning ablations (cli.evaluate)", "table", 12),
    Panel("dead_letters_by_reason", "Dead letters by stage and reason", "table", 12),
    Panel("dead_letters_by_source", "Dead letters by source", "table", 12),
    Panel("why_trade", "Why did we trade: one trade's entry state", "table", 24),
)


def variable_defaults() -> dict[str, str]:
    """Each query parameter's dashboard variable and its default, as the CLI fills them."""
    return {
        "start_equity": str(Settings.from_env({}).start_equity),  # cli.analytics' default
        "trade_id": "",  # paste one from the trades table (python -m cli.analytics trades)
    }


def sql_file(query: str) -> Path:
    return SQL_DIR / "analytics" / f"{query}.sql"


def parameters(sql: str) -> list[tuple[str, str]]:
    """``(name, Type)`` of every ``{name:Type}`` in ``sql``, each once, in order."""
    return list(dict.fromkeys(PARAMETER.findall(sql)))


def grafana_sql(sql: str) -> str:
    """The file's SQL with each ``{name:Type}`` as ``CAST(${name:sqlstring} AS Type)``."""
    return PARAMETER.sub(lambda m: f"CAST(${{{m[1]}:sqlstring}} AS {m[2]})", sql)


def description(panel: Panel, sql: str) -> str:
    """The SQL file's leading comment, where the query comes from, and what each parameter is."""
    head = []
    for line in sql.splitlines():
        if not line.startswith("--"):
            break
        head.append(line.removeprefix("--").strip())
    parts = [
        " ".join(head),
        f"Query: sql/analytics/{panel.query}.sql, as `python -m cli.analytics "
        f"{panel.query}` runs it.",
    ]
    for name, type_ in parameters(sql):
        parts.append(
            f"Parameter {name} ({type_}) is the dashboard variable `{name}` (the text "
            f"box above the panels), written in as a quoted SQL string and cast to "
            f"{type_}."
        )
    if panel.kind == "timeseries":
        parts.append("The time range only places the points: the query reads every row.")
    return "\n\n".join(parts)


def _layout(panels: tuple[Panel, ...]) -> list[dict[str, int]]:
    """Left to right, a new row when a panel does not fit; rows as tall as their tallest."""
    out, x, y, row_height = [], 0, 0, 0
    for p in panels:
        if x + p.width > GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        out.append({"h": p.height, "w": p.width, "x": x, "y": y})
        x, row_height = x + p.width, max(row_height, p.height)
    return out


def _visual(panel: Panel) -> tuple[dict[str, Any], dict[str, Any]]:
    """Panel ``options`` and ``fieldConfig.defaults`` for the panel's kind."""
    if panel.kind == "stat":
        return (
            {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "textMode": "value_and_name",
                "colorMode": "none",
                "graphMode": "none",
            },
            {},
        )
    if panel.kind == "timeseries":
        return (
            {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "none"},
            },
            {"custom": {"drawStyle": "line", "showPoints": "always", "spanNulls": True}},
        )
    if panel.kind == "barchart":
        return (
            {
                "xField": panel.fields[0],
                "orientation": "auto",
                "showValue": "auto",
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            },
            {},
        )
    return {"showHeader": True, "cellHeight": "sm"}, {}


def build_panel(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    sql = sql_file(panel.query).read_text()
    if "$" in sql:  # Grafana would read $word / ${...} in it as a dashboard variable
        raise ValueError(f"sql/analytics/{panel.query}.sql has a '$': Grafana would rewrite it")
    fmt = FORMAT_TIME_SERIES if panel.pivot else FORMAT_TABLE
    datasource = {"type": PLUGIN_ID, "uid": DATASOURCE_UID}
    options, defaults = _visual(panel)
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": description(panel, sql),
        "gridPos": grid,
        "datasource": datasource,
        "targets": [
            {
                "refId": "A",
                "datasource": datasource,
                "editorType": "sql",
                "queryType": "timeseries" if fmt == FORMAT_TIME_SERIES else "table",
                "format": fmt,
                "rawSql": grafana_sql(sql),
            }
        ],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }
    if panel.fields:
        out["transformations"] = [
            {"id": "filterFieldsByName", "options": {"include": {"names": list(panel.fields)}}}
        ]
    return out


def build_variables(panels: tuple[Panel, ...]) -> list[dict[str, Any]]:
    """One text box per query parameter the panels use (a parameter without a known default
    is an error: the generator cannot guess what the query means by it)."""
    defaults = variable_defaults()
    out: dict[str, dict[str, Any]] = {}
    for panel in panels:
        for name, type_ in parameters(sql_file(panel.query).read_text()):
            if name not in defaults:
                raise ValueError(
                    f"{panel.query}: no dashboard default for parameter {name!r}; "
                    "add one to variable_defaults()"
                )
            value = defaults[name]
            out.setdefault(
                name,
                {
                    "type": "textbox",
                    "name": name,
                    "label": name,
                    "description": f"Query parameter {{{name}:{type_}}} of sql/analytics",
                    "query": value,
                    "current": {"text": value, "value": value},
                    "options": [{"selected": True, "text": value, "value": value}],
                    "hide": 0,
                },
            )
    return list(out.values())


def build(panels: tuple[Panel, ...] = PANELS) -> dict[str, Any]:
    """The dashboard as a JSON-ready dict."""
    grids = _layout(panels)
    return {
        "uid": DASHBOARD_UID,
        "title": "qt-stream: what happened",
        "description": "Built from sql/analytics/*.sql by deploy/grafana/build_dashboard.py; "
        "do not edit here.",
        "tags": ["qt-stream", "clickhouse"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "",
        "time": TIME_RANGE,
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": build_variables(panels)},
        "panels": [
            build_panel(p, i, g) for i, (p, g) in enumerate(zip(panels, grids, strict=True), 1)
        ],
    }


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the file differs from what would be built",
    )
    args = ap.parse_args(argv)
    text = render(build())
    shown = OUTPUT.relative_to(SQL_DIR.parent)
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(
                f"{shown} is stale: run python -m deploy.grafana.build_dashboard", file=sys.stderr
            )
            return 1
        print(f"{shown} is up to date")
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {shown} ({len(PANELS)} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run one outcome query from ``sql/analytics/`` by name and print a table.

    python -m cli.analytics                       # list the queries
    python -m cli.analytics pnl_by_symbol
    python -m cli.analytics why_trade --param trade_id='FXCM:EURUSD@2014-05-06T10:31:00.000Z'
    python -m cli.analytics max_drawdown --json

Parameters are bound (``{name:Type}`` in the SQL), never spliced. ``start_equity``
(``QT_START_EQUITY``) and ``seconds`` (``QT_BAR_SECONDS``) default to the settings.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from datetime import date, datetime
from typing import Any

import errors
from settings import Settings
from storage.store import SQL_DIR, open_store

errors.install()  # a user error is one line, not a traceback (errors.py)


def available() -> list[str]:
    return sorted(p.stem for p in (SQL_DIR / "analytics").glob("*.sql"))


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, datetime):
        return v.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_cell(x)}" for k, x in v.items()) + "}"
    return str(v)


def render(rows: list[dict[str, Any]], max_width: int = 60) -> str:
    """A plain text table (long cells are cut to ``max_width``); one row prints as
    ``column: value`` lines, uncut (the "why did we trade" view)."""
    if not rows:
        return "(no rows)"
    if len(rows) == 1:
        width = max(len(c) for c in rows[0])
        return "\n".join(f"{c:<{width}}  {_cell(v)}" for c, v in rows[0].items())
    cols = list(rows[0])
    cells = [[_cell(r[c])[:max_width] for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, date):
        return _cell(v) if isinstance(v, datetime) else v.isoformat()
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def settings_params(settings: Settings) -> dict[str, str]:
    """Query parameters that default to the run's settings when a query uses them."""
    return {"start_equity": str(settings.start_equity), "seconds": str(settings.bar_seconds)}


def run(name: str, params: dict[str, str], settings: Settings) -> list[dict[str, Any]]:
    if name not in available():
        raise SystemExit(f"no analytics query {name!r}; available: {', '.join(available())}")
    needed = set(re.findall(r"\{(\w+):", (SQL_DIR / "analytics" / f"{name}.sql").read_text()))
    for key, value in settings_params(settings).items():
        if key in needed:
            params.setdefault(key, value)
    missing = sorted(needed - params.keys())
    if missing:
        raise SystemExit(f"{name} needs --param " + " --param ".join(f"{m}=..." for m in missing))
    store = open_store(settings)
    try:
        return store.query(f"analytics/{name}", **params)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", nargs="?", help="query name (sql/analytics/<name>.sql)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", action="store_true", help="print rows as JSON lines")
    args = ap.parse_args(argv)
    if not args.name:
        print("\n".join(available()))
        return
    params = dict(p.split("=", 1) for p in args.param)
    rows = run(args.name, params, Settings.from_env())
    if args.json:
        for r in rows:
            sys.stdout.write(json.dumps(_jsonable(r)) + "\n")
    else:
        print(render(rows))


if __name__ == "__main__":
    main()

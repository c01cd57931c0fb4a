"""Write the run report: one self-contained HTML file of charts drawn from the store.

    python -m cli.report [--out report.html] [--symbol SYMBOL]

Reads the store that ``QT_HOME`` / ``QT_CLICKHOUSE_URL`` name (chDB allows one process per
embedded store: run it after the flow has ended). Every chart comes from an analytics query
(``python -m cli.analytics <name>`` prints the same rows); the file needs no network.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import errors
from report.build import build_report
from settings import Settings

errors.install()  # a user error is one line, not a traceback (errors.py)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write")
    ap.add_argument("--symbol", help="symbol to draw trades on (default: the most traded)")
    args = ap.parse_args(argv)
    started = time.monotonic()
    text = build_report(Settings.from_env(), args.symbol)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(
        f"wrote {args.out.resolve()} ({args.out.stat().st_size:,} bytes) in "
        f"{time.monotonic() - started:.1f} s"
    )


if __name__ == "__main__":
    main()

"""Is learning worth it? Replay the same data with learning off and on, and compare.

    python -m cli.evaluate --ticks FILES --train-until 2014-05-06 [--out report.txt]

Trains all five models on the data before ``--train-until`` (into the evaluation's own
registry), replays the rest twice (learning off: frozen models and policy; learning on: PPO
updates and continuous learning, training synchronously so the run is reproducible), and
prints, per arm, trades, win rate, net PnL, daily Sharpe, maximum drawdown and what learning
did, with bootstrap intervals on the on - off differences and a verdict in plain words. The
result is also stored in the ``evaluations`` table (``python -m cli.analytics evaluations``).
Every other ``QT_*`` setting applies to both arms (e.g. ``QT_RL_V3_UPDATE_INTERVAL=20``), and
is printed with the report. The same input and settings give the same report.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import errors
from cli.ablation import run_evaluation, store_evaluation
from schemas.timeutil import parse_iso
from settings import Settings

errors.install()  # a user error is one line, not a traceback (errors.py)


def _when(text: str) -> datetime:
    try:
        return parse_iso(text if "T" in text else f"{text}T00:00:00Z").astimezone(UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected an ISO date or time, e.g. 2014-05-06 or 2014-05-06T12:00:00Z"
        ) from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", required=True, help="tick files (QT_TICKS file forms, CSV/CSV.gz)")
    ap.add_argument(
        "--train-until",
        required=True,
        type=_when,
        help="train on the data before this time (UTC), replay the rest",
    )
    ap.add_argument("--out", type=Path, help="also write the report to this file")
    ap.add_argument("--quick", action="store_true", help="tiny models (tests, smoke runs)")
    ap.add_argument("--confidence", type=float, default=0.95, help="interval level (0.95)")
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    evaluation = run_evaluation(
        args.ticks, args.train_until, settings, quick=args.quick, confidence=args.confidence
    )
    report = evaluation.render()
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n")
    store_evaluation(evaluation, settings)
    print(
        f"stored as evaluation {evaluation.evaluation_id}: python -m cli.analytics evaluations",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()

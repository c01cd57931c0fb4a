"""Ask the running (or next) live flow for a retraining cycle: ``python -m cli.retrain``.

Writes a request under ``$QT_HOME/clm/requests``; the CLM step claims it at its next event-time
tick and starts a cycle with trigger ``manual`` (whatever ``QT_CLM_AUTO_RETRAIN`` says).

    python -m cli.retrain [--reason TEXT] [--id REQUEST_ID]
"""

from __future__ import annotations

import argparse

import errors
from learning.triggers import RetrainRequests
from settings import Settings

errors.install()  # a user error is one line, not a traceback (errors.py)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reason", default="manual request from the CLI")
    ap.add_argument("--id", dest="request_id", help="idempotency key (a retry keeps one request)")
    args = ap.parse_args(argv)
    path = RetrainRequests(Settings.from_env().clm_dir).submit(args.reason, args.request_id)
    print(f"retrain request written: {path}")


if __name__ == "__main__":
    main()

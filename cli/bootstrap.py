"""Train all four voters and the PPO policy from tick files and register them as production.

    python -m cli.bootstrap [--ticks SPEC] [--quick]

``--ticks`` takes the ``QT_TICKS`` file forms (file, glob, comma list); the default is
``QT_BOOTSTRAP_TICKS`` (the bundled sample).
"""

from __future__ import annotations

import argparse

import errors
from models.registry import open_registry
from settings import Settings
from storage.store import open_store
from training.bootstrap import BootstrapConfig, bootstrap, store_features

errors.install()  # a user error is one line, not a traceback (errors.py)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", help="tick files to train on (QT_TICKS file forms)")
    ap.add_argument("--quick", action="store_true", help="tiny models (smoke tests)")
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    store = open_store(settings)
    try:
        bootstrap(
            settings,
            open_registry(settings, store),
            ticks=args.ticks,
            config=BootstrapConfig.quick() if args.quick else None,
            archive=store_features(store),
        )
    finally:
        store.close()


if __name__ == "__main__":
    main()

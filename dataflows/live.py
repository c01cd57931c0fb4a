"""The live dataflow: ``python -m bytewax.run dataflows.live``.

Ticks (files or Kafka, ``QT_TICKS``) -> validation (dead letters) -> per-symbol event-time
bars -> features -> the four-model ensemble -> the bias window -> PPO sizing and paper
execution -> ClickHouse (embedded chDB by default, ``QT_CLICKHOUSE_URL`` for a server), ending
with a one-screen summary when the input ends.

When the registry has no production models (a fresh clone), the flow first trains them on
``QT_BOOTSTRAP_TICKS`` (the bundled sample), saying so.

Several processes (Bytewax's cluster mode, addressed as they would be across machines)::

    python -m bytewax.run dataflows.live -i 0 -a "host0:2101;host1:2101"   # on host0
    python -m bytewax.run dataflows.live -i 1 -a "host0:2101;host1:2101"   # on host1
    python -m bytewax.testing dataflows.live -p 2                          # both, locally

Every process builds the same flow; input partitions (files, Kafka partitions) and symbols
are spread over the workers of all of them, and the decision engine runs on one worker, in
the same order as with one process (same trades, PPO updates and promotions). The embedded
store is opened only by the process that runs the engine: every table row travels there
through the flow (``graphs.store``); with ``QT_CLICKHOUSE_URL`` each process inserts its own.
Process 0 bootstraps an empty registry while the others wait; they share ``QT_HOME``'s
registry directory (on one machine, or a shared one), and one of them prints the summary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from bytewax.dataflow import Dataflow

import errors
from connectors.layouts import LayoutOptions
from connectors.replay import check_tick_files
from dataflows import graphs
from errors import UserError
from models.base import MODEL_NAMES, POLICY_NAME
from models.registry import REPAIR_COMMAND, open_registry, version_span
from report.build import report_command
from runtime import cluster, install_stop_handlers, tune_gc
from settings import Settings
from storage.store import check_embedded_store, open_store


class RegistryIncomplete(UserError):
    """The registry has versions, but not a production version of every model."""


BOOTSTRAP_WAIT_S = 900.0  # how long a cluster's other processes wait for the first's bootstrap


def wait_for_models(
    settings: Settings,
    timeout_s: float = BOOTSTRAP_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """In a cluster, the processes after the first wait until the registry has a production
    version of every model: the first process bootstraps an empty registry (it alone may use
    the embedded store meanwhile), and every process must load the same versions."""
    names = (*MODEL_NAMES, POLICY_NAME)
    waited, said = 0.0, False
    while True:
        registry = open_registry(settings)
        if all(registry.production_version(m) is not None for m in names):
            return
        if waited >= timeout_s:
            raise RegistryIncomplete(
                f"model registry {settings.registry_dir}: no production version of every model "
                f"after {timeout_s:.0f} s; the cluster's first process (-i 0) makes them: see "
                "its output"
            )
        if not said:
            print(
                f"waiting for the cluster's first process to bootstrap the model registry "
                f"{settings.registry_dir}",
                file=sys.stderr,
            )
            said = True
        sleep(0.5)
        waited += 0.5


def ensure_models(settings: Settings) -> None:
    """Bootstrap the registry when it is empty (a fresh clone); refuse one that has versions
    but lacks a production version of some model, saying what is missing: retraining over it
    would retire the production versions of the other models.

    First checks that the input files and the local state are usable (``QT_TICKS`` files
    readable, with a known header; ``QT_HOME`` writable, the embedded store not held by another
    process), so those problems are one line before anything starts, not after a bootstrap.
    In a cluster only the first process (``-i 0``) does this; the others wait for its models
    (:func:`wait_for_models`).
    """
    if not settings.ticks.startswith("kafka://"):
        check_tick_files(settings.ticks, options=LayoutOptions.from_settings(settings))
    if not cluster().first:  # the first process checks the store and bootstraps
        wait_for_models(settings)
        return
    if not settings.clickhouse_url.strip():
        check_embedded_store(settings)
    registry = open_registry(settings)
    names = (*MODEL_NAMES, POLICY_NAME)
    missing = [m for m in names if registry.production_version(m) is None]
    if not missing:
        return
    on_disk = {m: registry.version_names(m) for m in names}
    if any(on_disk.values()):
        what = "; ".join(
            f"{m} has no production version ({version_span(on_disk[m])} on disk)"
            if on_disk[m]
            else f"{m} has no versions"
            for m in missing
        )
        raise RegistryIncomplete(
            f"model registry {settings.registry_dir}: {what}; nothing was retrained (that "
            "would retire the other models' production versions): restore the registry from a "
            f"backup or rebuild its stages with: {REPAIR_COMMAND}; or point QT_REGISTRY_DIR at "
            "an empty directory to train every model from scratch"
        )
    print(
        f"model registry {settings.registry_dir} has no production models: bootstrapping "
        f"on {settings.bootstrap_ticks} first",
        file=sys.stderr,
    )
    from training.bootstrap import bootstrap, store_features

    store = open_store(settings)
    try:
        bootstrap(
            settings, open_registry(settings, store), out=sys.stderr, archive=store_features(store)
        )
    finally:
        store.close()


def build_live_flow(settings: Settings | None = None) -> Dataflow:
    settings = settings or Settings.from_env()
    install_stop_handlers()
    ensure_models(settings)
    flow = Dataflow("live")
    market = graphs.market_data(flow, settings)
    scored = graphs.scoring(market, settings)
    decided = graphs.engine(market, scored, settings)
    archived = graphs.inline_learning(settings) and settings.clm_enabled
    rows = [*graphs.market_data_rows(market, features=not archived), graphs.engine_rows(decided)]
    training = open_registry(settings).production_span(MODEL_NAMES)
    counts = [*graphs.market_data_counts(market, training), graphs.engine_counts(decided)]
    if settings.trade_events.startswith("kafka://"):
        # the learning flow runs in its own process: python -m bytewax.run dataflows.learning
        graphs.publish_learning_events(decided, settings.trade_events)
    counts += graphs.store("clickhouse", rows, settings, list(graphs.LIVE_TABLES))
    tune_gc()  # start-up's objects frozen, fewer collections (runtime.py says why)
    started = time.monotonic()  # after the models are loaded: the summary measures streaming
    always = graphs.LEARNING_SUMMARY if graphs.inline_learning(settings) else ()
    graphs.print_summary(
        counts,
        started,
        "qt live run summary",
        settings,
        always,
        footer=f"\nreport: {report_command(settings)}",
    )
    return flow


errors.install()  # a user error ends the run in one line (errors.py)
__getattr__ = graphs.lazy_flow(build_live_flow)

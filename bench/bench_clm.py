"""Benchmark: one CLM training cycle, and the live flow's speed while a cycle trains.

Two measurements, each in fresh child processes:

- ``cycle``: the four models retrained on the Bittrex candles (10 symbols, 10 days of 1-minute
  bars) with the default :class:`learning.trainer.CycleConfig`, timed from
  :meth:`TrainingJob.start` to its result, so the child's start-up, imports and the history's
  trip through the executor count (the history itself is built first, untimed, as the flow
  would have it in memory). Target: under 60 s.
- ``live``: ``python -m bytewax.run dataflows.live`` on the FXCM quotes file (ticks/s from the
  flow's own summary, as ``bench/bench_live_flow.py`` reads it), once alone and once while
  cycles train on the Bittrex history: a job is started before the flow's child (0, 10, 20 s
  before, in turn, so the runs meet different phases of a cycle), and started again whenever
  it ends before the flow does, so training overlaps the flow throughout.
  Target: the ratio of the two rates at least 0.70.
- ``cycle under load``: the cycle timed again while the live flow runs back to back beside it
  (the two compete for the two cores as they would in production).

The live flow's models come from ``--registry`` or a registry bootstrapped first on the bundled
sample (``python -m cli.bootstrap`` in a child). The flow's own CLM is off in its children
(``QT_CLM_ENABLED=false``; ``--flow-clm`` leaves it on), so that both rates are the same flow
and the only training is the bench's.

    python bench/bench_clm.py [--train-ticks FILE] [--live-ticks FILE] [--registry DIR]
                              [--repeat N] [--skip-live] [--flow-clm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_live_flow import bootstrap_registry, run_flow  # noqa: E402

from learning.trainer import CycleConfig, CycleResult, TrainingJob  # noqa: E402
from models.base import MODEL_NAMES  # noqa: E402
from models.dataset import History  # noqa: E402
from models.labels import LabelConfig  # noqa: E402
from settings import Settings  # noqa: E402
from training.history import history_from_ticks  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TRAIN_TICKS = DATA / "candles" / "bittrex_10altBTC_1m_2018-01-20.csv.gz"
LIVE_TICKS = DATA / "quotes" / "fxcm_EURUSD-NZDUSD_2014-05_quotes.csv.gz"


def run_cycle(
    job: TrainingJob, history: History, label_cfg: LabelConfig, config: CycleConfig, out_dir: Path
) -> CycleResult:
    """Start a cycle and poll it to the end the way a dataflow step would."""
    job.start(history, None, label_cfg, config, out_dir)
    while True:
        result = job.poll()
        if result is not None:
            return result
        time.sleep(0.05)


def print_cycle(result: CycleResult) -> None:
    s = result.seconds
    in_child = s["total"]
    overhead = (result.wall_seconds or 0.0) - in_child
    print(
        f"cycle: {result.rows['train']:,} training rows ({result.rows['symbols']} symbols), "
        f"{result.rows['val']:,} validation rows, {result.rows['seq_bars']:,} bars for the "
        f"sequence models"
    )
    print(f"  {'child start-up, imports, history IPC':<38} {overhead:6.1f} s")
    print(f"  {'labels and split':<38} {s['prepare']:6.1f} s")
    for name in MODEL_NAMES:
        m = result.metrics[name]
        print(
            f"  {name + ' (fit, save, validate)':<38} {s[name]:6.1f} s   val macro-F1 "
            f"{m['val_macro_f1']:.3f}, accuracy {m['val_accuracy']:.3f}, "
            f"{int(m['val_calls'])} calls, hit rate {m['val_call_hit_rate']:.3f}"
        )
    print(
        f"  {'total (start -> result)':<38} {result.wall_seconds:6.1f} s   (baseline "
        f"macro-F1 {result.metrics['baseline']['val_macro_f1']:.3f}; target < 60 s)"
    )


class LiveLoad:
    """The live flow run back to back in children (a load, its figures ignored) until stopped."""

    def __init__(self, ticks: Path, registry: Path, tmp: Path) -> None:
        self.ticks, self.registry, self.tmp = ticks, registry, tmp
        self.proc: subprocess.Popen | None = None
        self.stopped = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            home = tempfile.mkdtemp(dir=self.tmp)
            env = {
                **os.environ,
                "QT_HOME": home,
                "QT_TICKS": str(self.ticks),
                "QT_REGISTRY_DIR": str(self.registry),
            }
            with self.lock:
                if self.stopped:
                    return
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "bytewax.run", "dataflows.live"],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            self.proc.wait()

    def __enter__(self) -> LiveLoad:
        self.thread.start()
        time.sleep(8.0)  # past the child's imports and model loading: the flow is running
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.stopped = True
            if self.proc is not None:
                self.proc.kill()
        self.thread.join()


class Trainer(threading.Thread):
    """Keeps a training cycle running until stopped (a new one starts when one ends)."""

    def __init__(
        self, history: History, label_cfg: LabelConfig, config: CycleConfig, tmp: Path
    ) -> None:
        super().__init__(daemon=True)
        self.history, self.label_cfg, self.config, self.tmp = history, label_cfg, config, tmp
        self.stop = threading.Event()
        self.cycles: list[float] = []
        self.job = TrainingJob()

    def run(self) -> None:
        while not self.stop.is_set():
            out = Path(tempfile.mkdtemp(dir=self.tmp))
            self.job.start(self.history, None, self.label_cfg, self.config, out)
            while not self.stop.is_set():
                result = self.job.poll()
                if result is not None:
                    self.cycles.append(result.wall_seconds or 0.0)
                    break
                time.sleep(0.05)
        self.job.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-ticks", type=Path, default=TRAIN_TICKS)
    ap.add_argument("--live-ticks", type=Path, default=LIVE_TICKS)
    ap.add_argument("--registry", type=Path, help="trained registry (default: bootstrap one)")
    ap.add_argument("--repeat", type=int, default=1, help="live runs alone / while training")
    ap.add_argument("--skip-live", action="store_true", help="time the cycle only")
    ap.add_argument(
        "--flow-clm",
        action="store_true",
        help="leave the live flow's own CLM on (default: QT_CLM_ENABLED=false in "
        "its child, so the bench's cycles are the only training)",
    )
    args = ap.parse_args()
    if not args.flow_clm:
        os.environ["QT_CLM_ENABLED"] = "false"  # read by the live flow's children
    settings = Settings.from_env({})
    label_cfg = LabelConfig.from_settings(settings)
    config = CycleConfig()

    t0 = time.perf_counter()
    history = history_from_ticks(str(args.train_ticks), settings)
    print(
        f"history: {args.train_ticks.name}, {sum(map(len, history.vectors.values())):,} bars "
        f"of {len(history.symbols)} symbols, built in {time.perf_counter() - t0:.1f} s "
        "(not part of the cycle)"
    )

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with TrainingJob() as job:
            result = run_cycle(job, history, label_cfg, config, tmp / "cycle")
        print_cycle(result)
        if args.skip_live:
            return

        registry = args.registry
        if registry is None:
            registry = bootstrap_registry(tmp / "registry", tmp / "boot")
        with LiveLoad(args.live_ticks, registry, tmp), TrainingJob() as job:
            loaded = run_cycle(job, history, label_cfg, config, tmp / "cycle-under-load")
        print(
            f"cycle while the live flow runs: {loaded.wall_seconds:.1f} s ("
            + ", ".join(f"{k} {v:.1f}" for k, v in loaded.seconds.items())
            + "; target < 60 s)"
        )
        alone: list[float] = []
        during: list[float] = []
        for i in range(args.repeat):
            alone.append(run_flow("live", args.live_ticks, registry, 1, 1, True).ticks_per_s)
            trainer = Trainer(history, label_cfg, config, tmp)
            trainer.start()
            delay = (i % 3) * 10.0  # runs 2 and 3 meet the later phases of a cycle
            time.sleep(delay)
            try:
                run = run_flow("live", args.live_ticks, registry, 1, 1, True)
            finally:
                overlapped = trainer.job.running
                trainer.stop.set()
                trainer.join()
            if not overlapped:
                print("  warning: no cycle was running when the flow ended")
            during.append(run.ticks_per_s)
            print(
                f"live flow on {args.live_ticks.name}: alone {alone[-1]:,.0f} ticks/s, while "
                f"training {during[-1]:,.0f} ticks/s (ratio {during[-1] / alone[-1]:.2f}; "
                f"flow {run.elapsed_s:.1f} s, process {run.wall_s:.1f} s, "
                f"started {delay:.0f} s after the job; "
                f"{len(trainer.cycles)} cycle(s) finished meanwhile)"
            )
    if args.repeat > 1:
        a, d = statistics.median(alone), statistics.median(during)
        print(
            f"median: alone {a:,.0f} ticks/s, while training {d:,.0f} ticks/s "
            f"(ratio {d / a:.2f}; target >= 0.70)"
        )
    else:
        print(f"ratio {during[0] / alone[0]:.2f} (target >= 0.70)")


if __name__ == "__main__":
    main()

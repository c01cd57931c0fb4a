"""Benchmark: the live flow against the market-data-only flow and a pass-through of the same
blocks, on the same file, in one invocation.

Three flows, each ``python -m bytewax.run`` in a fresh child process with a fresh ``QT_HOME``:

- ``blocks``: the replay source's blocks (the very ``TickRows`` items the live flow reads,
  ``QT_REPLAY_BLOCK_BYTES`` each) straight to a count: what reading and decoding the file
  costs, the floor of any flow over it;
- ``market data``: source -> validation -> bars -> features -> ClickHouse (bars, features,
  dead letters) with its summary: the live flow without scoring, decisions and execution;
- ``live``: ``dataflows.live`` (learning off by default: ``--learning on`` turns it on).

Rates are input rows per second of flow time, from the built dataflow (models loaded) to its
end, read from each flow's own summary (its ticks over its ticks/s: the time to a few
microseconds, where the elapsed line rounds to 0.1 s), so interpreter start-up, imports and
model loading are excluded; the child's wall time and peak RSS are printed too. All three
read the same rows, so their rate ratios are ratios of their times. ``--repeats N`` runs the
three flows N times, interleaved, and reports each ratio per round (adjacent runs share the
machine's load) and their median. ``--processes 1 2`` runs each flow as one process and as a
cluster of two (``python -m bytewax.testing FLOW -p 2``).

Where the CPU went while a flow streamed: every thread of its processes (the forward process
included) is sampled from ``/proc`` every 20 ms, and the CPU of the busiest thread and of all
of them within the flow time is printed. A ``-w 1`` worker runs every step on one thread, so
the busiest thread's CPU is a floor under the flow time; the report turns the live flow's
extra flow time and extra CPU on that thread into microseconds per bar, beside what a ratio of
0.80 would allow.

The models come from ``--registry`` or a registry bootstrapped once on the bundled sample
(cached in ``--cache``).

    python bench/bench_live_flow.py [--ticks FILE] [--repeats 3] [--workers 1]
        [--processes 1] [--learning off] [--registry DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the factories import Bytewax in the child, not here
    from bytewax.dataflow import Dataflow

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TICKS = (
    ROOT.parent / "shared" / "data" / "quotes" / "fxcm_EURUSD-NZDUSD_2014-05_quotes.csv.gz"
)
FLOWS = {  # name -> the bytewax.run import string of its dataflow
    "blocks": "bench.bench_live_flow:blocks_flow()",
    "market data": "bench.bench_live_flow:market_data_flow()",
    "live": "dataflows.live",
}
TRAINED = ("xgboost", "lightgbm", "nhits", "patchtst", "ppo")


# --- the flows the children run ---------------------------------------------------------------
def blocks_flow() -> Dataflow:
    """Source -> a count of its blocks' rows, with the live flow's summary step."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow

    from dataflows import graphs
    from settings import Settings

    settings = Settings.from_env()
    _tune_gc()
    flow = Dataflow("blocks")
    blocks = op.input("ticks", flow, graphs.tick_source(settings))
    counts = op.map("count", blocks, lambda r: {"rows_in": r.rows_in, "ticks": r.rows_in})
    graphs.print_summary([counts], time.monotonic(), "blocks summary", settings)
    return flow


def market_data_flow() -> Dataflow:
    """The market-data half of the live flow, stored and summarised as the live flow does."""
    from bytewax.dataflow import Dataflow

    from dataflows import graphs
    from settings import Settings

    settings = Settings.from_env()
    _tune_gc()
    flow = Dataflow("market_data")
    md = graphs.market_data(flow, settings)
    stored = graphs.store(
        "clickhouse", graphs.market_data_rows(md), settings, list(graphs.MARKET_DATA_TABLES)
    )
    graphs.print_summary(
        [*graphs.market_data_counts(md), *stored],
        time.monotonic(),
        "market data summary",
        settings,
    )
    return flow


def _tune_gc() -> None:
    """The live flow's garbage-collector settings, where this checkout has them."""
    try:
        from runtime import tune_gc
    except ImportError:
        return
    tune_gc()


# --- running and reading them -----------------------------------------------------------------
SUMMARY_LINE = re.compile(r"^\s+([a-zA-Z][a-zA-Z /()]+?)\s{2,}([\d,.]+)(?: s)?$", re.M)


@dataclass
class ThreadCpu:
    """CPU seconds of a process tree's threads over time, sampled from ``/proc`` (Linux): each
    thread's ``schedstat`` time on a CPU, for the tree's every process and thread."""

    samples: list[tuple[float, dict[tuple[int, int], float]]] = field(default_factory=list)

    def sample(self, root: int) -> None:
        now, cpu = time.monotonic(), {}
        pids, seen = [root], set()
        while pids:
            pid = pids.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        cpu[(pid, int(tid))] = int(f.read().split()[0]) / 1e9
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        pids.extend(int(c) for c in f.read().split())
                except (OSError, ValueError):
                    continue
        self.samples.append((now, cpu))

    def window(self, start: float, end: float) -> dict[tuple[int, int], float]:
        """Each thread's CPU seconds between ``start`` and ``end`` (to a sample period): a
        thread first seen later started later, one gone earlier keeps its last figure."""
        before: dict[tuple[int, int], float] = {}
        after: dict[tuple[int, int], float] = {}
        for t, cpu in self.samples:
            if t <= start:
                before.update(cpu)
            if t <= end:
                after.update(cpu)
        return {k: v - before.get(k, 0.0) for k, v in after.items()}


@dataclass
class Run:
    flow: str
    processes: int
    rows: float
    ticks: float
    bars: float
    elapsed_s: float
    wall_s: float
    peak_rss_mb: float
    busiest_cpu_s: float  # the busiest thread's CPU within the flow time
    total_cpu_s: float  # every thread's, forward process included

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ticks_per_s(self) -> float:
        return self.ticks / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def cpu_line(self) -> str:
        return (
            f"CPU while streaming: busiest thread {self.busiest_cpu_s:.2f} s "
            f"({self.busiest_cpu_s / self.elapsed_s:.0%} of the flow time), all threads "
            f"{self.total_cpu_s:.2f} s ({self.total_cpu_s / self.elapsed_s:.2f} cores)"
        )


SAMPLE_PERIOD_S = 0.02


def run_flow(
    name: str, ticks: Path, registry: Path, workers: int, processes: int, learning: bool
) -> Run:
    with tempfile.TemporaryDirectory() as home:
        reg = Path(home) / "registry"
        shutil.copytree(registry, reg)
        env = {
            **os.environ,
            "QT_HOME": home,
            "QT_TICKS": str(ticks),
            "QT_REGISTRY_DIR": str(reg),
            "QT_LEARNING": "true" if learning else "false",
            "QT_PROGRESS": "never",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",  # the summary's lines arrive when they are printed
        }
        if processes > 1:
            cmd = [
                sys.executable,
                "-m",
                "bytewax.testing",
                FLOWS[name],
                "-p",
                str(processes),
                "-w",
                str(workers),
            ]
        else:
            cmd = [sys.executable, "-m", "bytewax.run", FLOWS[name], "-w", str(workers)]
        with tempfile.NamedTemporaryFile("r") as rss, tempfile.TemporaryFile("w+") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                ["/usr/bin/time", "-o", rss.name, "-f", "%M", *cmd],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
            assert proc.stdout is not None
            out: list[str] = []
            ended: list[float] = []  # when the summary's elapsed line came: the flow's end

            def read(stream=proc.stdout) -> None:
                for line in stream:
                    if not ended and line.strip().startswith("elapsed"):
                        ended.append(time.monotonic())
                    out.append(line)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            cpu = ThreadCpu()
            while proc.poll() is None:
                cpu.sample(proc.pid)
                time.sleep(SAMPLE_PERIOD_S)
            reader.join()
            wall = time.monotonic() - t0
            lines = rss.read().strip().splitlines()
            err.seek(0)
            stderr = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name} flow failed ({proc.returncode}):\n{stderr[-4000:]}")
    stdout = "".join(out)
    counts = {m[1].strip(): float(m[2].replace(",", "")) for m in SUMMARY_LINE.finditer(stdout)}
    elapsed = counts["elapsed"]
    if counts.get("ticks/s"):  # the summary rounds its elapsed to 0.1 s, not its rate
        elapsed = counts["ticks"] / counts["ticks/s"]
    end = ended[0] if ended else time.monotonic()
    threads = cpu.window(end - elapsed, end)
    peak = float(lines[-1]) / 1024 if lines and lines[-1].isdigit() else float("nan")
    return Run(
        name,
        processes,
        counts["input rows"],
        counts["ticks"],
        counts.get("bars", 0.0),
        elapsed,
        wall,
        peak,
        max(threads.values(), default=0.0),
        sum(threads.values()),
    )


def bootstrap_registry(registry: Path, home: Path | str) -> Path:
    """Train every model into ``registry`` on the bundled sample (``python -m cli.bootstrap``
    in a child with its own ``QT_HOME``)."""
    env = {**os.environ, "QT_HOME": str(home), "QT_REGISTRY_DIR": str(registry)}
    subprocess.run(
        [sys.executable, "-m", "cli.bootstrap"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    return registry


def ensure_registry(path: Path | None, cache: Path) -> Path:
    """A trained registry: ``path``, or one bootstrapped once on the bundled sample."""
    if path is not None:
        return path
    registry = cache / "registry"
    if not all((registry / m / "stages.json").exists() for m in TRAINED):
        shutil.rmtree(registry, ignore_errors=True)
        with tempfile.TemporaryDirectory() as home:
            print(f"bootstrapping a registry in {registry} (once)", file=sys.stderr)
            bootstrap_registry(registry, home)
    return registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=Path, default=DEFAULT_TICKS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--processes", type=int, nargs="+", default=[1])
    ap.add_argument("--learning", choices=("off", "on"), default="off")
    ap.add_argument("--flows", nargs="+", choices=list(FLOWS), default=list(FLOWS))
    ap.add_argument("--registry", type=Path, help="trained registry (default: bootstrap one)")
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "qt_bench_live_flow"
    )
    args = ap.parse_args()
    registry = ensure_registry(args.registry, args.cache)
    rounds: list[dict[tuple[str, int], Run]] = []
    for r in range(args.repeats):
        got: dict[tuple[str, int], Run] = {}
        for p in args.processes:
            for name in args.flows:
                run = got[(name, p)] = run_flow(
                    name, args.ticks, registry, args.workers, p, args.learning == "on"
                )
                print(
                    f"round {r + 1}: {name:<11} -p {p} -w {args.workers}: {run.rows:,.0f} rows "
                    f"({run.ticks:,.0f} ticks) in {run.elapsed_s:.2f} s -> "
                    f"{run.rows_per_s:,.0f} rows/s (wall {run.wall_s:.1f} s, peak RSS "
                    f"{run.peak_rss_mb:,.0f} MB); {run.cpu_line()}",
                    file=sys.stderr,
                    flush=True,
                )
        rounds.append(got)
    report(rounds, args)


def report(rounds: list[dict[tuple[str, int], Run]], args: argparse.Namespace) -> None:
    print(
        f"== bench_live_flow: {args.ticks.name}, learning {args.learning}, -w {args.workers}, "
        f"{args.repeats} rounds =="
    )
    for key in rounds[0]:
        runs = [r[key] for r in rounds]
        med = statistics.median(x.rows_per_s for x in runs)
        ticks = statistics.median(x.ticks / x.elapsed_s for x in runs)
        print(
            f"{key[0]:<11} -p {key[1]}: median {med:>10,.0f} rows/s ({ticks:,.0f} ticks/s), "
            f"elapsed {', '.join(f'{x.elapsed_s:.2f}' for x in runs)} s, peak RSS "
            f"{max(x.peak_rss_mb for x in runs):,.0f} MB"
        )
        print(
            f"{'':<11}       busiest thread "
            f"{', '.join(f'{x.busiest_cpu_s:.2f}' for x in runs)} s, all threads "
            f"{', '.join(f'{x.total_cpu_s:.2f}' for x in runs)} s of CPU while streaming"
        )
    pairs = [("live", "market data"), ("live", "blocks"), ("market data", "blocks")]
    for p in args.processes:
        for a, b in pairs:
            if (a, p) in rounds[0] and (b, p) in rounds[0]:
                ratios = [r[(a, p)].rows_per_s / r[(b, p)].rows_per_s for r in rounds]
                print(
                    f"{a} / {b} (-p {p}): median {statistics.median(ratios):.2f} "
                    f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})"
                )
        if ("live", p) in rounds[0] and ("market data", p) in rounds[0]:
            print(per_bar(rounds, p))
    if len(args.processes) > 1:
        one = args.processes[0]
        for name in args.flows:
            for p in args.processes[1:]:
                ratios = [r[(name, p)].rows_per_s / r[(name, one)].rows_per_s for r in rounds]
                print(
                    f"{name}: -p {p} / -p {one}: median {statistics.median(ratios):.2f} "
                    f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})"
                )


TARGET_RATIO = 0.80  # issue 11: the live flow at >= 80% of the market-data flow's rate


def per_bar(rounds: list[dict[tuple[str, int], Run]], processes: int) -> str:
    """What the live half costs per bar over the market-data flow (medians over the rounds):
    in flow time, on the busiest thread's CPU, and what :data:`TARGET_RATIO` would allow."""
    live = [r[("live", processes)] for r in rounds]
    md = [r[("market data", processes)] for r in rounds]
    bars = statistics.median(x.bars for x in live) or float("nan")

    def us(values: list[float]) -> float:
        return statistics.median(values) / bars * 1e6

    extra_time = us([a.elapsed_s - b.elapsed_s for a, b in zip(live, md, strict=True)])
    extra_cpu = us([a.busiest_cpu_s - b.busiest_cpu_s for a, b in zip(live, md, strict=True)])
    allowed = us([b.elapsed_s * (1 / TARGET_RATIO - 1) for b in md])
    return (
        f"live - market data (-p {processes}), per bar ({bars:,.0f} bars), medians: "
        f"flow time +{extra_time:.1f} us, busiest thread's CPU +{extra_cpu:.1f} us; "
        f"{TARGET_RATIO:.2f} of market data's rate allows +{allowed:.1f} us"
    )


if __name__ == "__main__":
    main()

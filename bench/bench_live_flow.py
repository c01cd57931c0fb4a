"""Benchmark: the live flow end to end against a bare Bytewax pass-through.

All run in the same invocation, each in a fresh child process, over the same file:

- ``passthrough``: the file's rows, 1,000 per source batch, source -> sink, nothing else; once
  as raw text lines and once as rows split into fields by Python's ``csv`` module (what a
  row-at-a-time flow would carry);
- ``live``: ``python -m bytewax.run dataflows.live`` (validation, bars, features, the
  four-model ensemble, the bias window, PPO sizing, paper execution, ClickHouse writes to a
  fresh embedded store), reading its own end-of-run summary; once per ``--workers`` value.

Rates are rows (ticks) per second of flow time, from the moment the dataflow is built (models
loaded) to its end, so the interpreter's start-up, imports and model loading are excluded from
both; the live child's whole wall time is printed too. Peak memory is each child's max RSS.
The models come from ``--registry`` or, by default, a registry bootstrapped on the bundled
sample in a separate child first (so training memory does not count).

    python bench/bench_live_flow.py [--ticks FILE] [--workers 1 2] [--registry DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TICKS = (ROOT.parent / "shared" / "data" / "quotes"
                 / "fxcm_EURUSD-NZDUSD_2014-05_quotes.csv.gz")

PASSTHROUGH = r'''
import csv, gzip, json, sys, time
from bytewax.dataflow import Dataflow
import bytewax.operators as op
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

PATH, MODE = sys.argv[1], sys.argv[2]

class Lines(StatefulSourcePartition):
    def __init__(self):
        self.f = gzip.open(PATH, "rt", newline="")
        if MODE == "csv":
            self.f = csv.reader(self.f)
        next(self.f)
    def next_batch(self):
        batch = [line for _, line in zip(range(1000), self.f)]
        if not batch:
            raise StopIteration
        return batch
    def snapshot(self):
        return None

class Source(FixedPartitionedSource):
    def list_parts(self): return ["file"]
    def build_part(self, step_id, for_part, resume_state): return Lines()

COUNT = [0]
class Count(StatelessSinkPartition):
    def write_batch(self, items): COUNT[0] += len(items)
class Sink(DynamicSink):
    def build(self, step_id, worker_index, worker_count): return Count()

t0 = time.monotonic()
flow = Dataflow("passthrough")
op.output("out", op.input("in", flow, Source()), Sink())
run_main(flow)
elapsed = time.monotonic() - t0
print(json.dumps({"rows": COUNT[0], "elapsed_s": elapsed, "rows_per_s": COUNT[0] / elapsed}))
'''


def run_child(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run a child; return it with its peak RSS in MB (measured with /usr/bin/time)."""
    with tempfile.NamedTemporaryFile("r") as rss:
        proc = subprocess.run(["/usr/bin/time", "-o", rss.name, "-f", "%M", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, check=False)
        text = rss.read().strip().splitlines()
    return proc, (float(text[-1]) / 1024 if text and text[-1].isdigit() else float("nan"))


def run_live(ticks: Path, workers: int, registry: Path) -> dict:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "QT_HOME": home, "QT_TICKS": str(ticks),
               "QT_REGISTRY_DIR": str(registry)}
        t0 = time.monotonic()
        proc, rss = run_child([sys.executable, "-m", "bytewax.run", "dataflows.live",
                               "-w", str(workers)], env)
        wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"live flow failed:\n{proc.stderr[-4000:]}")
    counts = {m[1].strip(): float(m[2].replace(",", "")) for m in
              re.finditer(r"^\s+([a-z /]+?)\s{2,}([\d,.]+)(?: s)?$", proc.stdout, re.M)}
    return {"ticks": counts["ticks"], "dead_letters": counts["dead letters"],
            "rows": counts["input rows"], "elapsed_s": counts["elapsed"],
            "ticks_per_s": counts["ticks/s"], "process_wall_s": wall,
            "peak_rss_mb": rss, "summary": proc.stdout}


def run_passthrough(ticks: Path, mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PASSTHROUGH, str(ticks), mode], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=Path, default=DEFAULT_TICKS)
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--registry", type=Path, help="trained registry (default: bootstrap one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        registry = args.registry
        if registry is None:
            registry = Path(tmp) / "registry"
            env = {**os.environ, "QT_HOME": tmp, "QT_REGISTRY_DIR": str(registry)}
            subprocess.run([sys.executable, "-m", "cli.bootstrap"], cwd=ROOT, env=env,
                           check=True, capture_output=True)
        live = {w: run_live(args.ticks, w, registry) for w in args.workers}
    bare = {mode: run_passthrough(args.ticks, mode) for mode in ("lines", "csv")}
    print(live[args.workers[0]].pop("summary"))
    for w, run in live.items():
        run.pop("summary", None)
        print(f"live flow (-w {w}): {run['ticks']:,.0f} ticks + "
              f"{run['dead_letters']:,.0f} dead letters = {run['rows']:,.0f} rows in "
              f"{run['elapsed_s']:.2f} s -> {run['ticks_per_s']:,.0f} ticks/s "
              f"(process wall {run['process_wall_s']:.1f} s, peak RSS "
              f"{run['peak_rss_mb']:.0f} MB)")
    for mode, b in bare.items():
        ratios = ", ".join(f"-w {w}: {run['ticks_per_s'] / b['rows_per_s']:.2f}"
                           for w, run in live.items())
        print(f"bare pass-through ({mode}): {b['rows']:,} rows in {b['elapsed_s']:.2f} s -> "
              f"{b['rows_per_s']:,.0f} rows/s; ratio live/pass-through {ratios}")


if __name__ == "__main__":
    main()

"""Benchmark: the live flow on 1 process vs N processes of a Bytewax cluster, and its store
inserts.

For each learning setting (``--learning off on``) and each ``--processes`` value, in this one
invocation: a fresh ``QT_HOME`` and a fresh copy of the registry, then
``python -m bytewax.run dataflows.live -i I -a "127.0.0.1:P0;127.0.0.1:P1;..."`` per process
(one process: no ``-i/-a``). Reported per run: ticks/s from the flow's own summary (streaming
time, models loaded), the slowest process's wall time, the store's inserts (count, rows, rows
per insert, inserts/s, seconds spent inserting, counted in the process that owns the embedded
store), each process's CPU seconds before and after its flow is built (start-up, streaming),
and whether the trades (``cli.analytics trades``) equal those of the first ``--processes``
value. With ``--profile DIR``, each process runs under ``py-spy record --gil`` (samples of
the thread holding the GIL: the Python work; chDB's inserts and other native work without
the GIL show in the CPU figures only; raw collapsed stacks in ``DIR/<learning>_p<N>_<i>.txt``)
and the busiest functions are printed.

Learning on runs with ``QT_CLM_BLOCKING=true`` (training inside the engine's order) unless
``--clm-background``: a cycle trained in a background process arrives when it arrives, so
trades may differ between runs (README: Workers).

    python bench/bench_cluster.py [--ticks FILE] [--processes 1 2] [--learning off on]
                                  [--registry DIR] [--profile DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_live_flow import bootstrap_registry  # bench/ is the script's path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TICKS = (
    ROOT.parent / "shared" / "data" / "quotes" / "fxcm_EURUSD-NZDUSD_2014-05_quotes.csv.gz"
)

# Each process: count the store's inserts (in whichever process owns the store), then run
# bytewax.run as `python -m bytewax.run` would (its argv, so runtime.cluster() reads -i/-a).
CHILD = r"""
import atexit, collections, json, runpy, sys, time
from dataflows import graphs
from storage import store as st
stats_path, argv = sys.argv[1], sys.argv[2:]
built = {}
lazy_flow = graphs.lazy_flow
def timed_lazy_flow(build):
    def timed_build():
        flow = build()
        built.update(cpu_s=time.process_time(), wall=time.monotonic())
        return flow
    return lazy_flow(timed_build)
graphs.lazy_flow = timed_lazy_flow  # before dataflows.live is imported by bytewax.run
counts, rows, busy = collections.Counter(), collections.Counter(), collections.Counter()
first, last = [], []
orig = st.Store.insert_block_async
def counted(self, block):
    n = len(block)
    run = orig.__get__(self)
    if not n:
        return run(block)
    client = self._client
    if not getattr(client, "_bench_timed", False):
        for name in ("insert", "insert_arrow"):
            def timed(tbl, *a, _insert=getattr(client, name), **k):
                t = time.perf_counter()
                try:
                    return _insert(tbl, *a, **k)
                finally:
                    busy[tbl] += time.perf_counter() - t
                    last[:] = [time.monotonic()]
            setattr(client, name, timed)
        client._bench_timed = True
    counts[block.table] += 1
    rows[block.table] += n
    if not first:
        first.append(time.monotonic())
    return run(block)
st.Store.insert_block_async = counted
def dump():
    span = (last[0] - first[0]) if first and last else 0.0
    cpu = time.process_time()  # every thread of this process (not its children)
    json.dump({"inserts": dict(counts), "rows": dict(rows), "busy_s": dict(busy),
               "span_s": span, "startup_cpu_s": built.get("cpu_s", cpu),
               "streaming_cpu_s": cpu - built.get("cpu_s", cpu),
               "streaming_wall_s": time.monotonic() - built.get("wall", time.monotonic())},
              open(stats_path, "w"))
atexit.register(dump)
sys.argv = ["bytewax.run", *argv]
runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)
"""

LEARNING_ON = {"QT_LEARNING": "true", "QT_CLM_BLOCKING": "true"}
LEARNING_OFF = {"QT_LEARNING": "false"}
SUMMARY = re.compile(r"^\s+([a-z /()'-]+?)\s{2,}([\d,.]+)(?: s|%)?$", re.M)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cluster(
    ticks: Path,
    processes: int,
    registry: Path,
    learning: str,
    work: Path,
    profile: Path | None,
    background: bool,
) -> dict:
    home = work / f"{learning}_p{processes}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    reg = home / "registry"
    shutil.copytree(registry, reg)
    env = {
        **os.environ,
        "QT_HOME": str(home),
        "QT_REGISTRY_DIR": str(reg),
        "QT_TICKS": str(ticks),
        "QT_PROGRESS": "never",
        "OMP_NUM_THREADS": "1",
        **(LEARNING_ON if learning == "on" else LEARNING_OFF),
    }
    if background:
        env.pop("QT_CLM_BLOCKING", None)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    procs = []
    t0 = time.monotonic()
    for i in range(processes):
        args = ["dataflows.live"] + (["-i", str(i), "-a", addresses] if processes > 1 else [])
        cmd = [sys.executable, "-c", CHILD, str(home / f"inserts_{i}.json"), *args]
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            cmd = [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--gil",
                "-r",
                "50",
                "-f",
                "raw",
                "-o",
                str(profile / f"{learning}_p{processes}_{i}.txt"),
                "--",
                *cmd,
            ]
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            for q in procs:
                if q.poll() is None:
                    q.kill()
            raise SystemExit(f"process failed ({p.returncode}):\n{err[-4000:]}")
        outs.append(out)
    wall = time.monotonic() - t0
    summary = next(o for o in outs if "qt live run summary" in o)
    counts = {m[1].strip(): float(m[2].replace(",", "")) for m in SUMMARY.finditer(summary)}
    stats = [json.loads(f.read_text()) for f in sorted(home.glob("inserts_*.json"))]
    cpu = [(s["startup_cpu_s"], s["streaming_cpu_s"]) for s in stats]
    inserts: collections.Counter[str] = collections.Counter()
    rows: collections.Counter[str] = collections.Counter()
    busy = 0.0
    span = 0.0
    owners = sum(1 for s in stats if s["inserts"])
    for s in stats:
        inserts.update(s["inserts"])
        rows.update(s["rows"])
        busy += sum(s["busy_s"].values())
        span = max(span, s["span_s"])
    trades = subprocess.run(
        [sys.executable, "-m", "cli.analytics", "trades", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    n_ins, n_rows = sum(inserts.values()), sum(rows.values())
    return {
        "processes": processes,
        "learning": learning,
        "ticks": counts["ticks"],
        "elapsed_s": counts["elapsed"],
        "ticks_per_s": counts["ticks/s"],
        "trades_opened": counts.get("trades opened", 0),
        "wall_s": wall,
        "inserts": n_ins,
        "rows": n_rows,
        "rows_per_insert": n_rows / max(n_ins, 1),
        "inserts_per_s": n_ins / counts["elapsed"],
        "insert_busy_s": busy,
        "insert_owners": owners,
        "by_table": {t: (inserts[t], rows[t]) for t in inserts},
        "cpu": cpu,
        "trades": trades,
        "summary": summary,
    }


def busiest(profile: Path, limit: int = 25) -> str:
    """The functions with the most samples (inclusive) in each process's profile."""
    lines = []
    for f in sorted(profile.glob("*.txt")):
        incl: collections.Counter[str] = collections.Counter()
        total = 0
        for line in f.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            total += int(n)
            seen = set()
            for frame in stack.split(";")[1:]:
                key = re.sub(r" \((?:.*/)?([^/]+?):\d+\)$", r" (\1)", frame)
                if key not in seen and "importlib" not in key and "<module>" not in key:
                    incl[key] += int(n)
                    seen.add(key)
        lines.append(f"--- {f.name}: {total} samples")
        lines += [f"{n / max(total, 1):6.1%} {k}" for k, n in incl.most_common(limit)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=Path, default=DEFAULT_TICKS)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--learning", nargs="+", choices=["off", "on"], default=["off", "on"])
    ap.add_argument("--registry", type=Path, help="trained registry (default: bootstrap one)")
    ap.add_argument("--profile", type=Path, help="py-spy profiles of every process, here")
    ap.add_argument(
        "--clm-background",
        action="store_true",
        help="learning on with training in a background process (the default "
        "deployment; trades may then differ between runs)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = args.registry
        if registry is None:
            registry = bootstrap_registry(work / "registry", tmp)
        for learning in args.learning:
            runs = [
                run_cluster(
                    args.ticks, n, registry, learning, work, args.profile, args.clm_background
                )
                for n in args.processes
            ]
            base = runs[0]
            print(f"== learning {learning}: {args.ticks.name}")
            for r in runs:
                same = "same trades" if r["trades"] == base["trades"] else "TRADES DIFFER"
                print(
                    f"{r['processes']} process(es): {r['ticks']:,.0f} ticks in "
                    f"{r['elapsed_s']:.1f} s -> {r['ticks_per_s']:,.0f} ticks/s "
                    f"({r['ticks_per_s'] / base['ticks_per_s']:.2f}x), wall "
                    f"{r['wall_s']:.1f} s, {r['trades_opened']:.0f} trades opened, {same}"
                )
                print(
                    f"   store: {r['inserts']} inserts of {r['rows']:,} rows "
                    f"({r['rows_per_insert']:,.0f} rows/insert, "
                    f"{r['inserts_per_s']:.1f} inserts/s, {r['insert_busy_s']:.2f} s "
                    f"inserting, {r['insert_owners']} process(es) inserting); by table: "
                    + ", ".join(
                        f"{t} {n}/{rows:,}" for t, (n, rows) in sorted(r["by_table"].items())
                    )
                )
                print(
                    "   CPU s (start-up / streaming) per process: "
                    + ", ".join(f"{a:.1f} / {b:.1f}" for a, b in r["cpu"])
                )
            one = sum(b for _, b in base["cpu"])
            for r in runs[1:]:
                busiest_s = max(b for _, b in r["cpu"])
                total = sum(b for _, b in r["cpu"])
                print(
                    f"   {r['processes']} processes: streaming CPU {total:.1f} s in all "
                    f"({total / one:.2f}x one process's {one:.1f} s), busiest process "
                    f"{busiest_s:.1f} s: on {r['processes']} free cores at most "
                    f"{one / busiest_s:.2f}x one process"
                )
    if args.profile is not None:
        print(busiest(args.profile))


if __name__ == "__main__":
    main()

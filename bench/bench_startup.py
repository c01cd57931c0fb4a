"""Benchmark: start-up of the live flow, launch -> first tick processed, in phases.

With a trained registry (run the flow once under ``QT_HOME`` first), three measurements:

- **first tick**: ``python -m bytewax.run dataflows.live`` with ``QT_PROGRESS=always``, from
  launch to its first progress line (printed when the first block of ticks has been counted,
  i.e. processed), killed then;
- **import**: a fresh interpreter importing ``bytewax.run``'s dataflow module
  (``dataflows.live`` and everything it imports);
- **build**: in the same interpreter, building the flow (registry checks, loading every
  production model and the PPO policy, opening the store), without running it.

Each is reported as wall-clock seconds and as the process's CPU seconds (user + system, read
from ``/proc`` at the moment): on a shared 2-core machine the wall clock mostly measures the
neighbours, the CPU time what the start-up itself costs. Medians of ``--repeats`` runs.
``--which-imports`` lists the heavy libraries the live flow imports (none of neuralforecast,
Lightning, Ray, scikit-learn, SciPy, XGBoost, LightGBM should be there).

    QT_HOME=/tmp/h/home python bench/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from models.base import TRAINING_STACK

ROOT = Path(__file__).resolve().parent.parent
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
HEAVY = (*TRAINING_STACK, "pandas")  # pandas: reported, not forbidden

PHASES = r"""
import json, os, sys, time
def cpu():
    t = os.times(); return t.user + t.system
t0, c0 = time.perf_counter(), cpu()
import dataflows.live as live
t1, c1 = time.perf_counter(), cpu()
flow = live.flow
t2, c2 = time.perf_counter(), cpu()
heavy = sorted(m for m in sys.modules if m in HEAVY)
print(json.dumps({"import_wall": t1 - t0, "import_cpu": c1 - c0,
                  "build_wall": t2 - t1, "build_cpu": c2 - c1, "heavy": heavy}))
os._exit(0)
"""


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def first_tick(env: dict[str, str], root: Path) -> tuple[float, float]:
    """(wall, cpu) seconds from launch to the first progress line."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.live"],
        cwd=root,
        env={**env, "QT_PROGRESS": "always"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    try:
        for line in p.stderr:
            if " rows" in line and "ticks/s" in line:
                return time.perf_counter() - t0, proc_cpu(p.pid)
        raise RuntimeError(f"the flow ended without a progress line (exit {p.wait()})")
    finally:
        p.kill()
        p.wait()


def phases(env: dict[str, str], root: Path) -> dict:
    code = f"HEAVY = {HEAVY!r}\n" + PHASES
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--root",
        type=Path,
        action="append",
        help="checkout(s) to measure, alternating in one run (default: this one); "
        "e.g. a git worktree of an older commit, to compare",
    )
    args = ap.parse_args()
    roots = args.root or [ROOT]
    if "QT_HOME" not in os.environ:
        sys.exit("set QT_HOME to a home whose registry is trained (run the flow there once)")
    env = dict(os.environ)
    rows: dict[Path, dict[str, list[float]]] = {r: {} for r in roots}
    heavy: dict[Path, list[str]] = {}
    for _ in range(args.repeats):
        for root in roots:  # alternating, so that the neighbours' load hits each alike
            wall, cpu = first_tick(env, root)
            p = phases(env, root)
            heavy[root] = p.pop("heavy")
            for k, v in {"first_wall": wall, "first_cpu": cpu, **p}.items():
                rows[root].setdefault(k, []).append(v)
    for root in roots:
        med = {k: statistics.median(v) for k, v in rows[root].items()}
        print(f"{root}: start-up, median of {args.repeats} (wall s / CPU s):")
        print(f"  import dataflows.live      {med['import_wall']:6.2f} / {med['import_cpu']:5.2f}")
        print(f"  build the flow (models)    {med['build_wall']:6.2f} / {med['build_cpu']:5.2f}")
        print(f"  launch -> first tick       {med['first_wall']:6.2f} / {med['first_cpu']:5.2f}")
        print(f"  heavy libraries imported: {', '.join(heavy[root]) or 'none'}")


if __name__ == "__main__":
    main()

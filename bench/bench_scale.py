"""Benchmark: bar throughput and memory of the live flow at 10, 100 and 1,000 symbols.

The input is the one issue 11 measures: the Bittrex file's 2018-01-21
(``../shared/data/candles/bittrex_10altBTC_1m_2018-01-20.csv.gz``, 13,435 one-minute candles
of 10 symbols), its 10 symbols copied ``N / 10`` times under new names (copy ``k`` of
``BITTREX:XMRBTC`` is ``BITTREX:XMRBTC_K007``; copy 0 keeps the real names) with prices scaled
by ``1 + k / 100``, rows in event-time order. One candle is one tick and closes one bar, so
1,000 symbols give 1,343,500 bars. Built files are cached (``--cache``, default
``$TMPDIR/qt_bench_scale``); ``--hours H`` keeps the day's first H hours, for quick iterations.

Each case is ``python -m bytewax.run dataflows.live`` in a fresh child process with a fresh
``QT_HOME`` and a copy of the registry (learning on changes it), learning off
(``QT_LEARNING=false``) and/or on. Figures:

- **bars/s**: bars / the flow's own elapsed time (from the built dataflow, models loaded, to
  its end: the summary's ``elapsed``), so interpreter start-up and imports are excluded;
  the child's wall time is printed too;
- **peak RSS** of the child (``/usr/bin/time``; of a cluster, its largest process),
  **RSS/symbol** = peak RSS / N, and the
  **marginal** MB per symbol against the smallest N of the run (what one more symbol costs).

The machine is shared: compare figures of one invocation only. ``--compare DIR`` runs every
case also with the code of another checkout (``git archive REV | tar -x -C DIR``), interleaved,
and prints the ratios. ``--workers 2`` runs ``-w 2``; ``--processes 2`` runs two processes of
one cluster (``python -m bytewax.testing dataflows.live -p 2``). ``--profile DIR`` records each
case with py-spy (speedscope) and prints where the time goes, per dataflow step (``--gil``:
only the thread holding the GIL, what one process is bounded by).

    python bench/bench_scale.py [--symbols 10 100 1000] [--learning off on] [--hours H]
        [--workers 1] [--processes 1] [--registry DIR] [--compare DIR] [--profile DIR [--gil]]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "candles" / "bittrex_10altBTC_1m_2018-01-20.csv.gz"
DAY = "2018-01-21"
COPIES_BASE = 10  # symbols in the source file

from bench_live_flow import ensure_registry  # noqa: E402  (bench/ is the script's path)


def build_input(symbols: int, hours: float | None, cache: Path) -> Path:
    """The ``symbols``-symbol day as a candles CSV.gz (cached; see the module docstring)."""
    if symbols % COPIES_BASE:
        raise SystemExit(f"--symbols must be multiples of {COPIES_BASE}, got {symbols}")
    tag = "day" if hours is None else f"{hours:g}h"
    out = cache / f"bittrex_{symbols}sym_{DAY}_{tag}.csv.gz"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with gzip.open(SOURCE, "rt") as f:
        header = f.readline().strip()
        rows = [line.rstrip("\n").split(",") for line in f if line.startswith(DAY)]
    if hours is not None:
        limit = f"{DAY}T{int(hours):02d}:{round((hours % 1) * 60):02d}"
        rows = [r for r in rows if r[0] < limit]
    rows.sort(key=lambda r: (r[0], r[1]))
    tmp = out.with_suffix(".tmp")
    with gzip.open(tmp, "wt", compresslevel=3) as g:
        g.write(header + "\n")
        for ts, sym, o, h, lo, c, v in rows:  # rows in time order, copies side by side
            for k in range(symbols // COPIES_BASE):
                if k == 0:
                    g.write(f"{ts},{sym},{o},{h},{lo},{c},{v}\n")
                    continue
                s = 1.0 + k / 100.0
                g.write(
                    f"{ts},{sym}_K{k:03d},{float(o) * s!r},{float(h) * s!r},"
                    f"{float(lo) * s!r},{float(c) * s!r},{v}\n"
                )
    tmp.rename(out)
    return out


@dataclass
class Case:
    symbols: int
    learning: bool
    workers: int = 1
    processes: int = 1
    code: Path = ROOT

    @property
    def label(self) -> str:
        par = f"-w {self.workers}" + (f" -p {self.processes}" if self.processes > 1 else "")
        return f"{self.symbols:>5} symbols, learning {'on ' if self.learning else 'off'}, {par}"


SUMMARY_LINE = re.compile(r"^\s+([a-zA-Z][a-zA-Z /()]+?)\s{2,}([\d,.]+)(?: s)?$", re.M)


def run_case(
    case: Case, ticks: Path, registry: Path, profile: Path | None, gil: bool = False
) -> dict:
    """One child process: the live flow over ``ticks``; its summary, wall time, peak RSS."""
    with tempfile.TemporaryDirectory() as home:
        reg = Path(home) / "registry"
        shutil.copytree(registry, reg)
        env = {
            **os.environ,
            "QT_HOME": home,
            "QT_TICKS": str(ticks),
            "QT_REGISTRY_DIR": str(reg),
            "QT_LEARNING": "true" if case.learning else "false",
            "QT_PROGRESS": "never",
            "PYTHONPATH": str(case.code),
        }
        if case.processes > 1:
            flow = [
                sys.executable,
                "-m",
                "bytewax.testing",
                "dataflows.live",
                "-p",
                str(case.processes),
                "-w",
                str(case.workers),
            ]
        else:
            flow = [sys.executable, "-m", "bytewax.run", "dataflows.live", "-w", str(case.workers)]
        with tempfile.NamedTemporaryFile("r") as rss:
            cmd = ["/usr/bin/time", "-o", rss.name, "-f", "%M", *flow]
            if profile is not None:  # py-spy outside: the peak RSS stays the flow's
                spy = Path(sys.executable).with_name("py-spy")
                cmd = [
                    str(spy),
                    "record",
                    "--format",
                    "speedscope",
                    "-r",
                    "50",
                    "--subprocesses",
                    *(["--gil"] if gil else []),
                    "-o",
                    str(profile),
                    "--",
                    *cmd,
                ]
            t0 = time.monotonic()
            proc = subprocess.run(
                cmd, cwd=case.code, env=env, capture_output=True, text=True, check=False
            )
            wall = time.monotonic() - t0
            lines = rss.read().strip().splitlines()
    if proc.returncode != 0:
        raise SystemExit(f"{case.label} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    counts = {
        m[1].strip(): float(m[2].replace(",", "")) for m in SUMMARY_LINE.finditer(proc.stdout)
    }
    peak = float(lines[-1]) / 1024 if lines and lines[-1].isdigit() else float("nan")
    bars, elapsed = counts.get("bars", 0.0), counts.get("elapsed", float("nan"))
    return {
        "bars": bars,
        "elapsed_s": elapsed,
        "bars_per_s": bars / elapsed if elapsed else 0.0,
        "wall_s": wall,
        "peak_rss_mb": peak,
        "trades": counts.get("trades opened", 0.0),
        "rl_updates": counts.get("RL updates", 0.0),
        "summary": proc.stdout,
    }


# --- profile summary ------------------------------------------------------------------------
# Each sample is charged to the dataflow step it belongs to: the outermost function of the
# project on its stack (the step's logic that Bytewax called), so a model's forward counts
# for the ensemble step and a ClickHouse insert for the store. Frames of glue that only
# dispatches (the stage adapter, lambdas) are skipped.
GLUE = (
    "<module>",
    "on_item",
    "on_eof",
    "module_getattr",
    "build_live_flow",
    "<lambda>",
    "shim_mapper",
    "_locate_dataflow",
    "<listcomp>",
    "<genexpr>",
)


def step_of(frames: list[tuple[str, str]]) -> str:
    """The step of one sample (``frames``: (function, file), root first)."""
    files = [f for _, f in frames]
    if any("importlib" in f for f in files):
        return "imports (start-up)"
    for name, f in frames:
        if "site-packages" in f or "/lib/python3" in f or not f.endswith(".py"):
            continue
        if name.rsplit(".", 1)[-1] in GLUE:
            continue
        return f"{name} ({f.rsplit('/', 2)[-2]}/{f.rsplit('/', 1)[-1]})"
    if any("bytewax" in f for f in files):
        return "bytewax (runtime)"
    return "native threads (no Python frame)"


def profile_breakdown(path: Path) -> Counter:
    """Seconds of samples per step in a py-spy speedscope file (every thread and process)."""
    data = json.loads(path.read_text())
    frames = [(fr.get("name", ""), fr.get("file", "") or "") for fr in data["shared"]["frames"]]
    out: Counter = Counter()
    for prof in data["profiles"]:
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            out[step_of([frames[i] for i in stack])] += weight
    return out


def print_breakdown(label: str, counts: Counter, bars: float, top: int = 14) -> None:
    """Each step's share of the samples and its cost per bar."""
    total = sum(counts.values()) or 1.0
    print(f"  profile [{label}]: {total:.1f} s of samples, {total / bars * 1e6:.0f} us per bar")
    for name, n in counts.most_common(top):
        print(f"    {n / total:6.1%} {n / bars * 1e6:7.1f} us/bar  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--symbols", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--learning", nargs="+", choices=("off", "on"), default=["off", "on"])
    ap.add_argument("--hours", type=float, help="keep the day's first H hours (quick runs)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--processes", type=int, nargs="+", default=[1])
    ap.add_argument("--registry", type=Path, help="trained registry (default: bootstrap one)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "qt_bench_scale")
    ap.add_argument("--compare", type=Path, help="another checkout to run the same cases with")
    ap.add_argument("--profile", type=Path, help="record each case with py-spy into DIR")
    ap.add_argument(
        "--gil",
        action="store_true",
        help="profile only the thread holding the GIL (what bounds one process)",
    )
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    args = ap.parse_args()

    registry = ensure_registry(args.registry, args.cache)
    codes = [ROOT] + ([args.compare.resolve()] if args.compare else [])
    results: list[tuple[Case, dict]] = []
    for n in args.symbols:
        ticks = build_input(n, args.hours, args.cache)
        for learning in args.learning:
            for w in args.workers:
                for p in args.processes:
                    for code in codes:
                        case = Case(n, learning == "on", w, p, code)
                        prof = None
                        if args.profile:
                            args.profile.mkdir(parents=True, exist_ok=True)
                            prof = args.profile / (
                                f"{'base' if code != ROOT else 'head'}_{n}sym_"
                                f"{'on' if case.learning else 'off'}_w{w}_p{p}.speedscope.json"
                            )
                        r = run_case(case, ticks, registry, prof, args.gil)
                        r["profile"] = None if prof is None else str(prof)
                        results.append((case, r))
                        print(
                            f"{case.label} [{code.name}]: {r['bars']:,.0f} bars in "
                            f"{r['elapsed_s']:.1f} s -> {r['bars_per_s']:,.0f} bars/s "
                            f"(wall {r['wall_s']:.1f} s), peak RSS {r['peak_rss_mb']:,.0f} MB, "
                            f"{r['trades']:,.0f} trades, {r['rl_updates']:,.0f} RL updates",
                            file=sys.stderr,
                            flush=True,
                        )
    report(results, codes, args)


def report(results: list[tuple[Case, dict]], codes: list[Path], args: argparse.Namespace) -> None:
    smallest = min(args.symbols)
    base_rss = {
        (c.learning, c.workers, c.processes, c.code): r["peak_rss_mb"]
        for c, r in results
        if c.symbols == smallest
    }
    what = f"first {args.hours:g} h of {DAY}" if args.hours else DAY
    print(f"== bench_scale: {what}, 1m candles ==")
    print(
        f"{'case':<38} {'code':<10} {'bars':>10} {'bars/s':>9} {'wall s':>8} "
        f"{'peak MB':>8} {'MB/sym':>7} {'marg MB/sym':>11}"
    )
    for c, r in results:
        base = base_rss.get((c.learning, c.workers, c.processes, c.code), float("nan"))
        marginal = (
            (r["peak_rss_mb"] - base) / (c.symbols - smallest)
            if c.symbols > smallest
            else float("nan")
        )
        r["rss_per_symbol_mb"] = r["peak_rss_mb"] / c.symbols
        r["marginal_rss_per_symbol_mb"] = marginal
        print(
            f"{c.label:<38} {c.code.name:<10} {r['bars']:>10,.0f} {r['bars_per_s']:>9,.0f} "
            f"{r['wall_s']:>8.1f} {r['peak_rss_mb']:>8,.0f} {r['rss_per_symbol_mb']:>7.2f} "
            f"{marginal:>11.2f}"
        )
        if r["profile"]:
            print_breakdown(
                f"{c.label.strip()}, {c.code.name}{', GIL' if args.gil else ''}",
                profile_breakdown(Path(r["profile"])),
                r["bars"],
            )
    if len(codes) == 2:
        print("ratios (this checkout / --compare), bars/s and peak RSS:")
        for (c, r), (_, r2) in zip(results[::2], results[1::2], strict=True):
            print(
                f"  {c.label:<38} {r['bars_per_s'] / r2['bars_per_s']:>6.2f}x bars/s, "
                f"{r['peak_rss_mb'] / r2['peak_rss_mb']:>5.2f}x RSS"
            )
    off = {
        (c.symbols, c.workers, c.processes, c.code): r["bars_per_s"]
        for c, r in results
        if not c.learning
    }
    for c, r in results:
        key = (c.symbols, c.workers, c.processes, c.code)
        if c.learning and key in off:
            print(
                f"  learning on / off, {c.label[:13]} [{c.code.name}]: "
                f"{r['bars_per_s'] / off[key]:.2f}"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "symbols": c.symbols,
                        "learning": c.learning,
                        "workers": c.workers,
                        "processes": c.processes,
                        "code": str(c.code),
                        **{k: v for k, v in r.items() if k != "summary"},
                    }
                    for c, r in results
                ],
                indent=1,
            )
        )


if __name__ == "__main__":
    main()

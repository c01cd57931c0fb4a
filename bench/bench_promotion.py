"""Benchmark: the error rates of the shadow promotion test (:mod:`learning.evidence`) on real data.

Per ``--ticks`` file:

1. The history is replayed through the live flow's own code (``history_from_ticks``), labelled
   (``build_training_set``) and split by time (``time_split``) into 50% training, 10% validation
   (early stopping) and 40% **held out**, with the usual ``horizon x symbols`` gap at each cut
   (the bootstrap's 70/15/15 would leave too few held-out bars for many shadow trials).
2. Production is XGBoost seed 0 (``XGBoostModel.train``, default ``TreeParams``, which subsample
   rows and columns 0.8); the **equal-skill challengers** are the same recipe with seeds
   1..``--seeds``: same data, same budget, other random draws.
3. A **trial** is one challenger seed shadowing production from one of ``--starts`` start
   points spread evenly over the held-out period: :func:`learning.evidence.judge` runs on the
   first ``max_bars`` held-out bars from that start, which is what the CLM would have decided
   calling it at every look (the decision at ``n`` bars is the first final one among the looks
   up to ``n``). Realised label, forward log return and cost per bar (round-trip fees and
   slippage plus the bar's quoted spread: the cost term of ``label_threshold``) come from the
   same labelling code.
4. **A/A**: the equal-skill challengers as they are; every promotion is a false promotion.
   The audit's point rule it replaced (:func:`old_rule`, > 2% better on 100 bars) is run on
   the same windows for comparison.
5. **Power**: the same challengers with a real edge: on a random ``--share`` of the bars (drawn
   per trial) the challenger's call is replaced by the realised label ("told the answer on 10%
   of bars"); its effect on macro-F1 and profit over the whole held-out period is printed.
   ``--curve`` shares give the power curve.

Rates have Wilson 95% intervals; trials share the production model and overlapping windows, so
those intervals are somewhat optimistic. Goal: false promotion <= 5%, power >= 80%.

    python bench/bench_promotion.py --ticks FILE [--ticks FILE ...] [--seeds 32] [--starts 10]
        [--share 0.10] [--curve 0.05,0.2] [--max-bars 3200] [--confidence 0.95] [--spending 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learning.evidence import (  # noqa: E402
    Decision,
    EvidenceConfig,
    PromotionEvidence,
    econ_scores,
    judge,
    t_quantile,
)
from models.dataset import build_training_set, time_split  # noqa: E402
from models.labels import LabelConfig  # noqa: E402
from models.metrics import macro_f1  # noqa: E402
from models.trees import TreeParams, XGBoostModel  # noqa: E402
from runtime import cap_threads  # noqa: E402
from schemas.timeutil import from_ms, iso  # noqa: E402
from settings import Settings  # noqa: E402
from training.history import history_from_ticks  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FRACTIONS = (0.5, 0.1, 0.4)


@dataclass(frozen=True)
class HeldOut:
    """The held-out bars in time order, with each model's calls on them."""

    y: np.ndarray
    ts: np.ndarray
    symbols: np.ndarray
    fwd: np.ndarray
    cost: np.ndarray
    production: np.ndarray
    challengers: list[np.ndarray]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial share ``k / n``."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, mid - half), min(1.0, mid + half)


def rate(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {k / n:.1%} [{lo:.1%}, {hi:.1%}]"


def mean_ci(values: list[float], scale: float, unit: str) -> str:
    """Mean over the challenger seeds (the independent units here) with a 95% t interval."""
    v = np.asarray(values) * scale
    m = float(v.mean())
    half = (
        t_quantile(0.975, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
        if len(v) > 1
        else math.nan
    )
    return (
        f"{m:+.2f}{unit} [{m - half:+.2f}, {m + half:+.2f}] (seeds {v.min():+.2f} to "
        f"{v.max():+.2f})"
    )


def prepare(ticks: Path, settings: Settings, label_cfg: LabelConfig, seeds: int) -> HeldOut:
    """Replay, label, split, train production and the challengers, call the held-out bars."""
    t0 = time.monotonic()
    history = history_from_ticks(str(ticks), settings)
    data = build_training_set(history, label_cfg)
    t1 = time.monotonic()
    n_sym = len(history.symbols)
    train, val, held = time_split(data.ts_ms, FRACTIONS, gap=label_cfg.horizon * n_sym)
    print(
        f"history: {len(data):,} labelled bars, {n_sym} symbols, replayed and labelled in "
        f"{t1 - t0:.1f} s"
    )
    print(
        f"split: train {len(train):,}, validation {len(val):,}, held out {len(held):,} bars "
        f"({iso(from_ms(int(data.ts_ms[held[0]])))} to "
        f"{iso(from_ms(int(data.ts_ms[held[-1]])))})"
    )
    models = [XGBoostModel.train(data, train, val, TreeParams(), seed) for seed in range(seeds + 1)]
    X = data.X[held]
    calls = [m.predict_proba(X).argmax(axis=1).astype(np.int64) for m in models]
    spread = np.array([data.vectors[i].values["spread_bps"] for i in held])
    cost = label_cfg.round_trip_cost + np.where(np.isnan(spread), 0.0, spread) / 1e4
    y = data.y[held]
    f1 = [macro_f1(y, c) for c in calls]
    print(
        f"models: XGBoost seed 0 (production) and seeds 1-{seeds} (challengers), trained in "
        f"{time.monotonic() - t1:.1f} s; held-out macro-F1 production {f1[0]:.4f}, "
        f"challengers {min(f1[1:]):.4f} to {max(f1[1:]):.4f}"
    )
    return HeldOut(
        y,
        data.ts_ms[held],
        data.symbols[held],
        data.forward_return[held],
        cost,
        calls[0],
        calls[1:],
    )


def starts_of(held: HeldOut, starts: int, window: int) -> list[int]:
    """``starts`` first rows of bar closes, evenly spread so each has ``window`` bars after."""
    last = len(held.y) - window - 1
    if last < 0:
        raise SystemExit(
            f"held-out period has {len(held.y)} bars, fewer than a {window}-bar "
            "window: lower --max-bars"
        )
    out = []
    for s in np.linspace(0, last, starts).astype(int):
        while s > 0 and held.ts[s - 1] == held.ts[s]:
            s -= 1
        out.append(int(s))
    return out


def told(chal: np.ndarray, y: np.ndarray, share: float, key: tuple[int, ...]) -> np.ndarray:
    """The challenger told the realised label on a random ``share`` of the bars."""
    mask = np.random.default_rng(list(key)).random(len(y)) < share
    return np.where(mask, y, chal)


@dataclass
class Trials:
    results: list[PromotionEvidence]
    seconds: list[float]

    def promoted(self) -> list[PromotionEvidence]:
        return [r for r in self.results if r.decision is Decision.PROMOTE]


def old_rule(y: np.ndarray, production: np.ndarray, challenger: np.ndarray, margin: float) -> bool:
    """The audit's point rule, before evidence: promote when the challenger's macro-F1 on
    the window is more than ``margin`` (relative) above production's."""
    known = y >= 0
    p, c = macro_f1(y[known], production[known]), macro_f1(y[known], challenger[known])
    return c > (p * (1 + margin) if p > 0 else margin) + 1e-12


def run_trials(held: HeldOut, cfg: EvidenceConfig, starts: list[int], share: float) -> Trials:
    """Every challenger seed x start point, with the edge ``share`` (0: as trained)."""
    window = cfg.max_bars + 64  # a little over: the last look takes whole bar closes
    out = Trials([], [])
    for s, chal in enumerate(held.challengers, start=1):
        for j, st in enumerate(starts):
            w = slice(st, st + window)
            c = chal[w] if share == 0 else told(chal[w], held.y[w], share, (s, j, 1))
            t = time.perf_counter()
            r = judge(
                held.ts[w],
                held.symbols[w],
                held.y[w],
                held.production[w],
                c,
                held.fwd[w],
                held.cost[w],
                cfg,
            )
            out.seconds.append(time.perf_counter() - t)
            out.results.append(r)
    return out


def describe(trials: Trials) -> str:
    counts = Counter(r.decision for r in trials.results)
    bars = [r.n for r in trials.results if r.decision.final]
    parts = ", ".join(f"{d} {counts.get(d, 0)}" for d in Decision)
    return f"{parts}; median bars at a decision {statistics.median(bars):.0f}" if bars else parts


def whole_period(held: HeldOut, share: float) -> tuple[list[float], list[float]]:
    """Relative macro-F1 improvement and profit difference per bar of each challenger over the
    whole held-out period."""
    f1_p = macro_f1(held.y, held.production)
    e_p = float(econ_scores(held.production, held.fwd, held.cost).mean())
    rel, econ = [], []
    for s, chal in enumerate(held.challengers, start=1):
        c = chal if share == 0 else told(chal, held.y, share, (s, 99, 2))
        rel.append(macro_f1(held.y, c) / f1_p - 1)
        econ.append(float(econ_scores(c, held.fwd, held.cost).mean()) - e_p)
    return rel, econ


def bench_file(ticks: Path, args: argparse.Namespace) -> None:
    started = time.monotonic()
    settings = Settings.from_env({})
    label_cfg = LabelConfig.from_settings(settings)
    print(f"\n== {ticks.name} " + "=" * max(0, 70 - len(ticks.name)))
    held = prepare(ticks, settings, label_cfg, args.seeds)
    cfg = EvidenceConfig.from_settings(
        settings, confidence=args.confidence, max_bars=args.max_bars, spending=args.spending
    )
    starts = starts_of(held, args.starts, cfg.max_bars + 64)
    n = len(held.challengers) * len(starts)
    print(
        f"test: margin {cfg.margin:.0%}, confidence {cfg.confidence:.0%}, looks at "
        f"{'/'.join(map(str, cfg.schedule))} bars, spending t^{cfg.spending:g}, "
        f"{cfg.resamples} resamples, blocks >= {cfg.horizon} bar closes, "
        f">= {cfg.min_blocks} blocks a look"
    )
    print(f"trials: {len(held.challengers)} challenger seeds x {len(starts)} start points = {n}")

    window = slice(starts[0], starts[0] + cfg.max_bars + 64)
    t = time.perf_counter()  # the first call also solves and caches the look boundaries
    judge(
        held.ts[window],
        held.symbols[window],
        held.y[window],
        held.production[window],
        held.challengers[0][window],
        held.fwd[window],
        held.cost[window],
        cfg,
    )
    cold = time.perf_counter() - t
    aa = run_trials(held, cfg, starts, 0.0)
    old = 0
    for chal in held.challengers:
        for st in starts:
            w = slice(st, st + cfg.min_bars)
            old += old_rule(held.y[w], held.production[w], chal[w], cfg.margin)
    rel, econ = whole_period(held, 0.0)
    per_seed = len(starts)
    near = [i for i, r in enumerate(aa.results) if rel[i // per_seed] >= 0.01]
    near_k = sum(aa.results[i].decision is Decision.PROMOTE for i in near)
    print("A/A, equal skill (other seeds):")
    print(f"  false promotion      {rate(len(aa.promoted()), n)}")
    print(
        f"    of which by seeds >= +1% better over the whole held-out period "
        f"{near_k} (in {len(near)} trials), by the others {len(aa.promoted()) - near_k} "
        f"(in {n - len(near)} trials)"
    )
    print(f"  decisions            {describe(aa)}")
    print(f"  old rule (> {cfg.margin:.0%} at {cfg.min_bars} bars) promotes {rate(old, n)}")
    print(
        f"  whole held-out: macro-F1 {mean_ci(rel, 100, '%')}, profit "
        f"{mean_ci(econ, 1e4, ' bps/bar')}"
    )

    for k, share in enumerate([args.share, *args.curve]):
        tr = run_trials(held, cfg, starts, share)
        rel, econ = whole_period(held, share)
        prom = tr.promoted()
        label = "power" if k == 0 else "  curve"
        print(f"{label}: challenger told the realised label on {share:.0%} of bars")
        print(
            f"  whole held-out: macro-F1 {mean_ci(rel, 100, '%')}, profit "
            f"{mean_ci(econ, 1e4, ' bps/bar')}"
        )
        med = f", median {statistics.median(r.n for r in prom):.0f} bars" if prom else ""
        print(f"  promoted             {rate(len(prom), n)}{med}")
        print(f"  decisions            {describe(tr)}")
        if k == 0:
            lows = [r.improvement_low for r in prom]
            if lows:
                print(
                    f"  at promotion: lower bound of the improvement median "
                    f"{statistics.median(lows):+.1%}, estimate median "
                    f"{statistics.median(r.improvement for r in prom):+.1%}"
                )
            aa.seconds.extend(tr.seconds)
    ms = sorted(s * 1e3 for s in aa.seconds)
    print(
        f"judge() per call on {cfg.max_bars + 64} bars: median {statistics.median(ms):.1f} ms, "
        f"95th percentile {ms[int(0.95 * len(ms))]:.1f} ms, max {ms[-1]:.1f} ms; first call "
        f"(solves the look boundaries) {cold * 1e3:.1f} ms"
    )
    print(f"run time {time.monotonic() - started:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--ticks",
        type=Path,
        action="append",
        help="tick file (repeat for several); default: the Bittrex candles and the "
        "FXCM quotes month of ../shared/data",
    )
    ap.add_argument("--seeds", type=int, default=32, help="challenger seeds")
    ap.add_argument("--starts", type=int, default=10, help="start points per seed")
    ap.add_argument(
        "--share",
        type=float,
        default=0.10,
        help="edge of the power trials: share of bars told the realised label",
    )
    ap.add_argument(
        "--curve",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[0.05, 0.20],
        help="more shares for the power curve",
    )
    ap.add_argument("--max-bars", type=int, default=EvidenceConfig().max_bars)
    ap.add_argument("--confidence", type=float, default=EvidenceConfig().confidence)
    ap.add_argument("--spending", type=float, default=EvidenceConfig().spending)
    args = ap.parse_args()
    cap_threads(1)
    files = args.ticks or [
        DATA / "candles" / "bittrex_10altBTC_1m_2018-01-20.csv.gz",
        DATA / "quotes" / "fxcm_EURUSD-NZDUSD_2014-05_quotes.csv.gz",
    ]
    for f in files:
        bench_file(f, args)


if __name__ == "__main__":
    main()

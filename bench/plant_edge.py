"""Plant a small, documented, predictable component in real quotes, to prove the loop can learn.

    python bench/plant_edge.py [--ticks FXCM_MONTH] [--out planted.csv.gz] [--from 2014-05-08]
                               [--bps 3.0]
    python bench/plant_edge.py --analyse $QT_HOME/evaluations/<id> [--from 2014-05-08]

**The edge.** From ``--from`` on, per symbol, at the close of each one-minute bar ``m`` (the
bars the flow builds: minutes with quotes, in order) the sign of the last five bars' return of
the *planted* mid, ``s(m) = sign(ln C'[m] - ln C'[m-5])`` (what a trader sees at that close),
sets the drift of the next ten bars (the label horizon): during bar ``k`` the mid drifts by
``bps / 10 x mean(s(k-10) .. s(k-1))`` basis points, so a direction that persists moves the
mid ``--bps`` over the next ten bars, on top of the market. The planted log offset decays by
2% a bar (``O(k) = 0.98 O(k-1) + drift(k)``), which keeps it within a few tens of basis points
of the real price instead of compounding into a new trend. Inside a bar the offset moves
linearly with the tick's time; it multiplies bid and ask alike (the relative spread is kept;
crossed quotes stay crossed). Everything before ``--from`` is unchanged, so a model trained
before it knows nothing of the edge. The script prints the edge it planted: the mean of
``sign(5-bar return) x next 10-bar return`` before and after ``--from``, in basis points.

**The analysis** (``--analyse``) reads an evaluation's two arms (``python -m cli.evaluate``
on the planted file) and prints what the issue asks of a learning loop: challengers trained
after the edge appeared and promoted; and the PPO policy's mean position size on trades *in
the edge's direction* (side = sign of ``ret_5`` at entry) before and after its first update.
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.timeutil import parse_iso, to_ms
from settings import PROJECT_ROOT

MONTH = (
    PROJECT_ROOT.parent / "shared" / "data" / "quotes" / "fxcm_EURUSD-NZDUSD_2014-05_quotes.csv.gz"
)
HORIZON, LOOKBACK = 10, 5


DECAY = 0.98


def planted_offsets(ts_ms: np.ndarray, mid: np.ndarray, start_ms: int, bps: float) -> np.ndarray:
    """The log offset of each tick of one symbol (module docstring)."""
    minute = ts_ms // 60_000
    bars, first = np.unique(minute, return_index=True)
    last = np.r_[first[1:], len(minute)] - 1
    close = np.log(mid[last])
    n = len(bars)
    signs = np.zeros(n)
    offset = np.zeros(n)  # at the end of each bar
    step = np.zeros(n)
    for k in range(n):
        prev = offset[k - 1] if k else 0.0
        if bars[k] * 60_000 >= start_ms:
            step[k] = bps / 1e4 / HORIZON * signs[max(0, k - HORIZON) : k].sum() / HORIZON
        offset[k] = DECAY * prev + step[k]
        if k >= LOOKBACK:  # the close the trader sees, planted offset included
            seen = close[k] + offset[k] - close[k - LOOKBACK] - offset[k - LOOKBACK]
            signs[k] = np.sign(seen)
    bar_of_tick = np.searchsorted(bars, minute)
    frac = (ts_ms - minute * 60_000) / 60_000.0
    before = np.r_[0.0, offset[:-1]][bar_of_tick]
    return before + (offset[bar_of_tick] - before) * frac


def edge_bps(ts_ms: np.ndarray, mid: np.ndarray, start_ms: int) -> tuple[float, float]:
    """Mean ``sign(5-bar return) x next 10-bar return`` (bps) of one symbol's bar closes,
    before and after ``start_ms``: what momentum over the label horizon earns before costs."""
    minute = ts_ms // 60_000
    _, first = np.unique(minute, return_index=True)
    last = np.r_[first[1:], len(minute)] - 1
    c = np.log(mid[last])
    t = minute[last] * 60_000
    gain = np.sign(c[LOOKBACK:-HORIZON] - c[: -LOOKBACK - HORIZON]) * (
        c[LOOKBACK + HORIZON :] - c[LOOKBACK:-HORIZON]
    )
    after = t[LOOKBACK:-HORIZON] >= start_ms
    return float(gain[~after].mean() * 1e4), float(gain[after].mean() * 1e4)


def plant(
    src: Path, out: Path, start: datetime, bps: float
) -> dict[str, float | tuple[float, float]]:
    df = pd.read_csv(
        src,
        dtype={"symbol": str, "bid": np.float64, "ask": np.float64},
        keep_default_na=False,
        na_values={"bid": [""], "ask": [""]},
    )
    ts_ms = pd.to_datetime(df["ts"], utc=True).to_numpy("datetime64[ms]").astype(np.int64)
    offset = np.zeros(len(df))
    stats: dict[str, float | tuple[float, float]] = {}
    for symbol in sorted(df["symbol"].unique()):
        rows = np.flatnonzero(df["symbol"].to_numpy() == symbol)
        mid = (df["bid"].to_numpy()[rows] + df["ask"].to_numpy()[rows]) / 2
        ok = np.isfinite(mid) & (mid > 0)
        rows, mid = rows[ok], mid[ok]
        offset[rows] = planted_offsets(ts_ms[rows], mid, to_ms(start), bps)
        stats[f"{symbol} max |offset| bps"] = float(np.abs(offset[rows]).max() * 1e4)
        before, after = edge_bps(ts_ms[rows], mid * np.exp(offset[rows]), to_ms(start))
        stats[f"{symbol} momentum edge before / after, bps"] = (before, after)
    scale = np.exp(offset)
    for col in ("bid", "ask"):
        df[col] = [f"{x:.6f}".rstrip("0").rstrip(".") for x in df[col].to_numpy() * scale]
    with gzip.open(out, "wt", compresslevel=6) as f:
        df.to_csv(f, index=False)
    return stats


def analyse(evaluation: Path, start: datetime) -> None:
    """What the learning-on arm of an evaluation on the planted file did (module docstring)."""
    from schemas.timeutil import from_ms
    from settings import Settings
    from storage.store import open_store

    home = evaluation / "on"
    s = Settings.from_env({}, home=home, registry_path=home / "registry")
    store = open_store(s)
    try:
        cycles = store.query("analytics/clm_cycles")
        updates = store.query("analytics/rl_updates")
        trades = store.query("queries/closed_trades")
    finally:
        store.close()
    start_ms = to_ms(start)
    print(f"CLM cycles: {len(cycles)}")
    for c in cycles:
        promoted = sorted(k for k, d in c["decisions"].items() if d == "promoted")
        after = c["data_to"] is not None and to_ms(c["data_to"]) > start_ms
        print(
            f"  {c['cycle_id']}  trigger={c['trigger']:<11} status={c['status']:<9} "
            f"trained to {c['data_to']}  {'(after the edge)' if after else ''}  "
            f"promoted={promoted}"
        )
    used = [u for u in updates if u["transitions"] > 0]
    first = min((to_ms(u["ts"]) for u in used), default=None)
    print(
        f"PPO updates with transitions: {len(used)}"
        + ("" if first is None else f", first at {from_ms(first)}")
    )
    along = [
        t
        for t in trades
        if t["sizing"] == "rl"
        and math.isfinite(t["entry_ret_5"])
        and t["entry_ret_5"] != 0
        and (t["side"] == "long") == (t["entry_ret_5"] > 0)
        and to_ms(t["entry_ts"]) >= start_ms
    ]
    for name, group in (
        ("before", [t for t in along if first is None or to_ms(t["entry_ts"]) <= first]),
        ("after", [t for t in along if first is not None and to_ms(t["entry_ts"]) > first]),
    ):
        sizes = [t["size_usd"] for t in group]
        mean = f"{np.mean(sizes):,.1f}" if sizes else "-"
        print(
            f"  trades in the edge's direction {name} the first update: {len(group)}, "
            f"mean size {mean} USD"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=Path, default=MONTH)
    ap.add_argument("--out", type=Path, default=Path("planted_fxcm_2014-05.csv.gz"))
    ap.add_argument("--from", dest="start", default="2014-05-08")
    ap.add_argument("--bps", type=float, default=3.0)
    ap.add_argument("--analyse", type=Path, help="an evaluation directory to analyse")
    args = ap.parse_args(argv)
    start = parse_iso(f"{args.start}T00:00:00Z").astimezone(UTC)
    if args.analyse is not None:
        analyse(args.analyse, start)
        return
    stats = plant(args.ticks, args.out, start, args.bps)
    print(
        f"wrote {args.out}: +-{args.bps:g} bps over {HORIZON} bars after each "
        f"{LOOKBACK}-bar move, from {args.start}"
    )
    for k, v in stats.items():
        print(f"  {k}: " + (f"{v[0]:+.2f} / {v[1]:+.2f}" if isinstance(v, tuple) else f"{v:.1f}"))


if __name__ == "__main__":
    main()

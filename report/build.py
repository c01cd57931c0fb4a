"""What the run report shows: each chart drawn from one analytics query (``sql/analytics/``),
so the report, ``python -m cli.analytics <query>`` and a dashboard read the same rows.

Every chart's ``<svg>`` says how many rows its query returned (``data-rows``) and how many
data elements it drew (``data-points``: ``pt`` points and ``bar`` bars); the function of the
rows each chart draws is in its builder's docstring. A line or marker series longer than
:data:`report.svg.MAX_POINTS` is downsampled (largest-triangle-three-buckets), and the caption
says so. A query without rows gives ``no data: <why>`` in the chart's place.
"""

from __future__ import annotations

import shlex
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from errors import redact
from report import svg
from report.page import Chart, Section, render_page
from report.svg import BAD, GOOD, NEUTRAL, Figure, color, epoch
from settings import Settings
from storage.store import Store, open_store

Rows = list[dict[str, Any]]
MAX_CATEGORIES = 20  # bars of a category chart; the rest are summed into one "other" bar
DECISION_COLORS = {
    "promoted": GOOD,
    "superseded": "#98df8a",
    "retired_not_better": NEUTRAL,
    "retired_unproven": "#ff7f0e",
}
TRIGGER_ORDER = ("time", "drift", "performance", "manual")


@dataclass
class Context:
    """The store's analytics queries (each run once) and what the charts need to know."""

    store: Store
    settings: Settings
    symbol: str | None = None
    _cache: dict[tuple[str, tuple], Rows] = field(default_factory=dict)

    def rows(self, name: str, **params: Any) -> Rows:
        key = (name, tuple(sorted(params.items())))
        if key not in self._cache:
            self._cache[key] = self.store.query(f"analytics/{name}", **params)
        return self._cache[key]

    @property
    def overview(self) -> dict[str, Any]:
        return self.rows("run_overview")[0]

    @property
    def span(self) -> tuple[float, float] | None:
        """The run's event-time span: every time axis covers it, so the charts line up."""
        o = self.overview
        return (epoch(o["first_bar"]), epoch(o["last_bar"])) if o["bars"] else None


def _when(v: datetime | None) -> str:
    return v.strftime("%Y-%m-%d %H:%M:%S") if v else "open"


def _money(v: float) -> str:
    return f"{v:+,.2f}".replace("-", "−")


def _sampled(n: int, drawn: int, what: str = "points") -> str:
    """The caption's note when a series was downsampled."""
    if drawn >= n:
        return ""
    return f" {n:,} {what} drawn as {drawn:,} (downsampled: largest-triangle-three-buckets)."


def _by(rows: Rows, key: str) -> dict[str, Rows]:
    out: dict[str, Rows] = defaultdict(list)
    for r in rows:
        out[r[key]].append(r)
    return dict(sorted(out.items()))


def _chart(
    cid: str,
    title: str,
    caption: str,
    query: str,
    rows: Rows,
    why: str,
    draw: Callable[[], tuple[str, str]],
    *,
    params: dict[str, Any] | None = None,
    wide: bool = False,
) -> Chart:
    """A chart from its query's rows: ``draw`` gives the SVG and a note for the caption (its
    figures, a downsampling); no rows give the chart's place saying ``no data: <why>``."""
    svg_text, note = draw() if rows else (svg.empty(cid, why, svg.WIDE if wide else svg.WIDTH), "")
    return Chart(
        cid, title, f"{caption}{note}", svg_text, query, tuple((params or {}).items()), wide
    )


# --- performance ----------------------------------------------------------------------------
def equity(ctx: Context) -> list[Chart]:
    """Equity: one step line per sub-account and one for the total (points: 2 x rows, each
    line downsampled on its own); drawdown: the same lines of drawdown."""
    params = {"start_equity": ctx.settings.start_equity}
    rows = ctx.rows("equity_curve", **params)
    why = "no closed trades in the store"
    start = f"${ctx.settings.start_equity:,.0f}"

    def draw(value: str, total: str, chart: str, percent: bool) -> tuple[str, int, int]:
        fig = Figure(
            chart,
            len(rows),
            x_span=ctx.span,
            y_percent=percent,
            y_label="drawdown" if percent else "net PnL ($)",
        )
        sign = -1.0 if percent else 1.0
        drawn = 0
        for i, (sym, sub) in enumerate(_by(rows, "symbol").items()):
            drawn += fig.line(
                [epoch(r["exit_ts"]) for r in sub],
                [sign * r[value] for r in sub],
                sym,
                color=color(i),
                step=True,
                titles=[
                    f"{sym} {_when(r['exit_ts'])}: equity "
                    f"{r['symbol_equity']:,.2f}, drawdown "
                    f"{r['symbol_drawdown']:.3%} ({r['trade_id']} "
                    f"{_money(r['net_pnl'])})"
                    for r in sub
                ],
            )
        drawn += fig.line(
            [epoch(r["exit_ts"]) for r in rows],
            [sign * r[total] for r in rows],
            "total",
            color="#222",
            step=True,
            width=2.2,
            titles=[
                f"total {_when(r['exit_ts'])}: equity {r['equity']:,.2f}, "
                f"drawdown {r['drawdown']:.3%}"
                for r in rows
            ],
        )
        fig.hline(0.0)
        return fig.svg(), drawn, 2 * len(rows)

    def eq() -> tuple[str, str]:
        text, drawn, n = draw("symbol_net_pnl", "total_net_pnl", "equity", False)
        return text, f" The portfolio starts at {start}." + _sampled(n, drawn)

    def dd() -> tuple[str, str]:
        text, drawn, n = draw("symbol_drawdown", "drawdown", "drawdown", True)
        worst = max(r["drawdown"] for r in rows)
        return text, f" Deepest total drawdown {worst:.3%}." + _sampled(n, drawn)

    return [
        _chart(
            "equity",
            "Equity",
            "Realised equity change (cumulative net PnL) after each closed trade, per "
            "sub-account (symbol) and in total.",
            "equity_curve",
            rows,
            why,
            eq,
            params=params,
        ),
        _chart(
            "drawdown",
            "Drawdown",
            "Drawdown of realised equity from its running peak (the start included), "
            "per sub-account and in total.",
            "equity_curve",
            rows,
            why,
            dd,
            params=params,
        ),
    ]


def pnl_by_symbol(ctx: Context) -> Chart:
    """One bar per row."""
    rows = ctx.rows("pnl_by_symbol")

    def draw() -> tuple[str, str]:
        text = svg.hbars(
            "pnl_by_symbol",
            len(rows),
            [f"{r['symbol']} ({r['trades']:,})" for r in rows],
            [r["total_net_pnl"] for r in rows],
            fmt=_money,
            colors=[GOOD if r["total_net_pnl"] >= 0 else BAD for r in rows],
            titles=[
                f"{r['symbol']}: {r['trades']} trades, win rate "
                f"{r['win_rate']:.1%}, net {_money(r['total_net_pnl'])}, fees "
                f"{r['total_fees']:,.2f}"
                for r in rows
            ],
        )
        return text, ""

    return _chart(
        "pnl_by_symbol",
        "PnL by symbol",
        "Net PnL of the closed trades by symbol (their number in brackets), after fees "
        "and slippage.",
        "pnl_by_symbol",
        rows,
        "no closed trades in the store",
        draw,
    )


def pnl_by_day(ctx: Context) -> Chart:
    """One bar per row."""
    rows = ctx.rows("pnl_by_day")

    def draw() -> tuple[str, str]:
        days = [epoch(r["day"]) for r in rows]
        fig = Figure(
            "pnl_by_day",
            len(rows),
            x_span=ctx.span,
            y_zero=True,
            y_label="net PnL ($)",
            x_ticks=[(d + 43200, f"{r['day']:%b %d}") for d, r in zip(days, rows, strict=True)],
        )
        fig.bars(
            [d + 0.15 * 86400 for d in days],
            [d + 0.85 * 86400 for d in days],
            [r["total_net_pnl"] for r in rows],
            colors=[GOOD if r["total_net_pnl"] >= 0 else BAD for r in rows],
            titles=[
                f"{r['day']}: {r['trades']} trades, win rate {r['win_rate']:.1%}, net "
                f"{_money(r['total_net_pnl'])}"
                for r in rows
            ],
        )
        return fig.svg(), ""

    return _chart(
        "pnl_by_day",
        "PnL by day",
        "Net PnL of the closed trades by exit day (UTC).",
        "pnl_by_day",
        rows,
        "no closed trades in the store",
        draw,
    )


def _price_symbol(ctx: Context) -> tuple[str | None, str]:
    """The symbol to draw trades on: the chosen one, else the most traded (ties: by name),
    else the first with bars."""
    if ctx.symbol:
        return ctx.symbol, "the symbol chosen with --symbol"
    counts = Counter(r["symbol"] for r in ctx.rows("trades"))
    if counts:
        return min(counts, key=lambda s: (-counts[s], s)), "the most traded symbol"
    symbols = ctx.overview["symbols"]
    return (symbols[0], "the first symbol (no trades)") if symbols else (None, "")


def price(ctx: Context) -> Chart:
    """Points: the closes (downsampled); markers ``entry`` (one per trade of the symbol) and
    ``exit`` (one per closed trade of the symbol)."""
    sym, how = _price_symbol(ctx)
    params = {"symbol": sym or "", "seconds": ctx.settings.bar_seconds}
    rows = ctx.rows("price_bars", **params)
    trades = [t for t in ctx.rows("trades") if t["symbol"] == sym]
    closed = [t for t in trades if t["exit_ts"] is not None]

    def draw() -> tuple[str, str]:
        fig = Figure(
            "price", len(rows), x_span=ctx.span, width=svg.WIDE, height=340, y_label="price"
        )
        drawn = fig.line(
            [epoch(r["ts"]) for r in rows],
            [r["close"] for r in rows],
            f"{sym} close",
            color="#5b7c99",
            width=1.0,
        )
        fig.segments(
            [epoch(t["entry_ts"]) for t in closed],
            [t["entry_price"] for t in closed],
            [epoch(t["exit_ts"]) for t in closed],
            [t["exit_price"] for t in closed],
        )
        for side, shape, col in (("long", "up", "#1f77b4"), ("short", "down", "#ff7f0e")):
            these = [t for t in trades if t["side"] == side]
            fig.markers(
                [epoch(t["entry_ts"]) for t in these],
                [t["entry_price"] for t in these],
                f"{side} entry",
                shape=shape,
                colors=col,
                cls="entry",
                size=5,
                titles=[
                    f"{t['trade_id']}: {side} entry {_when(t['entry_ts'])} at "
                    f"{t['entry_price']:.6g}, ${t['size_usd']:,.0f} "
                    f"(TP {t['tp_price']:.6g}, SL {t['sl_price']:.6g}; "
                    f"{t['policy_version']})"
                    for t in these
                ],
            )
        for won, name, col in ((True, "exit, won", GOOD), (False, "exit, lost", BAD)):
            these = [t for t in closed if (t["net_pnl"] > 0) == won]
            fig.markers(
                [epoch(t["exit_ts"]) for t in these],
                [t["exit_price"] for t in these],
                name,
                colors=col,
                cls="exit",
                size=4,
                titles=[
                    f"{t['trade_id']}: exit {_when(t['exit_ts'])} at "
                    f"{t['exit_price']:.6g}, {t['exit_reason']}, net "
                    f"{_money(t['net_pnl'])}"
                    for t in these
                ],
            )
        return fig.svg(), (
            f" {sym} is {how}: {len(trades)} trades." + _sampled(len(rows), drawn, "bars")
        )

    why = (
        f"no {ctx.settings.bar_seconds}-second bars of {sym} in the store (QT_BAR_SECONDS)"
        if sym
        else "no bars in the store"
    )
    return _chart(
        "price",
        "Trades on the price",
        f"{ctx.settings.bar_seconds}-second bar closes of one symbol with its trades, "
        "entry to exit; hover a marker for the trade (an exit: its reason).",
        "price_bars",
        rows,
        why,
        draw,
        params=params,
        wide=True,
    )


# --- models and the bias window ---------------------------------------------------------------
def _coinciding(rows: Rows) -> str:
    """Which series are the same line (models that voted with the same trades): only the
    last drawn shows, so the caption names them."""
    series: dict[tuple, list[str]] = {}
    for model, sub in _by(rows, "model").items():
        series.setdefault(tuple((r["exit_ts"], r["hit_rate"]) for r in sub), []).append(model)
    same = [" = ".join(names) for names in series.values() if len(names) > 1]
    return "".join(f" Drawn over each other (the same trades): {s}." for s in same)


def hit_rate(ctx: Context) -> Chart:
    """One line per model and the ensemble, a point per row."""
    rows = ctx.rows("model_hit_rate_rolling")

    def draw() -> tuple[str, str]:
        fig = Figure(
            "hit_rate",
            len(rows),
            x_span=ctx.span,
            y_percent=True,
            y_domain=(-0.04, 1.04),
            y_label="hit rate",
        )
        drawn = 0
        for i, (model, sub) in enumerate(_by(rows, "model").items()):
            ens = model == "ensemble"
            drawn += fig.line(
                [epoch(r["exit_ts"]) for r in sub],
                [r["hit_rate"] for r in sub],
                model,
                color="#222" if ens else color(i),
                width=2.2 if ens else 1.4,
                titles=[
                    f"{model} {_when(r['exit_ts'])}: {r['hit_rate']:.0%} of "
                    f"the last {r['window_trades']} trades"
                    for r in sub
                ],
            )
        fig.hline(0.5, "50%")
        return fig.svg(), _sampled(len(rows), drawn) + _coinciding(rows)

    return _chart(
        "hit_rate",
        "Rolling hit rate",
        "Hit rate over the last 20 closed trades each model voted with (the ensemble: "
        "all its trades); a hit is a trade that won.",
        "model_hit_rate_rolling",
        rows,
        "no closed trades in the store",
        draw,
    )


def supervisor(ctx: Context) -> list[Chart]:
    """Verdicts: one ``bar`` per hour (row), blocked overlaid (``blk``); shares: two lines,
    2 x rows points."""
    rows = ctx.rows("supervisor_blocks")
    s = ctx.settings
    why = "no BUY/SELL signal reached the bias window (supervisor_verdicts is empty)"
    hours = [epoch(r["hour"]) for r in rows]

    def verdicts() -> tuple[str, str]:
        fig = Figure(
            "supervisor_verdicts",
            len(rows),
            x_span=ctx.span,
            y_zero=True,
            y_integer=True,
            y_label="verdicts per hour",
        )
        fig.bars(
            hours,
            [h + 3060 for h in hours],
            [r["verdicts"] for r in rows],
            name="judged",
            colors="#1f77b4",
            titles=[
                f"{_when(r['hour'])}: {r['verdicts']} judged, {r['blocked']} blocked, "
                f"{r['biased']} biased"
                for r in rows
            ],
        )
        blocked = [(h, r) for h, r in zip(hours, rows, strict=True) if r["blocked"]]
        fig.bars(
            [h for h, _ in blocked],
            [h + 3060 for h, _ in blocked],
            [r["blocked"] for _, r in blocked],
            name="blocked",
            colors=BAD,
            cls="blk",
        )
        total = sum(r["blocked"] for r in rows)
        return fig.svg(), f" {total:,} blocked in all."

    def shares() -> tuple[str, str]:
        fig = Figure(
            "supervisor_shares",
            len(rows),
            x_span=ctx.span,
            y_percent=True,
            y_domain=(-0.04, 1.04),
            y_label="share of the window",
        )
        drawn = sum(
            fig.line(
                hours,
                [r[f"mean_{k}_share"] for r in rows],
                k.upper(),
                color=c,
                titles=[
                    f"{_when(r['hour'])}: mean {k.upper()} share {r[f'mean_{k}_share']:.0%}"
                    for r in rows
                ],
            )
            for k, c in (("buy", "#1f77b4"), ("sell", "#ff7f0e"))
        )
        fig.hline(
            s.supervisor_bias_threshold,
            f"bias threshold {s.supervisor_bias_threshold:.0%}",
            color=BAD,
        )
        return fig.svg(), _sampled(2 * len(rows), drawn)

    return [
        _chart(
            "supervisor_verdicts",
            "Bias window: verdicts",
            f"BUY/SELL signals judged by the bias window per hour, and how many it "
            f"blocked (mode {s.supervisor_mode}).",
            "supervisor_blocks",
            rows,
            why,
            verdicts,
        ),
        _chart(
            "supervisor_shares",
            "Bias window: BUY/SELL shares",
            "Mean BUY and SELL shares of the bias window per hour; once the window "
            f"holds {s.supervisor_min_samples} signals, a signal of a side whose share "
            "exceeds the threshold is biased (blocked when the mode is ENFORCED).",
            "supervisor_blocks",
            rows,
            why,
            shares,
        ),
    ]


# --- reinforcement learning -------------------------------------------------------------------
def rl_reward(ctx: Context) -> Chart:
    """One ``pt`` marker per row; the trend line has no points."""
    rows = ctx.rows("rl_rewards")

    def draw() -> tuple[str, str]:
        fig = Figure("rl_reward", len(rows), x_span=ctx.span, y_label="reward")
        xs = [epoch(r["exit_ts"]) for r in rows]
        drawn = fig.markers(
            xs,
            [r["reward"] for r in rows],
            "reward",
            size=3,
            colors=[GOOD if r["reward"] > 0 else BAD for r in rows],
            titles=[
                f"{r['trade_id']} ({r['policy_version']}): reward {r['reward']:.5f}" for r in rows
            ],
        )
        fig.line(
            xs,
            [r["reward_trend"] for r in rows],
            "mean of the last 20",
            color="#222",
            width=2,
            points=False,
        )
        fig.hline(0.0)
        return fig.svg(), _sampled(len(rows), drawn)

    return _chart(
        "rl_reward",
        "RL reward",
        "Reward of each closed trade the learners consumed (trade_outcomes), and its trend.",
        "rl_rewards",
        rows,
        "no trade outcomes: learning off (QT_LEARNING=false) or no closed trades",
        draw,
    )


def policy_versions(ctx: Context) -> Chart:
    """A step line with one point per trade (row); one ``upd`` line per PPO update."""
    rows = ctx.rows("rl_actions")
    updates = ctx.rows("rl_updates")

    def draw() -> tuple[str, str]:
        numbers = [r["policy_number"] for r in rows]
        lo, hi = min(numbers), max(numbers)
        fig = Figure(
            "policy_versions",
            len(rows),
            x_span=ctx.span,
            y_label="policy version",
            y_domain=(lo - 0.5, hi + 0.5),
            y_ticks=[(v, f"v{v}") for v in range(lo, hi + 1, max(1, (hi - lo + 1) // 6))],
        )
        drawn = fig.line(
            [epoch(r["entry_ts"]) for r in rows],
            numbers,
            "trades",
            step=True,
            titles=[f"{r['trade_id']}: {r['policy_version']} ({r['sizing']})" for r in rows],
        )
        fig.vlines(
            [epoch(u["ts"]) for u in updates],
            name="PPO update",
            cls="upd",
            titles=[
                f"{_when(u['ts'])}: {u['policy_before']} → {u['policy_after']}, "
                f"{u['transitions']} transitions, mean reward {u['mean_reward']:.5f}"
                for u in updates
            ],
        )
        return fig.svg(), f" {len(updates)} updates." + _sampled(len(rows), drawn)

    return _chart(
        "policy_versions",
        "Policy versions",
        "PPO policy version each trade was sized with, by entry time; policy updates "
        "(rl_updates) as vertical lines.",
        "rl_actions",
        rows,
        "no trades in the store",
        draw,
    )


def _histogram(
    rows: Rows, cid: str, title: str, column: str, label: str, fmt: Callable[[float], str]
) -> Chart:
    """A histogram of one column of ``rl_actions``: the bins' ``data-n`` add up to the rows."""

    def draw() -> tuple[str, str]:
        values = sorted(r[column] for r in rows)
        return (
            svg.histogram(cid, len(rows), values, label, fmt=fmt),
            f" {len(rows):,} trades, median {fmt(values[len(values) // 2])}.",
        )

    return _chart(
        cid,
        title,
        f"Distribution of the {label} the policy chose, per trade.",
        "rl_actions",
        rows,
        "no trades in the store",
        draw,
    )


def rl_distributions(ctx: Context) -> list[Chart]:
    rows = ctx.rows("rl_actions")
    return [
        _histogram(
            rows, "rl_size", "Position size", "size_usd", "size (USD)", lambda v: f"${v:,.0f}"
        ),
        _histogram(
            rows,
            "rl_tp",
            "Take-profit",
            "tp_pct",
            "take-profit (% of entry)",
            lambda v: f"{v:.2f}%",
        ),
        _histogram(
            rows, "rl_sl", "Stop-loss", "sl_pct", "stop-loss (% of entry)", lambda v: f"{v:.2f}%"
        ),
    ]


# --- continuous learning ----------------------------------------------------------------------
def clm_timeline(ctx: Context) -> Chart:
    """One ``pt`` marker per cycle (row), in its trigger's lane."""
    rows = ctx.rows("clm_cycles")

    def draw() -> tuple[str, str]:
        present = {r["trigger"] for r in rows}
        lanes = [t for t in TRIGGER_ORDER if t in present] + sorted(present - set(TRIGGER_ORDER))
        fig = Figure(
            "clm_timeline",
            len(rows),
            x_span=ctx.span,
            y_label="trigger",
            height=max(200, 90 + 44 * len(lanes)),
            y_domain=(len(lanes) - 0.4, -0.6),
            y_ticks=[(i, t) for i, t in enumerate(lanes)],
        )
        outcome: list[tuple[str, str, str]] = []
        for r in rows:
            decided = Counter(r["decisions"].values())
            promoted = decided.get("promoted", 0)
            kind = (
                "failed"
                if r["status"] == "failed"
                else "promoted"
                if promoted
                else "decided"
                if r["status"] == "decided"
                else "in progress"
            )
            outcome.append(
                (
                    kind,
                    f"{promoted} of {len(r['decisions'])} promoted" if promoted else "",
                    ", ".join(f"{n} {d}" for d, n in sorted(decided.items())),
                )
            )
        for kind, col in (
            ("promoted", GOOD),
            ("decided", NEUTRAL),
            ("failed", BAD),
            ("in progress", "#ff7f0e"),
        ):
            these = [(r, o) for r, o in zip(rows, outcome, strict=True) if o[0] == kind]
            fig.markers(
                [epoch(r["started_ts"]) for r, _ in these],
                [lanes.index(r["trigger"]) for r, _ in these],
                f"cycle {kind}" if these else "",
                shape="diamond",
                colors=col,
                size=7,
                labels=[o[1] for _, o in these],
                titles=[
                    f"{r['cycle_id']} ({r['trigger']}: {r['reason']}): {r['status']}"
                    f", {r['rows']:,} rows; {o[2] or 'no decisions yet'}"
                    for r, o in these
                ],
            )
        n_prom = sum(Counter(r["decisions"].values()).get("promoted", 0) for r in rows)
        n_dec = sum(len(r["decisions"]) for r in rows)
        status = ", ".join(
            f"{n} {k}" for k, n in sorted(Counter(r["status"] for r in rows).items())
        )
        return fig.svg(), (f" Cycles: {status}; {n_prom} of {n_dec} decided challengers promoted.")

    return _chart(
        "clm_timeline",
        "CLM cycles",
        "Continuous-learning cycles by start time and trigger; hover a cycle for its "
        "reason and decisions.",
        "clm_cycles",
        rows,
        "no CLM cycles (learning off, or no trigger fired: the time trigger waits "
        "QT_CLM_RETRAIN_HOURS of event time)",
        draw,
    )


def shadow_scores(ctx: Context) -> Chart:
    """One ``pt`` (point and interval) per challenger (row), grouped by cycle."""
    rows = ctx.rows("promotions")
    s = ctx.settings

    def draw() -> tuple[str, str]:
        placed: list[tuple[float, dict[str, Any]]] = []
        starts: list[tuple[float, str]] = []
        for n, sub in enumerate(_by(rows, "cycle_id").values(), 1):
            x = len(placed) + n - 1.0  # one empty slot between cycles
            starts.append(
                (x - 0.5, f"#{n} {sub[0]['started_ts']:%b %d %H:%M} ({sub[0]['trigger']})")
            )
            placed += [(x + i, r) for i, r in enumerate(sub)]
        fig = Figure(
            "shadow_scores",
            len(rows),
            x_time=False,
            x_rotate=True,
            x_ticks=[(x, r["model"]) for x, r in placed],
            y_percent=True,
            y_label="macro-F1 improvement",
            width=svg.WIDE,
            height=360,
        )
        fig.vlines([x for x, _ in starts], labels=[t for _, t in starts], width=1.0)
        for decision in sorted({r["decision"] for r in rows}):
            sel = [(x, r) for x, r in placed if r["decision"] == decision]
            fig.intervals(
                [x for x, _ in sel],
                [r["improvement_low"] for _, r in sel],
                [r["improvement_high"] for _, r in sel],
                [r["improvement"] for _, r in sel],
                name=decision,
                colors=DECISION_COLORS.get(decision, "#9467bd"),
                titles=[
                    f"{r['model']} {r['challenger_version']} ({r['cycle_id']}): "
                    f"{r['decision']}; improvement {r['improvement']:+.1%} "
                    f"[{r['improvement_low']:+.1%}, {r['improvement_high']:+.1%}], "
                    f"macro-F1 {r['production_f1']:.3f} → {r['challenger_f1']:.3f} "
                    f"on {r['bars_compared']:,} bars; {r['reason']}"
                    for _, r in sel
                ],
            )
        fig.hline(0.0)
        fig.hline(s.clm_promote_margin, f"promotion margin {s.clm_promote_margin:+.0%}", color=GOOD)
        return fig.svg(), ""

    return _chart(
        "shadow_scores",
        "Shadow tests",
        f"Every challenger's relative macro-F1 improvement over production on the same "
        f"shadow bars, with its {s.clm_promote_confidence:.0%} interval, by cycle; "
        f"promoted only when the interval clears the margin. Hover a point for the "
        f"reason.",
        "promotions",
        rows,
        "no challenger was decided yet (no CLM cycle reached its shadow test)",
        draw,
        wide=True,
    )


def drift(ctx: Context) -> Chart:
    """A line with one point per check (row); ``fired`` markers on checks that fired."""
    rows = ctx.rows("drift_checks")

    def draw() -> tuple[str, str]:
        fig = Figure("drift", len(rows), x_span=ctx.span, y_label="PSI")
        xs = [epoch(r["ts"]) for r in rows]
        drawn = fig.line(
            xs,
            [r["beyond_noise"] for r in rows],
            "drift beyond noise",
            titles=[
                f"{_when(r['ts'])}: raw PSI {r['raw_psi']:.4f}, noise "
                f"{r['noise']:.4f}, beyond {r['beyond_noise']:.4f} "
                f"({r['rows']:,} rows)"
                for r in rows
            ],
        )
        fig.line(xs, [r["raw_psi"] for r in rows], "raw PSI", color=NEUTRAL, cls="aux", dashed=True)
        fig.line(
            xs, [r["noise"] for r in rows], "noise level", color="#bcbd22", cls="aux", dashed=True
        )
        fired = [(x, r) for x, r in zip(xs, rows, strict=True) if r["fired"]]
        fig.markers(
            [x for x, _ in fired],
            [r["beyond_noise"] for _, r in fired],
            "fired" if fired else "",
            colors=BAD,
            cls="fired",
            size=5,
        )
        threshold = rows[-1]["threshold"]
        fig.hline(threshold, f"threshold {threshold:g}", color=BAD)
        return fig.svg(), _sampled(len(rows), drawn)

    return _chart(
        "drift",
        "Drift checks",
        "Drift of recent features from the models' training data: mean PSI beyond the "
        "level same-size windows reach by chance, per check; above the threshold a "
        "check triggers retraining.",
        "drift_checks",
        rows,
        "no drift checks (learning off, or less than QT_CLM_DRIFT_HOURS of event time)",
        draw,
    )


# --- data quality -----------------------------------------------------------------------------
def _capped(labels: list[str], values: list[float]) -> tuple[list[str], list[float]]:
    """The first :data:`MAX_CATEGORIES` bars, the rest summed into one "other" bar."""
    if len(labels) <= MAX_CATEGORIES:
        return labels, values
    rest = values[MAX_CATEGORIES:]
    return (
        [*labels[:MAX_CATEGORIES], f"other ({len(rest)})"],
        [*values[:MAX_CATEGORIES], sum(rest)],
    )


def _categories(
    ctx: Context,
    cid: str,
    title: str,
    query: str,
    label: Callable[[dict[str, Any]], str],
    what: str,
) -> Chart:
    """Dead letters as one ``bar`` per row, up to :data:`MAX_CATEGORIES` + 1 ("other")."""
    rows = ctx.rows(query)

    def draw() -> tuple[str, str]:
        labels, values = _capped([label(r) for r in rows], [r["dead_letters"] for r in rows])
        total = sum(values)
        return (
            svg.hbars(
                cid,
                len(rows),
                labels,
                values,
                colors=[BAD] * len(values),
                titles=[
                    f"{s}: {v:,} ({v / total:.1%})" for s, v in zip(labels, values, strict=True)
                ],
            ),
            f" {total:,} in all.",
        )

    return _chart(
        cid,
        title,
        f"Input rows that could not be used, by {what}.",
        query,
        rows,
        "no dead letters: every input row became a tick",
        draw,
    )


def dead_letters(ctx: Context) -> list[Chart]:
    return [
        _categories(
            ctx,
            "dead_letters_reason",
            "Dead letters by reason",
            "dead_letters_by_reason",
            lambda r: f"{r['stage']}: {r['reason']}",
            "stage and reason (numbers shown as N)",
        ),
        _categories(
            ctx,
            "dead_letters_source",
            "Dead letters by source",
            "dead_letters_by_source",
            lambda r: Path(r["source"]).name or r["source"],
            "input source",
        ),
    ]


# --- the page ---------------------------------------------------------------------------------
def _span(o: dict[str, Any]) -> str:
    if not o["bars"]:
        return "no bars in the store: nothing was replayed into it yet"
    first, last = o["first_bar"], o["last_bar"]
    days = (last - first).total_seconds() / 86400
    return (
        f"{first:%Y-%m-%d %H:%M} → {last:%Y-%m-%d %H:%M} UTC (event time, {days:.1f} days, "
        f"{o['bars']:,} bars)"
    )


def _kpis(o: dict[str, Any]) -> list[tuple[str, str]]:
    closed = o["closed_trades"]
    win = f"{o['winning_trades'] / closed:.1%}" if closed else "–"
    return [
        ("symbols", ", ".join(o["symbols"]) or "–"),
        ("trades", f"{o['trades']:,} ({closed:,} closed)"),
        ("win rate", win),
        ("net PnL", _money(o["net_pnl"] or 0.0)),
        ("dead letters", f"{o['dead_letters']:,}"),
        ("PPO updates", f"{o['rl_updates']:,}"),
        ("CLM cycles", f"{o['clm_cycles']:,}"),
    ]


def render(store: Store, settings: Settings, symbol: str | None = None) -> str:
    """The report's HTML for the store's current contents."""
    ctx = Context(store, settings, symbol)
    overview = ctx.overview
    sections = [
        Section(
            "performance",
            "Performance",
            [*equity(ctx), pnl_by_symbol(ctx), pnl_by_day(ctx), price(ctx)],
        ),
        Section("models", "Models and the bias window", [hit_rate(ctx), *supervisor(ctx)]),
        Section(
            "rl",
            "Reinforcement learning",
            [rl_reward(ctx), policy_versions(ctx), *rl_distributions(ctx)],
        ),
        Section("clm", "Continuous learning", [clm_timeline(ctx), drift(ctx), shadow_scores(ctx)]),
        Section("quality", "Data quality", dead_letters(ctx)),
    ]
    built = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"{store.description} · built {built} by python -m cli.report"
    return render_page("qt-stream run report", _span(overview), _kpis(overview), meta, sections)


def build_report(settings: Settings, symbol: str | None = None) -> str:
    """Open the store that ``settings`` name, render the report, close the store."""
    store = open_store(settings)
    try:
        return render(store, settings, symbol)
    finally:
        store.close()


def report_command(settings: Settings) -> str:
    """The shell command that builds and opens a report of the store ``settings`` name (the
    live flow's summary prints it). A server URL is only included without credentials in it;
    otherwise the command relies on ``QT_CLICKHOUSE_URL`` being set in the shell."""
    out = Path(settings.home).resolve() / "report.html"
    env = [f"QT_HOME={shlex.quote(str(Path(settings.home).resolve()))}"]
    url = settings.clickhouse_url.strip()
    if url and redact(url) == url:
        env.append(f"QT_CLICKHOUSE_URL={shlex.quote(url)}")
    elif not url and settings.database != Settings().database:
        env.append(f"QT_CLICKHOUSE_DATABASE={shlex.quote(settings.database)}")
    target = shlex.quote(str(out))
    return (
        f"{' '.join(env)} python -m cli.report --out {target} && "
        f"python -m webbrowser -t {shlex.quote(out.as_uri())}"
    )

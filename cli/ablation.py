"""Is learning worth it? The same replay with learning off (frozen) and on, compared honestly.

:func:`run_evaluation` (``python -m cli.evaluate``):

1. splits the tick files at ``train_until`` (each file is in time order: rows before it train,
   the rest is replayed), into the evaluation's own directory;
2. bootstraps all five models on the training part, synchronously, seeded;
3. replays the rest twice through the live flow, each arm in its own process, home, store and
   copy of the bootstrapped registry: **off** (``QT_LEARNING=false``: the models and policy
   stay as trained) and **on** (the learners run inside the decision engine, training
   synchronously, ``QT_CLM_BLOCKING=true``, so the replay is reproducible);
4. compares the arms (:func:`compare`).

Metrics per arm: closed trades, win rate, net PnL, daily Sharpe (mean over standard deviation
of the days' PnL as a fraction of ``QT_START_EQUITY``, not annualised), maximum drawdown of
end-of-day equity, and what learning did (PPO updates that used transitions, CLM cycles,
challengers promoted and retired).

Intervals: the two arms trade the same days, so each day is one paired observation (its PnL,
trade count and wins under both arms); the ``on - off`` difference of each metric gets a
percentile interval from ``resamples`` (10,000) paired bootstrap resamples of the days, seeded,
so the report is the same every time. Days, not trades, are resampled because trades overlap
and cluster within a day; with the few days of a short replay the intervals are wide, and the
verdict says so rather than reading a point estimate. The verdict reads the net PnL
difference: significant when its interval excludes zero.

>>> import numpy as np
>>> rows = compare(DailyPanel(np.array([1., -1., 2.]), np.array([1, 1, 1]), np.array([1, 0, 1])),
...                DailyPanel(np.array([2., -1., 3.]), np.array([1, 1, 2]), np.array([1, 0, 2])),
...                start_equity=100.0, resamples=2000)
>>> [(r.metric, r.off, r.on, r.diff) for r in rows if r.metric in ("net_pnl", "trades")]
[('trades', 3.0, 4.0, 1.0), ('net_pnl', 2.0, 4.0, 2.0)]
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from connectors.replay import expand_paths
from errors import redact
from schemas.timeutil import from_ms, iso, parse_iso, to_ms
from settings import PROJECT_ROOT, Settings

DAY_MS = 86_400_000
MIN_DAYS = 5  # days of market data below which no interval (and no verdict) is given
METRICS = ("trades", "win_rate", "net_pnl", "sharpe_daily", "max_drawdown")
LEARNING = ("rl_updates", "clm_cycles", "promotions", "retirements")


@dataclass(frozen=True)
class DailyPanel:
    """One arm's closed trades by exit day, over the replay's days with market data (the same
    days for both arms)."""

    pnl: np.ndarray
    trades: np.ndarray
    wins: np.ndarray

    @classmethod
    def of(cls, trades: Sequence[dict[str, Any]], days: Sequence[int]) -> DailyPanel:
        """``days``: the UTC days (ms // DAY_MS) the replay had ticks on, in order."""
        index = {d: i for i, d in enumerate(days)}
        n_days = len(days)
        pnl, n, wins = np.zeros(n_days), np.zeros(n_days, np.int64), np.zeros(n_days, np.int64)
        for t in trades:
            d = index[to_ms(t["exit_ts"]) // DAY_MS]
            pnl[d] += t["net_pnl"]
            n[d] += 1
            wins[d] += t["net_pnl"] > 0
        return cls(pnl, n, wins)


def _metrics(
    pnl: np.ndarray, n: np.ndarray, wins: np.ndarray, start_equity: float
) -> dict[str, np.ndarray]:
    """Each metric of rows of days (``pnl`` etc. shaped (resamples, days))."""
    with np.errstate(invalid="ignore", divide="ignore"):
        total_n = n.sum(axis=-1)
        ret = pnl / start_equity
        sd = ret.std(axis=-1, ddof=1) if ret.shape[-1] > 1 else np.full(ret.shape[:-1], np.nan)
        equity = start_equity + np.cumsum(pnl, axis=-1)
        peak = np.maximum(np.maximum.accumulate(equity, axis=-1), start_equity)
        return {
            "trades": total_n.astype(np.float64),
            "win_rate": np.where(total_n > 0, wins.sum(axis=-1) / total_n, np.nan),
            "net_pnl": pnl.sum(axis=-1),
            "sharpe_daily": np.where(sd > 0, ret.mean(axis=-1) / sd, np.nan),
            "max_drawdown": ((peak - equity) / peak).max(axis=-1),
        }


@dataclass(frozen=True)
class MetricRow:
    metric: str
    off: float
    on: float
    diff: float
    low: float = math.nan
    high: float = math.nan

    @property
    def significant(self) -> int:
        """+1 / -1 when the difference's interval excludes zero above / below, else 0."""
        if self.low > 0:
            return 1
        if self.high < 0:
            return -1
        return 0


def compare(
    off: DailyPanel,
    on: DailyPanel,
    start_equity: float,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> list[MetricRow]:
    """Each metric off and on, the difference and its paired day-bootstrap interval (none
    with fewer than :data:`MIN_DAYS` days: a handful of days cannot say how the next would
    go)."""
    days = len(off.pnl)
    point_off = _metrics(off.pnl, off.trades, off.wins, start_equity)
    point_on = _metrics(on.pnl, on.trades, on.wins, start_equity)
    idx = np.random.default_rng(seed).integers(0, days, size=(resamples, days))
    boot_off = _metrics(off.pnl[idx], off.trades[idx], off.wins[idx], start_equity)
    boot_on = _metrics(on.pnl[idx], on.trades[idx], on.wins[idx], start_equity)
    tail = 100 * (1 - confidence) / 2
    rows = []
    for m in METRICS:
        a, b = float(point_off[m]), float(point_on[m])
        d = boot_on[m] - boot_off[m]
        d = d[np.isfinite(d)]
        low, high = (
            np.percentile(d, [tail, 100 - tail]) if len(d) and days >= MIN_DAYS else (math.nan,) * 2
        )
        rows.append(MetricRow(m, a, b, b - a, float(low), float(high)))
    return rows


def verdict(
    rows: Sequence[MetricRow], learned: dict[str, int], confidence: float, same_trades: bool = False
) -> str:
    """The evaluation in plain words (net PnL decides; what learning did is said too, and when
    both arms took exactly the same trades, that only the sizes differ)."""
    pnl = next(r for r in rows if r.metric == "net_pnl")
    level = f"{confidence:.0%}"
    span = f"on - off = {pnl.diff:+,.2f} [{pnl.low:+,.2f}, {pnl.high:+,.2f}]"
    if math.isnan(pnl.low):
        head = (
            f"Too few days of market data for an interval (fewer than {MIN_DAYS}): "
            f"on - off = {pnl.diff:+,.2f} says nothing about skill."
        )
    elif pnl.significant > 0:
        head = f"Learning on earned more than learning off, significant at {level}: {span}."
    elif pnl.significant < 0:
        head = f"Learning on earned less than learning off, significant at {level}: {span}."
    else:
        head = f"No significant difference in net PnL at {level}: {span}."
    did = (
        f" Learning made {_n(learned['rl_updates'], 'PPO update')} and "
        f"{_n(learned['clm_cycles'], 'CLM cycle')} ("
        f"{_n(learned['promotions'], 'challenger')} promoted, "
        f"{learned['retirements']} retired)."
    )
    if learned["rl_updates"] == 0 and learned["promotions"] == 0:
        did += " Nothing it learned changed a decision, so the arms can only differ by noise."
    elif same_trades:
        did += (
            " Both arms took exactly the same trades: the difference is only the position "
            "sizes the updated policy chose."
        )
    return head + did


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# --- the evaluation itself -----------------------------------------------------------------------
@dataclass
class Evaluation:
    evaluation_id: str
    ticks: list[str]
    train_until: datetime
    replay_from: datetime
    replay_to: datetime
    days: int
    settings: dict[str, str]
    rows: list[MetricRow]
    learned: dict[str, dict[str, int]]
    verdict: str
    confidence: float
    extra: list[str] = field(default_factory=list)

    def render(self) -> str:
        head = [
            f"== learning ablation {self.evaluation_id} " + "=" * 20,
            f"  ticks        {', '.join(self.ticks)}",
            f"  trained on   everything before {iso(self.train_until)}",
            f"  replayed     {iso(self.replay_from)[:10]} .. {iso(self.replay_to)[:10]} "
            f"({self.days} days with market data)",
            f"  settings     {json.dumps(self.settings, sort_keys=True) or '{}'}",
            "",
        ]
        cols = (
            f"  {'metric':<14}{'off':>14}{'on':>14}{'on - off':>14}   "
            f"{self.confidence:.0%} interval"
        )
        lines = [cols, "  " + "-" * (len(cols) - 2)]
        for r in self.rows:
            fmt = _FORMATS[r.metric]
            lines.append(
                f"  {r.metric:<14}{fmt(r.off):>14}{fmt(r.on):>14}{fmt(r.diff):>14}"
                f"   [{fmt(r.low)}, {fmt(r.high)}]"
            )
        for m in LEARNING:
            lines.append(f"  {m:<14}{self.learned['off'][m]:>14}{self.learned['on'][m]:>14}")
        tail = ["", *self.extra, f"  {self.verdict}", "=" * 60]
        return "\n".join(head + lines + tail)


_FORMATS: dict[str, Callable[[float], str]] = {
    "trades": lambda v: "-" if math.isnan(v) else f"{v:+,.0f}" if v < 0 else f"{v:,.0f}",
    "win_rate": lambda v: "-" if math.isnan(v) else f"{v:.1%}",
    "net_pnl": lambda v: "-" if math.isnan(v) else f"{v:,.2f}",
    "sharpe_daily": lambda v: "-" if math.isnan(v) else f"{v:.3f}",
    "max_drawdown": lambda v: "-" if math.isnan(v) else f"{v:.3%}",
}


def file_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def split_ticks(
    files: Sequence[Path], until: datetime, out_dir: Path
) -> tuple[list[Path], list[Path], list[int]]:
    """Each file cut at ``until`` into ``out_dir/train-*`` and ``out_dir/replay-*`` (CSV.gz,
    header kept); returns the files and the UTC days (ms // DAY_MS) the replay has rows on.

    Files are in time order (the project's layouts; several files are merged in event time by
    the replay), so the cut is the first row at or after ``until``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train, replay = [], []
    days: set[int] = set()
    cut = iso(until)
    for path in files:
        if path.suffix == ".parquet":
            raise ValueError(f"{path}: cli.evaluate splits CSV files; convert Parquet first")
        opener = gzip.open if path.suffix == ".gz" else open
        stem = path.name.removesuffix(".gz").removesuffix(".csv")
        a, b = out_dir / f"train-{stem}.csv.gz", out_dir / f"replay-{stem}.csv.gz"
        with (
            opener(path, "rt", newline="") as src,
            gzip.open(a, "wt", compresslevel=1) as ta,
            gzip.open(b, "wt", compresslevel=1) as tb,
        ):
            header = src.readline()
            ta.write(header)
            tb.write(header)
            n_train = n_replay = 0
            for line in src:
                if line[: len(cut)] < cut and line[:24] < cut:
                    ta.write(line)
                    n_train += 1
                    continue
                tb.write(line)
                n_replay += 1
                days.add(to_ms(datetime.fromisoformat(line[: line.index(",")])) // DAY_MS)
        if n_train:
            train.append(a)
        if n_replay:
            replay.append(b)
    if not train or not replay:
        raise ValueError(
            f"--train-until {cut} leaves nothing to {'train on' if not train else 'replay'}"
        )
    return train, replay, sorted(days)


ARM_ENV = {
    "off": {"QT_LEARNING": "false"},
    "on": {"QT_LEARNING": "true", "QT_CLM_BLOCKING": "true"},
}


def run_arm(
    arm: str, home: Path, registry: Path, train: Sequence[Path], replay: Sequence[Path], log: TextIO
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One arm in its own process, home, store and registry (chDB allows one data path per
    process), with the user's other QT_* settings: :func:`arm_main` there."""
    env = {
        **os.environ,
        "QT_HOME": str(home),
        "QT_REGISTRY_DIR": str(registry),
        "QT_RL_V3_CHECKPOINT_DIR": "",
        "QT_TICKS": ",".join(str(p) for p in replay),
        "QT_CLICKHOUSE_URL": "",
        **ARM_ENV[arm],
    }
    print(f"evaluate: replaying with learning {arm} ...", file=log, flush=True)
    result = home / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.ablation", str(result), *(str(p) for p in train)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    log.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"the learning-{arm} replay failed (exit {proc.returncode}); its output is above"
        )
    doc = json.loads(result.read_text())
    for t in doc["trades"]:
        t["exit_ts"] = parse_iso(t["exit_ts"])
        t["entry_ts"] = parse_iso(t["entry_ts"])
    return doc["trades"], doc["learned"]


def arm_main(result: Path, train: Sequence[Path]) -> None:
    """Inside an arm's process (``QT_*`` from :func:`run_arm`): its store gets the training
    history's features (as a live store that bootstrapped has them, so retraining cycles look
    back over them), the live flow replays, and the closed trades and what learning did are
    written to ``result`` as JSON."""
    from bytewax.testing import run_main

    from dataflows.live import build_live_flow
    from storage.store import open_store
    from training.bootstrap import store_features
    from training.history import history_from_ticks

    settings = Settings.from_env()
    history = history_from_ticks(",".join(str(p) for p in train), settings)
    store = open_store(settings)
    try:
        store_features(store)([v for s in history.symbols for v in history.vectors[s]])
        run_main(build_live_flow(settings))
        trades = store.query("queries/closed_trades")
        (counts,) = store.query("queries/learning_counts")
    finally:
        store.close()
    for t in trades:
        t["exit_ts"], t["entry_ts"] = iso(t["exit_ts"]), iso(t["entry_ts"])
    result.write_text(
        json.dumps({"trades": trades, "learned": {k: int(counts[k]) for k in LEARNING}})
    )


# settings an evaluation sets itself, per arm (the others shape both arms and are reported)
OWN_SETTINGS = {
    "QT_HOME",
    "QT_TICKS",
    "QT_REGISTRY_DIR",
    "QT_LEARNING",
    "QT_CLM_BLOCKING",
    "QT_CLICKHOUSE_URL",
    "QT_RL_V3_CHECKPOINT_DIR",
    "QT_CLICKHOUSE_DATABASE",
    "QT_BOOTSTRAP_TICKS",
}


def changed_settings(settings: Settings) -> dict[str, str]:
    """The QT_* settings that differ from their defaults and shape both arms (credentials
    redacted: they are printed with the report and stored with the evaluation)."""
    return {k: redact(v) for k, v in settings.changed().items() if k not in OWN_SETTINGS}


def bootstrap_registry(
    settings: Settings, directory: Path, train: Sequence[Path], quick: bool, log: TextIO
) -> None:
    """Train all five models on ``train`` into a registry at ``directory`` (seeded)."""
    from models.registry import ModelRegistry
    from training.bootstrap import BootstrapConfig, bootstrap

    print(f"evaluate: training on {', '.join(p.name for p in train)} ...", file=log, flush=True)
    bootstrap(
        settings,
        ModelRegistry(directory),
        ticks=",".join(str(p) for p in train),
        config=BootstrapConfig.quick() if quick else None,
        out=log,
        progress=False,
    )


def run_evaluation(
    ticks: str,
    train_until: datetime,
    settings: Settings,
    quick: bool = False,
    confidence: float = 0.95,
    log: TextIO = sys.stderr,
    report_extra: Callable[[dict[str, list[dict[str, Any]]]], list[str]] | None = None,
) -> Evaluation:
    """The whole ablation (module docstring); its work files go to
    ``$QT_HOME/evaluations/<id>`` (replaced on every run)."""
    files = expand_paths(ticks)
    changed = changed_settings(settings)
    key = json.dumps(
        {
            "files": file_digest(files),
            "until": iso(train_until),
            "settings": changed,
            "quick": quick,
        },
        sort_keys=True,
    )
    evaluation_id = hashlib.sha256(key.encode()).hexdigest()[:12]
    work = settings.home / "evaluations" / evaluation_id
    shutil.rmtree(work, ignore_errors=True)
    train, replay, days = split_ticks(files, train_until, work / "ticks")
    base = work / "bootstrap-registry"
    bootstrap_registry(settings, base, train, quick, log)
    trades: dict[str, list[dict[str, Any]]] = {}
    learned: dict[str, dict[str, int]] = {}
    for arm in ("off", "on"):
        home = work / arm
        shutil.copytree(base, home / "registry")
        trades[arm], learned[arm] = run_arm(arm, home, home / "registry", train, replay, log)
    rows = compare(
        DailyPanel.of(trades["off"], days),
        DailyPanel.of(trades["on"], days),
        settings.start_equity,
        confidence,
    )
    return Evaluation(
        evaluation_id,
        [p.name for p in files],
        train_until,
        from_ms(days[0] * DAY_MS),
        from_ms((days[-1] + 1) * DAY_MS - 1),
        len(days),
        changed,
        rows,
        learned,
        verdict(
            rows,
            learned["on"],
            confidence,
            {t["trade_id"] for t in trades["off"]} == {t["trade_id"] for t in trades["on"]},
        ),
        confidence,
        report_extra(trades) if report_extra is not None else [],
    )


def store_evaluation(e: Evaluation, settings: Settings) -> None:
    """One ``evaluations`` row per metric in the user's store."""
    from storage.store import open_store

    # what every metric's row shares: the evaluation itself
    shared = (
        e.confidence,
        ",".join(e.ticks),
        e.train_until,
        e.replay_from,
        e.replay_to,
        json.dumps(e.settings, sort_keys=True),
        e.verdict,
        datetime.now().astimezone(),
    )
    rows = [
        (e.evaluation_id, r.metric, r.off, r.on, r.diff, r.low, r.high, *shared) for r in e.rows
    ]
    for m in LEARNING:
        off, on = float(e.learned["off"][m]), float(e.learned["on"][m])
        rows.append((e.evaluation_id, m, off, on, on - off, math.nan, math.nan, *shared))
    store = open_store(settings)
    try:
        store.insert("evaluations", EVALUATION_COLUMNS, rows)
    finally:
        store.close()


EVALUATION_COLUMNS = (
    "evaluation_id",
    "metric",
    "off",
    "on",
    "diff",
    "diff_low",
    "diff_high",
    "confidence",
    "ticks",
    "train_until",
    "replay_from",
    "replay_to",
    "settings",
    "verdict",
    "created_ts",
)


if __name__ == "__main__":  # an arm's process (run_arm)
    arm_main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])

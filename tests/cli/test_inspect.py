"""python -m cli.inspect: what a replay would read, judged by the flow's own validation."""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cli import inspect as cli_inspect
from cli.inspect import inspect, reason_kind, render
from settings import PROJECT_ROOT, Settings

CANDLES = "candles/binance_spot_XRPETH_1m_2019-10-11.csv.gz"
QUOTES = "quotes/binance_usdm_BTCUSDT-ETHUSDT_2024-07-18_quotes.csv.gz"  # 99,588 rows


def klines(shared_data: Path, tmp_path: Path, rows: int = 2000) -> Path:
    """Real candles as a headerless Binance klines file (µs), with a few broken rows."""
    with gzip.open(shared_data / CANDLES, "rt") as f:
        data = [ln.strip().split(",") for ln in itertools.islice(f, 1, rows + 1)]
    from schemas.timeutil import parse_iso, to_ms

    lines = [
        f"{to_ms(parse_iso(r[0])) * 1000},{r[2]},{r[3]},{r[4]},{r[5]},{r[6]},0,0,0,0,0,0"
        for r in data
    ]
    lines[4] = lines[4].replace(
        f",{data[4][3]},{data[4][4]},", f",{data[4][4]},{data[4][3]},", 1
    )  # high < low
    lines[6] = "soon" + lines[6]
    lines[8] = "1,2,3"
    lines[10], lines[11] = lines[11], lines[10]  # a minute back in time
    path = tmp_path / "XRPETH-1m-2019-10-11.csv"
    path.write_text("".join(f"{ln}\n" for ln in lines))
    return path


def test_inspect_counts_what_the_flow_dead_letters(
    shared_data: Path, tmp_path: Path, run_market
) -> None:
    path = klines(shared_data, tmp_path)
    (report,) = inspect([path], Settings.from_env({}), first=8)
    (f,) = report.files
    assert f.layout.name == "Binance klines" and "no header" in f.layout.why
    assert "in µs" in f.layout.why and f.rows == 2000
    _, _, validated = run_market(str(path))
    flow = Counter(reason_kind(d.reason) for v in validated for d in v.dead)
    assert {k: r.count for k, r in report.reasons.items()} == dict(flow)
    assert set(flow) == {
        "inconsistent candle",
        "unparseable open_time: '…'",
        "not a row of the Binance klines layout (N fields)",
        "time went backwards by N ms",
    }
    assert f.dead == sum(flow.values()) == report.dead
    assert report.symbols == {"BINANCE:XRPETH": 2000 - f.dead}
    fates = [r.fate for r in report.first_rows]
    assert fates[4] == "dead letter: inconsistent candle"
    assert fates[6].startswith("dead letter: unparseable open_time: 'soon")
    assert report.first_rows[6].text.startswith("not decoded: 'soon")
    assert [r.where for r in report.first_rows][7:] == ["XRPETH-1m-2019-10-11.csv:8"]
    assert report.first_rows[0].text.startswith(
        "2019-10-11T00:00:59.999Z BINANCE:XRPETH candle open=0.00141342 high=0.00141557"
    )
    text = render([report])
    for needle in (
        "layout        Binance klines (read as candles), candles of 60,000 ms",
        "time span     2019-10-11T00:00:59.999Z",
        "dead letters  4, by reason:",
        "e.g. XRPETH-1m-2019-10-11.csv:9: not a row of the Binance klines layout",
    ):
        assert needle in text, text


def test_files_sharing_a_symbol_are_one_partition(shared_data: Path, tmp_path: Path) -> None:
    path = klines(shared_data, tmp_path, rows=100)
    later = tmp_path / "XRPETH-1m-2019-10-12.csv"
    later.write_text(path.read_text())
    (report,) = inspect([path, later], Settings.from_env({}))
    assert [(f.path, f.rows) for f in report.files] == [(path, 100), (later, 100)]
    assert report.dead == sum(f.dead for f in report.files) > 0
    assert report.symbols == {"BINANCE:XRPETH": 200 - report.dead}
    assert render([report]).startswith("== replay partition: 2 files sharing symbols")


def test_inspect_reads_a_big_file_once(shared_data: Path, monkeypatch) -> None:
    """The whole file is decoded once; detection reads only its first lines (3 times)."""
    from connectors import replay

    read = Counter()
    raw_read = replay._TextStream._raw_read

    def counting(self, size: int) -> bytes:
        out = raw_read(self, size)
        read[self.path] += len(out)
        return out

    monkeypatch.setattr(replay._TextStream, "_raw_read", counting)
    path = shared_data / QUOTES
    (report,) = inspect([path], Settings.from_env({}), first=2)
    assert report.rows == 99_588 and report.dead == 0
    assert report.symbols == {"BINANCE_USDM:BTCUSDT": 52_260, "BINANCE_USDM:ETHUSDT": 47_328}
    with gzip.open(path) as f:
        size = len(f.read())
    assert size <= read[path] <= size + 4 * replay.HEADER_LIMIT


def test_main_prints_the_report(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = klines(shared_data, tmp_path, rows=50)
    cli_inspect.main([str(path), "--first", "2"])
    out = capsys.readouterr().out
    assert out.startswith(f"{path}\n  layout        Binance klines")
    assert out.count(" -> ") == 2


def test_an_unusable_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "prices.csv"
    bad.write_text("when,what,px\n1,2,3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cli.inspect", str(bad)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "QT_DEBUG"},
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {bad}: unrecognised header 'when,what,px'; expected")
    assert proc.stderr.count("\n") == 1

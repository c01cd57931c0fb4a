"""The report page on an empty store, and the command the live flow's summary prints."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from report.build import build_report, report_command
from settings import Settings

CHARTS = {
    "equity",
    "drawdown",
    "pnl_by_symbol",
    "pnl_by_day",
    "price",
    "hit_rate",
    "supervisor_verdicts",
    "supervisor_shares",
    "rl_reward",
    "policy_versions",
    "rl_size",
    "rl_tp",
    "rl_sl",
    "clm_timeline",
    "drift",
    "shadow_scores",
    "dead_letters_reason",
    "dead_letters_source",
}


def test_an_empty_store_gives_every_chart_saying_why(settings: Settings) -> None:
    page = build_report(settings)
    svgs = re.findall(r"<svg [^>]*>.*?</svg>", page, re.S)
    assert {re.search(r'data-chart="(\w+)"', s)[1] for s in svgs} == CHARTS
    for s in svgs:
        assert 'data-rows="0"' in s and 'data-empty="true"' in s
        assert re.search(r'<text class="nodata"[^>]*><tspan[^>]*>no data: \w', s), s
    assert "no bars in the store" in page
    assert page.count("<figcaption>") == len(CHARTS)
    for anchor in re.findall(r'href="#([\w-]+)"', page):  # the contents link to real places
        assert f'id="{anchor}"' in page
    assert not re.search(r"<script|<link|src=\"http|@import", page)  # nothing to fetch


def test_report_command_names_the_store_and_opens_the_file(tmp_path: Path) -> None:
    home = tmp_path / "my runs"
    cmd = report_command(Settings.from_env({}, home=home, database="demo"))
    words = shlex.split(cmd)
    assert words[:2] == [f"QT_HOME={home.resolve()}", "QT_CLICKHOUSE_DATABASE=demo"]
    assert words[2:7] == ["python", "-m", "cli.report", "--out", str(home / "report.html")]
    assert words[7:] == ["&&", "python", "-m", "webbrowser", "-t", (home / "report.html").as_uri()]
    assert "QT_CLICKHOUSE_DATABASE" not in report_command(Settings.from_env({}, home=home))


def test_report_command_never_prints_a_password(tmp_path: Path) -> None:
    secret = Settings.from_env({}, home=tmp_path, clickhouse_url="http://u:s3cret@db:8123/qt")
    assert "s3cret" not in report_command(secret)
    assert "QT_CLICKHOUSE_URL" not in report_command(secret)  # the shell's variable is used
    open_url = Settings.from_env({}, home=tmp_path, clickhouse_url="http://db:8123/qt")
    assert "QT_CLICKHOUSE_URL=http://db:8123/qt " in report_command(open_url)


def test_series_that_are_one_line_are_named_in_the_caption() -> None:
    from report.build import _coinciding

    row = {"exit_ts": 1, "hit_rate": 0.5}
    rows = [{**row, "model": m} for m in ("xgboost", "lightgbm", "ensemble")]
    rows.append({"exit_ts": 1, "hit_rate": 1.0, "model": "nhits"})
    assert (
        _coinciding(rows) == " Drawn over each other (the same trades): ensemble = lightgbm "
        "= xgboost."
    )
    assert _coinciding(rows[2:]) == ""

"""The run report in a real browser: the bundled sample's two days replayed through the live
flow with learning on (so the RL and CLM charts have data), the report built from the store,
opened in headless Chromium from a file:// URL, every chart checked against its query's rows,
the console checked for errors and a full-page screenshot checked not to be blank.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); when they are
missing the test installs them with apt-get if it can, and is skipped, saying why, if not.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import run_main

from dataflows.live import build_live_flow
from report.build import MAX_CATEGORIES, build_report
from report.svg import MAX_POINTS
from settings import Settings
from storage.store import open_store

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Without the background-networking flags Chromium's own requests fail on a closed network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WIDTH = 1280

# Per chart: what each mark class should count, from the rows of the chart's query.
COUNTS_JS = """
return Array.from(document.querySelectorAll('svg[data-chart]')).map(s => {
  const box = s.getBoundingClientRect();
  const inside = e => { const b = e.getBoundingClientRect();
    return b.left >= box.left - 1 && b.right <= box.right + 1 && b.top >= box.top - 1
      && b.bottom <= box.bottom + 1; };
  const n = sel => s.querySelectorAll(sel).length;
  const marks = Array.from(s.querySelectorAll('.pt, .bar, .entry, .exit, .blk, .fired'));
  return {chart: s.dataset.chart, rows: +s.dataset.rows, points: +s.dataset.points,
          empty: s.dataset.empty === 'true', text: s.textContent,
          width: box.width, height: box.height, outside: marks.filter(m => !inside(m)).length,
          pt: n('.pt'), bar: n('.bar'), entry: n('.entry'), exit: n('.exit'), blk: n('.blk'),
          upd: n('.upd'), fired: n('.fired'),
          binned: Array.from(s.querySelectorAll('.bar[data-n]'))
            .reduce((a, b) => a + Number(b.dataset.n), 0)};
});
"""

# The screenshot decoded by the browser itself (no image library needed): its size, the share
# of pixels that are not near-white and the number of distinct colours (6-bit per channel).
PIXELS_JS = """
const [b64, done] = arguments;
const img = new Image();
img.onload = () => {
  const c = document.createElement('canvas');
  c.width = img.width; c.height = img.height;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let seen = 0, ink = 0;
  const colours = new Set();
  for (let i = 0; i < d.length; i += 4 * 3) {
    seen++;
    if (d[i] < 235 || d[i + 1] < 235 || d[i + 2] < 235) ink++;
    colours.add((d[i] >> 2) << 12 | (d[i + 1] >> 2) << 6 | (d[i + 2] >> 2));
  }
  done({width: img.width, height: img.height, ink: ink / seen, colours: colours.size});
};
img.onerror = () => done(null);
img.src = 'data:image/png;base64,' + b64;
"""


def _chromium_available() -> str:
    """'' when Chromium and its driver are there (installed now with apt-get if possible),
    else why not."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return ""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return f"{CHROMIUM} or {CHROMEDRIVER} missing, and apt-get is not usable by this user"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
    ):
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=900, check=False
        )
        if proc.returncode:
            return f"{' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}"
    return "" if CHROMIUM.exists() and CHROMEDRIVER.exists() else "apt-get did not install it"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium ('.[test]')")
    from selenium.webdriver.chrome.service import Service

    why = _chromium_available()
    if why:
        pytest.skip(f"no headless Chromium: {why}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="qt-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _capped(n: int) -> int:
    return min(n, MAX_POINTS)


def _expected(s: Settings) -> dict[str, tuple[int, dict[str, int]]]:
    """Chart id -> (its query's rows, the count of each mark class it must draw), computed
    from the analytics queries independently of the report's code."""
    store = open_store(s)
    try:

        def q(name: str, **params: Any) -> list[dict[str, Any]]:
            return store.query(f"analytics/{name}", **params)

        equity = q("equity_curve", start_equity=s.start_equity)
        lines = sum(_capped(n) for n in Counter(r["symbol"] for r in equity).values()) + _capped(
            len(equity)
        )
        trades = q("trades")
        traded = Counter(t["symbol"] for t in trades)
        symbol = min(traded, key=lambda x: (-traded[x], x))
        mine = [t for t in trades if t["symbol"] == symbol]
        prices = q("price_bars", symbol=symbol, seconds=s.bar_seconds)
        hits = q("model_hit_rate_rolling")
        supervisor = q("supervisor_blocks")
        rewards = q("rl_rewards")
        actions = q("rl_actions")
        drift = q("drift_checks")
        by_reason, by_source = q("dead_letters_by_reason"), q("dead_letters_by_source")
        categories = {
            n: min(n, MAX_CATEGORIES) + (n > MAX_CATEGORIES)
            for n in (len(by_reason), len(by_source))
        }
        return {
            "equity": (len(equity), {"pt": lines}),
            "drawdown": (len(equity), {"pt": lines}),
            "pnl_by_symbol": (len(q("pnl_by_symbol")), {"bar": len(q("pnl_by_symbol"))}),
            "pnl_by_day": (len(q("pnl_by_day")), {"bar": len(q("pnl_by_day"))}),
            "price": (
                len(prices),
                {
                    "pt": _capped(len(prices)),
                    "entry": len(mine),
                    "exit": sum(t["exit_ts"] is not None for t in mine),
                },
            ),
            "hit_rate": (
                len(hits),
                {"pt": sum(_capped(n) for n in Counter(r["model"] for r in hits).values())},
            ),
            "supervisor_verdicts": (
                len(supervisor),
                {"bar": len(supervisor), "blk": sum(r["blocked"] > 0 for r in supervisor)},
            ),
            "supervisor_shares": (len(supervisor), {"pt": 2 * _capped(len(supervisor))}),
            "rl_reward": (len(rewards), {"pt": _capped(len(rewards))}),
            "policy_versions": (
                len(actions),
                {"pt": _capped(len(actions)), "upd": len(q("rl_updates"))},
            ),
            **{c: (len(actions), {"binned": len(actions)}) for c in ("rl_size", "rl_tp", "rl_sl")},
            "clm_timeline": (len(q("clm_cycles")), {"pt": len(q("clm_cycles"))}),
            "shadow_scores": (len(q("promotions")), {"pt": len(q("promotions"))}),
            "drift": (
                len(drift),
                {"pt": _capped(len(drift)), "fired": sum(bool(r["fired"]) for r in drift)},
            ),
            "dead_letters_reason": (len(by_reason), {"bar": categories[len(by_reason)]}),
            "dead_letters_source": (len(by_source), {"bar": categories[len(by_source)]}),
        }
    finally:
        store.close()


def test_report_of_a_learning_replay_in_chromium(
    browser: Any,
    live_settings: Settings,
    registry_copy: Path,
    sample_ticks: Path,
    tmp_path: Path,
    capsys,
) -> None:
    s = live_settings.replace(
        ticks=str(sample_ticks),
        registry_path=registry_copy,
        learning=True,
        rl_update_interval=4,
        clm_retrain_hours=12.0,
        clm_shadow_max=800,
        clm_blocking=True,
        clm_budget="quick",
        clm_drift_hours=6.0,
    )
    run_main(build_live_flow(s))
    capsys.readouterr()  # the run's summary
    page = tmp_path / "report.html"
    html = build_report(s)
    page.write_text(html, encoding="utf-8")
    assert "http://" not in html.replace('"http://www.w3.org/2000/svg"', "")
    expected = _expected(s)
    assert set(re.findall(r'<svg[^>]* data-chart="([^"]+)"', html)) == set(expected)

    from selenium.webdriver.support.wait import WebDriverWait  # there: `browser` imported it

    browser.set_window_size(WIDTH, 1000)
    browser.get(page.as_uri())
    # get() can return before a large page is parsed: wait for every chart to be in the DOM
    # (a chart the parser never reaches, e.g. after broken markup, fails here by timing out).
    WebDriverWait(browser, 30).until(
        lambda d: (
            d.execute_script(
                "return document.readyState === 'complete' && "
                "document.querySelectorAll('svg[data-chart]').length"
            )
            == len(expected)
        ),
        f"the browser did not show all {len(expected)} charts of {page}",
    )
    drawn = {c["chart"]: c for c in browser.execute_script(COUNTS_JS)}
    assert set(drawn) == set(expected)
    for chart, (rows, marks) in expected.items():
        got = drawn[chart]
        assert got["rows"] == rows, chart
        assert got["width"] > 200 and got["height"] > 30, chart  # laid out, visible
        assert got["outside"] == 0, chart  # every mark inside its chart
        if rows:
            assert {k: got[k] for k in marks} == marks, chart
            assert got["points"] == got["pt"] + got["bar"] > 0, chart
        else:
            assert got["empty"] and "no data: " in got["text"], chart
    # learning happened, so these charts are not just "no data"
    for chart in (
        "equity",
        "price",
        "rl_reward",
        "policy_versions",
        "clm_timeline",
        "shadow_scores",
        "dead_letters_reason",
    ):
        assert expected[chart][0] > 0, chart
    assert expected["policy_versions"][1]["upd"] > 0  # a PPO update is drawn

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    )  # no sideways scroll

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WIDTH, height + 150)
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, tall = struct.unpack(">II", png[16:24])
    pixels = browser.execute_async_script(PIXELS_JS, base64.b64encode(png).decode())
    assert pixels and (pixels["width"], pixels["height"]) == (width, tall)
    assert tall >= height
    assert pixels["ink"] > 0.03, pixels  # not a white page: text, axes, lines, bars
    assert pixels["colours"] > 200, pixels  # many colours: the charts' series, not one flat fill

    browser.set_window_size(420, 900)  # a phone: the grid becomes one column, nothing overflows
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    )

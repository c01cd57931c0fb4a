"""The report's SVG primitives: escaping, one element per datum, empty data, downsampling, and
the time and number axes."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from itertools import pairwise

from report import svg
from report.svg import Figure

NS = "{http://www.w3.org/2000/svg}"
T0 = datetime(2014, 5, 6, tzinfo=UTC).timestamp()


def parse(text: str) -> ET.Element:
    """The SVG as XML: it must be well-formed (so every text was escaped)."""
    return ET.fromstring(text)


def with_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in e.get("class", "").split()]


def test_text_is_escaped_everywhere() -> None:
    evil = "<script>alert(\"x\")</script> & 'q'"
    fig = Figure("c<&>", 1)
    fig.line([T0, T0 + 60], [1.0, 2.0], evil, titles=[evil, evil])
    fig.markers([T0], [1.5], evil, titles=[evil], labels=[evil])
    fig.hline(1.0, evil)
    fig.vlines([T0], titles=[evil], labels=[evil])
    for text in (
        fig.svg(),
        svg.empty("c", evil),
        svg.hbars("c", 1, [evil], [3.0]),
        svg.histogram("c", 1, [1.0], evil),
    ):
        assert "<script" not in text
        root = parse(text)
        assert evil in "".join(root.itertext())  # shown as text, intact
    assert parse(fig.svg()).get("data-chart") == "c<&>"


def test_one_element_per_datum_and_the_counts_on_the_svg() -> None:
    fig = Figure("equity", 7)
    assert fig.line([T0 + i * 60 for i in range(5)], [1, 3, 2, 5, 4], "a", step=True) == 5
    fig.markers([T0, T0 + 120], [2.0, 3.0], "m")
    fig.markers([T0], [2.0], "entries", cls="entry")  # its own class: not a pt
    fig.bars([T0], [T0 + 30], [4.0])
    fig.intervals([T0 + 60], [1.0], [3.0], [2.0], colors=["#000"])
    fig.hline(0.0, "zero")
    fig.vlines([T0 + 90], name="update")
    root = parse(fig.svg())
    assert root.get("data-chart") == "equity" and root.get("data-rows") == "7"
    assert len(with_class(root, "pt")) == 5 + 2 + 1
    assert len(with_class(root, "bar")) == 1
    assert len(with_class(root, "entry")) == 1
    assert int(root.get("data-points")) == fig.points == 5 + 2 + 1 + 1


def test_non_finite_values_are_not_drawn() -> None:
    fig = Figure("gaps", 4, x_time=False)
    assert fig.line([0.0, 1.0, 2.0, 3.0], [1.0, math.nan, 2.0, math.inf]) == 2
    fig.markers([0.0, 1.0], [math.nan, 3.0])
    text = fig.svg()
    assert "nan" not in text.lower() and "inf" not in text.lower()
    assert len(with_class(parse(text), "pt")) == 3


def test_points_lie_inside_the_plot() -> None:
    fig = Figure("x", 3, x_time=False)
    fig.line([0.0, 1.0, 2.0], [-5.0, 0.0, 1e6])
    root = parse(fig.svg())
    for c in with_class(root, "pt"):
        assert 0 <= float(c.get("cx")) <= svg.WIDTH and 0 <= float(c.get("cy")) <= svg.HEIGHT


def test_empty_data_says_why() -> None:
    root = parse(svg.empty("drift", "no drift checks"))
    assert root.get("data-rows") == "0" and root.get("data-points") == "0"
    assert root.get("data-empty") == "true"
    assert "no data: no drift checks" in "".join(root.itertext())
    assert not with_class(root, "pt")
    assert svg.bins([]) == ([], [])
    root = parse(svg.histogram("h", 0, [math.nan], "x"))  # nothing finite: no bars, still valid
    assert not with_class(root, "bar")


def test_a_single_point_still_gets_axes() -> None:
    for x_time in (True, False):
        fig = Figure("one", 1, x_time=x_time)
        fig.line([T0], [1.39])
        root = parse(fig.svg())
        assert len(with_class(root, "pt")) == 1
        assert len(with_class(root, "gridline")) >= 2


def test_downsampling_is_deterministic_exact_and_keeps_extremes() -> None:
    n = 10_000
    xs = [float(i) for i in range(n)]
    ys = [math.sin(i / 300) for i in range(n)]
    ys[4321] = 50.0  # a spike a stride would miss
    keep = svg.downsample(xs, ys)
    assert len(keep) == svg.MAX_POINTS
    assert keep == sorted(set(keep)) and keep[0] == 0 and keep[-1] == n - 1
    assert 4321 in keep
    assert keep == svg.downsample(xs, ys)
    assert svg.downsample(xs[:50], ys[:50]) == list(range(50))
    fig = Figure("long", n, x_time=False)
    assert fig.line(xs, ys) == svg.MAX_POINTS
    assert len(with_class(parse(fig.svg()), "pt")) == svg.MAX_POINTS


def test_time_ticks_within_a_day_and_over_a_month() -> None:
    day = svg.time_ticks(T0 + 3600, T0 + 23 * 3600, 8)
    assert [label for _, label in day] == [
        "03:00",
        "06:00",
        "09:00",
        "12:00",
        "15:00",
        "18:00",
        "21:00",
    ]
    two_days = svg.time_ticks(T0, T0 + 2 * 86400, 8)
    assert ("May 07" in [label for _, label in two_days]) and two_days[0][1] == "May 06"
    month = svg.time_ticks(T0 - 5 * 86400, T0 + 25 * 86400, 7)
    assert len(month) <= 7
    assert all(datetime.fromtimestamp(t, UTC).weekday() == 0 for t, _ in month)  # Mondays
    assert all(re.fullmatch(r"[A-Z][a-z]{2} \d\d", label) for _, label in month)
    for ticks, lo, hi in (
        (day, T0 + 3600, T0 + 23 * 3600),
        (month, T0 - 5 * 86400, T0 + 25 * 86400),
    ):
        times = [t for t, _ in ticks]
        assert times == sorted(times) and lo <= times[0] and times[-1] <= hi


def test_time_axis_labels_do_not_overlap() -> None:
    fig = Figure("t", 2)
    fig.line([T0, T0 + 30 * 86400], [1.0, 2.0])
    root = parse(fig.svg())
    labels = [e for e in root.find(f"{NS}g").iter(f"{NS}text") if e.get("text-anchor") == "middle"]
    xs = sorted(float(e.get("x")) for e in labels)
    widest = max(len(e.text) for e in labels) * svg.CHAR_PX
    assert len(xs) >= 3 and all(b - a >= widest for a, b in pairwise(xs))


def test_number_ticks_and_formats() -> None:
    assert svg.number_ticks(0.0, 10.0, 5) == [0, 2, 4, 6, 8, 10]
    ticks = svg.number_ticks(1.3871, 1.3945, 5)
    assert ticks[0] >= 1.3871 and ticks[-1] <= 1.3945
    assert svg.number_format(ticks)(ticks[0]) == f"{ticks[0]:.3f}"
    assert svg.number_format([0.0, 0.25], percent=True)(0.25) == "25%"
    assert svg.number_format([0.0, 5000.0])(-100000.0) == "−100,000"
    assert svg.number_ticks(0.0, 2.0, 8, min_step=1.0) == [0, 1, 2]
    assert svg.epoch(date(2014, 5, 6)) == T0


def test_histogram_counts_add_up_to_the_finite_values() -> None:
    values = [float(v % 17) for v in range(100)] + [math.inf, math.nan]
    edges, counts = svg.bins(values)
    assert sum(counts) == 100 and len(edges) == len(counts) + 1 == 11
    root = parse(svg.histogram("rl_size", 102, values, "size"))
    bars = with_class(root, "bar")
    assert len(bars) == 10 and sum(int(b.get("data-n")) for b in bars) == 100
    assert svg.bins([3.0, 3.0]) == ([2.85, 3.15], [2])


def test_hbars_cut_long_labels_and_draw_negative_values() -> None:
    long = "validate: time went backwards by N ms beyond QT_MAX_BACKWARDS_MS, per symbol"
    root = parse(svg.hbars("dl", 2, [long, "ok"], [-3.0, 10.0]))
    bars = with_class(root, "bar")
    assert len(bars) == 2 and root.get("data-points") == "2"
    texts = [e.text for e in root.iter(f"{NS}text")]
    assert any(t.endswith("…") and long.startswith(t[:-1]) for t in texts)
    assert long in "".join(root.itertext())  # whole in the tooltip
    zero = float(next(e for e in root.iter(f"{NS}line")).get("x1"))
    neg, pos = bars
    assert float(neg.get("x")) + float(neg.get("width")) <= zero + 0.1 <= float(pos.get("x")) + 1

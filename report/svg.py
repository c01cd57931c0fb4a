"""Chart primitives for the run report, as inline SVG strings: no dependency, no script, works
offline in any browser.

A :class:`Figure` collects marks (lines, steps, markers, bars, intervals, reference lines) in
data units and draws them with axes (time or numbers) fitted to all of them; :func:`hbars` draws
labelled horizontal bars, :func:`histogram` bins values into bars and :func:`empty` says why a
chart has nothing to draw. Every datum drawn is one element with a class (``pt`` for the points
of lines, markers and intervals, ``bar`` for bars; markers can have classes of their own), and
every chart's ``<svg>`` carries ``data-chart`` (its id), ``data-rows`` (the rows of the query
it was drawn from) and ``data-points`` (the data elements drawn), so a test can count them.
Long lines are downsampled to :data:`MAX_POINTS` points (:func:`downsample`). All text is
escaped.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

MAX_POINTS = 2000  # points a line keeps at most (see downsample)
WIDTH, HEIGHT = 640, 280
WIDE = 1280  # the width of a chart that spans the page
FONT_PX = 11
CHAR_PX = 7.0  # mean advance of an 11 px sans-serif character (DejaVu Sans), for fitting labels
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
GOOD, BAD, NEUTRAL = "#2ca02c", "#d62728", "#7f7f7f"

Format = Callable[[float], str]


def esc(text: object) -> str:
    """Text and attribute values escaped for HTML/SVG (quotes included)."""
    return html.escape(str(text), quote=True)


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _n(v: float) -> str:
    """A coordinate, short: one decimal is below a pixel."""
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _title(text: str | None) -> str:
    return f"<title>{esc(text)}</title>" if text else ""


# --- downsampling ---------------------------------------------------------------------------
def downsample(xs: Sequence[float], ys: Sequence[float], limit: int = MAX_POINTS) -> list[int]:
    """Indices of the points to draw: all of them up to ``limit``, otherwise exactly ``limit``
    chosen by largest-triangle-three-buckets (first and last kept; in each of ``limit - 2``
    equal buckets the point making the largest triangle with the previous pick and the next
    bucket's mean). Deterministic, keeps peaks and troughs that a stride would skip."""
    n = len(xs)
    if n <= limit:
        return list(range(n))
    if limit < 3:
        return [0, n - 1][:limit]
    every = (n - 2) / (limit - 2)
    picked = [0]
    a = 0
    for i in range(limit - 2):
        lo, hi = int(i * every) + 1, int((i + 1) * every) + 1
        nlo, nhi = hi, min(int((i + 2) * every) + 1, n)
        mx = sum(xs[nlo:nhi]) / (nhi - nlo)
        my = sum(ys[nlo:nhi]) / (nhi - nlo)
        ax, ay = xs[a], ys[a]
        a = max(
            range(lo, hi), key=lambda j: abs((ax - mx) * (ys[j] - ay) - (ax - xs[j]) * (my - ay))
        )
        picked.append(a)
    picked.append(n - 1)
    return picked


# --- ticks ----------------------------------------------------------------------------------
def nice_step(span: float, target: int) -> float:
    """A 1-2-5 step giving about ``target`` intervals over ``span``."""
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def number_ticks(lo: float, hi: float, target: int = 5, min_step: float = 0.0) -> list[float]:
    """Round ticks between ``lo`` and ``hi``, about ``target`` intervals, at least ``min_step``
    apart."""
    step = max(nice_step(hi - lo, target), min_step)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def number_format(ticks: Sequence[float], percent: bool = False) -> Format:
    """A formatter with just the decimals the ticks' step needs (thousands separated)."""
    scale = 100.0 if percent else 1.0
    step = abs(ticks[1] - ticks[0]) * scale if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    suffix = "%" if percent else ""
    return lambda v: f"{v * scale:,.{decimals}f}{suffix}".replace("-", "−")


_MINUTE, _HOUR, _DAY = 60, 3600, 86400
TIME_STEPS = (
    _MINUTE,
    2 * _MINUTE,
    5 * _MINUTE,
    10 * _MINUTE,
    15 * _MINUTE,
    30 * _MINUTE,
    _HOUR,
    2 * _HOUR,
    3 * _HOUR,
    6 * _HOUR,
    12 * _HOUR,
    _DAY,
    2 * _DAY,
    7 * _DAY,
    14 * _DAY,
    28 * _DAY,
    91 * _DAY,
    364 * _DAY,
)
_MONDAY = 4 * _DAY  # 1970-01-05, the first Monday after the epoch: weeks start on Mondays


def time_ticks(lo: float, hi: float, max_ticks: int = 7) -> list[tuple[float, str]]:
    """Ticks at round UTC times (epoch seconds) between ``lo`` and ``hi``, at most
    ``max_ticks``: labels ``HH:MM`` within a day and ``Mon DD`` at midnight or for steps of a
    day or more."""
    step = next((s for s in TIME_STEPS if (hi - lo) / s < max_ticks), TIME_STEPS[-1])
    origin = _MONDAY if step % (7 * _DAY) == 0 else 0
    t = math.ceil((lo - origin) / step) * step + origin
    out: list[tuple[float, str]] = []
    while t <= hi + 1e-6:
        d = datetime.fromtimestamp(t, UTC)
        daily = step >= _DAY or (d.hour == 0 and d.minute == 0)
        out.append((t, d.strftime("%b %d") if daily else d.strftime("%H:%M")))
        t += step
    return out


def epoch(v: date) -> float:
    """Epoch seconds of a datetime or date from the store (UTC)."""
    if isinstance(v, datetime):
        return v.timestamp()
    return datetime(v.year, v.month, v.day, tzinfo=UTC).timestamp()


# --- scales ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """Maps a data interval onto a pixel interval (either may be reversed)."""

    lo: float
    hi: float
    p0: float
    p1: float

    def __call__(self, v: float) -> float:
        return self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def _domain(
    values: Sequence[float], pad: float, zero: bool, flat: float = 0.0
) -> tuple[float, float]:
    """The values' range, padded; a single value gets +-``flat`` (default: 5% of it, or 1)."""
    vals = [v for v in values if math.isfinite(v)] or [0.0]
    lo, hi = min(vals), max(vals)
    if zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        d = flat or abs(lo) * 0.05 or 1.0
        return lo - d, hi + d
    d = (hi - lo) * pad
    return (lo if zero and lo == 0 else lo - d), (hi if zero and hi == 0 else hi + d)


# --- the figure -----------------------------------------------------------------------------
COUNTED = ("pt", "bar")  # the classes of data elements (data-points)


def _drawable(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points to draw: the finite ones, downsampled."""
    ok = [
        i
        for i, (x, y) in enumerate(zip(xs, ys, strict=True))
        if math.isfinite(x) and math.isfinite(y)
    ]
    return [ok[i] for i in downsample([xs[i] for i in ok], [ys[i] for i in ok])]


def _colors(colors: Sequence[str] | str, n: int) -> tuple[list[str], str]:
    """One colour per item (``colors`` is one for all, or one each) and the legend's."""
    if isinstance(colors, str):
        return [colors or PALETTE[0]] * n, colors or PALETTE[0]
    return list(colors), colors[0] if colors else PALETTE[0]


@dataclass
class _Mark:
    svg: Callable[[Scale, Scale], str]
    xs: list[float]
    ys: list[float]
    count: int = 0
    legend: tuple[str, str, str] | None = None  # (name, colour, shape)


@dataclass
class Figure:
    """A chart with x (time or numbers) and y (numbers) axes, fitted to its marks."""

    chart: str
    rows: int
    x_time: bool = True
    y_label: str = ""
    x_label: str = ""
    y_percent: bool = False
    y_zero: bool = False
    y_domain: tuple[float, float] | None = None
    y_integer: bool = False
    x_span: tuple[float, float] | None = None  # x always covers this (e.g. the run's span)
    x_rotate: bool = False
    x_ticks: list[tuple[float, str]] | None = None
    y_ticks: list[tuple[float, str]] | None = None
    width: int = WIDTH
    height: int = HEIGHT
    marks: list[_Mark] = field(default_factory=list)

    # marks --------------------------------------------------------------------------------
    def line(
        self,
        xs: Sequence[float],
        ys: Sequence[float],
        name: str = "",
        *,
        color: str = "",
        step: bool = False,
        titles: Sequence[str] | None = None,
        width: float = 1.5,
        points: bool = True,
        dashed: bool = False,
        cls: str = "pt",
    ) -> int:
        """A line (``step``: horizontal then vertical, for values that hold until the next
        one) through the finite points, downsampled to :data:`MAX_POINTS`; with ``points``,
        one circle of class ``cls`` per drawn point (``pt``: a datum of the chart; another
        class: context, not counted). Returns the number of points drawn."""
        keep = _drawable(xs, ys)
        px, py = [xs[i] for i in keep], [ys[i] for i in keep]
        tips = [titles[i] for i in keep] if titles is not None else None
        col = color or PALETTE[0]
        r = 2.5 if len(px) <= 60 else 1.6 if len(px) <= 400 else 0.9

        def draw(sx: Scale, sy: Scale) -> str:
            pts = [(sx(x), sy(y)) for x, y in zip(px, py, strict=True)]
            d = []
            for i, (x, y) in enumerate(pts):
                if i == 0:
                    d.append(f"M{_n(x)} {_n(y)}")
                elif step:
                    d.append(f"H{_n(x)}V{_n(y)}")
                else:
                    d.append(f"L{_n(x)} {_n(y)}")
            dash = ' stroke-dasharray="5 3"' if dashed else ""
            out = [
                f'<path class="ln" d="{"".join(d)}" fill="none" stroke="{col}" '
                f'stroke-width="{width}"{dash}/>'
            ]
            if points:
                out += [
                    f'<circle class="{esc(cls)}" cx="{_n(x)}" cy="{_n(y)}" r="{r}" '
                    f'fill="{col}">'
                    f"{_title(tips[i] if tips else None)}</circle>"
                    for i, (x, y) in enumerate(pts)
                ]
            return "".join(out)

        self.marks.append(
            _Mark(
                draw,
                px,
                py,
                len(px) if points and cls in COUNTED else 0,
                (name, col, "line") if name else None,
            )
        )
        return len(px)

    def markers(
        self,
        xs: Sequence[float],
        ys: Sequence[float],
        name: str = "",
        *,
        colors: Sequence[str] | str = "",
        shape: str = "circle",
        titles: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        cls: str = "pt",
        size: float = 4.0,
    ) -> int:
        """One marker per finite point (``circle``, ``up``, ``down``, ``diamond`` or
        ``cross``), with an optional tooltip and a small text label beside it; more than
        :data:`MAX_POINTS` are downsampled like a line."""
        keep = _drawable(xs, ys)
        cols, legend_col = _colors(colors, len(xs))
        cols = [cols[i] for i in keep]
        titles = [titles[i] for i in keep] if titles is not None else None
        labels = [labels[i] for i in keep] if labels is not None else None
        xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]

        def draw(sx: Scale, sy: Scale) -> str:
            out = []
            for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
                body = _shape(shape, sx(x), sy(y), size, cols[i])
                tip = _title(titles[i] if titles else None)
                out.append(f'<g class="{esc(cls)}">{body}{tip}</g>')
                if labels and labels[i]:
                    out.append(
                        f'<text class="lbl" x="{_n(sx(x) + size + 2)}" '
                        f'y="{_n(sy(y) - size - 1)}">{esc(labels[i])}</text>'
                    )
            return "".join(out)

        self.marks.append(
            _Mark(
                draw,
                xs,
                ys,
                len(xs) if cls in COUNTED else 0,
                (name, legend_col, shape) if name and xs else None,
            )
        )
        return len(xs)

    def segments(
        self,
        x0: Sequence[float],
        y0: Sequence[float],
        x1: Sequence[float],
        y1: Sequence[float],
        *,
        color: str = NEUTRAL,
        cls: str = "leg",
    ) -> None:
        """Dashed connectors (e.g. a trade's entry to its exit); not data points."""

        def draw(sx: Scale, sy: Scale) -> str:
            return "".join(
                f'<line class="{esc(cls)}" x1="{_n(sx(a))}" y1="{_n(sy(b))}" x2="{_n(sx(c))}" '
                f'y2="{_n(sy(d))}" stroke="{color}" stroke-dasharray="3 2"/>'
                for a, b, c, d in zip(x0, y0, x1, y1, strict=True)
            )

        self.marks.append(_Mark(draw, [*x0, *x1], [*y0, *y1]))

    def bars(
        self,
        x0: Sequence[float],
        x1: Sequence[float],
        ys: Sequence[float],
        *,
        colors: Sequence[str] | str = "",
        titles: Sequence[str] | None = None,
        name: str = "",
        cls: str = "bar",
        counts: Sequence[int] | None = None,
    ) -> None:
        """Vertical bars from 0 to each y over [x0, x1] (at least 1 px wide); ``counts`` puts
        a ``data-n`` on each bar (a histogram's bin counts)."""
        cols, legend_col = _colors(colors, len(ys))
        x0, x1, ys = list(x0), list(x1), list(ys)

        def draw(sx: Scale, sy: Scale) -> str:
            out = []
            base = sy(0.0)
            for i, y in enumerate(ys):
                left, right = sx(x0[i]), sx(x1[i])
                w = max(right - left, 1.0)
                top = min(sy(y), base)
                h = abs(sy(y) - base)
                n = f' data-n="{counts[i]}"' if counts is not None else ""
                out.append(
                    f'<rect class="{esc(cls)}"{n} x="{_n(left)}" y="{_n(top)}" '
                    f'width="{_n(w)}" height="{_n(h)}" fill="{cols[i]}">'
                    f"{_title(titles[i] if titles else None)}</rect>"
                )
            return "".join(out)

        self.marks.append(
            _Mark(
                draw,
                [*x0, *x1],
                [0.0, *ys],
                len(ys) if cls in COUNTED else 0,
                (name, legend_col, "bar") if name and ys else None,
            )
        )

    def intervals(
        self,
        xs: Sequence[float],
        lo: Sequence[float],
        hi: Sequence[float],
        mid: Sequence[float],
        *,
        colors: Sequence[str] | str = "",
        name: str = "",
        titles: Sequence[str] | None = None,
    ) -> None:
        """A point (``pt``) with its interval as a whisker, per x."""
        xs, lo, hi, mid = list(xs), list(lo), list(hi), list(mid)
        cols, legend_col = _colors(colors, len(xs))

        def draw(sx: Scale, sy: Scale) -> str:
            out = []
            for i, x in enumerate(xs):
                cx = _n(sx(x))
                out.append(
                    f'<g class="pt"><line x1="{cx}" x2="{cx}" y1="{_n(sy(lo[i]))}" '
                    f'y2="{_n(sy(hi[i]))}" stroke="{cols[i]}" stroke-width="1.5"/>'
                    f'<circle cx="{cx}" cy="{_n(sy(mid[i]))}" r="3.5" '
                    f'fill="{cols[i]}"/>{_title(titles[i] if titles else None)}</g>'
                )
            return "".join(out)

        legend = (name, legend_col, "circle") if name and xs else None
        self.marks.append(_Mark(draw, xs, [*lo, *hi, *mid], len(xs), legend))

    def hline(self, y: float, label: str = "", *, color: str = NEUTRAL) -> None:
        """A dashed horizontal reference line (a threshold, zero) with its label."""

        def draw(sx: Scale, sy: Scale) -> str:
            yy = _n(sy(y))
            text = (
                (
                    f'<text class="ref" x="{_n(sx.p1 - 4)}" y="{_n(sy(y) - 3)}" '
                    f'text-anchor="end" fill="{color}">{esc(label)}</text>'
                )
                if label
                else ""
            )
            return (
                f'<line class="rule" x1="{_n(sx.p0)}" x2="{_n(sx.p1)}" y1="{yy}" y2="{yy}" '
                f'stroke="{color}" stroke-dasharray="4 3"/>{text}'
            )

        self.marks.append(_Mark(draw, [], [y]))

    def vlines(
        self,
        xs: Sequence[float],
        *,
        titles: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        color: str = NEUTRAL,
        cls: str = "vl",
        name: str = "",
        width: float = 2.0,
    ) -> None:
        """Vertical event lines across the plot (e.g. policy updates, group boundaries), with
        tooltips and a label at the top."""
        xs = list(xs)

        def draw(sx: Scale, sy: Scale) -> str:
            out = []
            for i, x in enumerate(xs):
                out.append(
                    f'<line class="{esc(cls)}" x1="{_n(sx(x))}" x2="{_n(sx(x))}" '
                    f'y1="{_n(sy.p0)}" y2="{_n(sy.p1)}" stroke="{color}" '
                    f'stroke-width="{width}" stroke-opacity="0.6">'
                    f"{_title(titles[i] if titles else None)}</line>"
                )
                if labels:
                    out.append(
                        f'<text class="lbl" x="{_n(sx(x) + 4)}" y="{_n(sy.p1 + 10)}">'
                        f"{esc(labels[i])}</text>"
                    )
            return "".join(out)

        self.marks.append(_Mark(draw, xs, [], 0, (name, color, "vline") if name and xs else None))

    # rendering ----------------------------------------------------------------------------
    @property
    def points(self) -> int:
        """Data elements drawn (``pt`` and ``bar``), the svg's ``data-points``."""
        return sum(m.count for m in self.marks)

    def svg(self) -> str:
        legend = [m.legend for m in self.marks if m.legend]
        legend_rows = _legend_rows(legend, self.width - 80)
        top = 14 + 16 * len(legend_rows)
        bottom: float = 34 + (14 if self.x_label else 0)
        if self.x_rotate and self.x_ticks:  # labels at 40 degrees: sin(40) of their length
            bottom += 0.64 * max(_label_px(s) for _, s in self.x_ticks) - 12
        xs = [x for m in self.marks for x in m.xs] + list(self.x_span or ())
        ys = [y for m in self.marks for y in m.ys]
        ylo, yhi = self.y_domain or _domain(ys, 0.06, self.y_zero)
        sy = Scale(ylo, yhi, self.height - bottom, top)
        yt = (
            self.y_ticks if self.y_ticks is not None else _fit_y(sy, self.y_percent, self.y_integer)
        )
        left = max(40.0, max((_label_px(s) for _, s in yt), default=0.0) + 6)
        left += 16 if self.y_label else 0
        xlo, xhi = _domain(xs, 0.02, False, _HOUR if self.x_time else 0.0)
        sx = Scale(xlo, xhi, left, self.width - 14)
        plot_w = sx.p1 - sx.p0
        if self.x_ticks is not None:
            xt = _thin(self.x_ticks, sx, 14.0 if self.x_rotate else None)
        elif self.x_time:
            xt = _fit_time(sx.lo, sx.hi, plot_w)
        else:
            xt = _fit_numbers(sx.lo, sx.hi, plot_w)
        return "".join(
            [
                _open(self.chart, self.rows, self.points, self.width, self.height),
                self._axes(sx, sy, xt, yt),
                *(m.svg(sx, sy) for m in self.marks),
                _legend(legend_rows, left, 14),
                "</svg>",
            ]
        )

    def _axes(
        self, sx: Scale, sy: Scale, xt: list[tuple[float, str]], yt: list[tuple[float, str]]
    ) -> str:
        out = ['<g class="axes">']
        for t, label in yt:
            y = _n(sy(t))
            out.append(
                f'<line class="gridline" x1="{_n(sx.p0)}" x2="{_n(sx.p1)}" y1="{y}" '
                f'y2="{y}"/><text x="{_n(sx.p0 - 6)}" y="{y}" dy="0.32em" text-anchor="end">'
                f"{esc(label)}</text>"
            )
        base = _n(sy.p0)
        out.append(
            f'<line class="axis" x1="{_n(sx.p0)}" x2="{_n(sx.p1)}" y1="{base}" y2="{base}"/>'
        )
        for t, label in xt:
            x = _n(sx(t))
            out.append(f'<line class="axis" x1="{x}" x2="{x}" y1="{base}" y2="{_n(sy.p0 + 4)}"/>')
            if self.x_rotate:
                ty = _n(sy.p0 + 10)
                out.append(
                    f'<text x="{x}" y="{ty}" dy="0.32em" text-anchor="end" '
                    f'transform="rotate(-40 {x} {ty})">{esc(label)}</text>'
                )
            else:
                out.append(
                    f'<text x="{x}" y="{_n(sy.p0 + 16)}" text-anchor="middle">{esc(label)}</text>'
                )
        if self.x_label:
            out.append(
                f'<text x="{_n(sx.p1)}" y="{_n(sy.p0 + 30)}" text-anchor="end">'
                f"{esc(self.x_label)}</text>"
            )
        if self.y_label:
            mid = _n((sy.p0 + sy.p1) / 2)
            out.append(
                f'<text x="10" y="{mid}" dy="0.32em" text-anchor="middle" '
                f'transform="rotate(-90 10 {mid})">{esc(self.y_label)}</text>'
            )
        out.append("</g>")
        return "".join(out)


def _fit_y(sy: Scale, percent: bool, integer: bool) -> list[tuple[float, str]]:
    """About one number tick per 36 px of height (whole numbers only: ``integer``)."""
    ticks = number_ticks(sy.lo, sy.hi, max(2, int((sy.p0 - sy.p1) / 36)), 1.0 if integer else 0.0)
    fmt = number_format(ticks, percent)
    return [(t, fmt(t)) for t in ticks]


def _label_px(label: str) -> float:
    return len(label) * CHAR_PX + 10


def _fit_time(lo: float, hi: float, plot_w: float) -> list[tuple[float, str]]:
    """Time ticks as many as fit without their labels overlapping."""
    for n in range(9, 1, -1):
        ticks = time_ticks(lo, hi, n)
        widest = max((_label_px(label) for _, label in ticks), default=0.0)
        if len(ticks) * widest <= plot_w:
            return ticks
    return time_ticks(lo, hi, 2)


def _fit_numbers(lo: float, hi: float, plot_w: float) -> list[tuple[float, str]]:
    """Number ticks as many as fit without their labels overlapping."""
    for n in range(8, 1, -1):
        ticks = number_ticks(lo, hi, n)
        fmt = number_format(ticks)
        labels = [(t, fmt(t)) for t in ticks]
        if len(labels) * max(_label_px(s) for _, s in labels) <= plot_w:
            return labels
    return []


def _thin(
    ticks: list[tuple[float, str]], sx: Scale, slot: float | None = None
) -> list[tuple[float, str]]:
    """The given ticks, left to right, skipping any whose label would overlap the last one
    kept (a label needs ``slot`` px, default its width)."""
    kept: list[tuple[float, str]] = []
    for t, label in sorted(ticks):
        if not kept or sx(t) - sx(kept[-1][0]) >= (
            slot or (_label_px(label) + _label_px(kept[-1][1])) / 2
        ):
            kept.append((t, label))
    return kept


def _shape(shape: str, x: float, y: float, s: float, col: str) -> str:
    if shape == "up":
        return (
            f'<path d="M{_n(x)} {_n(y - s)}L{_n(x + s)} {_n(y + s * 0.8)}'
            f'L{_n(x - s)} {_n(y + s * 0.8)}Z" fill="{col}"/>'
        )
    if shape == "down":
        return (
            f'<path d="M{_n(x)} {_n(y + s)}L{_n(x + s)} {_n(y - s * 0.8)}'
            f'L{_n(x - s)} {_n(y - s * 0.8)}Z" fill="{col}"/>'
        )
    if shape == "diamond":
        return (
            f'<path d="M{_n(x)} {_n(y - s)}L{_n(x + s)} {_n(y)}L{_n(x)} {_n(y + s)}'
            f'L{_n(x - s)} {_n(y)}Z" fill="{col}"/>'
        )
    if shape == "cross":
        return (
            f'<path d="M{_n(x - s)} {_n(y - s)}L{_n(x + s)} {_n(y + s)}M{_n(x - s)} '
            f'{_n(y + s)}L{_n(x + s)} {_n(y - s)}" stroke="{col}" stroke-width="2"/>'
        )
    return f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{_n(s)}" fill="{col}" fill-opacity="0.85"/>'


def _legend_rows(items: list[tuple[str, str, str]], width: float) -> list[list]:
    rows: list[list] = []
    used = width + 1
    for item in items:
        w = 22 + len(item[0]) * CHAR_PX + 14
        if used + w > width:
            rows.append([])
            used = 0
        rows[-1].append(item)
        used += w
    return rows


def _legend(rows: list[list], left: float, top: float) -> str:
    out = ['<g class="legend">']
    for r, items in enumerate(rows):
        x, y = left, top + 16 * r
        for name, col, shape in items:
            if shape in ("line", "vline"):
                sw = (
                    f'<line x1="{_n(x)}" x2="{_n(x + 16)}" y1="{_n(y - 4)}" y2="{_n(y - 4)}" '
                    f'stroke="{col}" stroke-width="2.5"/>'
                )
            elif shape == "bar":
                sw = f'<rect x="{_n(x + 3)}" y="{_n(y - 9)}" width="10" height="10" fill="{col}"/>'
            else:
                sw = _shape(shape, x + 8, y - 4, 4.5, col)
            out.append(f'{sw}<text x="{_n(x + 21)}" y="{_n(y)}">{esc(name)}</text>')
            x += 22 + len(name) * CHAR_PX + 14
    out.append("</g>")
    return "".join(out)


def _open(chart: str, rows: int, points: int, width: int, height: int, extra: str = "") -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{esc(chart)}" '
        f'data-rows="{rows}" data-points="{points}"{extra} viewBox="0 0 {width} {height}" '
        f'role="img" font-size="{FONT_PX}">'
    )


# --- whole charts ---------------------------------------------------------------------------
def empty(chart: str, why: str, width: int = WIDTH, height: int = 120) -> str:
    """The chart's place, saying ``no data: <why>`` (wrapped to the width) instead of a blank
    plot."""
    lines = textwrap.wrap(f"no data: {why}", int((width - 40) / (CHAR_PX * 13 / FONT_PX)))
    first = height / 2 - 9 * (len(lines) - 1)
    spans = "".join(
        f'<tspan x="{_n(width / 2)}" y="{_n(first + 18 * i)}">{esc(line)}</tspan>'
        for i, line in enumerate(lines)
    )
    return (
        _open(chart, 0, 0, width, height, ' data-empty="true"')
        + f'<rect class="nodata-box" x="1" y="1" width="{width - 2}" height="{height - 2}" '
        f'rx="6"/><text class="nodata" text-anchor="middle" dy="0.32em">{spans}</text></svg>'
    )


def hbars(
    chart: str,
    rows: int,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    titles: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    fmt: Format = lambda v: f"{v:,.0f}",
    width: int = WIDTH,
) -> str:
    """Labelled horizontal bars, one ``bar`` per value (negative values to the left of a zero
    line), each with its value at its end; labels longer than 45% of the width are cut
    with an ellipsis (the tooltip has them whole)."""
    max_chars = int(width * 0.45 / CHAR_PX)
    shown = [s if len(s) <= max_chars else s[: max_chars - 1] + "…" for s in labels]
    left = 12 + max(len(s) for s in shown) * CHAR_PX
    value_px = 12 + max(len(fmt(v)) for v in values) * CHAR_PX
    lo, hi = min(0.0, *values), max(0.0, *values)
    hi = hi if hi > lo else lo + 1.0
    sx = Scale(lo, hi, left + (value_px if lo < 0 else 0), width - value_px)
    bar_h, gap = 16, 6
    height = 12 + len(values) * (bar_h + gap)
    cols = colors or [PALETTE[0]] * len(values)
    out = [_open(chart, rows, len(values), width, height)]
    zero = _n(sx(0.0))
    for i, v in enumerate(values):
        y = 8 + i * (bar_h + gap)
        a, b = sorted((sx(0.0), sx(v)))
        end = f'<text x="{_n(b + 4)}"' if v >= 0 else f'<text x="{_n(a - 4)}" text-anchor="end"'
        tip = titles[i] if titles else f"{labels[i]}: {fmt(v)}"
        out.append(
            f'<text x="{_n(left - 6)}" y="{_n(y + bar_h / 2)}" dy="0.32em" '
            f'text-anchor="end">{esc(shown[i])}</text>'
            f'<rect class="bar" x="{_n(a)}" y="{y}" width="{_n(max(b - a, 1.0))}" '
            f'height="{bar_h}" fill="{cols[i]}">{_title(tip)}</rect>'
            f'{end} y="{_n(y + bar_h / 2)}" dy="0.32em">{esc(fmt(v))}</text>'
        )
    out.append(f'<line class="axis" x1="{zero}" x2="{zero}" y1="4" y2="{height - 4}"/></svg>')
    return "".join(out)


def bins(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Equal-width bins over the finite values: ceil(sqrt(n)) of them, between 5 and 30, or
    one for a single distinct value. Returns (edges, counts); counts add up to the finite
    values."""
    vals = sorted(v for v in values if math.isfinite(v))
    if not vals:
        return [], []
    lo, hi = vals[0], vals[-1]
    if hi == lo:
        d = abs(lo) * 0.05 or 0.5
        return [lo - d, hi + d], [len(vals)]
    k = min(30, max(5, math.ceil(math.sqrt(len(vals)))))
    width = (hi - lo) / k
    counts = [0] * k
    for v in vals:
        counts[min(int((v - lo) / width), k - 1)] += 1
    return [lo + i * width for i in range(k + 1)], counts


def histogram(
    chart: str,
    rows: int,
    values: Sequence[float],
    x_label: str,
    *,
    fmt: Format = lambda v: f"{v:,.4g}",
    color: str = PALETTE[0],
) -> str:
    """The distribution of ``values`` as bars (one ``bar`` per bin, with its count in
    ``data-n``); non-finite values are not counted."""
    edges, counts = bins(values)
    fig = Figure(
        chart, rows, x_time=False, y_zero=True, y_integer=True, x_label=x_label, y_label="trades"
    )
    fig.bars(
        edges[:-1],
        edges[1:],
        counts,
        colors=color,
        counts=counts,
        titles=[
            f"{fmt(a)} to {fmt(b)}: {c}" for a, b, c in zip(edges, edges[1:], counts, strict=False)
        ],
    )
    return fig.svg()

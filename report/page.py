"""The report's HTML page: a title block with the run's key figures, a table of contents and
the charts in a responsive grid, with the stylesheet inline (no script, no network)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from report.svg import esc


@dataclass(frozen=True)
class Chart:
    """One chart: its anchor id, title, one-line caption, inline SVG and the analytics query
    it was drawn from (``python -m cli.analytics <query>`` shows the same rows)."""

    id: str
    title: str
    caption: str
    svg: str
    query: str
    params: tuple[tuple[str, object], ...] = ()
    wide: bool = False

    @property
    def command(self) -> str:
        """The command that prints the chart's rows."""
        args = "".join(f" --param {shlex.quote(f'{k}={v}')}" for k, v in self.params)
        return f"python -m cli.analytics {self.query}{args}"


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    charts: list[Chart]


CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #dcdfe3; --bg: #f5f6f8; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 20px 28px 16px; }
h1 { margin: 0; font-size: 22px; }
.span { margin: 2px 0 0; color: var(--muted); }
.kpis { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 8px;
        margin: 14px 0 0; }
.kpi { background: var(--bg); border: 1px solid var(--line); border-radius: 6px;
       padding: 6px 10px; margin: 0; }
.kpi dt { font-size: 12px; color: var(--muted); }
.kpi dd { margin: 0; font-size: 16px; font-weight: 600; overflow-wrap: anywhere; }
.meta { margin: 10px 0 0; font-size: 12px; color: var(--muted); }
nav.toc { padding: 12px 28px; background: #fff; border-bottom: 1px solid var(--line); }
nav.toc ol { margin: 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap;
             gap: 4px 22px; }
nav.toc li ol { display: inline; }
nav.toc li ol li { display: inline; margin-left: 8px; }
nav.toc a { color: #1a5fb4; text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
nav.toc > ol > li > a { font-weight: 600; }
main { padding: 4px 28px 28px; }
h2 { font-size: 18px; margin: 22px 0 10px; }
.grid { display: grid; gap: 16px; align-items: start;
        grid-template-columns: repeat(auto-fill, minmax(min(100%, 540px), 1fr)); }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px;
         padding: 12px 14px 10px; min-width: 0; }
figure.wide { grid-column: 1 / -1; }
figure h3 { margin: 0 0 6px; font-size: 15px; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 6px; }
figcaption code { font-size: 11.5px; color: #80868b; }
svg.chart { display: block; width: 100%; height: auto; }
svg.chart text { fill: #3c4043; font-family: inherit; }
svg.chart .gridline { stroke: #eceef1; }
svg.chart .axis { stroke: #9aa0a6; }
svg.chart .lbl, svg.chart .ref { font-size: 10px; }
svg.chart .nodata-box { fill: #fafbfc; stroke: #c4c7cc; stroke-dasharray: 4 3; }
svg.chart text.nodata { fill: #80868b; font-size: 13px; }
svg.chart g.pt:hover, svg.chart g.entry:hover, svg.chart g.exit:hover,
svg.chart rect:hover { opacity: 0.7; }
"""


def render_page(
    title: str, span: str, kpis: list[tuple[str, str]], meta: str, sections: list[Section]
) -> str:
    """The whole document; every text is escaped, every SVG is inlined."""
    toc = "".join(
        f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a><ol>'
        + "".join(f'<li><a href="#chart-{esc(c.id)}">{esc(c.title)}</a></li>' for c in s.charts)
        + "</ol></li>"
        for s in sections
    )
    body = "".join(
        f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2><div class="grid">'
        + "".join(_figure(c) for c in s.charts)
        + "</div></section>"
        for s in sections
    )
    cards = "".join(f'<div class="kpi"><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>' for k, v in kpis)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><p class="span">{esc(span)}</p>'
        f'<dl class="kpis">{cards}</dl><p class="meta">{esc(meta)}</p></header>'
        f'<nav class="toc" aria-label="contents"><ol>{toc}</ol></nav>'
        f"<main>{body}</main></body></html>\n"
    )


def _figure(c: Chart) -> str:
    wide = ' class="wide"' if c.wide else ""
    return (
        f'<figure id="chart-{esc(c.id)}"{wide}><h3>{esc(c.title)}</h3>{c.svg}'
        f"<figcaption>{esc(c.caption)} <code>{esc(c.command)}</code></figcaption></figure>"
    )

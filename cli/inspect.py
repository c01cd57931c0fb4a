"""What a replay would read, without running it: ``python -m cli.inspect FILES...``

For each file: the detected layout and why (:mod:`connectors.layouts`), and its rows. For each
replay partition (files that share a symbol are merged into one, as in the flow): the symbols
and their ticks, the time span of the ticks, how many rows would be dead letters and why
(with an example each), and the first rows as the flow sees them after decoding, each with
its fate. The rows are decoded by the replay source and judged by the flow's own validation
(:class:`operators.validate.TickValidator`, per partition, with ``QT_SYMBOLS`` and
``QT_MAX_BACKWARDS_MS``), as plain Python: one pass over each file (detection reads only its
first lines; several files whose symbols are in a column get one more pass over that column,
to group them as the flow does), nothing is written.
``QT_SYMBOL_PREFIX``, ``QT_TICKS_COLUMNS``, ``QT_TICKS_TS_UNIT`` and ``QT_CANDLE_SECONDS``
apply as in a run.

FILES: files, globs, or comma-separated lists of them (the ``QT_TICKS`` file forms).
"""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import errors
from connectors.layouts.base import FileLayout, LayoutOptions
from connectors.replay import ReplaySource, expand_paths, file_layout
from operators.validate import TickValidator
from schemas.ticks import TickRows
from schemas.timeutil import from_ms, iso
from settings import Settings

errors.install()  # a user error is one line, not a traceback (errors.py)

_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T[\d:.]+Z")
_QUOTED = re.compile(r"'[^']*'")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def reason_kind(reason: str) -> str:
    """A dead letter's reason without its particulars (times, quoted values, numbers), so
    that ``time went backwards by 40 ms`` and ``... by 7 ms`` count together."""
    return _NUMBER.sub("N", _QUOTED.sub("'…'", _TIME.sub("<time>", reason)))


@dataclass
class Reason:
    """Dead letters of one kind: how many, and the first one in full."""

    count: int
    example: str  # the first one's reason
    where: str  # file:row
    raw: str


@dataclass
class FirstRow:
    """One of the first rows of a partition, decoded, and what became of it."""

    where: str
    key: tuple[str, int]
    text: str  # the decoded tick, or the raw input of a row that did not decode
    fate: str = "tick"


@dataclass
class FileReport:
    path: Path
    layout: FileLayout
    rows: int = 0
    dead: int = 0


@dataclass
class PartitionReport:
    name: str
    files: list[FileReport]
    symbols: Counter[str] = field(default_factory=Counter)
    first_ms: int | None = None
    last_ms: int | None = None
    reasons: dict[str, Reason] = field(default_factory=dict)
    first_rows: list[FirstRow] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def dead(self) -> int:
        return sum(r.count for r in self.reasons.values())


def _num(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def describe_row(rows: TickRows, i: int) -> str:
    """Row ``i`` as the flow sees it after decoding (its input when it did not decode)."""
    if i in rows.errors:
        return f"not decoded: {rows.raw([i])[0][:100]!r}"
    t = rows.tick(i)
    parts = [iso(t.ts), t.symbol, t.origin.value]
    if not math.isnan(t.open):
        parts.append(
            f"open={_num(t.open)} high={_num(t.high)} low={_num(t.low)} close={_num(t.price)}"
        )
    elif not math.isnan(t.bid) or not math.isnan(t.ask):
        parts.append(f"bid={_num(t.bid)} ask={_num(t.ask)} mid={_num(t.price)}")
    else:
        parts.append(f"price={_num(t.price)}")
    if not math.isnan(t.size):
        parts.append(f"size={_num(t.size)}")
    if t.side.value:
        parts.append(f"side={t.side.value}")
    return " ".join(parts)


def inspect(paths: Sequence[Path], settings: Settings, first: int = 5) -> list[PartitionReport]:
    """Decode and validate ``paths`` as a replay would (see the module docstring)."""
    options = LayoutOptions.from_settings(settings)
    layouts = {p: file_layout(p, options) for p in paths}
    source = ReplaySource(
        paths, settings.candle_seconds, settings.replay_block_bytes, layouts=options
    )
    reports = []
    for name, group in source.groups().items():
        files = {p.name: FileReport(p, layouts[p]) for p in group}
        report = PartitionReport(name, list(files.values()))
        validator = TickValidator(settings.max_backwards_ms, frozenset(settings.symbols))
        part = source.build_part("inspect", name, None)
        while True:
            try:
                blocks = part.next_batch()
            except StopIteration:
                break
            for rows in blocks:
                _count_rows(rows, files, report, first)
                _count_outcome(validator.validate(rows), files, report)
        reports.append(report)
    return reports


def _count_rows(
    rows: TickRows, files: dict[str, FileReport], report: PartitionReport, first: int
) -> None:
    if len(rows):
        for k, n in zip(*np.unique(rows.src, return_counts=True), strict=True):
            files[rows.sources[int(k)]].rows += int(n)
    for src, *_ in rows.extra_dead:
        files[src].rows += 1
    for i in range(min(len(rows), first - len(report.first_rows))):
        src, row = rows.sources[int(rows.src[i])], int(rows.row_no[i])
        report.first_rows.append(FirstRow(f"{src}:{row}", (src, row), describe_row(rows, i)))


def _count_outcome(validated, files: dict[str, FileReport], report: PartitionReport) -> None:
    for symbol, batch in validated.batches.items():
        report.symbols[symbol] += len(batch)
        lo, hi = int(batch.ts_ms.min()), int(batch.ts_ms.max())
        report.first_ms = lo if report.first_ms is None else min(report.first_ms, lo)
        report.last_ms = hi if report.last_ms is None else max(report.last_ms, hi)
    wanted = {r.key: r for r in report.first_rows if r.fate == "tick"}
    dead = validated.dead
    for src, row, reason, raw in zip(dead.source, dead.row, dead.reason, dead.raw, strict=True):
        files[src].dead += 1
        kind = reason_kind(reason)
        seen = report.reasons.get(kind)
        if seen is None:
            report.reasons[kind] = Reason(1, reason, f"{src}:{row}", raw)
        else:
            seen.count += 1
        hit = wanted.get((src, row))
        if hit is not None:
            hit.fate = f"dead letter: {reason}"


def render(reports: Sequence[PartitionReport]) -> str:
    out: list[str] = []
    for rep in reports:
        if len(rep.files) > 1:
            out.append(
                f"== replay partition: {len(rep.files)} files sharing symbols, merged "
                "in event time =="
            )
        for f in rep.files:
            layout = f.layout
            read_as = "" if layout.convert is None else f" (read as {layout.origin.value}s)"
            length = "" if layout.candle_ms is None else f", candles of {layout.candle_ms:,} ms"
            out += [
                f"{f.path}",
                f"  layout        {layout.name}{read_as}{length}",
                f"  detected by   {layout.why}",
                f"  rows          {f.rows:,} ({f.rows - f.dead:,} ticks, {f.dead:,} dead letters)",
            ]
        ticks = sum(rep.symbols.values())
        if len(rep.files) > 1:
            out.append(
                f"  all files     {rep.rows:,} rows, {ticks:,} ticks, {rep.dead:,} dead letters"
            )
        out.append(
            "  symbols       "
            + (", ".join(f"{s} ({n:,} ticks)" for s, n in sorted(rep.symbols.items())) or "none")
        )
        if rep.first_ms is not None and rep.last_ms is not None:
            out.append(
                f"  time span     {iso(from_ms(rep.first_ms))} .. "
                f"{iso(from_ms(rep.last_ms))} (event times of the ticks)"
            )
        if rep.reasons:
            out.append(f"  dead letters  {rep.dead:,}, by reason:")
            for kind, r in sorted(rep.reasons.items(), key=lambda kv: -kv[1].count):
                out.append(f"    {r.count:>12,}  {kind}")
                out.append(f"    {'':>12}  e.g. {r.where}: {r.example[:100]} | raw: {r.raw[:80]!r}")
        else:
            out.append("  dead letters  none")
        if rep.first_rows:
            out.append("  first rows    (decoded, as the flow sees them)")
            for row in rep.first_rows:
                out.append(f"    {row.where}  {row.text}  -> {row.fate}")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cli.inspect", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="files, globs or comma-separated lists of them")
    ap.add_argument("--first", type=int, default=5, help="first rows to show (default 5)")
    args = ap.parse_args(argv)
    paths = expand_paths(",".join(args.files))
    print(render(inspect(paths, Settings.from_env(), max(0, args.first))))


if __name__ == "__main__":
    main()

"""Bad inputs, as a new user meets them.

Every unusable input or environment problem ends the live flow (``python -m bytewax.run
dataflows.live``) with exit status 2 and one line, ``error: <message>``, that names the file,
setting or path and says what to do; no traceback unless ``QT_DEBUG=1``. Row-level problems
stay dead letters with a reason, and do not move any clock. The error table runs the flow as a
subprocess (the exit path is what matters); the row table runs the plain-Python stages on tiny
files built from real quotes, and one flow run checks the same rows end to end.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.replay import ReplaySource
from operators.validate import PRICE_RANGE, TickValidator
from schemas.dead_letters import RejectedAt
from settings import PROJECT_ROOT

QUOTES = "quotes/truefx_USDJPY_2013-01-01_quotes.csv.gz"  # 1,000 TRUEFX:USDJPY quotes
OTHER = "quotes/histdata_EURUSD_2020-01-01_quotes.csv.gz"  # 9,500 HISTDATA:EURUSD quotes
HEADER = "ts,symbol,bid,ask,bid_size,ask_size"


def _env(home: Path, registry: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    return {
        **env,
        "QT_HOME": str(home),
        "QT_REGISTRY_DIR": str(registry),
        "QT_LEARNING": "false",
        **extra,
    }


def _python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _live(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _python(["bytewax.run", "dataflows.live"], env)


@pytest.fixture(scope="module")
def real_rows(shared_data: Path) -> list[str]:
    """Real TRUEFX:USDJPY quote lines (not crossed), in time order."""
    lines = gzip.decompress((shared_data / QUOTES).read_bytes()).decode().splitlines()[1:]
    return [x for x in lines if float(x.split(",")[2]) < float(x.split(",")[3])]


# --- unusable inputs and environments: one line, exit status 2 ------------------------------

Setup = Callable[[Path, Path], tuple[dict[str, str], str]]


# Tick file problems are found before a first run's bootstrap: an empty registry (which would
# train for half a minute and print its progress first) shows it.
def _ticks(name: str, content: bytes) -> Setup:
    def setup(tmp: Path, registry: Path) -> tuple[dict[str, str], str]:
        path = tmp / name
        path.write_bytes(content)
        return {"QT_TICKS": str(path), "QT_REGISTRY_DIR": str(tmp / "empty")}, str(path)

    return setup


def _missing(tmp: Path, registry: Path) -> tuple[dict[str, str], str]:
    return (
        {"QT_TICKS": str(tmp / "nope.csv"), "QT_REGISTRY_DIR": str(tmp / "empty")},
        f"QT_TICKS: no file matches {tmp / 'nope.csv'}",
    )


def _unwritable_home(tmp: Path, registry: Path) -> tuple[dict[str, str], str]:
    (tmp / "a_file").write_text("")
    home = tmp / "a_file" / "home"  # through a regular file: no directory can be made there
    if os.geteuid() != 0:  # (root writes through permissions)
        home = tmp / "read_only"
        home.mkdir(mode=0o555)
    return {"QT_HOME": str(home)}, f"QT_HOME={home}: the embedded store"


def _stages_missing(tmp: Path, registry: Path) -> tuple[dict[str, str], str]:
    copy = tmp / "registry"
    shutil.copytree(registry, copy)
    (copy / "xgboost" / "stages.json").unlink()
    return {"QT_REGISTRY_DIR": str(copy)}, (
        f"model registry {copy / 'xgboost'}: stages.json is missing but version v0001 exists; "
        "restore it from a backup, or rebuild it from the model_registry table with: "
        "python -m cli.registry repair"
    )


def _bad_setting(tmp: Path, registry: Path) -> tuple[dict[str, str], str]:
    return {"QT_BAR_SECONDS": "zero"}, "QT_BAR_SECONDS='zero': expected int"


ERRORS: list[tuple[str, Setup, str]] = [
    ("missing path", _missing, ""),
    (
        "empty file",
        _ticks("empty.csv", b""),
        ": the file is empty (no header line); expected "
        "the header of a trades, quotes or candles file",
    ),
    (
        "unknown header",
        _ticks("other.csv", b"time,sym,px\n1,2,3\n"),
        ": unrecognised header 'time,sym,px'; expected the header of a trades, quotes or candles",
    ),
    (
        "binary file named .csv.gz",
        _ticks("binary.csv.gz", bytes(range(256)) * 16),
        ": not gzip-compressed (the name ends in .gz but the content does not start with the gzip "
        "signature); give a gzip-compressed CSV",
    ),
    ("QT_HOME not writable", _unwritable_home, "cannot be written"),
    ("registry without stages.json", _stages_missing, ""),
    ("broken setting", _bad_setting, ""),
]


@pytest.mark.parametrize(("case", "setup", "says"), ERRORS, ids=[e[0] for e in ERRORS])
def test_unusable_input_is_one_line(
    case: str, setup: Setup, says: str, tmp_path: Path, trained_registry: Path
) -> None:
    extra, names = setup(tmp_path, trained_registry)
    env = _env(tmp_path / "home", trained_registry, **extra)
    proc = _live(env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(lines) <= 2, proc.stderr
    assert lines[-1].startswith(f"error: {names}") and says in lines[-1], lines[-1]


def test_a_second_flow_on_the_same_home_is_one_line(tmp_path: Path, trained_registry: Path) -> None:
    """chDB locks ``<QT_HOME>/clickhouse/status`` while a flow runs: hold that lock here."""
    home = tmp_path / "home"
    status = home / "clickhouse" / "status"
    status.parent.mkdir(parents=True)
    status.write_text(f"PID: {os.getpid()}\nStarted at: 2026-01-01 00:00:00\nRevision: 1\n")
    fd = os.open(status, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = _live(_env(home, trained_registry))
    finally:
        os.close(fd)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: QT_HOME={home}: the embedded store {status.parent} is in use by another "
        f"process (pid {os.getpid()}, started 2026-01-01 00:00:00); chDB allows one process per "
        "store: wait for that run to end (or stop it), or give this run its own QT_HOME"
    )


def test_qt_debug_keeps_the_traceback(tmp_path: Path, trained_registry: Path) -> None:
    env = _env(
        tmp_path / "home", trained_registry, QT_TICKS=str(tmp_path / "nope.csv"), QT_DEBUG="1"
    )
    proc = _live(env)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "MissingInputError: QT_TICKS: no file" in proc.stderr


def test_settings_never_print_a_password(tmp_path: Path, trained_registry: Path) -> None:
    env = _env(
        tmp_path / "home",
        trained_registry,
        QT_CLICKHOUSE_URL="http://default:s3cret@db:8123/qt",
        QT_TRADE_EVENTS="kafka://bob:hunter2@broker:9092/trade-events",
    )
    proc = _python(["cli.settings", "--env"], env)
    assert proc.returncode == 0
    assert "s3cret" not in proc.stdout and "hunter2" not in proc.stdout
    assert "QT_CLICKHOUSE_URL=http://default:***@db:8123/qt" in proc.stdout
    assert "QT_TRADE_EVENTS=kafka://bob:***@broker:9092/trade-events" in proc.stdout


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://default:s3cret@db:8123/qt", "http://default:***@db:8123/qt"),
        ("http://default:@db:8123/qt", "http://default:***@db:8123/qt"),
        ("kafka://token@k1:9092,k2:9092/t", "kafka://***@k1:9092,k2:9092/t"),
        ("https://u:p@ss@db/qt", "https://u:***@db/qt"),  # an unescaped @ in the password
        (
            "kafka://k:9092/t?sasl.password=x&tail=false",
            "kafka://k:9092/t?sasl.password=***&tail=false",
        ),
        ("/data/ticks.csv.gz", "/data/ticks.csv.gz"),
    ],
)
def test_one_redaction_helper(text: str, shown: str) -> None:
    from errors import redact

    assert redact(f"QT_X={text} failed") == f"QT_X={shown} failed"


def test_a_user_error_inside_a_bytewax_step_is_found_in_the_chain(tmp_path: Path) -> None:
    """Bytewax wraps what a step raises in its own errors (``__cause__``): the hook finds it."""
    (tmp_path / "flow_with_user_error.py").write_text(
        "import bytewax.operators as op\n"
        "from bytewax.dataflow import Dataflow\n"
        "from bytewax.testing import TestingSink, TestingSource\n"
        "import errors\n"
        "errors.install()\n"
        "def step(x):\n"
        "    raise errors.UserError(f'{x}: cannot be used; do this instead')\n"
        "flow = Dataflow('f')\n"
        "op.output('out', op.map('m', op.input('in', flow, TestingSource(['thing'])), step),\n"
        "          TestingSink([]))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{PROJECT_ROOT}"}
    env.pop("QT_DEBUG", None)
    proc = _python(["bytewax.run", "flow_with_user_error"], env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "error: thing: cannot be used; do this instead"


def test_a_bug_keeps_its_traceback_with_credentials_redacted() -> None:
    code = (
        "import logging\nimport errors\nerrors.install()\n"
        "logging.getLogger('x').warning('to %s', 'http://u:pw1@h/db')\n"
        "raise RuntimeError('http://u:pw2@h/db')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "QT_DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "pw1" not in proc.stderr and "pw2" not in proc.stderr
    assert "to http://u:***@h/db" in proc.stderr
    assert "RuntimeError: http://u:***@h/db" in proc.stderr


# --- row-level problems: dead letters with a reason, every clock unmoved ---------------------

ROWS: list[tuple[str, str, RejectedAt, str]] = [
    (
        "time at the end of the calendar",
        "9999-12-31T23:59:59.999Z,{sym},86.7,86.8,,",
        RejectedAt.VALIDATE,
        "time outside the sane range: 9999-12-31T23:59:59.999Z is more than 1 day "
        "after the wall clock",
    ),
    (
        "time far in the future",
        "9999-06-01T00:00:00.000Z,{sym},86.7,86.8,,",
        RejectedAt.VALIDATE,
        "time outside the sane range: 9999-06-01T00:00:00.000Z is more than 1 day after the wall "
        "clock",
    ),
    (
        "time before 1990",
        "1989-12-31T23:59:59.000Z,{sym},86.7,86.8,,",
        RejectedAt.VALIDATE,
        "time outside the sane range: 1989-12-31T23:59:59.000Z is before 1990-01-01",
    ),
    (
        "time jumping years ahead",
        "2020-01-01T00:00:00.000Z,{sym},86.7,86.8,,",
        RejectedAt.ORDER,
        "time jumped ahead: 2020-01-01T00:00:00.000Z is more than 1 day past the newest tick of "
        "its feed, {prev}, and the rows after it are not",
    ),
    (
        "bid overflowing a float",
        "{ts},{sym},1e309,86.8,,",
        RejectedAt.DECODE,
        "numeric overflow in bid: '1e309'",
    ),
    ("prices whose mid overflows", "{ts},{sym},1e308,1e308,,", RejectedAt.VALIDATE, PRICE_RANGE),
    ("price of 1e-308", "{ts},{sym},1e-308,86.8,,", RejectedAt.VALIDATE, PRICE_RANGE),
    ("inf literal", "{ts},{sym},inf,86.8,,", RejectedAt.VALIDATE, "non-finite price"),
    ("nan literal", "{ts},{sym},86.7,nan,,", RejectedAt.VALIDATE, "non-finite price"),
    (
        "size of 1e16",
        "{ts},{sym},86.7,86.8,1e16,",
        RejectedAt.DECODE,
        "bid_size outside the sane range (above 1e+15)",
    ),
]
AT = 100  # the bad row goes after this many real rows (line AT + 2 of the file)


def _with_bad_row(real_rows: list[str], template: str) -> tuple[list[str], str]:
    before = real_rows[AT - 1]
    ts, sym = before.split(",")[:2]
    return [*real_rows[:AT], template.format(ts=ts, sym=sym), *real_rows[AT : 2 * AT]], ts.replace(
        "Z", ""
    ).ljust(23, "0") + "Z"


@pytest.mark.parametrize(("case", "template", "stage", "reason"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_row_is_a_dead_letter_and_moves_no_clock(
    case: str, template: str, stage: RejectedAt, reason: str, real_rows: list[str], tmp_path: Path
) -> None:
    lines, prev = _with_bad_row(real_rows, template)
    path = tmp_path / "quotes.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    src = ReplaySource([path], block_bytes=4096)  # several blocks: the clock crosses them
    part = src.build_part("t", src.list_parts()[0], None)
    v = TickValidator()
    ticks, dead = 0, []
    try:
        while True:
            for rows in part.next_batch():
                out = v.validate(rows)
                ticks += out.ticks
                dead += list(out.dead)
    except StopIteration:
        pass
    assert [(d.row, d.stage, d.reason) for d in dead] == [(AT + 2, stage, reason.format(prev=prev))]
    assert ticks == 2 * AT  # every real row after it is still a tick


def test_bad_rows_and_a_truncated_file_through_the_live_flow(
    real_rows: list[str], shared_data: Path, tmp_path: Path, trained_registry: Path
) -> None:
    """The rows above in one file, beside a truncated .csv.gz: the flow finishes with its
    summary, warns about the cut file, and stores one dead letter per bad row and one for the
    unreadable rest of the cut file (read back with cli.analytics)."""
    lines, cursor, expected = list(real_rows[:AT]), AT, {}
    for _, template, stage, reason in ROWS:  # each bad row after a real one, 3 real ones after
        ts, sym = lines[-1].split(",")[:2]
        expected[len(lines) + 2] = (
            stage.value,
            reason.format(prev=ts.replace("Z", "").ljust(23, "0") + "Z"),
        )
        lines += [template.format(ts=ts, sym=sym), *real_rows[cursor : cursor + 3]]
        cursor += 3
    rows_file = tmp_path / "quotes.csv"
    rows_file.write_text("\n".join([HEADER, *lines]) + "\n")
    data = (shared_data / OTHER).read_bytes()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(data[: len(data) // 2])
    env = _env(tmp_path / "home", trained_registry, QT_TICKS=f"{cut},{rows_file}")
    proc = _live(env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "qt live run summary" in proc.stdout
    warning = [x for x in proc.stderr.splitlines() if x.startswith("warning:")]
    assert len(warning) == 1 and warning[0].startswith(f"warning: {cut}: file truncated: ")
    out = _python(["cli.analytics", "dead_letters", "--json"], env)
    assert out.returncode == 0, out.stderr[-2000:]
    dead = [json.loads(x) for x in out.stdout.splitlines()]
    got = {d["row"]: (d["stage"], d["reason"]) for d in dead if d["source"] == rows_file.name}
    assert got == expected
    [truncated] = [d for d in dead if d["source"] == cut.name]
    assert truncated["stage"] == "decode" and truncated["reason"] == (
        f"file truncated: the compressed stream ended at row {truncated['row']} before its end"
    )
    assert warning[0] == (
        f"warning: {cut}: {truncated['reason']}; the rows before it were "
        "replayed, the rest of the file is one dead letter"
    )
    counts = {
        m[1].strip(): int(m[2].replace(",", ""))
        for m in re.finditer(r"^\s+([a-z /]+?)\s{2,}([\d,]+)$", proc.stdout, re.M)
    }
    assert counts["dead letters"] == len(dead) == len(expected) + 1
    assert counts["input rows"] == counts["ticks"] + counts["dead letters"]
    assert counts["input rows"] == len(lines) + truncated["row"] - 1  # the cut file's rows + 1

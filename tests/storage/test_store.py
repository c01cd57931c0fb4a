"""Store: the DDL applies, writes are idempotent under FINAL, values are bound parameters."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from schemas import codec
from schemas.bars import Bar
from schemas.dead_letters import DeadLetters, RejectedAt
from schemas.features import FeatureVector
from schemas.tables import bar_rows, dead_letter_rows, feature_rows, merge_blocks
from storage.store import StoreUnavailable, check_embedded_store, ddl_files, open_store


def _bar(minute: int, close: float) -> Bar:
    start = datetime(2024, 1, 1, 0, minute, tzinfo=UTC)
    end = datetime(2024, 1, 1, 0, minute + 1, tzinfo=UTC)
    return Bar(
        "X:Y", 60, start, end, 1.0, 2.0, 0.5, close, 3.0, 7, 1.2, 1.0, 2.0, 0, math.nan, math.nan
    )


def test_every_ddl_file_is_one_statement() -> None:
    for path in ddl_files():
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.strip().startswith("--")
        )
        assert text.strip().count(";") == 0, f"{path.name}: one statement, no ';'"


def test_writing_the_same_batch_twice_leaves_one_copy(store) -> None:
    bars = [_bar(i, 1.0 + i) for i in range(5)]
    vec = FeatureVector(
        "X:Y",
        bars[0].end,
        bars[0].start,
        "fs-test",
        True,
        1.0,
        {"a": 1.0, "b": math.nan},
        (0.1, math.nan),
    )
    dead = DeadLetters()
    dead.add("file.csv", 3, None, "", RejectedAt.DECODE, "missing ts", ",,,,")
    dead.add("file.csv", 4, 1_704_067_200_000, "X:Y", RejectedAt.VALIDATE, "negative size", "x")
    for _ in range(2):
        for block in (bar_rows(bars), feature_rows([vec]), dead_letter_rows(dead)):
            store.insert_block(block)
    counts = store.query("queries/table_counts")[0]
    assert counts == {"bars": 5, "features": 1, "dead_letters": 2, "signals": 0}
    rows = store.query("queries/bars_for_symbol", symbol="X:Y", seconds=60)
    assert [r["close"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert rows[0]["start"] == datetime(2024, 1, 1, tzinfo=UTC)  # aware UTC comes back


def test_feature_vectors_come_back_as_written(store) -> None:
    """Feature blocks go in as Arrow: every field comes back, the window as the Float32 column
    stores it, NaN as NaN, times as aware UTC, and merged blocks insert as one."""
    bars = [_bar(i, 1.0 + i) for i in range(3)]
    vectors = [
        FeatureVector(
            "X:Y",
            b.end,
            b.start,
            "fs-test",
            i > 0,
            b.close,
            {"ret_1": 0.1 * i, "spread_bps": math.nan},
            (math.nan, 1 / 3, -2.5e-5 * i),
        )
        for i, b in enumerate(bars)
    ]
    blocks = merge_blocks([feature_rows(vectors[:1]), feature_rows(vectors[1:])])
    assert len(blocks) == 1 and len(blocks[0]) == 3 and blocks[0].to_arrow().num_rows == 3
    store.insert_block(blocks[0])
    rows = store.query("queries/features_for_symbol", symbol="X:Y", feature_set="fs-test")
    back = [codec.from_row(FeatureVector, r) for r in rows]
    assert [(v.ts, v.bar_start, v.warm, v.close) for v in back] == [
        (v.ts, v.bar_start, v.warm, v.close) for v in vectors
    ]
    for got, want in zip(back, vectors, strict=True):
        assert got.values["ret_1"] == want.values["ret_1"] and math.isnan(got.values["spread_bps"])
        assert math.isnan(got.window[0])
        assert list(got.window[1:]) == [float(np.float32(x)) for x in want.window[1:]]


def test_parameters_are_bound_not_spliced(store) -> None:
    block = bar_rows([_bar(0, 1.0)])
    store.insert_block(block)
    assert store.query("queries/bars_for_symbol", symbol="X:Y' OR 1=1 --", seconds=60) == []
    assert len(store.query("queries/bars_for_symbol", symbol="X:Y", seconds=60)) == 1


def test_a_second_embedded_path_in_one_process_is_refused(settings, tmp_path) -> None:
    first = open_store(settings)
    try:
        with pytest.raises(RuntimeError, match="one data path per process"):
            open_store(settings.replace(home=tmp_path))
    finally:
        first.close()


def test_a_store_held_by_another_process_is_one_clear_error(settings, tmp_path) -> None:
    import fcntl
    import os

    s = settings.replace(home=tmp_path / "home")
    status = s.store_path / "status"
    status.parent.mkdir(parents=True)
    status.write_text("PID: 4242\nStarted at: 2026-01-01 00:00:00\nRevision: 1\n")
    fd = os.open(status, os.O_RDWR)  # hold chDB's lock, as a running flow does
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StoreUnavailable) as busy:
            check_embedded_store(s)
    finally:
        os.close(fd)
    assert str(busy.value) == (
        f"QT_HOME={s.home}: the embedded store {s.store_path.resolve()} is in use by another "
        "process (pid 4242, started 2026-01-01 00:00:00); chDB allows one process per store: "
        "wait for that run to end (or stop it), or give this run its own QT_HOME"
    )
    check_embedded_store(s)  # released: fine


def test_a_home_that_cannot_be_written_is_one_clear_error(settings, tmp_path) -> None:
    import os

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    homes = [blocker / "home"]  # a path through a file: not a directory
    if os.geteuid() != 0:  # (root writes through permissions)
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        homes.append(read_only)
    for home in homes:
        with pytest.raises(
            StoreUnavailable,
            match=rf"^QT_HOME={home}: the embedded store .* "
            r"cannot be written \(.+\); set QT_HOME to a writable directory",
        ):
            check_embedded_store(settings.replace(home=home))


@pytest.mark.parametrize(
    "url", ["ftp://user:s3cret@db:8123/qt", "http://user:s3cret@127.0.0.1:1/qt"]
)
def test_a_server_url_is_never_shown_with_its_password(settings, url: str) -> None:
    with pytest.raises(StoreUnavailable) as bad:
        open_store(settings.replace(clickhouse_url=url))
    assert "s3cret" not in str(bad.value) and "user:***@" in str(bad.value)


def test_a_deferred_store_opens_at_its_first_use_only(settings) -> None:
    """In a cluster every process builds the engine's store; only the one that uses it opens
    it (chDB allows one process per data path)."""
    from storage.store import DeferredStore

    unused = DeferredStore(settings)
    unused.close()  # never opened: nothing to release, no lock taken
    assert not unused.opened
    used = DeferredStore(settings)
    try:
        assert used.query("queries/table_counts")[0]["dead_letters"] == 0
        assert used.opened and used.description.startswith("embedded chDB")
    finally:
        used.close()
    assert not used.opened

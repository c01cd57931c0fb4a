"""Store: the DDL applies, writes are idempotent under FINAL, values are bound parameters."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from schemas.bars import Bar
from schemas.dead_letters import DeadLetters, Stage
from schemas.features import FeatureVector
from schemas.tables import bar_rows, dead_letter_rows, feature_rows
from storage.store import ddl_files, open_store


def _bar(minute: int, close: float) -> Bar:
    start = datetime(2024, 1, 1, 0, minute, tzinfo=UTC)
    end = datetime(2024, 1, 1, 0, minute + 1, tzinfo=UTC)
    return Bar("X:Y", 60, start, end, 1.0, 2.0, 0.5, close, 3.0, 7, 1.2, 1.0, 2.0, 0,
               math.nan, math.nan)


def test_every_ddl_file_is_one_statement() -> None:
    for path in ddl_files():
        text = "\n".join(line for line in path.read_text().splitlines()
                         if not line.strip().startswith("--"))
        assert text.strip().count(";") == 0, f"{path.name}: one statement, no ';'"


def test_writing_the_same_batch_twice_leaves_one_copy(store) -> None:
    bars = [_bar(i, 1.0 + i) for i in range(5)]
    vec = FeatureVector("X:Y", bars[0].end, bars[0].start, "fs-test", True, 1.0,
                        {"a": 1.0, "b": math.nan}, (0.1, math.nan))
    dead = DeadLetters()
    dead.add("file.csv", 3, None, "", Stage.DECODE, "missing ts", ",,,,")
    dead.add("file.csv", 4, 1_704_067_200_000, "X:Y", Stage.VALIDATE, "negative size", "x")
    for _ in range(2):
        for block in (bar_rows(bars), feature_rows([vec]), dead_letter_rows(dead)):
            store.insert(block.table, block.columns, block.data, block.column_oriented)
    counts = store.query("queries/table_counts")[0]
    assert counts == {"bars": 5, "features": 1, "dead_letters": 2, "signals": 0}
    rows = store.query("queries/bars_for_symbol", symbol="X:Y", seconds=60)
    assert [r["close"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert rows[0]["start"] == datetime(2024, 1, 1, tzinfo=UTC)  # aware UTC comes back


def test_parameters_are_bound_not_spliced(store) -> None:
    block = bar_rows([_bar(0, 1.0)])
    store.insert(block.table, block.columns, block.data)
    assert store.query("queries/bars_for_symbol", symbol="X:Y' OR 1=1 --", seconds=60) == []
    assert len(store.query("queries/bars_for_symbol", symbol="X:Y", seconds=60)) == 1


def test_a_second_embedded_path_in_one_process_is_refused(settings, tmp_path) -> None:
    first = open_store(settings)
    try:
        with pytest.raises(RuntimeError, match="one data path per process"):
            open_store(settings.replace(home=tmp_path))
    finally:
        first.close()

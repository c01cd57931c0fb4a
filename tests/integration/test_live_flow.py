"""The live flow end to end: in process on the sample, and as the README runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bytewax.testing import run_main

from dataflows.live import build_live_flow
from settings import PROJECT_ROOT
from storage.store import open_store

SAMPLE_ROWS = 398_283
FXCM_ROWS = 2_084_012


def summary_counts(text: str) -> dict[str, int]:
    return {m[1].strip(): int(m[2].replace(",", ""))
            for m in re.finditer(r"^\s+([a-z /]+?)\s{2,}([\d,]+)$", text, re.M)}


def test_sample_run_accounts_for_every_row_and_stores_it(settings, sample_ticks, capsys,
                                                        trained_registry) -> None:
    s = settings.replace(ticks=str(sample_ticks), registry_path=trained_registry, learning=False)
    run_main(build_live_flow(s))
    counts = summary_counts(capsys.readouterr().out)
    assert counts["input rows"] == SAMPLE_ROWS
    assert counts["ticks"] + counts["dead letters"] == SAMPLE_ROWS
    store = open_store(s)
    try:
        stored = store.query("queries/table_counts")[0]
        assert stored == {"bars": counts["bars"], "features": counts["feature vectors"],
                          "dead_letters": counts["dead letters"],
                          "signals": counts["signals"]}
        # a second replay of the same input rewrites the same keys: nothing duplicated
        run_main(build_live_flow(s))
        assert store.query("queries/table_counts")[0] == stored
    finally:
        store.close()


def _run_cli(tmp_path: Path, ticks: Path, registry: Path) -> str:
    env = {**os.environ, "QT_HOME": str(tmp_path / ".qt"), "QT_TICKS": str(ticks),
           "QT_REGISTRY_DIR": str(registry), "QT_LEARNING": "false"}
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.live"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_fxcm_month_through_the_cli(tmp_path: Path, fxcm_quotes: Path,
                                    trained_registry: Path) -> None:
    """The issue's acceptance run: all 2.08M quotes, ticks + dead letters = data rows, and a
    signal for every bar."""
    counts = summary_counts(_run_cli(tmp_path, fxcm_quotes, trained_registry))
    assert counts["input rows"] == FXCM_ROWS
    assert counts["ticks"] + counts["dead letters"] == FXCM_ROWS
    assert counts["bars"] == counts["feature vectors"] == counts["signals"] > 30_000

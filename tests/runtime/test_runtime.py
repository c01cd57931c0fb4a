"""Process-wide runtime settings: the garbage collector of a flow process."""

from __future__ import annotations

import gc
import sys

import pytest

from runtime import GC_THRESHOLDS, run_by_bytewax, tune_gc


def test_only_a_bytewax_run_process_tunes_its_garbage_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = gc.get_threshold()
    assert not run_by_bytewax()  # pytest
    tune_gc()  # a test process runs many flows: left alone
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    monkeypatch.setattr(sys, "argv", ["/venv/lib/bytewax/run.py", "dataflows.live"])
    assert run_by_bytewax()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

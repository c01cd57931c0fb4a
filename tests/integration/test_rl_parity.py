"""One RL state and one reward for pretraining and live sizing.

A real replay through the live flow records, for every trade, the state the policy saw, the
action it took, and (the learner's) reward. The gymnasium environment then replays the same
ticks with the same tradable signals and is given the same actions: every observation must be
the live state vector, bit for bit, and every reward the live reward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from bytewax.testing import run_main

from dataflows.live import build_live_flow
from schemas.signals import Action
from schemas.timeutil import from_ms, iso, to_ms
from storage.store import open_store
from training.env import EnvConfig, SignalEvent, SizingEnv
from training.history import history_from_ticks


def test_env_and_live_sizing_see_identical_states_and_rewards(
    live_settings, registry_copy: Path, sample_ticks: Path
) -> None:
    s = live_settings.replace(
        ticks=str(sample_ticks),
        registry_path=registry_copy,
        learning=True,
        clm_enabled=False,
        rl_update_interval=10**9,
    )
    run_main(build_live_flow(s))  # learning on (rewards recorded), no update changes the policy
    store = open_store(s)
    try:
        trades = {t["trade_id"]: t for t in store.query("queries/trade_entry_states")}
        rewards = {o["trade_id"]: o["reward"] for o in store.query("queries/trade_outcomes_all")}
        tradable = store.query("queries/tradable_signals")
    finally:
        store.close()
    assert len(trades) > 20 and rewards.keys() == trades.keys()

    history = history_from_ticks(str(sample_ticks), s, keep_ticks=True)
    index = {
        sym: {to_ms(b.end): i for i, b in enumerate(bars)} for sym, bars in history.bars.items()
    }
    signals = [
        SignalEvent(
            r["symbol"],
            index[r["symbol"]][to_ms(r["ts"])],
            Action(r["action"]),
            r["confidence"],
            0.0,
        )
        for r in tradable
    ]
    env = SizingEnv(history, signals, EnvConfig.from_settings(s))
    obs, _ = env.reset()
    seen, done = 0, False
    while not done:
        req = env.request
        trade_id = f"{req.symbol}@{iso(from_ms(req.bar_end_ms))}"
        live = trades[trade_id]
        assert obs.dtype == np.float32
        assert obs.tolist() == list(live["rl_state"]), trade_id  # float32, bit for bit
        obs, reward, done, _, info = env.step(np.array(live["rl_action"], dtype=np.float32))
        assert info["opened"].trade_id == trade_id
        assert reward == rewards[trade_id], trade_id
        seen += 1
    assert seen == len(trades)  # every live order, and no other
    assert any(t["rl_state"][5] > 0 for t in trades.values())  # exposure was exercised

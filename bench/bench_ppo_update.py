"""Benchmark: one PPO update from 64 recorded transitions (the learning flow's unit of work).

A policy is pretrained briefly on the bundled sample's bars, then acts (stochastically, with
log-probabilities and values recorded) on 64 real states; the update runs on those transitions
with rewards from the documented reward function. Median over repeats, single-threaded.

    python bench/bench_ppo_update.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from rl.policy import Transition, pretrain
from rl.state import RLState
from runtime import cap_threads
from settings import SAMPLE_TICKS, Settings
from training.env import EnvConfig, SizingEnv, momentum_signals
from training.history import history_from_ticks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    cap_threads(1)
    settings = Settings.from_env({})
    history = history_from_ticks(str(SAMPLE_TICKS), settings)
    signals = [s for sym in history.symbols for s in momentum_signals(sym, history.vectors[sym])]
    env = SizingEnv(history.bars, signals, EnvConfig.from_settings(settings, 2))
    runtime = pretrain(env, 2_048, seed=0)
    rng = np.random.default_rng(0)
    states = [
        RLState(
            1.0,
            s.vol_daily,
            0.5,
            0.0,
            0.0,
            0.0,
            s.confidence,
            1.0 if s.side.value == "BUY" else -1.0,
            equity_usd=10_000.0,
        )
        for s in signals[:64]
    ]
    times = []
    for _ in range(args.repeats):
        decisions = runtime.act_batch(states, stochastic=True)
        batch = [
            Transition.from_decision(d, float(rng.normal(0, 0.01)), d.state) for d in decisions
        ]
        t0 = time.perf_counter()
        m = runtime.update(batch)
        times.append(time.perf_counter() - t0)
        assert m.transitions == 64 and m.param_change_norm > 0
    print(
        f"PPO update, 64 transitions: median {statistics.median(times) * 1000:.1f} ms, "
        f"min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms "
        f"({args.repeats} updates; target <= 50 ms)"
    )


if __name__ == "__main__":
    main()

"""The PPO learner: updates every N transitions, exactly once under replay, deterministic, and a
partial batch carried to the next run and used once.

The trades are real: the sample's ticks replayed through the live execution code (the
gymnasium environment), sized by the registry's production policy with its own stochastic
actions, log-probabilities and values, as the live flow records them.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.base import POLICY_NAME
from models.registry import ModelRegistry
from operators.policy_learner import PENDING_FILE, LearnerConfig, PolicyLearner, transition_of
from operators.sizing import PolicySource, decision_noise
from schemas.trades import JoinedTrade, JoinSource
from settings import Settings
from training.env import EnvConfig, SizingEnv, momentum_signals
from training.history import history_from_ticks

INTERVAL = 6


@pytest.fixture(scope="module")
def joined(trained_registry: Path, sample_ticks: Path) -> list[JoinedTrade]:
    settings = Settings.from_env({})
    history = history_from_ticks(str(sample_ticks), settings, keep_ticks=True)
    signals = [s for sym in history.symbols for s in momentum_signals(sym, history.vectors[sym])]
    env = SizingEnv(history, signals, EnvConfig.from_settings(settings))
    runtime = ModelRegistry(trained_registry).load(POLICY_NAME)
    env.reset()
    out: list[JoinedTrade] = []
    done = False
    while not done and len(out) < 3 * INTERVAL:
        req = env.request
        d = runtime.act(req.state, True, decision_noise(req.symbol, req.bar_end_ms))
        _, _, done, _, info = env.step(np.asarray(d.raw_action, dtype=np.float32))
        if "opened" in info:
            opened = info["opened"]
            opened = replace(opened, entry=replace(opened.entry, rl=d))
            out.append(JoinedTrade(opened, info["closed"], JoinSource.STREAM))
    assert len(out) == 3 * INTERVAL
    assert all(transition_of(j, LearnerConfig().weights) is not None for j in out)
    return out


def learner(registry: ModelRegistry, state=None) -> PolicyLearner:
    return PolicyLearner(
        LearnerConfig(update_interval=INTERVAL), registry, PolicySource(registry), state
    )


def weights(registry: ModelRegistry, version: str) -> torch.Tensor:
    rt = registry.load(POLICY_NAME, version)
    return torch.nn.utils.parameters_to_vector(rt.model.policy.parameters()).detach()


def test_an_update_every_interval_is_published_and_used(
    registry_copy: Path, joined: list[JoinedTrade]
) -> None:
    registry = ModelRegistry(registry_copy)
    start = registry.production_version(POLICY_NAME)
    lr = learner(registry)
    updates = [u for j in joined[: 2 * INTERVAL] for u in lr.push(j)]
    assert len(updates) == 2
    assert [u.transitions for u in updates] == [INTERVAL, INTERVAL]
    assert updates[0].policy_before.endswith("-v0") and updates[1].policy_after.endswith("-v2")
    assert (
        lr.policy.pinned
        == updates[-1].registry_version
        == registry.production_version(POLICY_NAME)
        != start
    )
    assert not torch.equal(weights(registry, start), weights(registry, lr.policy.pinned))


def test_a_replayed_update_reuses_its_version_bit_for_bit(
    registry_copy: Path, joined: list[JoinedTrade], tmp_path: Path
) -> None:
    """A resume replays the trades after its snapshot: the update must not apply twice."""
    registry = ModelRegistry(registry_copy)
    start = registry.production_version(POLICY_NAME)
    first = learner(registry)
    (u1,) = [u for j in joined[:INTERVAL] for u in first.push(j)]
    versions = sorted(p.name for p in registry.model_dir(POLICY_NAME).glob("v0*"))
    # the resumed learner starts from the snapshot taken before the update
    resumed = learner(registry, {"buffer": [], "newest_ms": 0, "counts": {}, "pinned": start})
    (u2,) = [u for j in joined[:INTERVAL] for u in resumed.push(j)]
    assert u2.registry_version == u1.registry_version and u2.policy_after == u1.policy_after
    assert sorted(p.name for p in registry.model_dir(POLICY_NAME).glob("v0*")) == versions
    # and the update itself is deterministic: another registry computes the same weights
    other = tmp_path / "other"
    shutil.copytree(registry_copy, other)
    shutil.rmtree(other / POLICY_NAME / u1.registry_version)
    again = learner(
        ModelRegistry(other), {"buffer": [], "newest_ms": 0, "counts": {}, "pinned": start}
    )
    (u3,) = [u for j in joined[:INTERVAL] for u in again.push(j)]
    assert torch.equal(
        weights(ModelRegistry(other), u3.registry_version), weights(registry, u1.registry_version)
    )


def test_a_partial_batch_waits_for_the_next_run_and_is_used_once(
    registry_copy: Path, joined: list[JoinedTrade]
) -> None:
    registry = ModelRegistry(registry_copy)
    run1 = learner(registry)
    assert [u for j in joined[:4] for u in run1.push(j)] == []
    assert run1.finish() == []
    assert (registry.model_dir(POLICY_NAME) / PENDING_FILE).is_file()
    run2 = learner(registry)  # a new run, starting fresh
    assert len(run2.buffer) == 4
    (update,) = [u for j in joined[4:6] for u in run2.push(j)]
    assert update.transitions == INTERVAL
    run3 = learner(registry)  # the policy moved on: the carried batch was used
    assert run3.buffer == []

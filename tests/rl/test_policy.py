"""PolicyRuntime: direct acting matches SB3, recorded log-probs are SB3's, external PPO updates
learn in the rewarded direction, and save/load round-trips without unpickling."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rl.policy import (
    JSON_NAME,
    PolicyRuntime,
    PPOParams,
    Transition,
    parse_version,
    policy_lag,
    pretrain,
    rollout_buffer,
)
from rl.state import NAMES, ActionBounds, RLState, map_action
from schemas.signals import Action
from settings import SAMPLE_TICKS, Settings
from training.env import EnvConfig, SignalEvent, SizingEnv, momentum_signals
from training.history import history_from_ticks

PARAMS = PPOParams(n_steps=64, batch_size=64, n_epochs=4)


@pytest.fixture(scope="module")
def env() -> SizingEnv:
    settings = Settings.from_env({})
    h = history_from_ticks(str(SAMPLE_TICKS), settings, keep_ticks=True)
    sigs = [s for sym in h.symbols for s in momentum_signals(sym, h.vectors[sym], 1.5)]
    return SizingEnv(h, sigs, EnvConfig.from_settings(settings))


@pytest.fixture(scope="module")
def runtime(env: SizingEnv) -> PolicyRuntime:
    """Pretrained for a few hundred steps (the test of pretrain itself); never updated."""
    rt = pretrain(env, timesteps=256, seed=0, params=PARAMS)
    assert rt.model.num_timesteps >= 256 and rt.updates == 0
    assert torch.get_num_threads() == 1
    return rt


@pytest.fixture(scope="module")
def states(env: SizingEnv) -> list[RLState]:
    """Real states: the env's observations along one episode with mid-size actions."""
    env.reset(seed=3)
    out: list[RLState] = []
    done = False
    while not done and len(out) < 40:
        assert env.request is not None
        out.append(env.request.state)
        _, _, done, _, _ = env.step(np.zeros(3, dtype=np.float32))
    return out


def _copy(rt: PolicyRuntime, tmp: Path) -> PolicyRuntime:
    rt.save(tmp)
    return PolicyRuntime.load(tmp, seed=7)


def test_deterministic_act_equals_mapped_predict(
    runtime: PolicyRuntime, states: list[RLState]
) -> None:
    batch = runtime.act_batch(states, stochastic=False)
    for s, d in zip(states, batch, strict=True):
        pred, _ = runtime.model.predict(s.to_array(), deterministic=True)
        assert np.allclose(np.clip(d.raw_action, -1, 1), pred, rtol=0, atol=1e-6)
        size, tp, sl, deg = map_action(pred, s.equity_usd, runtime.bounds)
        assert (d.position_size_usd, d.tp_pct, d.sl_pct) == pytest.approx((size, tp, sl))
        assert not deg and not d.stochastic and d.policy_version == runtime.version
        assert d.state == tuple(float(x) for x in s.to_array())
        single = runtime.act(s, stochastic=False)
        assert single.raw_action == pytest.approx(d.raw_action, abs=1e-6)


def test_recorded_log_prob_and_value_are_sb3s(
    runtime: PolicyRuntime, states: list[RLState]
) -> None:
    decisions = runtime.act_batch(states, stochastic=True)
    obs = torch.tensor([d.state for d in decisions])
    actions = torch.tensor([d.raw_action for d in decisions])
    with torch.no_grad():
        values, log_prob, _ = runtime.model.policy.evaluate_actions(obs, actions)
    assert np.allclose([d.log_prob for d in decisions], log_prob.numpy(), rtol=0, atol=1e-5)
    assert np.allclose([d.value for d in decisions], values.numpy().ravel(), rtol=0, atol=1e-6)
    # samples are samples: not the mode, and their spread follows the policy's std
    modes = np.array([d.raw_action for d in runtime.act_batch(states, stochastic=False)])
    sampled = actions.numpy()
    assert not np.allclose(sampled, modes)
    std = float(runtime.model.policy.log_std.detach().exp().mean())
    assert 0.3 * std < float(np.std(sampled - modes)) < 3 * std


def test_explicit_noise_makes_the_sample_reproducible(
    runtime: PolicyRuntime, states: list[RLState]
) -> None:
    noise = np.array([0.5, -1.0, 2.0])
    a = runtime.act(states[0], stochastic=True, noise=noise)
    b = runtime.act(states[0], stochastic=True, noise=noise)
    mode = runtime.act(states[0], stochastic=False)
    std = runtime.model.policy.log_std.exp().detach().numpy()
    assert a == b
    assert np.allclose(np.array(a.raw_action) - np.array(mode.raw_action), std * noise, atol=1e-5)


def test_update_learns_in_the_rewarded_direction(
    runtime: PolicyRuntime, states: list[RLState], tmp_path: Path
) -> None:
    """Reward the size coordinate: the mode's size rises; reward its opposite: it falls."""
    for sign, sub in ((1.0, "up"), (-1.0, "down")):
        rt = _copy(runtime, tmp_path / sub)
        s = states[0]
        before_mode = rt.act(s, stochastic=False).raw_action[0]
        before_params = (
            torch.nn.utils.parameters_to_vector(rt.model.policy.parameters()).detach().clone()
        )
        decisions = rt.act_batch([s] * 64, stochastic=True)
        trs = [Transition.from_decision(d, sign * d.raw_action[0], d.state) for d in decisions]
        m = rt.update(trs)
        after_params = torch.nn.utils.parameters_to_vector(rt.model.policy.parameters()).detach()
        assert m.transitions == 64 and m.dropped == 0
        assert m.param_change_norm > 0
        assert m.param_change_norm == pytest.approx(
            float(torch.linalg.vector_norm(after_params - before_params)), rel=1e-5
        )
        for x in (
            m.policy_loss,
            m.value_loss,
            m.entropy_loss,
            m.approx_kl,
            m.clip_fraction,
            m.mean_reward,
        ):
            assert math.isfinite(x)
        assert 0 <= m.clip_fraction <= 1 and m.approx_kl >= 0
        assert m.version_before == runtime.version and rt.version == m.version_after
        assert parse_version(rt.version)[1] == 1 and policy_lag(m.version_before, rt.version) == 1
        moved = rt.act(s, stochastic=False).raw_action[0] - before_mode
        assert sign * moved > 0
        # the old action's log-prob is no longer what was recorded: the policy changed
        obs = torch.tensor([decisions[0].state])
        act = torch.tensor([decisions[0].raw_action])
        with torch.no_grad():
            _, lp, _ = rt.model.policy.evaluate_actions(obs, act)
        assert abs(float(lp) - decisions[0].log_prob) > 1e-7
        assert rt.model.rollout_buffer.buffer_size == PARAMS.n_steps  # SB3's own is restored


@pytest.mark.parametrize("gamma", [0.0, 0.99])
def test_rollout_buffer_makes_each_trade_a_one_step_episode(
    runtime: PolicyRuntime, states: list[RLState], gamma: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PPO.train() reads these arrays: advantage must be reward - recorded value, whatever
    gamma, and the recorded log-probs and actions must be kept unclipped."""
    monkeypatch.setattr(runtime.model, "gamma", gamma)
    monkeypatch.setattr(runtime.model, "gae_lambda", 0.95)
    decisions = runtime.act_batch(states[:16], stochastic=True, noise=np.full((16, 3), 3.0))
    rewards = np.linspace(-1.0, 2.0, 16)
    trs = [
        Transition.from_decision(d, float(r), d.state)
        for d, r in zip(decisions, rewards, strict=True)
    ]
    buf = rollout_buffer(runtime.model, trs)
    values = np.array([d.value for d in decisions], dtype=np.float32)
    assert buf.full and buf.buffer_size == 16
    assert np.allclose(buf.advantages.ravel(), rewards.astype(np.float32) - values, atol=1e-6)
    assert np.allclose(buf.returns.ravel(), rewards, atol=1e-6)
    assert np.allclose(buf.log_probs.ravel(), [d.log_prob for d in decisions])
    assert np.allclose(buf.actions.reshape(16, 3), [d.raw_action for d in decisions])
    assert buf.actions.max() > 1.0  # a 3-sigma sample lies outside the box, stored as sampled


def test_update_drops_unusable_transitions(
    runtime: PolicyRuntime, states: list[RLState], tmp_path: Path
) -> None:
    rt = _copy(runtime, tmp_path)
    good = [
        Transition.from_decision(d, 0.1, d.state)
        for d in rt.act_batch(states[:10], stochastic=True)
    ]
    det = Transition.from_decision(rt.act(states[0], stochastic=False), 0.1, states[0].to_array())
    nan = Transition.from_decision(
        rt.act(states[0], stochastic=True), math.nan, states[0].to_array()
    )
    other = Transition(
        good[0].state,
        good[0].raw_action,
        good[0].log_prob,
        good[0].value,
        0.1,
        good[0].state,
        "ppo-ffff-v0",
    )
    empty = rt.update([det, nan])
    assert empty.transitions == 0 and empty.dropped == 2 and rt.updates == 0
    m = rt.update([*good, det, nan, other], max_lag=2)
    assert (m.transitions, m.dropped, rt.updates) == (10, 3, 1)
    m = rt.update(good, max_lag=0)  # recorded one version ago: too stale
    assert (m.transitions, m.dropped, rt.updates) == (0, 10, 1)
    m = rt.update(good, max_lag=1)
    assert (m.transitions, rt.updates) == (10, 2)


def test_save_load_round_trip_without_unpickling(
    runtime: PolicyRuntime, states: list[RLState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloudpickle

    paths = runtime.save(tmp_path)
    assert sorted(p.name for p in paths) == ["policy.json", "ppo.zip"]

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("loading a policy must not unpickle anything")

    monkeypatch.setattr(cloudpickle, "loads", refuse)
    loaded = PolicyRuntime.load(tmp_path)
    assert loaded.version == runtime.version and loaded.bounds == runtime.bounds
    assert loaded.params == runtime.params
    a = runtime.act_batch(states, stochastic=False)
    b = loaded.act_batch(states, stochastic=False)
    assert [d.raw_action for d in a] == [d.raw_action for d in b]
    assert [d.value for d in a] == [d.value for d in b]
    meta = json.loads((tmp_path / JSON_NAME).read_text())
    assert meta["state_names"] == list(NAMES) and meta["version"] == runtime.version


def test_load_refuses_another_state_definition(runtime: PolicyRuntime, tmp_path: Path) -> None:
    runtime.save(tmp_path)
    meta = json.loads((tmp_path / JSON_NAME).read_text())
    meta["state_names"] = [*NAMES[:-1], "something_else"]
    (tmp_path / JSON_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="state"):
        PolicyRuntime.load(tmp_path)


def test_bounds_come_from_the_env_and_version_helpers(env: SizingEnv) -> None:
    bounds = ActionBounds(min_frac=0.02, max_frac=0.05)
    env = SizingEnv(
        env.history,
        [
            SignalEvent(s, i, Action.BUY, 0.5, 0.01)
            for s in env.history.symbols
            for i in range(100, 900, 50)
        ],
        replace(env.config, bounds=bounds),
    )
    rt = pretrain(env, timesteps=64, seed=1, params=PPOParams(n_epochs=1))
    assert rt.bounds == bounds
    d = rt.act(RLState(1, 0, 0.5, 0, 0, 0, 0.5, 1, equity_usd=1_000.0), stochastic=True)
    assert 20.0 - 1e-9 <= d.position_size_usd <= 50.0 + 1e-9
    lineage, n = parse_version(rt.version)
    assert n == 0 and len(lineage) == 12
    assert policy_lag(rt.version, rt.version) == 0
    assert policy_lag("ppo-aaaa-v3", "ppo-bbbb-v4") is None
    assert policy_lag("ppo-aaaa-v5", "ppo-aaaa-v4") is None
    with pytest.raises(ValueError):
        parse_version("v3")

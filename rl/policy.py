"""The PPO sizing policy at run time: act fast, learn from closed trades, save without pickles.

:func:`pretrain` trains a small stable-baselines3 PPO (``MlpPolicy``) on
:class:`training.env.SizingEnv` and wraps it in a :class:`PolicyRuntime`, which the live flow
uses to

* :meth:`~PolicyRuntime.act`: a direct torch forward of the policy's modules, skipping
  ``model.predict``'s checks and distribution objects (forward ~0.085 ms against ~0.17 ms for
  ``predict`` here, same mode; ~0.13 ms for a whole decision). It returns the raw action,
  a Gaussian **sample** when stochastic (training) and the distribution's mode otherwise, its
  log-probability under the current policy and the critic's value, stamped with the policy
  version. PPO is on-policy: these
  three numbers, recorded at entry, are what makes a later update correct.
* :meth:`~PolicyRuntime.update`: one PPO update from externally collected transitions. Each
  trade is a one-step episode (``done``): a fresh ``RolloutBuffer`` of the batch's size is
  filled with the *recorded* log-probabilities and values, advantages are
  ``reward - value`` (GAE with every step terminal), and SB3's own ``PPO.train()`` runs the
  clipped-surrogate epochs. This relies on SB3 internals (``rollout_buffer``, ``train``,
  ``logger.name_to_value``): SB3 is pinned (2.9.2) and tests/rl/test_policy.py checks them.
* :meth:`~PolicyRuntime.save` / :meth:`~PolicyRuntime.load`: SB3's zip (``model.save``) plus
  ``policy.json`` (version, bounds, hyper-parameters, state names). Loading passes every
  cloudpickled entry of the zip through ``custom_objects``, so nothing in it is unpickled.

Versions are ``ppo-<lineage>-v<updates>``: ``lineage`` is a hash of the pretrained weights,
``updates`` counts PPO updates since; :func:`policy_lag` compares two versions.

Threads: inference and updates run single-threaded (:func:`runtime.cap_threads`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule

from rl.state import (
    ACTION_DIM,
    ACTION_LIMIT,
    NAMES,
    STATE_HIGH,
    STATE_LOW,
    ActionBounds,
    RLState,
    SizingDecision,
    map_action,
)
from runtime import cap_threads, skip_dynamo_import

ZIP_NAME = "ppo.zip"
JSON_NAME = "policy.json"
FORMAT = 1
_VERSION_RE = re.compile(r"^ppo-([0-9a-f]+)-v(\d+)$")
_HALF_LOG_2PI = math.log(math.sqrt(2.0 * math.pi))


@dataclass(frozen=True, slots=True)
class PPOParams:
    """PPO hyper-parameters, small on purpose (8 inputs, 3 outputs, CPU, one thread).

    ``gamma`` = 0 and ``gae_lambda`` = 1: each trade is its own one-step episode (as in
    :meth:`PolicyRuntime.update`), so the advantage is ``reward - value``. ``log_std_init``
    = -0.5 (std ~0.6) explores inside the [-1, 1] box instead of mostly at its clipped edges.
    """

    net_arch: tuple[int, ...] = (64, 64)
    n_steps: int = 64
    batch_size: int = 64
    n_epochs: int = 10
    learning_rate: float = 3e-4
    gamma: float = 0.0
    gae_lambda: float = 1.0
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    log_std_init: float = -0.5
    target_kl: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["net_arch"] = list(self.net_arch)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PPOParams:
        d = dict(d)
        d["net_arch"] = tuple(int(x) for x in d["net_arch"])
        return cls(**d)


@dataclass(frozen=True, slots=True)
class Transition:
    """One closed trade as PPO sees it: the entry decision's record plus its outcome."""

    state: tuple[float, ...]
    raw_action: tuple[float, ...]
    log_prob: float
    value: float
    reward: float
    next_state: tuple[float, ...]
    policy_version: str
    stochastic: bool = True

    @classmethod
    def from_decision(
        cls, decision: SizingDecision, reward: float, next_state: Sequence[float]
    ) -> Transition:
        return cls(
            decision.state,
            decision.raw_action,
            decision.log_prob,
            decision.value,
            float(reward),
            tuple(float(x) for x in next_state),
            decision.policy_version,
            decision.stochastic,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Transition:
        return cls(
            tuple(float(x) for x in d["state"]),
            tuple(float(x) for x in d["raw_action"]),
            float(d["log_prob"]),
            float(d["value"]),
            float(d["reward"]),
            tuple(float(x) for x in d["next_state"]),
            str(d["policy_version"]),
            bool(d["stochastic"]),
        )


@dataclass(frozen=True, slots=True)
class UpdateMetrics:
    """What one :meth:`PolicyRuntime.update` did (losses are SB3's, last-epoch means)."""

    policy_loss: float
    value_loss: float
    entropy_loss: float
    approx_kl: float
    clip_fraction: float
    mean_reward: float
    transitions: int
    dropped: int
    param_change_norm: float
    version_before: str
    version_after: str
    seconds: float


def parse_version(version: str) -> tuple[str, int]:
    """``ppo-<lineage>-v<n>`` -> (lineage, n)."""
    m = _VERSION_RE.match(version)
    if m is None:
        raise ValueError(f"not a policy version: {version!r}")
    return m.group(1), int(m.group(2))


def policy_lag(recorded: str, current: str) -> int | None:
    """Updates between two versions of one lineage; None if unrelated or unparseable."""
    try:
        lin_a, n_a = parse_version(recorded)
        lin_b, n_b = parse_version(current)
    except ValueError:
        return None
    if lin_a != lin_b or n_a > n_b:
        return None
    return n_b - n_a


def observation_space() -> gym.spaces.Box:
    return gym.spaces.Box(STATE_LOW, STATE_HIGH, dtype=np.float32)


def action_space() -> gym.spaces.Box:
    """The raw action space (:data:`rl.state.ACTION_LIMIT`): SB3 clips samples to it while
    collecting, so it must be wider than the [-1, 1] box the actions are mapped from."""
    return gym.spaces.Box(-ACTION_LIMIT, ACTION_LIMIT, shape=(ACTION_DIM,), dtype=np.float32)


def rollout_buffer(model: PPO, transitions: Sequence[Transition]) -> RolloutBuffer:
    """An SB3 ``RolloutBuffer`` holding ``transitions`` as one-step episodes, advantages done.

    Every step starts an episode and ends it, so GAE gives ``advantage = reward - value`` and
    ``return = reward``; the recorded (not recomputed) log-prob and value are what PPO's ratio
    and value clipping need.
    """
    buf = RolloutBuffer(
        len(transitions),
        model.observation_space,
        model.action_space,
        device=model.device,
        gae_lambda=model.gae_lambda,
        gamma=model.gamma,
        n_envs=1,
    )
    for t in transitions:
        buf.add(
            np.asarray(t.state, dtype=np.float32)[None],
            np.asarray(t.raw_action, dtype=np.float32)[None],
            np.array([t.reward], dtype=np.float32),
            np.array([True]),
            torch.tensor([t.value], dtype=torch.float32),
            torch.tensor([t.log_prob], dtype=torch.float32),
        )
    buf.compute_returns_and_advantage(last_values=torch.zeros(1), dones=np.array([True]))
    return buf


@contextlib.contextmanager
def seeded(key: str) -> Iterator[None]:
    """numpy's and torch's global generators seeded from ``key`` for the block, then put back:
    SB3's ``PPO.train()`` shuffles minibatches with the global numpy generator, so without this
    the same update from the same transitions would differ from run to run."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")
    np_state, torch_state = np.random.get_state(), torch.random.get_rng_state()
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


def _silent_logger() -> Logger:
    """A logger that only keeps values (``train()`` records into it; nothing is written)."""
    return Logger(folder=None, output_formats=[])


def _param_vector(model: PPO) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.policy.parameters()).detach().clone()


class PolicyRuntime:
    """A PPO model, its action bounds and version; see the module docstring.

    ``rng`` draws the exploration noise of stochastic actions (seeded: a replay with the same
    seed and inputs draws the same actions). Not thread-safe; one per worker.
    """

    def __init__(
        self,
        model: PPO,
        lineage: str,
        updates: int = 0,
        bounds: ActionBounds | None = None,
        params: PPOParams | None = None,
        seed: int | None = None,
    ) -> None:
        policy = model.policy
        if not isinstance(policy, ActorCriticPolicy) or not policy.share_features_extractor:
            raise TypeError("PolicyRuntime needs an ActorCriticPolicy with a shared extractor")
        if not isinstance(policy.action_dist, DiagGaussianDistribution):
            raise TypeError("PolicyRuntime needs a diagonal Gaussian policy (no gSDE)")
        if model.observation_space.shape != (len(NAMES),):
            raise ValueError(
                f"policy observes {model.observation_space.shape}, "
                f"the RL state has {len(NAMES)} components"
            )
        cap_threads(1)
        self.model = model
        self.lineage = lineage
        self.updates = updates
        self.bounds = bounds or ActionBounds()
        self.params = params or PPOParams()
        self.rng = np.random.default_rng(seed)
        if not getattr(model, "_custom_logger", False):
            model.set_logger(_silent_logger())
        policy.set_training_mode(False)

    @property
    def version(self) -> str:
        return f"ppo-{self.lineage}-v{self.updates}"

    # ---------------------------------------------------------------------------- acting
    def _forward(
        self, obs: np.ndarray, noise: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(actions, log_probs, values) for a (n, 8) float32 batch.

        The torch part runs the policy's own modules (so the mode is exactly what
        ``model.predict`` computes); the Gaussian sample and its log-density, SB3's
        ``DiagGaussianDistribution.log_prob`` formula, are a few float32 numpy ops.
        """
        policy = self.model.policy
        with torch.no_grad():
            latent_pi, latent_vf = policy.mlp_extractor(
                policy.features_extractor(torch.from_numpy(obs))
            )
            mean = policy.action_net(latent_pi).numpy()
            values = policy.value_net(latent_vf).numpy().reshape(-1)
            log_std = policy.log_std.numpy()
        std = np.exp(log_std)
        act = mean if noise is None else (mean + std * noise).astype(np.float32)
        log_prob = (
            -((act - mean) ** 2) / (2 * std**2) - np.log(std) - np.float32(_HALF_LOG_2PI)
        ).sum(axis=-1)
        return act, log_prob, values

    def act_batch(
        self, states: Sequence[RLState], stochastic: bool, noise: np.ndarray | None = None
    ) -> list[SizingDecision]:
        """Size several signals in one forward pass.

        ``noise`` (n, 3) standard-normal draws replace the runtime's RNG, e.g. to derive the
        exploration deterministically from a trade key; ignored when not ``stochastic``.
        """
        if not states:
            return []
        obs = np.stack([s.to_array() for s in states])
        eps = None
        if stochastic:
            eps = (
                self.rng.standard_normal((len(states), ACTION_DIM))
                if noise is None
                else np.asarray(noise, dtype=np.float64).reshape(len(states), ACTION_DIM)
            )
            eps = eps.astype(np.float32)
        actions, log_probs, values = self._forward(obs, eps)
        version = self.version
        out = []
        for s, o, a, lp, v in zip(states, obs, actions, log_probs, values, strict=True):
            size, tp, sl, degenerate = map_action(a, s.equity_usd, self.bounds)
            out.append(
                SizingDecision(
                    state=tuple(float(x) for x in o),
                    raw_action=tuple(float(x) for x in a),
                    log_prob=float(lp),
                    value=float(v),
                    policy_version=version,
                    position_size_usd=size,
                    tp_pct=tp,
                    sl_pct=sl,
                    degenerate=degenerate,
                    stochastic=stochastic,
                )
            )
        return out

    def act(
        self, state: RLState, stochastic: bool, noise: np.ndarray | None = None
    ) -> SizingDecision:
        """Size one signal (see :meth:`act_batch`)."""
        return self.act_batch(
            [state], stochastic, None if noise is None else np.asarray(noise).reshape(1, ACTION_DIM)
        )[0]

    # ---------------------------------------------------------------------------- learning
    def _usable(self, t: Transition, max_lag: int | None) -> bool:
        if not t.stochastic or len(t.state) != len(NAMES) or len(t.raw_action) != ACTION_DIM:
            return False
        nums = (*t.state, *t.raw_action, t.log_prob, t.value, t.reward)
        if not all(math.isfinite(x) for x in nums):
            return False
        if max_lag is not None:
            lag = policy_lag(t.policy_version, self.version)
            if lag is None or lag > max_lag:
                return False
        return True

    def update(
        self, transitions: Sequence[Transition], max_lag: int | None = None
    ) -> UpdateMetrics:
        """One PPO update from closed trades; bumps the version if any transition was used.

        Dropped (counted, not used): deterministic or non-finite records, and with ``max_lag``
        records from another lineage or more than ``max_lag`` updates old
        (``QT_RL_V3_MAX_POLICY_LAG``). Deterministic: the same policy and transitions give the
        same new weights (the minibatch shuffling is seeded by the version it updates).
        """
        t0 = time.perf_counter()
        kept = [t for t in transitions if self._usable(t, max_lag)]
        dropped = len(transitions) - len(kept)
        before_version = self.version
        if not kept:
            nan = float("nan")
            return UpdateMetrics(
                nan,
                nan,
                nan,
                nan,
                nan,
                nan,
                0,
                dropped,
                0.0,
                before_version,
                before_version,
                time.perf_counter() - t0,
            )
        model = self.model
        buf = rollout_buffer(model, kept)
        before = _param_vector(model)
        saved = model.rollout_buffer
        model.rollout_buffer = buf
        try:
            with seeded(before_version):
                model.train()
        finally:
            model.rollout_buffer = saved
            model.policy.set_training_mode(False)
        change = float(torch.linalg.vector_norm(_param_vector(model) - before))
        self.updates += 1
        logged = model.logger.name_to_value
        return UpdateMetrics(
            policy_loss=float(logged["train/policy_gradient_loss"]),
            value_loss=float(logged["train/value_loss"]),
            entropy_loss=float(logged["train/entropy_loss"]),
            approx_kl=float(logged["train/approx_kl"]),
            clip_fraction=float(logged["train/clip_fraction"]),
            mean_reward=float(np.mean([t.reward for t in kept])),
            transitions=len(kept),
            dropped=dropped,
            param_change_norm=change,
            version_before=before_version,
            version_after=self.version,
            seconds=time.perf_counter() - t0,
        )

    # ---------------------------------------------------------------------------- artifacts
    def save(self, directory: Path) -> list[Path]:
        """Write ``ppo.zip`` (SB3's format) and ``policy.json``; return their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        zip_path = directory / ZIP_NAME
        # episode bookkeeping of the pretraining run is not part of the policy
        self.model.save(
            zip_path,
            exclude=[
                "ep_info_buffer",
                "ep_success_buffer",
                "_last_obs",
                "_last_episode_starts",
                "_last_original_obs",
            ],
        )
        meta = {
            "format": FORMAT,
            "version": self.version,
            "lineage": self.lineage,
            "updates": self.updates,
            "bounds": self.bounds.to_dict(),
            "params": self.params.to_dict(),
            "state_names": list(NAMES),
            "stable_baselines3": stable_baselines3.__version__,
        }
        json_path = directory / JSON_NAME
        json_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
        return [zip_path, json_path]

    @classmethod
    def load(cls, directory: Path, seed: int | None = None) -> PolicyRuntime:
        """Rebuild a runtime saved by :meth:`save`; refuses a different state definition."""
        directory = Path(directory)
        meta = json.loads((directory / JSON_NAME).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"unknown policy format {meta.get('format')!r}")
        if tuple(meta["state_names"]) != NAMES:
            raise ValueError(
                f"policy was trained on state {meta['state_names']}, this code builds {list(NAMES)}"
            )
        params = PPOParams.from_dict(meta["params"])
        zip_path = directory / ZIP_NAME
        cap_threads(1)
        skip_dynamo_import()  # SB3 builds an Adam: 1-2 s of torch._dynamo imports otherwise
        model = PPO.load(zip_path, device="cpu", custom_objects=_custom_objects(zip_path, params))
        return cls(
            model,
            meta["lineage"],
            int(meta["updates"]),
            ActionBounds.from_dict(meta["bounds"]),
            params,
            seed,
        )


def _custom_objects(zip_path: Path, params: PPOParams) -> dict[str, Any]:
    """Replacements for every cloudpickled entry of the zip, so loading unpickles nothing."""
    known: dict[str, Any] = {
        "observation_space": observation_space(),
        "action_space": action_space(),
        "policy_class": ActorCriticPolicy,
        "lr_schedule": FloatSchedule(ConstantSchedule(params.learning_rate)),
        "learning_rate": params.learning_rate,
        "clip_range": FloatSchedule(ConstantSchedule(params.clip_range)),
        "clip_range_vf": None,
        "rollout_buffer_class": RolloutBuffer,
        "rollout_buffer_kwargs": {},
    }
    with zipfile.ZipFile(zip_path) as zf:
        data = json.loads(zf.read("data"))
    out: dict[str, Any] = {}
    for key, item in data.items():
        if isinstance(item, dict) and ":serialized:" in item:
            if key not in known:
                raise ValueError(f"{zip_path}: pickled entry {key!r} has no safe replacement")
            out[key] = known[key]
    return out


def pretrain(
    env: gym.Env, timesteps: int, seed: int, params: PPOParams | None = None
) -> PolicyRuntime:
    """Train a fresh PPO on ``env`` (usually :class:`training.env.SizingEnv`) for ``timesteps``."""
    cap_threads(1)
    params = params or PPOParams()
    arch = list(params.net_arch)
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=params.learning_rate,
        n_steps=params.n_steps,
        batch_size=params.batch_size,
        n_epochs=params.n_epochs,
        gamma=params.gamma,
        gae_lambda=params.gae_lambda,
        clip_range=params.clip_range,
        ent_coef=params.ent_coef,
        vf_coef=params.vf_coef,
        max_grad_norm=params.max_grad_norm,
        target_kl=params.target_kl,
        policy_kwargs={"net_arch": {"pi": arch, "vf": arch}, "log_std_init": params.log_std_init},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    model.set_logger(_silent_logger())
    model.learn(total_timesteps=timesteps)
    lineage = hashlib.sha256(_param_vector(model).numpy().tobytes()).hexdigest()[:12]
    bounds = getattr(env, "bounds", None)
    return PolicyRuntime(
        model, lineage, 0, bounds if isinstance(bounds, ActionBounds) else None, params, seed
    )

"""Bootstrap: train the four voters and the PPO sizing policy from tick files, register them.

One call (``python -m cli.bootstrap``, or automatically when the live flow starts with an
empty registry) does the whole cycle:

1. replay the ticks through the live flow's own validation, bar and feature code
   (:func:`training.history.history_from_ticks`);
2. label the warm bars (:mod:`models.labels`) and split by time: 60% train, 10% early
   stopping, 15% validation, 15% test, purged at every cut (a row whose label ends within a
   horizon of the next slice is dropped, :func:`models.dataset.purged_split`), so no label
   straddles two slices and the reported figures are untouched by training decisions;
3. train XGBoost and LightGBM (early stopping on its own slice) and N-HiTS and PatchTST (on the
   return series before the validation cut, less the embargo);
4. score the validation and test splits with each model and with the ensemble's rules;
5. pretrain the PPO sizing policy in :class:`training.env.SizingEnv`, which replays the history's
   ticks through the live execution code, sized on the ensemble's own BUY/SELL signals (topped
   up with the documented momentum rule when the ensemble calls too few trades to learn from);
6. publish all five to the registry as production, with the training data range and metrics,
   and the training features' reference distribution (``feature_reference``, what CLM's drift
   check compares recent features with).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from learning.drift import MODEL_NAME as REFERENCE
from learning.drift import FeatureReference
from models.base import MODEL_NAMES, POLICY_NAME, SignalModel
from models.dataset import History, TrainingSet, bar_ms, build_training_set, purged_split
from models.labels import LabelConfig
from models.metrics import classification_report, constant_baseline
from models.registry import ModelRegistry
from models.sequence import NHITSModel, NHITSParams, PatchTSTModel, PatchTSTParams
from models.trees import LightGBMModel, TreeParams, XGBoostModel
from operators.ensemble import Decision, EnsembleConfig, decide
from rl.policy import PolicyRuntime, pretrain
from schemas.features import FEATURE_SET_VERSION, FeatureVector
from schemas.registry import ModelStage, ModelVersion
from schemas.signals import CLASS_OF, Action, Vote
from schemas.tables import feature_rows
from schemas.timeutil import from_ms, to_ms
from settings import Settings
from storage.store import Store
from training.env import EnvConfig, SignalEvent, SizingEnv, momentum_signals
from training.history import history_from_ticks

SPLIT = (0.6, 0.1, 0.15, 0.15)  # train, early stopping, validation, test


@dataclass(frozen=True)
class BootstrapConfig:
    """Training budget. ``quick`` is for tests: tiny models, seconds not minutes."""

    tree: TreeParams = field(default_factory=TreeParams)
    nhits: NHITSParams = field(default_factory=NHITSParams)
    patchtst: PatchTSTParams = field(default_factory=PatchTSTParams)
    ppo_timesteps: int = 8_192
    min_policy_signals: int = 200
    seed: int = 0

    @classmethod
    def quick(cls) -> BootstrapConfig:
        return cls(
            tree=TreeParams(max_rounds=40),
            nhits=NHITSParams(max_steps=30),
            patchtst=PatchTSTParams(max_steps=30),
            ppo_timesteps=512,
        )


@dataclass
class BootstrapReport:
    versions: dict[str, ModelVersion]
    metrics: dict[str, dict[str, float]]
    rows: dict[str, int]
    seconds: float

    def table(self) -> str:
        head = (
            f"{'model':<10} {'version':<8} {'split':<5} {'accuracy':>8} {'macro-F1':>8} "
            f"{'calls':>6} {'hit rate':>8}"
        )
        lines = [head, "-" * len(head)]
        for name in (*MODEL_NAMES, "ensemble", "baseline"):
            m = self.metrics.get(name)
            if m is None:
                continue
            version = self.versions[name].version if name in self.versions else "-"
            for split in ("val", "test"):
                if f"{split}_macro_f1" not in m:
                    continue

                def num(key: str, m: dict = m, split: str = split) -> str:
                    value = m.get(f"{split}_{key}")
                    return f"{value:>8.3f}" if value is not None else f"{'-':>8}"

                calls = m.get(f"{split}_calls")
                lines.append(
                    f"{name:<10} {version:<8} {split:<5} {num('accuracy')} "
                    f"{num('macro_f1')} {'-' if calls is None else int(calls):>6} "
                    f"{num('call_hit_rate')}"
                )
        ppo = self.metrics.get(POLICY_NAME)
        if ppo:
            lines.append(
                f"{POLICY_NAME:<10} {self.versions[POLICY_NAME].version:<8} "
                f"pretrained on {int(ppo['signals'])} signals, "
                f"{int(ppo['timesteps'])} steps; mean reward per trade "
                f"{ppo['mean_reward']:.4f}"
            )
        lines.append(
            f"rows: train {self.rows['train']}, early stopping {self.rows['es']}, "
            f"val {self.rows['val']}, test {self.rows['test']}; {self.seconds:.1f} s"
        )
        return "\n".join(lines)


def _classes(preds: Sequence[tuple[Action, float]]) -> np.ndarray:
    return np.array([CLASS_OF[a] for a, _ in preds], dtype=np.int64)


def _scores(prefix: str, data: TrainingSet, idx: np.ndarray, pred: np.ndarray) -> dict:
    rep = classification_report(data.y[idx], pred, data.forward_return[idx], data.threshold[idx])
    return {f"{prefix}_{k}": float(v) for k, v in rep.items()}


def ensemble_decisions(
    models: dict[str, SignalModel], vectors: Sequence[FeatureVector], cfg: EnsembleConfig
) -> list[Decision]:
    """The ensemble's decisions on historical vectors (the live step's rules)."""
    preds = {name: models[name].predict(vectors) for name in MODEL_NAMES}
    out = []
    for i, v in enumerate(vectors):
        votes = [Vote(n, "", preds[n][i][0], float(preds[n][i][1])) for n in MODEL_NAMES]
        out.append(decide(votes, v.values["vol_daily"], cfg))
    return out


def policy_signals(
    history: History, models: dict[str, SignalModel], cfg: EnsembleConfig, minimum: int
) -> list[SignalEvent]:
    """BUY/SELL signals the ensemble makes over the history; momentum signals top up."""
    out: list[SignalEvent] = []
    for symbol in history.symbols:
        vectors = history.vectors[symbol]
        warm = [i for i, v in enumerate(vectors) if v.warm]
        decisions = ensemble_decisions(models, [vectors[i] for i in warm], cfg)
        for i, d in zip(warm, decisions, strict=True):
            if d.action is not Action.HOLD:
                out.append(
                    SignalEvent(symbol, i, d.action, d.confidence, vectors[i].values["vol_daily"])
                )
    if len(out) < minimum:
        for symbol in history.symbols:
            out.extend(momentum_signals(symbol, history.vectors[symbol]))
    key = {s: [to_ms(b.end) for b in history.bars[s]] for s in history.symbols}
    return sorted(out, key=lambda e: (key[e.symbol][e.bar_index], e.symbol))


def bootstrap(
    settings: Settings,
    registry: ModelRegistry,
    ticks: str | None = None,
    config: BootstrapConfig | None = None,
    out: TextIO = sys.stdout,
    progress: bool = True,
    archive: Callable[[list[FeatureVector]], None] | None = None,
) -> BootstrapReport:
    """Train and register all five models as production (see the module docstring).

    ``archive`` receives every feature vector of the training history (the live flow stores
    them in the features table: retraining cycles then look back over the data the production
    models learned from, not only over what was replayed since).
    """
    config = config or BootstrapConfig()
    ticks = ticks or settings.bootstrap_ticks
    started = time.monotonic()
    label_cfg = LabelConfig.from_settings(settings)
    history = history_from_ticks(ticks, settings, progress=progress, keep_ticks=True)
    if archive is not None:
        archive([v for symbol in history.symbols for v in history.vectors[symbol]])
    data = build_training_set(history, label_cfg)
    if len(data) < 500:
        raise ValueError(
            f"bootstrap: {ticks} gives {len(data)} labelled bars; at least 500 are "
            "needed to train and validate (more data, or a shorter QT_BAR_SECONDS)"
        )
    embargo = label_cfg.horizon * bar_ms(history)
    train, es, val, test = purged_split(data.ts_ms, data.label_end_ms, SPLIT, embargo)
    if min(len(train), len(es), len(val), len(test)) == 0:
        raise ValueError(
            f"bootstrap: {ticks} gives an empty slice (train {len(train)}, early "
            f"stopping {len(es)}, validation {len(val)}, test {len(test)})"
        )
    cut_ms = int(data.ts_ms[val].min()) - embargo  # sequence models see nothing after
    steps = _Steps(progress, out)

    models: dict[str, SignalModel] = {}
    with steps("xgboost"):
        models["xgboost"] = XGBoostModel.train(data, train, es, config.tree, config.seed)
    with steps("lightgbm"):
        models["lightgbm"] = LightGBMModel.train(data, train, es, config.tree, config.seed)
    with steps("nhits"):
        models["nhits"] = NHITSModel.train(history, cut_ms, label_cfg, config.nhits, config.seed)
    with steps("patchtst"):
        models["patchtst"] = PatchTSTModel.train(
            history, cut_ms, label_cfg, config.patchtst, config.seed
        )

    metrics: dict[str, dict[str, float]] = {}
    ens_cfg = EnsembleConfig.from_settings(settings)
    for split, idx in (("val", val), ("test", test)):
        vectors = [data.vectors[i] for i in idx]
        for name in MODEL_NAMES:
            pred = _classes(models[name].predict(vectors))
            metrics.setdefault(name, {}).update(_scores(split, data, idx, pred))
        ens = np.array([CLASS_OF[d.action] for d in ensemble_decisions(models, vectors, ens_cfg)])
        metrics.setdefault("ensemble", {}).update(_scores(split, data, idx, ens))
        base = constant_baseline(data.y[train], data.y[idx])
        metrics.setdefault("baseline", {})[f"{split}_macro_f1"] = float(base["macro_f1"])

    with steps("ppo"):
        signals = policy_signals(history, models, ens_cfg, config.min_policy_signals)
        env = SizingEnv(history, signals, EnvConfig.from_settings(settings))
        policy = pretrain(env, config.ppo_timesteps, config.seed)
        metrics[POLICY_NAME] = {
            "signals": float(len(signals)),
            "timesteps": float(config.ppo_timesteps),
            "mean_reward": _mean_reward(policy, env),
        }

    # the span the models were fitted on: nothing from the validation slice on
    data_from, data_to = from_ms(int(data.ts_ms[train].min())), from_ms(int(data.ts_ms[val].min()))
    # the reference also carries the ensemble's held-out figures: the performance trigger
    # compares the live ensemble's realised call hit rate with them
    registry.publish(
        REFERENCE,
        FeatureReference.fit(data.X[train], ts_ms=data.ts_ms[train]).save,
        stage=ModelStage.PRODUCTION,
        feature_set=FEATURE_SET_VERSION,
        data_from=data_from,
        data_to=data_to,
        metrics={f"ensemble.{k}": v for k, v in metrics["ensemble"].items()},
        params={"trigger": "bootstrap"},
    )
    versions: dict[str, ModelVersion] = {}
    artifacts: list[tuple[str, Any]] = [*models.items(), (POLICY_NAME, policy)]
    for name, model in artifacts:
        versions[name] = registry.publish(
            name,
            model.save,
            stage=ModelStage.PRODUCTION,
            feature_set=FEATURE_SET_VERSION,
            data_from=data_from,
            data_to=data_to,
            metrics=metrics[name],
            params={"source": ticks, "trigger": "bootstrap"},
        )
    report = BootstrapReport(
        versions,
        metrics,
        {"train": len(train), "es": len(es), "val": len(val), "test": len(test)},
        time.monotonic() - started,
    )
    print(report.table(), file=out)
    return report


def store_features(store: Store) -> Callable[[list[FeatureVector]], None]:
    """An ``archive`` for :func:`bootstrap` that inserts the vectors into ``store``'s features
    table (idempotent: the table replaces rows by symbol and time)."""

    def archive(vectors: list[FeatureVector]) -> None:
        for i in range(0, len(vectors), 50_000):
            block = feature_rows(vectors[i : i + 50_000])
            store.insert_block(block)

    return archive


def _mean_reward(policy: PolicyRuntime, env: SizingEnv) -> float:
    """Mean reward per sized signal of the deterministic policy over one pass of the env."""
    obs, _ = env.reset(seed=0)
    total, n = 0.0, 0
    while True:
        action = policy.model.predict(obs, deterministic=True)[0]
        obs, reward, done, truncated, _ = env.step(action)
        total += float(reward)
        n += 1
        if done or truncated:
            return total / max(n, 1)


class _Steps:
    """Progress of the training stages (a tqdm bar on a terminal, plain lines otherwise)."""

    def __init__(self, enabled: bool, out: TextIO) -> None:
        self.enabled = enabled
        self.out = out
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=len(MODEL_NAMES) + 1, desc="training", unit=" model", file=out)

    def __call__(self, name: str) -> _Steps:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.t0 = time.monotonic()
        if self.bar is not None:
            self.bar.set_postfix_str(self.name)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if self.bar.n == self.bar.total:
                self.bar.close()

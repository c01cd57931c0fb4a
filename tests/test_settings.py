"""Settings: the one source of every default. Each stage's config built with no arguments
equals the config built from default settings, so a default changed in ``Settings`` reaches
every stage (one shared check over every config, as River checks every estimator)."""

from __future__ import annotations

import dataclasses
import enum

import pytest

from learning.clm import ClmConfig
from learning.evidence import EvidenceConfig
from learning.trainer import CycleConfig
from learning.triggers import TriggerConfig
from models.labels import LabelConfig
from operators.engine import EngineConfig
from operators.ensemble import EnsembleConfig
from operators.policy_learner import LearnerConfig
from operators.portfolio import ExecConfig
from operators.sizing import SizingConfig
from operators.supervisor import SupervisorConfig
from settings import DEFAULTS, Settings
from training.env import EnvConfig

CONFIGS = [
    ClmConfig,
    CycleConfig,
    EngineConfig,
    EnsembleConfig,
    EnvConfig,
    EvidenceConfig,
    ExecConfig,
    LabelConfig,
    LearnerConfig,
    SizingConfig,
    SupervisorConfig,
    TriggerConfig,
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_a_config_defaults_to_what_the_default_settings_give(config: type) -> None:
    assert config() == config.from_settings(Settings.from_env({}))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_a_config_follows_a_changed_setting(config: type) -> None:
    """At least one setting moves each config: it reads Settings, not constants of its own."""
    base = config.from_settings(DEFAULTS)
    changed = []
    for f in dataclasses.fields(Settings):
        value = getattr(DEFAULTS, f.name)
        if isinstance(value, bool):
            other = not value
        elif isinstance(value, int | float):
            other = value * 2 + 1
        elif isinstance(value, enum.Enum):
            other = next(m for m in type(value) if m != value)
        else:
            continue
        try:
            moved = config.from_settings(DEFAULTS.replace(**{f.name: other})) != base
        except ValueError:  # the config checked the value: it read it
            moved = True
        if moved:
            changed.append(f.metadata["env"])
    assert changed, f"{config.__name__} reads no setting"


def test_defaults_are_settings_from_an_empty_environment() -> None:
    assert Settings.from_env({}) == DEFAULTS

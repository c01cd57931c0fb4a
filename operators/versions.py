"""Which model versions the decision engine votes with: production, and challengers in shadow.

Two modes. **Following** the registry (learning off, or in another process): the engine
re-reads the registry's stages before each batch of decisions, and :meth:`ActiveModels.poll`
checks before every bar whether any stage changed since (one ``stat`` of the registry's
``generation.json``), so a promotion made elsewhere (the learning flow, ``python -m
cli.registry``) votes from the next bar decided after it.

**Owned** (the continuous learner runs inside the engine): the engine holds the versions as
part of its state and the learner changes them through :meth:`ActiveModels.promote` and
friends, which write the registry and take effect at the exact bar where the learner decided.
So a replay makes the same decisions whatever the workers did, and a resume from a recovery
snapshot uses the versions of that snapshot, not a later state left in the registry.

The rule for **manual changes** in owned mode: the registry counts the stage changes made by
hand (``manual`` in ``generation.json``: promote, rollback, retire, repair by the registry
CLI); the engine keeps the count it has adopted in its state. When :meth:`~ActiveModels.poll`
sees the count move, the engine adopts the registry at that bar: every model's production
version becomes the registry's, and challengers no longer in shadow there (retired, promoted
or parked by hand) stop voting; challengers the learner put in shadow stay. The PPO policy a
learner pinned is re-pinned to the registry's production policy in the same step
(:meth:`operators.sizing.PolicySource.adopt`), and the learners carry on from what was
adopted: the CLM closes a challenger taken out of shadow by hand without touching its stage
(:mod:`learning.clm`), and the next PPO update starts from the adopted policy. Without manual
changes the count never moves and nothing here reads the registry, so runs stay
deterministic; a resume adopts the manual changes made since its snapshot at its first bar.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from models.base import MODEL_NAMES
from schemas.registry import ModelStage

log = logging.getLogger(__name__)


class ActiveModels:
    """Production and shadow versions per model, followed or owned (module docstring)."""

    def __init__(
        self,
        registry: Any,
        owned: bool,
        names: Sequence[str] = MODEL_NAMES,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.registry = registry
        self.owned = owned
        self.names = tuple(names)
        self.production: dict[str, str] = {}
        self.shadows: list[tuple[str, str]] = []
        self._seen = registry.generation()  # before reading: a change after it is noticed
        if state is not None:
            self.production = dict(state["production"])
            self.shadows = [(model, version) for model, version in state["shadows"]]
            self.manual: int = state.get("manual", registry.manual_changes())
            self._seen = None  # check the registry at the first bar
        else:
            self.manual = registry.manual_changes()
            self._read()

    def _read(self) -> None:
        for name in self.names:
            version = self.registry.production_version(name)
            if version is None:
                raise RuntimeError(
                    f"no production version of {name} in the model registry {self.registry.root}"
                )
            self.production[name] = version
        self.shadows = [
            (n, v) for n in self.names for v in self.registry.versions_in(n, ModelStage.SHADOW)
        ]

    def refresh(self) -> None:
        """Following: pick up the registry's current stages (cheap when nothing changed)."""
        if not self.owned:
            self._read()

    def poll(self) -> bool:
        """Before a bar: take up stage changes made since the last bar (following: any;
        owned: the manual ones). True when a manual change was adopted, so the caller adopts
        the policy too. One ``stat`` when nothing changed."""
        seen = self.registry.generation()
        if seen == self._seen:
            return False
        self._seen = seen
        self.registry.flush_records()  # changes made while this process held the store
        if not self.owned:
            self._read()
        manual = self.registry.manual_changes()
        if manual == self.manual:
            return False
        self.manual = manual
        if self.owned:
            self._adopt()
        log.warning(
            "model registry: adopted a manual change (%s): production %s",
            self.registry.last_manual_change(),
            ", ".join(f"{m} {v}" for m, v in self.production.items()),
        )
        return True

    def _adopt(self) -> None:
        """Owned: the registry's production versions; shadows it no longer has in shadow go."""
        for name in self.names:
            version = self.registry.production_version(name)
            if version is not None:
                self.production[name] = version
        self.shadows = [
            (m, v) for m, v in self.shadows if v in self.registry.versions_in(m, ModelStage.SHADOW)
        ]

    def keys(self) -> set[tuple[str, str]]:
        return {*self.production.items(), *self.shadows}

    # --- changes by the in-process learner (owned mode) -----------------------------------
    def add_shadow(self, model: str, version: str) -> None:
        if (model, version) not in self.shadows:
            self.shadows.append((model, version))

    def promote(self, model: str, version: str) -> None:
        """``version`` decides from now on; the previous production version is retired."""
        self.registry.set_stage(model, version, ModelStage.PRODUCTION, "clm: promoted")
        self.production[model] = version
        self._drop(model, version)

    def park(self, model: str, version: str) -> None:
        """A challenger proven better while auto-promotion is off: out of shadow, kept as a
        candidate for a person to promote."""
        self.registry.set_stage(model, version, ModelStage.CANDIDATE, "clm: parked")
        self._drop(model, version)

    def retire(self, model: str, version: str) -> None:
        self.registry.set_stage(model, version, ModelStage.RETIRED, "clm: retired")
        self._drop(model, version)

    def _drop(self, model: str, version: str) -> None:
        self.shadows = [s for s in self.shadows if s != (model, version)]

    def snapshot(self) -> dict[str, Any]:
        return {
            "production": dict(self.production),
            "shadows": list(self.shadows),
            "manual": self.manual,
        }

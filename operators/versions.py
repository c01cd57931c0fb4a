"""Which model versions the decision engine votes with: production, and challengers in shadow.

Two modes. **Following** the registry (learning in another process, or no learner that changes
models here): before each batch of decisions the engine re-reads the registry's stages, so a
promotion made elsewhere (the learning flow, the registry CLI) votes from the next bar.
**Owned** (the continuous learner runs inside the engine): the engine holds the versions as
part of its state and only the learner changes them, through :meth:`ActiveModels.promote` and
friends, which write the registry and take effect at the exact bar where the learner decided.
So a replay makes the same decisions whatever the workers did, and a resume from a recovery
snapshot uses the versions of that snapshot, not a later state left in the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models.base import MODEL_NAMES
from schemas.registry import Stage


class ActiveModels:
    """Production and shadow versions per model, followed or owned (module docstring)."""

    def __init__(self, registry: Any, owned: bool, names: Sequence[str] = MODEL_NAMES,
                 state: dict[str, Any] | None = None) -> None:
        self.registry = registry
        self.owned = owned
        self.names = tuple(names)
        self.production: dict[str, str] = {}
        self.shadows: list[tuple[str, str]] = []
        if state is not None:
            self.production = dict(state["production"])
            self.shadows = [tuple(x) for x in state["shadows"]]  # type: ignore[misc]
        else:
            self._read()

    def _read(self) -> None:
        for name in self.names:
            version = self.registry.production_version(name)
            if version is None:
                raise RuntimeError(f"no production version of {name} in the model registry "
                                   f"{self.registry.root}")
            self.production[name] = version
        self.shadows = [(n, v) for n in self.names
                        for v in self.registry.versions_in(n, Stage.SHADOW)]

    def refresh(self) -> None:
        """Following: pick up the registry's current stages (cheap when nothing changed)."""
        if not self.owned:
            self._read()

    def keys(self) -> set[tuple[str, str]]:
        return {*self.production.items(), *self.shadows}

    # --- changes by the in-process learner (owned mode) -----------------------------------
    def add_shadow(self, model: str, version: str) -> None:
        if (model, version) not in self.shadows:
            self.shadows.append((model, version))

    def promote(self, model: str, version: str) -> None:
        """``version`` decides from now on; the previous production version is retired."""
        self.registry.set_stage(model, version, Stage.PRODUCTION)
        self.production[model] = version
        self._drop(model, version)

    def park(self, model: str, version: str) -> None:
        """A challenger proven better while auto-promotion is off: out of shadow, kept as a
        candidate for a person to promote."""
        self.registry.set_stage(model, version, Stage.CANDIDATE)
        self._drop(model, version)

    def retire(self, model: str, version: str) -> None:
        self.registry.set_stage(model, version, Stage.RETIRED)
        self._drop(model, version)

    def _drop(self, model: str, version: str) -> None:
        self.shadows = [s for s in self.shadows if s != (model, version)]

    def snapshot(self) -> dict[str, Any]:
        return {"production": dict(self.production), "shadows": list(self.shadows)}

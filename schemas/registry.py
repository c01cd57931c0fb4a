"""Model registry records."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class ModelStage(StrEnum):
    CANDIDATE = "candidate"
    SHADOW = "shadow"
    PRODUCTION = "production"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One immutable model version. ``sha256`` digests the artifact files (name + content)."""

    model: str
    version: str
    stage: ModelStage
    sha256: str
    feature_set: str
    data_from: datetime | None
    data_to: datetime | None
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: datetime | None = None
    promoted_at: datetime | None = None

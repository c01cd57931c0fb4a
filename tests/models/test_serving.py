"""Serving the registry's models needs neither the training stack nor TorchDynamo.

``import neuralforecast`` (Lightning, Ray, Optuna), ``xgboost`` / ``lightgbm`` (scikit-learn,
SciPy) and ``torch._dynamo`` cost seconds of a live flow's start; loading and scoring
production models must import none of them. A fresh interpreter, because this test process
has imported them all long ago.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from models.base import TRAINING_STACK
from settings import PROJECT_ROOT

HEAVY = TRAINING_STACK

SCRIPT = r"""
import json, sys
from models.base import MODEL_NAMES, POLICY_NAME
from models.registry import ModelRegistry
from operators.ensemble import EnsembleConfig, RegistryModels, Scorer
from schemas.features import FeatureVector
from schemas.timeutil import from_ms
from schemas.features import FEATURE_NAMES

registry = ModelRegistry(sys.argv[1])
policy = registry.load(POLICY_NAME)
values = dict.fromkeys(FEATURE_NAMES, 0.001)
vector = FeatureVector("X", from_ms(60_000), from_ms(0), "fs", True, 1.0, values,
                       tuple([1e-4] * 64))
signal = Scorer(RegistryModels(registry), EnsembleConfig()).score([vector])[0]
print(json.dumps({"votes": [v.failed for v in signal.votes],
                  "modules": sorted(m for m in sys.modules if m in HEAVY)}))
"""


def _fresh(code: str, *args: str) -> Any:
    """Run ``code`` in a fresh interpreter; the JSON of its last line of output."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_and_scoring_import_no_training_stack(trained_registry: Path) -> None:
    result = _fresh(f"HEAVY = {HEAVY!r}\n" + SCRIPT, str(trained_registry))
    assert result["votes"] == [False] * 4  # every model voted
    assert result["modules"] == []


def test_importing_the_live_flow_imports_no_training_stack_nor_pandas() -> None:
    """What ``python -m bytewax.run dataflows.live`` imports before its first tick: not the
    training stack, and not pandas (pyarrow imports it at its first conversion of Python
    objects, which the store's first block makes later, off the start-up path)."""
    script = (
        "import json, sys\nimport dataflows.live\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m in {(*HEAVY, 'pandas')!r})))"
    )
    assert _fresh(script) == []

"""The import contract: packages form layers, and a module imports only from layers below its
own (never from a sibling in its layer, never upwards). Checked over every ``import`` in the
source, those inside functions and under ``TYPE_CHECKING`` included, so a shortcut cannot hide
in a lazy import. ``docs/README.md`` draws the same picture."""

from __future__ import annotations

import ast
from pathlib import Path

from settings import PROJECT_ROOT

# top to bottom; a name imports only names of later rows
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(row)
    for row in (
        ("cli", "deploy"),  # commands and deployment files
        ("dataflows",),  # graph wiring only
        ("training", "report"),  # offline orchestration; the run report
        ("learning",),  # continuous learning: triggers, cycles, evidence, drift
        ("operators",),  # the stages, plain Python, and the decision engine
        ("models", "rl", "connectors"),  # signal models and registry; PPO; sources and sinks
        ("storage",),  # the store (chDB or a server)
        ("settings",),  # the one typed configuration
        ("schemas",),  # events and their serialisation
        ("errors", "metrics", "runtime"),  # process-wide helpers
    )
)
LEVEL = {name: i for i, row in enumerate(LAYERS) for name in row}


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, top-level project name) of every absolute import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out.extend((node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in LEVEL)
    return out


def violations(root: Path = PROJECT_ROOT) -> list[str]:
    found = []
    for owner in sorted(LEVEL):
        files = [root / f"{owner}.py"] if (root / f"{owner}.py").exists() else []
        files += sorted((root / owner).rglob("*.py")) if (root / owner).is_dir() else []
        assert files, f"no source for layer member {owner!r}"
        for path in files:
            for line, name in imported_names(path):
                if name != owner and LEVEL[name] <= LEVEL[owner]:
                    where = "its own layer" if LEVEL[name] == LEVEL[owner] else "a layer above"
                    found.append(f"{path.relative_to(root)}:{line} imports {name} ({where})")
    return found


def test_every_package_is_in_a_layer() -> None:
    packages = {p.parent.name for p in PROJECT_ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    modules = {p.stem for p in PROJECT_ROOT.glob("*.py")}
    assert packages | modules == set(LEVEL)


def test_imports_point_down_the_layers() -> None:
    assert violations() == []


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    for name in LEVEL:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "models" / "bad.py").write_text(
        "def f():\n    from operators.engine import DecisionEngine\n    import rl.state\n"
    )
    assert violations(tmp_path) == [
        "models/bad.py:2 imports operators (a layer above)",
        "models/bad.py:3 imports rl (its own layer)",
    ]

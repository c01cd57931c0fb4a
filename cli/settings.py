"""Print every ``QT_*`` setting with its default and meaning: ``python -m cli.settings``.

``--env`` prints the values in effect, with URL credentials redacted (``user:***@``).
"""

from __future__ import annotations

import sys

import errors
from settings import PROJECT_ROOT, Settings

errors.install()  # a user error is one line, not a traceback (errors.py)


def markdown() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for env, default, doc in Settings.reference():
        shown = default.replace(f"{PROJECT_ROOT}/", "")
        lines.append(f"| `{env}` | `{shown}` | {doc} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--env":
        current = Settings.from_env()
        for env, _, _ in Settings.reference():
            field = next(
                f for f in current.__dataclass_fields__.values() if f.metadata["env"] == env
            )
            print(f"{env}={errors.redact(str(getattr(current, field.name)))}")
        return
    print(markdown())


if __name__ == "__main__":
    main()

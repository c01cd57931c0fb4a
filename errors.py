"""Errors a user can fix, and the one helper that hides credentials: the base layer every
package may import (the command-line hook that prints them is :mod:`cli.errors`).

>>> redact("http://default:s3cret@db:8123/qt and kafka://bob@k:9092/t?password=x&tail=false")
'http://default:***@db:8123/qt and kafka://***@k:9092/t?password=***&tail=false'
"""

from __future__ import annotations

import re

# "scheme://userinfo@" (userinfo up to the last "@" before the path, so an unescaped "@" in a
# password does not leak its tail) and secret-looking query parameters
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/?#\s]*)@")
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:[\w.\-]*(?:password|passwd|pwd|secret|token|api[_\-]?key)[\w.\-]*)=)"
    r"(?P<value>[^&;#\s]*)",
    re.IGNORECASE,
)


class UserError(Exception):
    """An unusable input, setting or environment; the message says what and what to do."""


def redact(text: str) -> str:
    """``text`` with URL credentials replaced by ``***`` (user names are kept)."""

    def userinfo(m: re.Match[str]) -> str:
        info = m["info"]
        if not info:
            return m[0]
        user, sep, _ = info.partition(":")
        return f"{m['scheme']}{user}:***@" if sep else f"{m['scheme']}***@"

    return _SECRET_PARAM.sub(r"\g<key>***", _USERINFO.sub(userinfo, text))

"""Problems a user can fix, reported in one line instead of a traceback: the base layer every
package may import.

An unusable input file, setting or environment (a missing path, a file that is not CSV, a
store locked by another process, a read-only ``QT_HOME``) raises :class:`UserError` where it is
detected, with a message that names the file, setting or path and says what to do. The
entry points (``dataflows.live``, ``dataflows.learning``, ``cli.*``) call :func:`install`, whose
``sys.excepthook`` finds that error anywhere in the exception chain (Bytewax wraps exceptions
raised in sources and steps in its own ``BytewaxRuntimeError``, with the original as
``__cause__``) and prints only::

    error: <message>

with exit status 2. ``QT_DEBUG=1`` keeps the full traceback. Anything else (a bug) keeps the
full traceback too. A settings value that does not parse (``ValueError: QT_X='..': expected
int`` from :mod:`settings`) counts as a user error as well.

:func:`redact` hides the credentials of URLs (``user:password@``, ``?password=``). It is the
one redaction helper: ``cli.settings --env``, the store's errors, the one-line errors and the
tracebacks this hook prints, and (once installed) every Python log message go through it.

>>> redact("http://default:s3cret@db:8123/qt and kafka://bob@k:9092/t?password=x&tail=false")
'http://default:***@db:8123/qt and kafka://***@k:9092/t?password=***&tail=false'
>>> try:
...     try:
...         raise UserError("QT_TICKS: x.csv is empty")
...     except UserError as exc:
...         raise RuntimeError("error calling a step") from exc
... except RuntimeError as wrapped:
...     print(user_message(wrapped))
QT_TICKS: x.csv is empty
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from types import TracebackType

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


DEBUG_ENV = "QT_DEBUG"
EXIT_STATUS = 2

# settings.py: ValueError(f"{name}={raw!r}: expected {type}")
_SETTING_ERROR = re.compile(r"^QT_[A-Z0-9_]+=")


def user_message(exc: BaseException) -> str | None:
    """The message of the first :class:`UserError` in ``exc``'s chain (``__cause__``,
    ``__context__``, exception groups), or of a settings ``ValueError``; None for a bug."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return str(e)
        if isinstance(e, ValueError) and _SETTING_ERROR.match(str(e)):
            return str(e)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        todo.extend(getattr(e, "exceptions", ()))
    return None


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


_previous: Callable[[type[BaseException], BaseException, TracebackType | None], object] | None
_previous = None


def excepthook(etype: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """Print a user error as ``error: <message>`` and exit 2; anything else as before."""
    message = None if debug() else user_message(value)
    if message is None:
        if _previous not in (None, sys.__excepthook__):
            _previous(etype, value, tb)
            return
        # the usual traceback, credentials redacted (a message may quote a setting's URL)
        text = "".join(traceback.format_exception(etype, value, tb))
        sys.stderr.write(redact(text))
        sys.stderr.flush()
        return
    print(f"error: {redact(message)}", file=sys.stderr, flush=True)
    _exit(EXIT_STATUS)


def _exit(status: int) -> None:
    """Exit with ``status`` from inside the excepthook (``sys.exit`` there is reported as an
    error in the hook): run the ``atexit`` handlers first, so stores close as usual."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)


class RedactedLogRecord(logging.LogRecord):
    """A log record whose message is redacted (installed by :func:`install`)."""

    def getMessage(self) -> str:
        return redact(super().getMessage())


def install() -> None:
    """Make uncaught user errors one line, and redact credentials in tracebacks and log
    messages (idempotent)."""
    global _previous
    if sys.excepthook is not excepthook:
        _previous = sys.excepthook
        sys.excepthook = excepthook
    if logging.getLogRecordFactory() is logging.LogRecord:
        logging.setLogRecordFactory(RedactedLogRecord)

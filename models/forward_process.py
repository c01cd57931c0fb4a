"""The sequence nets' forwards in a child process, so they run beside the flow's Python work.

Why a process: the N-HiTS and PatchTST forwards are most of what scoring costs (about 46 µs
a bar on the FXCM month), and torch gives the GIL back and takes it again around every
operator. Run on a thread beside a busy interpreter, each of those takes waits for the
interpreter's switch interval: measured here, forwards ran at 0.00-0.02x of their rate
alone (0.10x traced with TorchScript) while another thread ran pure Python. In a
child process they cost the flow only the request and the reply.

The child (``python -m models.forward_process``) loads a net from its registry directory
the first time a request names it and runs the net's ``_forward_chunks``
(:mod:`models.sequence`), the very code the flow would run, with one torch thread: the
forecasts have the same bits
(tests/models/test_forward_process.py). Requests and replies are length-prefixed pickles on
two pipes; the child reads requests on a thread of its own, so the parent's writes never wait
for its forwards. It runs in a session of its own and ignores SIGINT (a Ctrl-C is the flow's
to handle), and exits when the parent closes its pipe, or dies.

:class:`ForwardProcess` is the parent's side: :meth:`submit` sends a request and returns at
once; :meth:`result` waits for its reply. A lost child raises :class:`ForwardProcessLost`;
the caller computes in-process instead (the same bits).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

_LEN = struct.Struct("<Q")
_PIPE_BYTES = 1 << 20  # replies queued before the child waits for the parent to read them


def use_forward_process(mode: str, processes: int, cores: int | None = None) -> bool:
    """``QT_FORWARD_PROCESS``: on, off, or auto: on when this machine has at least two cores
    per process of the cluster (each process's child needs one beside it; on 2 cores, two
    processes with a child each ran 0.63x one process with its child, without children 1.0x).

    >>> use_forward_process("auto", 1, cores=2), use_forward_process("auto", 2, cores=2)
    (True, False)
    >>> use_forward_process("on", 2, cores=1), use_forward_process("off", 1, cores=8)
    (True, False)
    """
    if mode == "auto":
        cores = cores if cores is not None else len(os.sched_getaffinity(0))
        return cores >= 2 * processes
    return mode == "on"


class ForwardProcessLost(RuntimeError):
    """The child exited or its pipes broke; nothing more can be asked of it."""


class Forwardable(Protocol):
    """What the child can run: a sequence model loaded from ``directory``."""

    @property
    def name(self) -> str: ...
    @property
    def directory(self) -> Path | None: ...

    def _forward_chunks(self, y: np.ndarray) -> np.ndarray: ...


def _write(pipe: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=5)
    pipe.write(_LEN.pack(len(data)) + data)
    pipe.flush()


def _read(pipe: IO[bytes]) -> Any:
    (size,) = _LEN.unpack(_exactly(pipe, _LEN.size))
    return pickle.loads(_exactly(pipe, size))


def _exactly(pipe: IO[bytes], size: int) -> bytes:
    """``size`` bytes (a raw pipe may return fewer per read); EOFError at its end."""
    data = b""
    while len(data) < size:
        more = pipe.read(size - len(data))
        if not more:
            raise EOFError
        data += more
    return data


def _grow(fd: int) -> None:
    """Best effort: a 1 MiB pipe buffer (Linux), so replies do not wait on small reads."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
    except (OSError, ImportError):
        pass


class ForwardProcess:
    """The parent's handle on one child (see the module docstring). Thread-safe: the worker
    threads of a process share one."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "models.forward_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,  # unbuffered: poll() looks at the pipe itself
            start_new_session=True,  # a terminal's Ctrl-C is the parent's (it ignores SIGINT too)
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._to, self._from = self._proc.stdin, self._proc.stdout
        _grow(self._to.fileno())
        _grow(self._from.fileno())
        self._lock = threading.RLock()
        self._next = 0  # requests sent
        self._replied = 0  # replies read (the child answers in order)
        self._done: dict[int, Any] = {}
        self._ignored: set[int] = set()  # preloads: their replies are dropped
        self._loading = 0  # requests to answer before the child counts as up
        self.lost: str | None = None
        # the child goes when this handle does (a flow built in a test, say), or at exit
        self._finalizer = weakref.finalize(self, _close, self._proc)

    @classmethod
    def shared(cls) -> ForwardProcess:
        """This process's forward process, started on first use (and again when the last one
        was lost): the flows a process builds (tests build many) share one child."""
        global _shared
        with _shared_lock:
            if _shared is None or _shared[0] != os.getpid() or _shared[1].lost is not None:
                _shared = (os.getpid(), cls())  # (a forked process starts its own)
            return _shared[1]

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def submitted(self) -> int:
        """How many requests were sent so far."""
        return self._next

    def submit(self, model: Forwardable, y: np.ndarray | None) -> int:
        """Ask for ``model._forward_chunks(y)`` (``None``: only load it); returns the
        request's id at once."""
        if model.directory is None:
            raise ValueError(f"{model.name}: a model not loaded from a directory runs in-process")
        request = (type(model).__module__, type(model).__qualname__, str(model.directory), y)
        with self._lock:
            if self.lost is not None:
                raise ForwardProcessLost(self.lost)
            rid = self._next
            try:
                _write(self._to, (rid, *request))
            except (OSError, ValueError) as exc:
                raise self._lose(f"a request could not be sent ({exc!r})") from exc
            self._next += 1
            return rid

    def preload(self, model: Forwardable) -> None:
        """Have the child load ``model`` now (no reply is waited for)."""
        if model.directory is None:
            return
        with self._lock, contextlib.suppress(ForwardProcessLost):
            self._ignored.add(self.submit(model, None))
            self._loading = self._next

    def ready(self) -> bool:
        """Whether the child is up (its preloads answered) and not lost: until then, callers
        compute in-process rather than wait for its start-up (about a second of imports)."""
        with self._lock:
            return self.lost is None and (self._loading == 0 or self.poll() >= self._loading)

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Wait until :meth:`ready` (at most ``timeout_s``); whether it is."""
        deadline = time.monotonic() + timeout_s
        while not (up := self.ready()) and self.lost is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return up

    def poll(self) -> int:
        """How many requests are answered, reading the replies that are there without
        waiting for more (the child answers in order: request ``i`` is answered when
        ``poll() > i``). A lost child counts as having answered everything: its callers
        compute in-process."""
        with self._lock:
            try:
                while self.lost is None and select.select([self._from], [], [], 0)[0]:
                    self._receive()
            except ForwardProcessLost:
                pass
            return self._next if self.lost is not None else self._replied

    def result(self, rid: int) -> np.ndarray:
        """The reply to request ``rid`` (waits for it); raises what the child raised, or
        :class:`ForwardProcessLost`."""
        with self._lock:
            while rid not in self._done:
                if self.lost is not None:
                    raise ForwardProcessLost(self.lost)
                self._receive()
            value = self._done.pop(rid)
        if isinstance(value, BaseException):
            raise value
        return value

    def _receive(self) -> None:
        try:
            got, value = _read(self._from)
        except (EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
            raise self._lose(f"its reply could not be read ({exc!r})") from exc
        self._replied += 1
        if got in self._ignored:
            self._ignored.discard(got)
        else:
            self._done[got] = value

    def _lose(self, why: str) -> ForwardProcessLost:
        if self.lost is None:
            self._finalizer()
            code = self._proc.returncode
            self.lost = f"the forward process (pid {self._proc.pid}) " + (
                f"exited with code {code}" if code not in (None, 0) else why
            )
        return ForwardProcessLost(self.lost)

    def close(self) -> None:
        """Close the pipes (the child exits) and reap the child; callers compute in-process
        from now on."""
        self.lost = self.lost or f"the forward process (pid {self._proc.pid}) was closed"
        self._finalizer()


_shared: tuple[int, ForwardProcess] | None = None
_shared_lock = threading.Lock()


def _close(proc: subprocess.Popen) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the child ----------------------------------------------------------------------------------
def _load(module: str, qualname: str, directory: str) -> Forwardable:
    import importlib

    cls = getattr(importlib.import_module(module), qualname)
    return cls.load(Path(directory))


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The child's loop: requests in order, one reply each, until ``requests`` ends."""
    from runtime import cap_threads

    cap_threads()
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def read_all() -> None:  # drains the parent's pipe whatever the forwards are doing
        while True:
            try:
                inbox.put(_read(requests))
            except (EOFError, OSError):
                inbox.put(None)
                return

    threading.Thread(target=read_all, daemon=True, name="forward-requests").start()
    models: dict[tuple[str, str, str], Forwardable] = {}
    while (request := inbox.get()) is not None:
        rid, module, qualname, directory, y = request
        try:
            key = (module, qualname, directory)
            model = models.get(key)
            if model is None:
                model = models[key] = _load(module, qualname, directory)
            value: Any = None if y is None else model._forward_chunks(y)
        except Exception as exc:  # the parent re-raises it where it asked
            value = RuntimeError(f"forward process: {qualname} {directory}: {exc!r}")
        try:
            _write(replies, (rid, value))
        except (OSError, ValueError):
            return


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what a Ctrl-C does
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not enter the pipe
    _grow(replies.fileno())
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()

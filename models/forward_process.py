"""The models' arithmetic in a child process, so it runs beside the flow's Python work: the
sequence nets' forwards, and the trees' class probabilities.

Why a process: the N-HiTS and PatchTST forwards are most of what scoring costs (about 46 µs
a bar on the FXCM month), and torch gives the GIL back and takes it again around every
operator. Run on a thread beside a busy interpreter, each of those takes waits for the
interpreter's switch interval: measured here, forwards ran at 0.00-0.02x of their rate
alone (0.10x traced with TorchScript) while another thread ran pure Python. In a
child process they cost the flow only the request and the reply.

The child is forked from the flow's process once the flow has imported torch and loaded its
models (a fresh interpreter spent 1.3 s importing torch on the core the flow needs, and the
flow computed the forwards itself meanwhile: forked, it answers within a second of the flow's
start, before the first scoring call). It keeps only its two pipe ends and stderr. It loads a
model from its registry directory the first time a request names it and runs the model's
``_forward_chunks`` (a net's forecasts, :mod:`models.sequence`; a tree model's
probabilities, :mod:`models.trees`), the very code the flow would run, with one torch
thread: the answers have the same bits (tests/models/test_forward_process.py). Requests and
replies are length-prefixed pickles on two pipes; the child reads requests on a thread of its
own, so the parent's writes never wait for its forwards. It runs in a session of its own and
ignores SIGINT (a Ctrl-C is the flow's to handle), and exits when the parent closes its pipe,
or dies.

:class:`ForwardProcess` is the parent's side: :meth:`submit` sends a request and returns at
once; :meth:`result` waits for its reply. A lost child raises :class:`ForwardProcessLost`;
the caller computes in-process instead (the same bits).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import queue
import select
import signal
import struct
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar, cast

import numpy as np

log = logging.getLogger(__name__)
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
    """What the child can run: a model loaded from ``directory`` (a sequence net: its
    forecasts; a tree model: its class probabilities), through ``_forward_chunks``."""

    @property
    def name(self) -> str: ...
    @property
    def directory(self) -> Path | None: ...

    def _forward_chunks(self, y: np.ndarray) -> np.ndarray: ...


T = TypeVar("T")


def offload(
    model: Forwardable,
    y: np.ndarray,
    forwards: ForwardProcess | None,
    here: Callable[[], T],
) -> Callable[[], T]:
    """``model._forward_chunks(y)`` in two halves: sent to ``forwards`` now when the child is
    up, and the returned call waits for its reply; otherwise (no child, not up yet, a model
    not loaded from a directory) the returned call computes ``here()``, the same bits. A lost
    child is said once per call, with its exit code, and ``here()`` computed instead."""
    rid = -1
    if forwards is not None and model.directory is not None and forwards.ready():
        try:
            rid = forwards.submit(model, y)
        except ForwardProcessLost as exc:
            log.warning("%s: %s; computing in this process", model.name, exc)

    def finish() -> T:
        if rid >= 0:
            assert forwards is not None
            try:
                return cast("T", forwards.result(rid))
            except ForwardProcessLost as exc:
                log.warning("%s: %s; computing in this process", model.name, exc)
        return here()

    return finish


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
        requests, replies = os.pipe(), os.pipe()  # (read end, write end) each
        _grow(requests[1])
        _grow(replies[1])
        self._proc = _fork(requests[0], replies[1])
        os.close(requests[0])
        os.close(replies[1])
        self._to = os.fdopen(requests[1], "wb", buffering=0)
        self._from = os.fdopen(replies[0], "rb", buffering=0)  # poll() looks at the pipe itself
        self._lock = threading.RLock()
        self._next = 0  # requests sent
        self._replied = 0  # replies read (the child answers in order)
        self._done: dict[int, Any] = {}
        self._ignored: set[int] = set()  # preloads: their replies are dropped
        self._loading = 0  # requests to answer before the child counts as up
        self.lost: str | None = None
        # the child goes when this handle does (a flow built in a test, say), or at exit
        self._finalizer = weakref.finalize(self, _close, self._proc, (self._to, self._from))

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
        compute in-process rather than wait for its start-up (loading the models)."""
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


def _close(child: _Child, pipes: tuple[IO[bytes], ...]) -> None:
    for pipe in pipes:
        with contextlib.suppress(OSError):
            pipe.close()
    if child.wait(timeout_s=5) is None:
        child.kill()
        child.wait()


class _Child:
    """A forked child: its pid and exit code (what the handle needs of ``subprocess.Popen``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                got, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: gone
                self.returncode = 0
            else:
                if got:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code, waiting at most ``timeout_s`` (None: still running then)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.005)
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _fork(requests: int, replies: int) -> _Child:
    """Fork the child: it has torch and the flow's modules already imported (a fresh
    interpreter took 1.3 s of imports on a core the flow needs, and the flow computed the
    forwards itself meanwhile). The child keeps only its two pipe ends and stderr, leaves the
    parent's session and signal handlers, and never returns into the parent's code."""
    for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
        stream.flush()
    pid = os.fork()
    if pid:
        return _Child(pid)
    code = 1
    try:
        os.setsid()  # a terminal's Ctrl-C is the parent's to handle
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's stop handler
        gc.freeze()  # the parent's objects: never walked, so never copied
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(2, 1)  # stray prints must not enter the parent's stdout (its summary)
        _close_all_but({0, 1, 2, requests, replies})
        serve(os.fdopen(requests, "rb", buffering=0), os.fdopen(replies, "wb", buffering=0))
        code = 0
    except BaseException:  # anything: report it and leave, never return into the parent
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)


def _close_all_but(keep: set[int]) -> None:
    """Close every file descriptor not in ``keep`` (the parent's store files, sockets...)."""
    low = 0
    for fd in sorted(keep):
        if fd > low:  # (an empty range may close more: CPython 3.11 here closed fd 2)
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


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

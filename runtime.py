"""Process-wide runtime state that several layers share: the stop request, the cluster position,
the model lock and the thread caps.

A live flow is stopped with SIGINT (Ctrl-C) or SIGTERM. :func:`install_stop_handlers` makes the
first such signal a *request*: the sources end their partitions at their next poll, every stage
keeps its state instead of running its end-of-input rules (an open bar stays open, an open
position stays open, a pending PPO batch is kept), the sinks flush, and the run summary prints
with a line saying how to resume. With recovery on (``-r``), the last snapshot is taken at that
point and a resume continues exactly where the stop left off. A second signal stops at once.

And where this process stands in a Bytewax cluster (:func:`cluster`): several processes
started with ``-i``/``-a`` build the same flow, but only the first does the one-off start-up
work (a bootstrap of an empty registry, the embedded store's checks).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from dataclasses import dataclass
from types import FrameType


class StopRequest:
    """Set once by a signal; read by sources and stages (thread-safe)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, signal_name: str) -> None:
        self.signal_name = signal_name
        self._event.set()

    def reset(self) -> None:
        self.signal_name = None
        self._event.clear()


STOP = StopRequest()


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM request a stop; the second one ends the process at once. Only from
    the main thread (where Python runs signal handlers); a no-op elsewhere."""
    if threading.current_thread() is not threading.main_thread():
        return
    STOP.reset()

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if STOP.requested:  # the second signal: no more patience
            sys.stderr.write(f"\n{name} again: stopping now, without the summary\n")
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        sys.stderr.write(
            f"\n{name}: stopping: the sources end now, state is kept, the sinks "
            "flush and the summary follows (again to stop at once)\n"
        )
        STOP.request(name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@dataclass(frozen=True)
class ClusterPosition:
    """Where this process stands in a Bytewax cluster (``-i``/``-a`` of ``bytewax.run``, also
    what ``python -m bytewax.testing -p N`` passes): process ``process_id`` of ``processes``."""

    process_id: int = 0
    processes: int = 1

    @property
    def first(self) -> bool:
        """The process that does the one-off start-up work (bootstrap, store checks)."""
        return self.process_id == 0


_CLUSTER: list[ClusterPosition] = []


def set_cluster(position: ClusterPosition | None) -> None:
    """Say where this process stands when the flow is started from code (``cli_main`` or
    ``cluster_main``), not from ``bytewax.run``'s command line; None: read it again."""
    _CLUSTER[:] = [position] if position is not None else []


def cluster() -> ClusterPosition:
    """This process's :class:`ClusterPosition`, from :func:`set_cluster`, else from
    ``bytewax.run``'s own arguments (``-i/--process-id``, ``-a/--addresses``) or their
    environment variables (``BYTEWAX_PROCESS_ID``, ``BYTEWAX_ADDRESSES``,
    ``BYTEWAX_HOSTFILE_PATH``), which the dataflow module sees while ``bytewax.run`` builds
    it. A single process is ``ClusterPosition(0, 1)``."""
    if _CLUSTER:
        return _CLUSTER[0]
    process_id: str | None = os.environ.get("BYTEWAX_PROCESS_ID")
    addresses: str | None = os.environ.get("BYTEWAX_ADDRESSES")
    if run_by_bytewax():
        process_id, addresses = _bytewax_args(sys.argv[1:], process_id, addresses)
    hostfile = os.environ.get("BYTEWAX_HOSTFILE_PATH")
    if process_id is not None and addresses is None and hostfile:
        with open(hostfile) as f:
            addresses = ";".join(line.strip() for line in f if line.strip())
    if process_id is None:
        return ClusterPosition()
    count = len([a for a in (addresses or "").split(";") if a.strip()])
    return ClusterPosition(int(process_id), max(count, 1))


def _bytewax_args(
    args: list[str], process_id: str | None, addresses: str | None
) -> tuple[str | None, str | None]:
    """``bytewax.run``'s ``-i/--process-id`` and ``-a/--addresses`` in ``args``, over the
    environment's values (the last one given wins)."""
    for i, arg in enumerate(args):
        for flag, long in (("-i", "--process-id"), ("-a", "--addresses")):
            value = _flag_value(args, i, arg, flag, long)
            if value is not None:
                if flag == "-i":
                    process_id = value
                else:
                    addresses = value
    return process_id, addresses


def _flag_value(args: list[str], i: int, arg: str, flag: str, long: str) -> str | None:
    """The value ``arg`` (``args[i]``) gives the option, in any of the forms argparse takes
    (``-i 1``, ``--process-id 1``, ``--process-id=1``, ``-i1``); None if it is another."""
    if arg in (flag, long) and i + 1 < len(args):
        return args[i + 1]
    if arg.startswith(long + "="):
        return arg.split("=", 1)[1]
    if arg.startswith(flag) and len(arg) > 2 and not arg.startswith("--"):
        return arg[2:]
    return None


def run_by_bytewax() -> bool:
    """Whether this process is ``python -m bytewax.run ...`` (not a test or a script that
    runs flows in-process)."""
    return bool(sys.argv) and sys.argv[0].replace(os.sep, "/").endswith("bytewax/run.py")


GC_THRESHOLDS = (1_000_000, 10, 10)  # Python's defaults: (700, 10, 10)


def tune_gc(force: bool = False) -> None:
    """Make Python's cyclic garbage collector cheap for the rest of a flow process: freeze
    what start-up built (modules, loaded models: never garbage, so no later collection walks
    them again) and collect the young generation only when a million more container objects
    are alive than at the last collection, instead of 700.

    Why: py-spy (``--native --gil``) of the FXCM month put the collector at 27% of the GIL
    time of one process, and 40% in the engine's process of a two-process cluster, which
    unpickles the other process's scored bars. Items die by reference counting, so the young
    generation's count (allocations minus deallocations) grows only with what the flow holds
    (buffers, waiting bars): at 1,000 symbols (first 3 h, two runs each) the collector took
    1.7-2.2 s of 18-21 s with a threshold of 50,000 and 0.3 s with 1,000,000, at the same peak
    RSS. A young collection then walks at most about a million objects (tens of ms). Cycles are
    still collected, later. Only in a ``bytewax.run`` process (or ``force``): a test process
    runs many flows in turn, and would keep the cyclic garbage of the frozen ones."""
    if not (force or run_by_bytewax()):
        return
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# Bytewax runs ``-w N`` workers as threads of one process. Building neuralforecast modules
# (which seed and flip torch's global state) or tracing them while another thread runs a
# forward crashed the process (SIGSEGV, seen with ``-w 2``), so every model load, trace and
# inference in the process holds this lock. Inference is a small part of a worker's time.
MODEL_LOCK = threading.RLock()


def cap_threads(n: int = 1) -> None:
    """Cap BLAS/OpenMP/torch threads so models do not oversubscribe the workers' cores."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def skip_dynamo_import() -> None:
    """Let torch's optimizers run without importing ``torch._dynamo`` (1-2 s of start-up).

    ``torch.optim.Optimizer`` methods (``add_param_group``, ``load_state_dict``, ...) are
    wrapped by ``torch._compile._disable_dynamo``, whose first call imports ``torch._dynamo``
    to build a "run this without TorchDynamo" wrapper, and caches it on the function as
    ``__dynamo_disable``. Loading the PPO policy (SB3 builds its Adam optimizer and loads its
    state) was the only reason the live flow imported TorchDynamo. Nothing in this project
    compiles with TorchDynamo, and without an active compile the wrapper runs the function
    as it is: so the cache is filled with the function itself, which skips the import and
    changes no result. A torch whose wrapper looks otherwise is left alone (it just imports).
    Idempotent; call before the first optimizer is built.
    """
    import sys

    if "torch._dynamo" in sys.modules:
        return
    from torch.optim.optimizer import Optimizer

    for name in dir(Optimizer):
        method = getattr(Optimizer, name, None)
        wrapped = getattr(method, "__wrapped__", None)
        code = getattr(method, "__code__", None)
        if (
            wrapped is not None
            and code is not None
            and code.co_filename.replace("\\", "/").endswith("torch/_compile.py")
            and getattr(wrapped, "__dynamo_disable", None) is None
        ):
            wrapped.__dynamo_disable = wrapped

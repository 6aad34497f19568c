"""MPI work distribution: a largest-first dynamic queue of regions served by rank 0.

Regions differ a lot in cost (a dense bulge region against the outer halo), so ranks ask for
the next task when they finish one rather than getting a fixed share. Rank 0 serves the queue
from a background thread and works on tasks itself, so two ranks give two workers. A task that
raises aborts the whole job (``MPI.Abort``) after printing the failing task: never a hang.

Without mpi4py, or with one rank, :func:`run_tasks` is a plain loop.

This module is also the only place that knows about ranks: :func:`setup_rank` joins the job and
picks this rank's device (``cuda:{local rank % devices}``) and torch threads;
:func:`abort_on_error` turns an error outside the queue into ``MPI.Abort`` (the other ranks may
be waiting in a collective); :func:`on_root` runs file-system changes once;
:func:`root_exclusive` holds the run directory's stage lock for the whole job.

Example:
    >>> comm = world()          # not under mpiexec: the one-rank stand-in
    >>> comm.Get_size()
    1
    >>> run_tasks([3, 0, 2, 1], lambda t: None, comm)
    [3, 0, 2, 1]
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from galmock.flows.base import resolve_device
from galmock.locks import exclusive

log = logging.getLogger(__name__)

_TAG_REQUEST = 71
_TAG_REPLY = 72
_DONE = -1
_POLL_SECONDS = 0.005
# How long an aborting rank waits between writing its error and MPI.Abort: Hydra's proxy kills
# the job on Abort without draining the rank's stderr pipe, so an error written just before it
# is sometimes lost (pmodels/mpich#518; seen in CI as a failure with no message).
_ABORT_GRACE_SECONDS = 1.0

T = TypeVar("T")


class SerialComm:
    """The one-rank stand-in used when the job is not under mpiexec (mpi4py method names)."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def Barrier(self) -> None:
        return None

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]


def world() -> Any:
    """``MPI.COMM_WORLD`` when running under an MPI launcher, else a :class:`SerialComm`.

    mpi4py is imported only when a launcher set the usual environment variables, so a plain
    ``galmock train`` on a laptop never needs an MPI library.
    """
    launched = any(
        key in os.environ
        for key in ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE")
    )
    if not launched:
        return SerialComm()
    # Imported here: importing mpi4py initialises MPI, which a laptop run must not need.
    from mpi4py import MPI

    return MPI.COMM_WORLD


def node_rank(comm: Any) -> tuple[int, int]:
    """(this rank's index among the ranks on its node, ranks on its node)."""
    if isinstance(comm, SerialComm):
        return 0, 1
    # Imported here: only reached under an MPI launcher (see world()).
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return int(node.Get_rank()), int(node.Get_size())
    finally:
        node.Free()


def local_rank(comm: Any) -> int:
    """This rank's index among the ranks on the same node (for the rank -> GPU map)."""
    return node_rank(comm)[0]


@dataclass
class Rank:
    """This process's place in the job and the device and threads it uses."""

    comm: Any
    rank: int
    size: int
    local: int
    device: torch.device
    threads: int

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.size}"


def setup_rank(device: str = "auto", threads: int | str = "auto") -> Rank:
    """Join the MPI job (if any), pick this rank's device and set its torch threads.

    ``cuda:{local rank % device count}`` when ``device`` is ``auto`` (or a bare ``cuda``) and
    CUDA is available; ``threads``: a number, or for ``auto`` the cores this process may use
    divided by the ranks on its node (``flows.device`` and ``flows.threads`` of the job).
    """
    comm = world()
    local, on_node = node_rank(comm)
    if threads == "auto":
        n_threads = max(1, len(os.sched_getaffinity(0)) // on_node)
    else:
        n_threads = int(threads)
    torch.set_num_threads(n_threads)
    chosen = resolve_device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local % torch.cuda.device_count())
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)  # so "auto" inside the flow code means this GPU
    rank = Rank(comm, comm.Get_rank(), comm.Get_size(), local, chosen, n_threads)
    log.info("%s (local %d of %d on %s): device %s, %d torch thread(s)", rank, local, on_node,
             os.uname().nodename, chosen, n_threads)
    return rank


@contextmanager
def root_exclusive(rank: Rank, path: Path, stage: str) -> Iterator[None]:
    """Rank 0 holds the run directory's lock for ``stage`` (:mod:`galmock.locks`); the job's
    other ranks share it. Use inside :func:`abort_on_error`: if another job holds the lock,
    rank 0's error aborts every rank rather than leaving them waiting for it."""
    with exclusive(path, stage) if rank.rank == 0 else nullcontext():
        yield


@contextmanager
def abort_on_error(rank: Rank, stage: str) -> Iterator[None]:
    """Under MPI, turn an error outside the task queue into ``MPI.Abort``: the other ranks may
    be waiting in a collective call and would otherwise hang."""
    try:
        yield
    except Exception as err:
        if rank.size == 1:
            raise
        log.error("%s: %s", rank, err)
        _abort(rank.comm, f"galmock {stage}: {rank}: error: {err}\n")


def on_root(rank: Rank, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 (file-system changes happen once), its result on every rank."""
    result = fn() if rank.rank == 0 else None
    return result if rank.size == 1 else rank.comm.bcast(result, root=0)


def peak_memory_mib() -> float:
    """This process's peak resident memory so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_tasks(
    tasks: Sequence[int],
    work: Callable[[int], None],
    comm: Any,
    describe: Callable[[int], str] = lambda t: f"task {t}",
) -> list[int]:
    """Run ``work(task)`` for every task across all ranks; returns the tasks this rank ran.

    ``tasks`` must be the same sequence on every rank, in the order to hand them out (largest
    first). If ``work`` raises on any rank, the error and ``describe(task)`` go to stderr and
    the whole job is aborted with exit code 1.
    """
    size = comm.Get_size()
    if size == 1:
        done = []
        for task in tasks:
            work(task)
            done.append(task)
        return done

    rank = comm.Get_rank()
    server = None
    if rank == 0:
        server = threading.Thread(target=_serve, args=(comm, list(tasks), size), daemon=True)
        server.start()
    done = []
    while True:
        task = _request(comm)
        if task == _DONE:
            break
        try:
            work(task)
        except BaseException as err:  # a failing task must bring the job down, not hang it
            detail = "".join(traceback.format_exception(err))
            log.error("rank %d: %s failed: %s", rank, describe(task), err)
            _abort(comm, f"galmock: rank {rank}: {describe(task)} failed: {err}\n{detail}")
        done.append(task)
    if server is not None:
        server.join()
    comm.Barrier()
    return done


def _abort(comm: Any, message: str) -> None:
    """Write ``message`` to stderr, give the launcher time to forward it, abort the job."""
    sys.stderr.write(message)
    sys.stderr.flush()
    time.sleep(_ABORT_GRACE_SECONDS)
    comm.Abort(1)


def _request(comm: Any) -> int:
    """Ask rank 0 for the next task; poll with sleeps so no core spins while waiting."""
    comm.send(comm.Get_rank(), dest=0, tag=_TAG_REQUEST)
    req = comm.irecv(source=0, tag=_TAG_REPLY)
    while True:
        ready, task = req.test()
        if ready:
            return int(task)
        time.sleep(_POLL_SECONDS)


def _serve(comm: Any, tasks: list[int], size: int) -> None:
    """Rank 0's server thread: answer each request with the next task, then with DONE."""
    # Imported here: only reached under an MPI launcher (see world()).
    from mpi4py import MPI

    queue = list(tasks)
    finished = 0
    status = MPI.Status()
    while finished < size:
        if not comm.iprobe(source=MPI.ANY_SOURCE, tag=_TAG_REQUEST, status=status):
            time.sleep(_POLL_SECONDS)
            continue
        who = comm.recv(source=status.Get_source(), tag=_TAG_REQUEST)
        if queue:
            task = queue.pop(0)
            log.debug("queue: task %d -> rank %d (%d left)", task, who, len(queue))
            comm.send(task, dest=who, tag=_TAG_REPLY)
        else:
            comm.send(_DONE, dest=who, tag=_TAG_REPLY)
            finished += 1

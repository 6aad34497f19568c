"""Preemption: stop a long stage at a safe point when Slurm warns, so the requeued job resumes.

Slurm sends ``USR1`` ``slurm.signal_lead_s`` seconds before a job's time limit (``--signal=
B:USR1@lead``; the batch script forwards it to every rank) and ``TERM`` when it preempts,
requeues or cancels a job. Inside :func:`handling` both only set a flag; the stage polls
:func:`requested` at its safe points (training: after an epoch, having checkpointed; upsampling:
after a batch is written), drains its task queue without starting new work, agrees across MPI
ranks with :func:`anywhere` and leaves through :func:`exit_preempted` with exit code
:data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``: "try again"). The batch script then runs
``scontrol requeue``; the resumed run skips what is finished (trained regions, checkpoints,
upsampled regions). Outside :func:`handling` the signals keep their usual meaning.

Example:
    >>> import os, signal
    >>> def train_one_epoch(epoch):  # stands in for training; Slurm warns during epoch 1
    ...     if epoch == 1:
    ...         os.kill(os.getpid(), signal.SIGUSR1)
    >>> try:
    ...     with handling():
    ...         for epoch in range(5):
    ...             train_one_epoch(epoch)
    ...             if requested():
    ...                 print(f"save_checkpoint() after epoch {epoch} ({reason()})")
    ...                 raise Preempted("epoch boundary")
    ... except Preempted as err:
    ...     print(f"stopped at the {err}")
    save_checkpoint() after epoch 1 (SIGUSR1)
    stopped at the epoch boundary
    >>> requested()  # the flag belongs to the block
    False
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

log = logging.getLogger("galmock.preempt")

# sysexits.h EX_TEMPFAIL: the batch script requeues the job on this code and only on this one.
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

_received: list[str] = []  # names of the signals received inside handling()


class Preempted(Exception):
    """Raised at a safe point after a preemption signal; the caller stops and exits 75."""


def _note(signum: int, frame: Any) -> None:
    # Only set the flag: the stage stops at its next safe point (never mid-write).
    _received.append(signal.Signals(signum).name)


@contextmanager
def handling(signals: tuple[signal.Signals, ...] = SIGNALS) -> Iterator[None]:
    """Within the block the ``signals`` only set the flag; on exit the previous handlers are
    restored and the flag is cleared (it belongs to one stage)."""
    _received.clear()
    previous = {s: signal.signal(s, _note) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received.clear()


def requested() -> bool:
    """Whether a preemption signal arrived in this process."""
    return bool(_received)


def reason() -> str | None:
    """The first signal received (e.g. ``"SIGUSR1"``), or ``None``."""
    return _received[0] if _received else None


def anywhere(comm: Any) -> bool:
    """Whether any rank of ``comm`` was signalled (collective: every rank must call it)."""
    return any(comm.allgather(requested()))


def exit_preempted(stage: str, detail: str) -> NoReturn:
    """Log the stop and leave with :data:`EXIT_PREEMPTED` (on every rank)."""
    message = f"{stage}: preempted ({reason() or 'signal on another rank'}): {detail}"
    log.warning("%s; exiting with code %d so the job is requeued", message, EXIT_PREEMPTED)
    print(f"galmock {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_PREEMPTED)

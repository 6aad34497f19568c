"""One stage at a time per run directory: an exclusive ``flock`` on ``<run>/.<stage>.lock``.

Two ``galmock upsample`` (or train, convert, validate) on one run directory would share its
staging area and could both exit 0 with a catalog mixing their rows. The lock is the kernel's:
it is released when the holding process exits or is killed, so a killed job leaves no stale
lock (the empty file stays and is simply locked again). Under MPI only rank 0 holds it
(:func:`galmock.parallel.mpi.root_exclusive`): one job, many ranks.

Example:
    >>> path = tmp_path / ".upsample.lock"
    >>> with exclusive(path, "upsample"):
    ...     with exclusive(path, "upsample"):  # a second job on the same run directory
    ...         pass
    Traceback (most recent call last):
    ...
    galmock.errors.InputError: ...: another `galmock upsample` is running on this run directory ...
    >>> with exclusive(path, "upsample"):  # released when the first one ended
    ...     pass
"""

from __future__ import annotations

import errno
import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from galmock.errors import InputError

log = logging.getLogger(__name__)

# File systems without flock (some NFS mounts) answer with these: run unguarded, with a warning.
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)


@contextmanager
def exclusive(path: str | Path, stage: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block; a clear error if another process holds
    it (naming the stage and the lock file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:  # "a": never truncates a file another process has open
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"{path.parent}: another `galmock {stage}` is running on this run directory "
                f"(it holds {path})"
            ) from None
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                raise
            log.warning("%s: cannot lock %s (%s); not guarding against a second run",
                        stage, path, err)
        yield

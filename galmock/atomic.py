"""Write-then-rename for outputs, so a failed or killed stage never leaves a partial product.

Products get the modes the user's umask gives a plain ``mkdir``/``open`` (``tempfile`` makes
them 0700/0600, which a collaborator in the group could not read once renamed into place).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``target`` only if the block succeeds.

    Example:
        >>> target = tmp_path / "run" / "particles.zarr"
        >>> with atomic_directory(target) as tmp:  # write_store(tmp)
        ...     _ = (tmp / "zarr.json").write_text("{}")
        ...     target.exists()
        False
        >>> sorted(p.name for p in target.iterdir())
        ['zarr.json']
        >>> with atomic_directory(target) as tmp:
        ...     raise RuntimeError("killed half-way")
        Traceback (most recent call last):
        ...
        RuntimeError: killed half-way
        >>> sorted(p.name for p in target.parent.iterdir())  # the old product, no leftovers
        ['particles.zarr']
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, target)


def replace_path(new: Path | None, target: str | Path) -> None:
    """Put the finished product ``new`` at ``target`` (or, with ``None``, remove ``target``).

    A directory cannot be renamed onto a non-empty one, so the old product is first moved aside
    to ``.<name>.old-<pid>`` and deleted after the rename: ``target`` is at every moment either
    the old product or the new one (a kill in between leaves the aside copy, which the next run
    of the stage removes).
    """
    target = Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    if new is not None:
        os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` via a temporary file and a rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

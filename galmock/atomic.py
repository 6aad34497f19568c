"""Write-then-rename for outputs, so a failed or killed stage never leaves a partial product.

Products get the modes the user's umask gives a plain ``mkdir``/``open`` (``tempfile`` makes
them 0700/0600, which a collaborator in the group could not read once renamed into place).
"""

from __future__ import annotations

import os
import shutil
import socket
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
    remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{_owner()}-", dir=target.parent))
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
    to ``.<name>.old-<host>-<pid>`` and deleted after the rename: ``target`` is at every moment
    either the old product or the new one (a kill in between leaves the aside copy, which the
    next write of the product puts back or removes: :func:`remove_leftovers`).
    """
    target = Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{_owner()}")
        os.replace(target, old)
    if new is not None:
        os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` via a temporary file and a rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-{_owner()}-", dir=target.parent)
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


def remove_leftovers(target: str | Path) -> list[Path]:
    """Remove what killed writers of ``target`` left beside it; returns what was removed.

    A writer's temporary copy (``.<name>.tmp-<host>-<pid>-*``) and the old product it moved
    aside (``.<name>.old-<host>-<pid>``) carry its host and pid: those of a process on this
    host that no longer runs are leftovers (another host's are left alone: its pids mean
    nothing here). An aside copy whose ``target`` is missing (killed between the two renames)
    is put back instead: the product is the old one until a write completes.

    Example:
        >>> target = tmp_path / "particles.zarr"
        >>> dead = tmp_path / f".particles.zarr.tmp-{socket.gethostname()}-999999999-x1"
        >>> dead.mkdir()
        >>> [p.name for p in remove_leftovers(target)] == [dead.name]
        True
    """
    target = Path(target)
    removed = []
    for path in sorted(target.parent.glob(f".{target.name}.[to][ml][pd]-*")):
        kind, _, rest = path.name[len(target.name) + 2 :].partition("-")
        if kind not in ("tmp", "old") or not _dead_here(rest):
            continue
        if kind == "old" and not target.exists():
            os.replace(path, target)
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _owner() -> str:
    """``<host>-<pid>`` of this process, for the names of its temporary files."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _dead_here(owner: str) -> bool:
    """Whether ``<host>-<pid>[-...]`` names a process of this host that no longer runs."""
    host = socket.gethostname()
    if not owner.startswith(f"{host}-"):
        return False
    pid_text = owner[len(host) + 1 :].split("-", 1)[0]
    if not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False

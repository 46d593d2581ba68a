"""Atomic file writing, shared by the data layer (downloads, image grids) and checkpoints."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], fsync: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; move it onto ``path`` only on success.

    Readers never see a half-written file, and a failure (an exception, a full disk) leaves no temporary file
    behind. The temporary file is created with ``open(..., "xb")`` rather than ``mkstemp`` so the result gets
    the usual umask-based permissions instead of 0600. ``fsync=True`` also survives a power loss (downloads
    use it, and checkpoints, whose folder is then fsynced too so the rename itself survives; image grids do not,
    since thousands of fsyncs would dominate sample dumps).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (not possible on Windows, where os.replace is already durable enough)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

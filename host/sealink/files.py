"""Files written whole or not at all, and so that they survive a power cut."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_durably"]


def write_durably(path: Path, data: bytes, *, mode: int = 0o600, replace: bool = True) -> None:
    """Write `data` to `path` through a temporary file beside it (created 0600, then given
    `mode`), fsynced, then renamed over `path` or, without `replace`, linked to it, which
    raises FileExistsError rather than replace a file; then the directory is fsynced, so that
    the new name survives a power cut too."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

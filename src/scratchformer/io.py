"""Files written so that a reader sees the old file or the new one, never half; JSON in and out.

Every file scratchformer writes goes through :func:`atomic_write_bytes`:
the bytes go to a temporary file beside the target (``.<name>.<random>.tmp``),
are flushed and fsynced, and the temporary file is renamed over the target.
A process killed mid-write leaves at most that temporary file behind, which
:func:`remove_partial_writes` recognises by its name.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ScratchformerError


class WriteError(ScratchformerError, OSError):
    """A file could not be written (full disk, read-only or missing directory); the message names the path."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_

    @property
    def disk_full(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)


def write_error(path: Path, e: OSError) -> WriteError:
    """The WriteError for ``e``, raised while writing ``path``."""
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.ENAMETOOLONG: "the name is too long",
    }.get(e.errno or 0, e.strerror or str(e))
    return WriteError(f"cannot write {str(path)!r}: {reason}", e.errno)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename); creates parent directories.

    Raises:
        WriteError: the file cannot be written (naming the path and the reason); no
            temporary file is left behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` as :func:`atomic_write_bytes` does."""
    atomic_write_bytes(path, text.encode("utf-8"))


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path`` and fsync it (for logs: a kill loses at most the line being written).

    Raises:
        WriteError: the file cannot be written (naming the path and the reason).
    """
    path = Path(path)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_error(path, e) from None


def dump_json(obj: Any) -> str:
    """The text :func:`save_json` writes: indented, keys sorted, so equal objects give equal files."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as JSON (keys sorted)."""
    atomic_write_text(path, dump_json(obj))


def load_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse the UTF-8 JSON file ``path`` (the reading side of :func:`save_json`).

    Args:
        what: what the file is for, used in the error message ("run config", ...).

    Raises:
        CheckpointError: the file is missing, unreadable, not UTF-8 or not valid JSON (naming the path).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{what} {str(path)!r} does not exist") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{what} {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CheckpointError(f"{what} {str(path)!r} cannot be read: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{what} {str(path)!r} is not valid JSON: {e}") from None


_PARTIAL = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")


def remove_partial_writes(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_write_bytes` left in ``directory`` (not recursive)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.is_file() and _PARTIAL.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale

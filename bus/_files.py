"""The one way trainbus replaces a file: whole old content or whole new content, never half.

Cursors, sink state, ``run.json``, ``trainer_state.json``, the sink process's report and plots are
all read back after crashes, so each is written to a temporary file in the same directory (a rename
across file systems would not be atomic) and moved over the target with ``os.replace``. The
temporary name is unique per call, so two writers of one target (ranks saving on each node of a
shared file system) never write into each other's file, and it starts with a dot so listings and
globs skip it. It is removed when the write fails.

``fsync`` is the caller's choice: it makes the new content durable before the rename, at the cost
of a disk flush, which a cursor written per acknowledged batch cannot pay every time.

A full disk (``ENOSPC``, or a quota's ``EDQUOT``) raises an `OSError` with that errno naming the
target, not the temporary file. A status that must get out even then (``run.json`` saying
"failed") may ask for ``in_place_when_full``: the existing file is overwritten where it lies,
which needs no new blocks for a file of a few hundred bytes, at the price of atomicity.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from typing import BinaryIO, Final

__all__ = ["replace_file"]

_DISK_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def replace_file(
    path: str | os.PathLike[str],
    content: bytes | Callable[[BinaryIO], object],
    *,
    fsync: bool = False,
    mode: int = 0o666,
    in_place_when_full: bool = False,
) -> None:
    """Replace ``path`` atomically with ``content``.

    Args:
        path: the file to replace; its directory must exist.
        content: the new bytes, or a function that writes them to the open binary file (for
            writers such as matplotlib's ``savefig`` that want a file object).
        fsync: flush the new content to disk before the rename.
        mode: permission bits of the new file before the umask (``0o600``: owner only).
        in_place_when_full: on a full disk, overwrite an existing ``path`` in place (bytes
            ``content`` only) instead of failing.
    """
    target = os.fspath(path)
    try:
        _replace(target, content, fsync=fsync, mode=mode)
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        if in_place_when_full and isinstance(content, bytes) and os.path.isfile(target):
            _overwrite(target, content)
            return
        raise OSError(exc.errno, f"{exc.strerror} (writing {target})", target) from exc


def _overwrite(target: str, content: bytes) -> None:
    """Write ``content`` over ``target``'s bytes and cut what is left: not atomic (see above)."""
    fd = os.open(target, os.O_WRONLY)
    try:
        _write_all(fd, content)
        os.ftruncate(fd, len(content))
    finally:
        os.close(fd)


def _replace(
    target: str, content: bytes | Callable[[BinaryIO], object], *, fsync: bool, mode: int
) -> None:
    directory, name = os.path.split(target)
    tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        if isinstance(content, bytes):
            _write_all(fd, content)
        else:
            with os.fdopen(os.dup(fd), "wb") as f:
                content(f)
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is out (a regular file may take fewer per call)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

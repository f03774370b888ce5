"""The one atomic file replace (``trainbus.bus._files.replace_file``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from trainbus.bus._files import replace_file


@pytest.mark.parametrize("fsync", [False, True])
def test_the_new_content_replaces_the_old_and_nothing_else_is_left(
    tmp_path: Path, fsync: bool
) -> None:
    """After a replace the target holds exactly the new bytes and no temporary file remains."""
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    replace_file(target, b"new content\n", fsync=fsync)
    assert target.read_bytes() == b"new content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_writer_function_gets_a_binary_file(tmp_path: Path) -> None:
    """Writers that want a file object (matplotlib's savefig) write through the same path."""

    def write(f: BinaryIO) -> None:
        f.write(b"part one, ")
        f.write(b"part two")

    replace_file(str(tmp_path / "plot.png"), write)
    assert (tmp_path / "plot.png").read_bytes() == b"part one, part two"


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    """A writer that raises leaves the old content in place and no temporary file behind."""
    target = tmp_path / "run.json"
    target.write_bytes(b"old")

    def fail(f: BinaryIO) -> None:
        f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        replace_file(target, fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_mode_sets_the_permissions_of_the_new_file(tmp_path: Path) -> None:
    """``mode=0o600`` makes an owner-only file even where the old one was readable by all."""
    target = tmp_path / "sink-host.json"
    target.write_bytes(b"{}")
    os.chmod(target, 0o644)
    replace_file(target, b'{"error": "quoted server answer"}', mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600

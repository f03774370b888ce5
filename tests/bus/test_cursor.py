"""A cursor file that cannot belong to the journal is refused, naming it and the journal's end."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.bus.conftest import MakeBus
from trainbus.bus import CursorStore, JournalError, StateFileError, StepEnd
from trainbus.bus._runtime import replay
from trainbus.bus.testing import RecordingSink


async def _journal_of_three(make_bus: MakeBus) -> None:
    """Journal seq 0..2 under the test's directory, with no sink (so no cursor is written)."""
    async with make_bus() as bus:
        for step in range(3):
            bus.emit(StepEnd, global_step=step)


async def test_a_cursor_past_the_journal_end_is_refused_at_start(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """A bus whose sink's cursor is past the journal's last seq fails to start, naming both."""
    with anyio.fail_after(10):
        await _journal_of_three(make_bus)
        cursor = tmp_path / "cursors" / "recording.cursor"
        cursor.parent.mkdir()
        cursor.write_text("40\n")
        with pytest.raises(StateFileError, match=r"says seq 40 was delivered") as info:
            async with make_bus([RecordingSink()]):
                pass
    message = str(info.value)
    assert str(cursor) in message and "journal ends at seq 2" in message
    assert isinstance(info.value, JournalError)  # callers catching journal problems still do


async def test_sync_refuses_a_cursor_past_the_journal_end(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    """Replaying (``trainbus sync``) with a cursor past the journal's end delivers nothing."""
    with anyio.fail_after(10):
        await _journal_of_three(make_bus)
        CursorStore(tmp_path / "cursors").write("recording", 7)
        sink = RecordingSink()
        with pytest.raises(StateFileError, match=r"recording\.cursor says seq 7 .* ends at seq 2"):
            await replay(tmp_path / "journal.tbj", [sink], cursor_dir=tmp_path / "cursors")
    assert sink.received == []


def test_a_cursor_at_the_journal_end_is_accepted(tmp_path: Path) -> None:
    """The last seq itself is a valid cursor (everything delivered), and -1 means nothing yet."""
    store = CursorStore(tmp_path)
    store.write("sink", 2)
    assert store.read("sink", journal_last_seq=2) == 2
    store.write("sink", -1)
    assert store.read("sink", journal_last_seq=-1) == -1


@pytest.mark.parametrize(
    ("content", "message"), [(b"-5\n", "says seq -5"), (b"\xff\x00", "one integer")]
)
def test_a_garbled_cursor_names_its_file(tmp_path: Path, content: bytes, message: str) -> None:
    """A negative or binary cursor file is one StateFileError naming the file."""
    (tmp_path / "sink.cursor").write_bytes(content)
    with pytest.raises(StateFileError, match=message) as info:
        CursorStore(tmp_path).read("sink")
    assert str(tmp_path / "sink.cursor") in str(info.value)

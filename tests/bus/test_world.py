"""Rank and world size from torchrun's variables when no process group exists."""

from __future__ import annotations

import pytest

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._world import local_rank, world_rank, world_size


@pytest.mark.parametrize(("value", "expected"), [(None, 0), ("2", 2), ("-1", 0)])
def test_ranks_read_torchrun_and_hugging_faces_not_distributed(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: int
) -> None:
    """``RANK`` and ``LOCAL_RANK`` give the rank; unset or Hugging Face's -1 means rank 0."""
    for name in ("RANK", "LOCAL_RANK"):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert world_rank() == expected
    assert local_rank() == expected


def test_world_size_reads_torchrun_and_defaults_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """``WORLD_SIZE`` gives the number of processes; unset means a single one."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert world_size() == 4


@pytest.mark.parametrize(("name", "value"), [("WORLD_SIZE", "0"), ("RANK", "-2"), ("RANK", "x")])
def test_impossible_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A world of no process, a rank below -1 or a word is one error naming the variable."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=rf"^{name}='{value}'"):
        world_rank() if name == "RANK" else world_size()

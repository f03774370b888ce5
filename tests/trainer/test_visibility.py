"""The verdicts every rank derives from what all ranks see of a checkpoint (no process group)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainbus.bus import ConfigurationError, StateFileError
from trainbus.trainer._visibility import (
    DIRECTORY,
    LATEST,
    Place,
    Request,
    Sight,
    check_sights,
    choose_checkpoint,
    look_at,
)

NODE0, NODE1 = Place(0, 0, "alpha"), Place(1, 1, "beta")


def test_latest_is_rank_zeros_newest_even_where_another_rank_has_a_newer_one() -> None:
    """resume_from_checkpoint=True resolves to rank 0's newest checkpoint for the whole job."""
    requests = [Request(NODE0, LATEST, "checkpoint-4"), Request(NODE1, LATEST, "checkpoint-6")]
    assert choose_checkpoint(requests) == "checkpoint-4"


def test_no_resume_anywhere_chooses_nothing() -> None:
    """Ranks that all resume nothing agree on nothing to read."""
    assert choose_checkpoint([Request(NODE0, None, None), Request(NODE1, None, None)]) is None


def test_rank_zero_without_a_checkpoint_refuses_latest_on_every_rank() -> None:
    """True with nothing to resume on rank 0 is the same error on every rank, naming rank 0."""
    requests = [Request(NODE0, LATEST, None), Request(NODE1, LATEST, "checkpoint-2")]
    with pytest.raises(ConfigurationError, match=r"^resume_from_checkpoint=True but rank 0 "):
        choose_checkpoint(requests)


def test_ranks_asking_for_different_checkpoints_are_named() -> None:
    """A rank asked to resume from something else than rank 0 is an error naming both asks."""
    requests = [Request(NODE0, LATEST, "checkpoint-4"), Request(NODE1, None, None)]
    with pytest.raises(ConfigurationError) as info:
        choose_checkpoint(requests)
    assert str(info.value) == (
        "resume_from_checkpoint differs between ranks (rank 0 (node 0, host alpha) asks "
        "'latest'; rank 1 (node 1, host beta) asks None): pass the same value on every rank"
    )


def test_a_rank_that_cannot_see_the_directory_is_named_with_the_fix() -> None:
    """One line: the checkpoint, the blind rank with its node and host, who sees it, the fix."""
    sights = [Sight(NODE0, "/out/checkpoint-4"), Sight(NODE1, "/out/checkpoint-4", (DIRECTORY,))]
    with pytest.raises(ConfigurationError) as info:
        check_sights("resume_from_checkpoint", "checkpoint-4", sights, resuming=True)
    message = str(info.value)
    assert message.startswith(
        "resume_from_checkpoint: checkpoint checkpoint-4 is not visible on rank 1 (node 1, host "
        "beta) (rank 0 (node 0, host alpha) reads it at /out/checkpoint-4); give every node"
    )
    assert "shared storage" in message and "save_on_each_node=True" in message
    assert "\n" not in message


def test_a_missing_rng_file_points_to_resume_only_model() -> None:
    """A rank lacking only its RNG file gets the resume_only_model way out, naming the file."""
    sights = [Sight(NODE0, "c"), Sight(NODE1, "c", ("rng_state_1.pth",))]
    with pytest.raises(
        ConfigurationError,
        match=r"incomplete \(rank 1 \(node 1, host beta\) lacks rng_state_1.pth\)",
    ):
        check_sights("resume_from_checkpoint", "checkpoint-4", sights, resuming=True)
    with pytest.raises(ConfigurationError, match=r"resume_only_model=True"):
        check_sights("resume_from_checkpoint", "checkpoint-4", sights, resuming=True)


def test_missing_weights_is_not_a_checkpoint() -> None:
    """A directory without weights on some rank is refused as no checkpoint at all."""
    sights = [Sight(NODE0, "c"), Sight(NODE1, "c", ("model.safetensors",))]
    with pytest.raises(
        ConfigurationError,
        match=r"not a checkpoint directory everywhere \(rank 1 .* lacks model.safetensors\)",
    ):
        check_sights("load_best_model_at_end", "checkpoint-2", sights, resuming=False)


def test_every_rank_seeing_everything_passes() -> None:
    """No missing file and no unreadable state: no error."""
    check_sights(
        "resume_from_checkpoint", "c", [Sight(NODE0, "c"), Sight(NODE1, "c")], resuming=True
    )


def test_look_at_reports_missing_files_and_a_corrupt_state(tmp_path: Path) -> None:
    """look_at names the absent directory, the absent files, and an unreadable state file."""
    assert look_at(tmp_path / "none", NODE0, ("x",)).missing == (DIRECTORY,)
    (tmp_path / "trainer_state.json").write_text("{not json")
    sight = look_at(tmp_path, NODE0, ("trainer_state.json", "model.safetensors"))
    assert sight.missing == ("model.safetensors",)
    assert sight.fault is not None and "not valid JSON" in sight.fault
    with pytest.raises(
        StateFileError, match=r"^resume_from_checkpoint: c cannot be read on rank 0"
    ):
        check_sights(
            "resume_from_checkpoint", "c", [Sight(NODE0, "c", (), sight.fault)], resuming=True
        )

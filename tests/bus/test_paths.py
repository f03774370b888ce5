"""The one rule for paths read from run data: resolved, confined to the run's place, or refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._paths import confine, confined_files, output_root, safe_relative_name


def test_output_root_is_the_output_dir_of_the_standard_layout(tmp_path: Path) -> None:
    """``<output_dir>/trainbus/<run>`` gives output_dir; any other run directory is its own root."""
    assert output_root(tmp_path / "out" / "trainbus" / "run-1") == (tmp_path / "out").resolve()
    assert output_root(tmp_path / "elsewhere") == (tmp_path / "elsewhere").resolve()


def test_paths_inside_are_returned_resolved(tmp_path: Path) -> None:
    """A path inside the root, even spelled with ``..`` that stays inside, comes back resolved."""
    inside = tmp_path / "a" / ".." / "b"
    assert confine(inside, tmp_path, what="x") == (tmp_path / "b").resolve()
    assert confine(tmp_path, tmp_path, what="x") == tmp_path.resolve()


@pytest.mark.parametrize("spelling", ["../outside", "/etc/passwd", "sub/../../outside"])
def test_paths_leading_out_are_refused_naming_the_field(tmp_path: Path, spelling: str) -> None:
    """``..`` or an absolute path out of the root is a one-line error naming the field."""
    root = tmp_path / "root"
    root.mkdir()
    path = spelling if spelling.startswith("/") else str(root / spelling)
    with pytest.raises(ConfigurationError, match=r"artifact path .* lies outside") as info:
        confine(path, root, what="artifact path")
    assert "\n" not in str(info.value)


def test_a_link_inside_pointing_out_is_refused(tmp_path: Path) -> None:
    """A symbolic link inside the root does not lead out: the target is checked, not the link."""
    root = tmp_path / "root"
    (root / "checkpoint-1").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    (root / "checkpoint-1" / "weights.bin").write_bytes(b"w")
    (root / "checkpoint-1" / "leak").symlink_to(secret)
    with pytest.raises(ConfigurationError, match="lies outside"):
        confine(root / "checkpoint-1" / "leak", root, what="artifact path")
    with pytest.raises(ConfigurationError, match="lies outside"):
        confined_files(root / "checkpoint-1", root, what="artifact path")
    (root / "checkpoint-1" / "leak").unlink()
    files = confined_files(root / "checkpoint-1", root, what="artifact path")
    assert files == [(root / "checkpoint-1" / "weights.bin").resolve()]


@pytest.mark.parametrize("name", ["loss", "eval/loss", "train/a.b"])
def test_relative_names_that_stay_below_are_kept(name: str) -> None:
    """Metric names with ``/`` folders stay as they are."""
    assert safe_relative_name(name, what="metric name") == name


@pytest.mark.parametrize("name", ["../x", "eval/../../x", "/abs", "", "a//b", "a/./b", "..\\x"])
def test_relative_names_that_could_climb_or_be_absolute_are_refused(name: str) -> None:
    """``..``, ``.``, empty segments and absolute names cannot become file names."""
    with pytest.raises(ConfigurationError, match=r"metric name .* cannot be used in a file name"):
        safe_relative_name(name, what="metric name")

"""TOML run files and the checks that run before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainbus.bus._errors import ConfigurationError
from trainbus.orchestrator.config import call_factory, check_writable_dir, parse_train_config


def test_a_full_config_decodes() -> None:
    """Factories, their keyword tables, early stopping and the args table all decode."""
    config = parse_train_config(
        """
        model = "examples.digits:model"
        train_dataset = "examples.digits:train_dataset"
        sinks = ["examples.custom_sink:PrintLosses"]
        [train_dataset_kwargs]
        limit = 64
        [early_stopping]
        patience = 2
        [args]
        output_dir = "out"
        max_steps = 5
        """
    )
    assert config.train_dataset_kwargs == {"limit": 64}
    assert config.early_stopping is not None and config.early_stopping.patience == 2
    assert config.args == {"output_dir": "out", "max_steps": 5}


def test_malformed_toml_is_one_configuration_error() -> None:
    """A TOML syntax error becomes a ConfigurationError naming the source."""
    with pytest.raises(ConfigurationError, match=r"run\.toml is not valid TOML"):
        parse_train_config("model = [unclosed", source="run.toml")


def test_wrong_types_and_unknown_keys_are_named() -> None:
    """A field of the wrong type, or an unknown top-level key, is reported by name."""
    with pytest.raises(ConfigurationError, match=r"\$.model"):
        parse_train_config("model = 3")
    with pytest.raises(ConfigurationError, match="modle"):
        parse_train_config('modle = "a:b"')


def test_factory_keywords_are_checked_before_the_call() -> None:
    """A keyword the factory does not take is a ConfigurationError, not a TypeError mid-build."""
    with pytest.raises(ConfigurationError, match="does not accept these arguments"):
        call_factory("examples.digits:model", {"width": 3}, field="model")


def test_missing_output_dir_under_a_writable_parent_is_fine(tmp_path: Path) -> None:
    """A missing output_dir under a writable parent passes the check and is not created."""
    target = tmp_path / "a" / "b"
    check_writable_dir(target, field="output_dir")
    assert not target.exists()


def test_output_dir_under_a_file_is_rejected(tmp_path: Path) -> None:
    """An output_dir whose ancestor is a regular file cannot be created, and says so."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match="output_dir"):
        check_writable_dir(tmp_path / "file" / "out", field="output_dir")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux's read-only /proc")
def test_output_dir_on_a_read_only_mount_is_rejected() -> None:
    """A directory nobody may write into (even root) fails the check."""
    with pytest.raises(ConfigurationError, match="not writable"):
        check_writable_dir(Path("/proc/trainbus-out"), field="output_dir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_dir_without_permission_is_rejected(tmp_path: Path) -> None:
    """A parent without write permission fails the check."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigurationError, match="not writable"):
        check_writable_dir(locked / "out", field="output_dir")

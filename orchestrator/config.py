"""A run described in TOML, and the checks that run before anything is written.

``trainbus train CONFIG.toml`` reads a file like ``examples/digits.toml``::

    model = "examples.digits:model"                 # "module:function" factories
    train_dataset = "examples.digits:train_dataset"
    eval_dataset = "examples.digits:eval_dataset"
    compute_metrics = "examples.digits:compute_metrics"
    sinks = ["examples.custom_sink:PrintLosses"]    # extra sinks, beside report_to's

    [train_dataset_kwargs]                          # keyword arguments for a factory
    limit = 256

    [early_stopping]                                # adds an EarlyStoppingCallback
    patience = 3

    [args]                                          # TrainingArguments, field by field
    output_dir = "trainbus-demo"
    report_to = ["tensorboard"]

Every check that can fail on user input (TOML syntax, field types, ``module:function`` imports,
``report_to`` names, a writable ``output_dir``) runs before the first file is created, so bad input
leaves nothing half-written behind.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from trainbus.bus._errors import ConfigurationError
from trainbus.orchestrator.registry import import_object

__all__ = [
    "EarlyStoppingConfig",
    "TrainConfig",
    "call_factory",
    "check_writable_dir",
    "load_factory",
    "load_train_config",
    "parse_train_config",
]


class EarlyStoppingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Arguments of the trainer's ``EarlyStoppingCallback``."""

    patience: int = 1
    threshold: float = 0.0


class TrainConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One TOML run file: factories by import path, and the training arguments."""

    model: str
    train_dataset: str | None = None
    eval_dataset: str | None = None
    compute_metrics: str | None = None
    model_kwargs: dict[str, Any] = {}
    train_dataset_kwargs: dict[str, Any] = {}
    eval_dataset_kwargs: dict[str, Any] = {}
    callbacks: list[str] = []
    sinks: list[str] = []
    early_stopping: EarlyStoppingConfig | None = None
    args: dict[str, Any] = {}


def parse_train_config(data: bytes | str, *, source: str = "config") -> TrainConfig:
    """Decode and validate TOML text; every failure is one ``ConfigurationError`` sentence."""
    try:
        return msgspec.toml.decode(data, type=TrainConfig)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"{source}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigurationError(f"{source} is not valid TOML: {exc}") from exc


def load_train_config(path: Path) -> TrainConfig:
    """Read and validate a TOML run file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    return parse_train_config(data, source=str(path))


def load_factory(spec: str, *, field: str) -> Callable[..., Any]:
    """Import a ``module:function`` factory; errors name the TOML field it came from."""
    obj = import_object(spec, field=field)
    if not callable(obj):
        raise ConfigurationError(f"{field} = {spec!r} is not callable")
    return obj  # type: ignore[no-any-return]


def check_writable_dir(path: Path, *, field: str) -> None:
    """Fail unless ``path`` is, or can be created as, a directory we may write into.

    Checks without creating anything, so a failing run leaves the disk as it found it.
    """
    probe = path.absolute()
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if path.exists() and not path.is_dir():
        raise ConfigurationError(f"{field} = {str(path)!r} exists and is not a directory")
    if not probe.is_dir():
        raise ConfigurationError(
            f"{field} = {str(path)!r} cannot be created: {str(probe)!r} is not a directory"
        )
    reason = None if os.access(probe, os.W_OK | os.X_OK) else "permission denied"
    if reason is None:
        # os.access says yes to root everywhere; an anonymous, self-deleting file tells the
        # truth on read-only mounts and for privileged users.
        try:
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
    if reason is not None:
        raise ConfigurationError(
            f"{field} = {str(path)!r} is not writable: cannot create files in {str(probe)!r} "
            f"({reason})"
        )


def call_factory(spec: str, kwargs: Mapping[str, Any], *, field: str) -> Any:
    """Import and call a factory, turning a bad keyword into a ``ConfigurationError``."""
    factory = load_factory(spec, field=field)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(
            f"{field} = {spec!r} does not accept these arguments: {exc}"
        ) from exc
    except ValueError:
        pass  # no signature to check (some builtins): let the call itself complain
    return factory(**kwargs)

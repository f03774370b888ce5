"""``report_to`` names, the sink classes behind them, and how a name list becomes sink objects.

The names are Hugging Face's, so a ``report_to`` copied from a ``transformers`` script means the
same thing here. Each name maps to a ``"module:Class"`` string imported only when that integration
is chosen (or probed for ``"all"``), so a vendor SDK is never imported unless it is used.

A sink class may offer two class methods: ``is_available(env)`` (may ``"all"`` pick it here?) and
``from_env(env, *, run_dir, run_name)`` (build it from the environment); without them it is always
available and built with no arguments. A sink whose ``sdk_module`` is set has that SDK imported
when it is chosen: one that is installed but does not import is an error for a name given
explicitly, and one warning (the integration is skipped) under ``"all"``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, cast

import structlog

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._sink import Sink

__all__ = [
    "INTEGRATIONS",
    "available_integrations",
    "build_sinks",
    "check_sdk",
    "import_object",
    "load_sink_class",
    "resolve_report_to",
]

log = structlog.get_logger(__name__)

INTEGRATIONS: Final[Mapping[str, str | None]] = {
    "tensorboard": "trainbus.sinks.tensorboard:TensorBoardSink",
    "mlflow": "trainbus.sinks.mlflow:MLflowSink",
    "comet_ml": "trainbus.sinks.comet:CometSink",
    "wandb": "trainbus.sinks.wandb:WandbSink",
    "azure_ml": None,
    "codecarbon": "trainbus.sinks.codecarbon:CodeCarbonSink",
    "clearml": None,
    "dagshub": "trainbus.sinks.dagshub:DagsHubSink",
    "flyte": None,
    "dvclive": "trainbus.sinks.dvclive:DVCLiveSink",
    "swanlab": "trainbus.sinks.swanlab:SwanLabSink",
}
"""Every ``report_to`` name, in the order ``"all"`` tries them; ``None``: not implemented yet."""


def import_object(spec: str, *, field: str) -> Any:
    """Import ``"package.module:attribute"``; errors name ``field`` for the user to fix."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"{field} must look like 'package.module:name', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"{field} = {spec!r}: cannot import module {module_name!r} ({exc})"
        ) from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"{field} = {spec!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    return obj


def _valid_names() -> str:
    return ", ".join(repr(name) for name in ("all", "none", *INTEGRATIONS))


def _implemented() -> list[str]:
    return [
        name
        for name, spec in INTEGRATIONS.items()
        if spec is not None and importlib.util.find_spec(spec.partition(":")[0]) is not None
    ]


def load_sink_class(name: str) -> type[Sink]:
    """The sink class behind a ``report_to`` name, imported now."""
    if name not in INTEGRATIONS:
        raise ConfigurationError(
            f"report_to contains unknown integration {name!r}; expected one of {_valid_names()}"
        )
    spec = INTEGRATIONS[name]
    if spec is None or importlib.util.find_spec(spec.partition(":")[0]) is None:
        raise ConfigurationError(
            f"report_to integration {name!r} is not implemented yet in trainbus; implemented: "
            + ", ".join(repr(n) for n in _implemented())
        )
    cls = import_object(spec, field=f"report_to[{name!r}]")
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise ConfigurationError(f"report_to integration {name!r} ({spec}) is not a Sink subclass")
    return cls


def _is_available(name: str, env: Mapping[str, str]) -> bool:
    spec = INTEGRATIONS[name]
    if spec is None:
        return False
    try:
        cls = load_sink_class(name)
    except ConfigurationError as exc:
        log.debug("integration_unavailable", integration=name, reason=str(exc))
        return False
    probe = getattr(cls, "is_available", None)
    if callable(probe) and not probe(env):
        return False
    try:
        check_sdk(name, cls)
    except ConfigurationError as exc:  # installed but broken: "all" goes on without it
        log.warning("integration_skipped", integration=name, reason=str(exc))
        return False
    return True


def check_sdk(name: str, cls: type[Sink]) -> None:
    """Import the sink's vendor SDK now, so a half-installed one fails here and not in ``open()``.

    Only for a sink that is being chosen: the import is the one ``open()`` would do anyway.
    """
    if cls.sdk_module is None or importlib.util.find_spec(cls.sdk_module) is None:
        return  # no SDK, or not installed at all: ``is_available``/``from_env`` say so themselves
    try:
        importlib.import_module(cls.sdk_module)
    except Exception as exc:  # an SDK's import can fail with anything, not only ImportError
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigurationError(
            f"report_to integration {name!r} needs the {cls.sdk_module!r} package, which is "
            f"installed but does not import ({detail}); repair it or drop {name!r} from report_to"
        ) from exc


_EXPLICIT_ONLY: Final = frozenset({"flyte"})
"""Names ``"all"`` never picks, as in Hugging Face: they must be asked for by name."""


def available_integrations(env: Mapping[str, str]) -> list[str]:
    """The implemented integrations whose requirements ``env`` and the installed packages meet."""
    return [n for n in INTEGRATIONS if n not in _EXPLICIT_ONLY and _is_available(n, env)]


def resolve_report_to(report_to: str | Sequence[str] | None, env: Mapping[str, str]) -> list[str]:
    """Normalise ``report_to`` as Hugging Face does: ``"all"``, ``"none"``, one name or a list."""
    if report_to is None:
        names: list[str] = ["all"]
    elif isinstance(report_to, str):
        names = [report_to]
    else:
        names = list(report_to)
    for name in names:
        if not isinstance(name, str):
            raise ConfigurationError(
                f"report_to must hold integration names (strings), got {name!r}"
            )
    if not names:
        return []
    if names == ["all"]:
        return available_integrations(env)
    if names == ["none"]:
        return []
    if "all" in names or "none" in names:
        raise ConfigurationError(
            f"report_to may use 'all' or 'none' only on their own, got {names!r}"
        )
    resolved: list[str] = []
    for name in names:
        # Unknown or unimplemented names, and SDKs that do not import, fail here, before training.
        check_sdk(name, load_sink_class(name))
        if name not in resolved:
            resolved.append(name)
    return resolved


def build_sinks(
    names: Sequence[str],
    env: Mapping[str, str],
    *,
    run_dir: Path,
    run_name: str,
    world_rank: int = 0,
) -> list[tuple[str, Sink]]:
    """Instantiate the sinks for resolved names, leaving rank-zero-only ones out on other ranks."""
    sinks: list[tuple[str, Sink]] = []
    for name in names:
        cls = load_sink_class(name)
        if cls.world_rank_zero_only and world_rank != 0:
            continue
        from_env = getattr(cls, "from_env", None)
        if callable(from_env):
            sink = cast(Sink, from_env(env, run_dir=run_dir, run_name=run_name))
        else:
            sink = cls()
        sinks.append((name, sink))
    return sinks

"""``report_to`` names, the sink classes behind them, and how a name list becomes sink objects.

The names are Hugging Face's, so a ``report_to`` copied from a ``transformers`` script means the
same thing here. Each name maps to a ``"module:Class"`` string imported only when that integration
is chosen (or probed for ``"all"``), so a vendor SDK is never imported unless it is used.

A sink class may offer two class methods: ``is_available(env)`` (may ``"all"`` pick it here?) and
``from_env(env, *, run_dir, run_name)`` (build it from the environment); without them it is always
available and built with no arguments. A sink whose ``sdk_module`` is set has that SDK imported
when it is chosen: one that is not installed is an error naming its extra
(``pip install 'trainbus[<extra>]'``) for a name given explicitly, one that is installed but does
not import is an error too, and under ``"all"`` either is a reason to skip the integration.

``"all"`` follows transformers' rule (an integration is picked when its package is installed;
``flyte`` only when named; ``azure_ml`` not when MLflow is picked), and adds "configured" where a
default run would otherwise need credentials or write somewhere surprising (``ALL_NEEDS``).
``explain_report_to`` says, for every integration, whether it was picked and why not;
``trainbus train --dry-run`` prints it and the run's start-up log line carries it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import structlog

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._sink import Sink

__all__ = [
    "ALL_NEEDS",
    "EXTRAS",
    "INTEGRATIONS",
    "IntegrationChoice",
    "available_integrations",
    "build_sinks",
    "check_sdk",
    "explain_report_to",
    "import_object",
    "install_hint",
    "load_sink_class",
    "resolve_report_to",
]

log = structlog.get_logger(__name__)

INTEGRATIONS: Final[Mapping[str, str | None]] = {
    "tensorboard": "trainbus.sinks.tensorboard:TensorBoardSink",
    "mlflow": "trainbus.sinks.mlflow:MLflowSink",
    "comet_ml": "trainbus.sinks.comet:CometSink",
    "wandb": "trainbus.sinks.wandb:WandbSink",
    "azure_ml": "trainbus.sinks.azureml:AzureMLSink",
    "codecarbon": "trainbus.sinks.codecarbon:CodeCarbonSink",
    "clearml": "trainbus.sinks.clearml:ClearMLSink",
    "dagshub": "trainbus.sinks.dagshub:DagsHubSink",
    "flyte": "trainbus.sinks.flyte:FlyteSink",
    "dvclive": "trainbus.sinks.dvclive:DVCLiveSink",
    "swanlab": "trainbus.sinks.swanlab:SwanLabSink",
}
"""Every ``report_to`` name, in the order ``"all"`` tries them; ``None``: not implemented yet."""

EXTRAS: Final[Mapping[str, str]] = {
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "comet_ml": "comet",
    "wandb": "wandb",
    "azure_ml": "azureml",
    "codecarbon": "codecarbon",
    "clearml": "clearml",
    "dagshub": "dagshub",
    "flyte": "flyte",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
}
"""The package extra that installs each integration's SDK: ``pip install 'trainbus[<extra>]'``."""

ALL_NEEDS: Final[Mapping[str, str]] = {
    "tensorboard": "always picked (the built-in event-file writer needs no package)",
    "mlflow": "needs MLFLOW_TRACKING_URI (and DISABLE_MLFLOW_INTEGRATION not true)",
    "comet_ml": "needs COMET_API_KEY or COMET_START_ONLINE=0 (offline)",
    "wandb": "needs WANDB_API_KEY or WANDB_MODE=offline (and neither WANDB_DISABLED nor "
    "WANDB_MODE=disabled)",
    "azure_ml": "needs AZUREML_RUN_ID (an Azure ML job sets it), and MLflow not picked",
    "codecarbon": "needs codecarbon",
    "clearml": "needs CLEARML_OFFLINE_MODE=1, CLEARML_API_ACCESS_KEY, CLEARML_CONFIG_FILE or "
    "~/clearml.conf",
    "dagshub": "'all' never picks it, name it (the MLflow sink already logs to a DagsHub URI)",
    "flyte": "'all' never picks it, name it (it only works inside a Flyte task)",
    "dvclive": "needs dvclive",
    "swanlab": "needs SWANLAB_MODE=offline (or local with swanboard), SWANLAB_API_KEY or a "
    "stored swanlab login",
}
"""When ``"all"`` picks each integration, as users read it: what it needs beyond being installed.
The rule itself is the sink's ``is_available(env)``; this is its sentence, for the skip reasons
(``explain_report_to``), ``--dry-run`` and the integrations index in the documentation."""


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


def install_hint(name: str) -> str:
    """``pip install 'trainbus[<extra>]'`` for the integration ``name``."""
    return f"pip install 'trainbus[{EXTRAS[name]}]'"


def check_sdk(name: str, cls: type[Sink]) -> None:
    """Import the sink's vendor SDK now, so a missing or half-installed one fails here, before
    training, and not in ``open()``.

    Only for a sink that is being chosen: the import is the one ``open()`` would do anyway.
    """
    if cls.sdk_module is None:
        return
    if importlib.util.find_spec(cls.sdk_module) is None:
        raise ConfigurationError(
            f"report_to integration {name!r} needs the {cls.sdk_module!r} package, which is not "
            f"installed; {install_hint(name)} or drop {name!r} from report_to"
        )
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

_UNLESS_PICKED: Final[Mapping[str, str]] = {"azure_ml": "mlflow"}
"""``"all"`` leaves the key out when it picked the value: AzureML logs through MLflow (an Azure
ML job sets ``MLFLOW_TRACKING_URI``), so both would log every metric twice. transformers skips
``azure_ml`` whenever the mlflow package is installed; we skip it when MLflow is picked."""


@dataclass(frozen=True)
class IntegrationChoice:
    """One integration as ``report_to`` resolution saw it: picked, or skipped and why."""

    name: str
    picked: bool
    reason: str
    """For a skipped one, why, in a few words with the fix (an extra, a variable)."""

    def line(self) -> str:
        """``name  picked`` or ``name  skipped: reason``, as ``--dry-run`` prints it."""
        if self.picked:
            return f"{self.name:<12} picked"
        return f"{self.name:<12} skipped: {self.reason}"


def _why_all_skips(name: str, env: Mapping[str, str]) -> str | None:
    """Why ``"all"`` leaves ``name`` out here, or ``None`` when it picks it."""
    if name in _EXPLICIT_ONLY:
        return f"explicit only, as in transformers: {ALL_NEEDS[name]}"
    if INTEGRATIONS[name] is None:
        return "not implemented in this version of trainbus"
    try:
        cls = load_sink_class(name)
    except ConfigurationError as exc:
        log.debug("integration_unavailable", integration=name, reason=str(exc))
        return f"does not load: {exc}"
    if cls.sdk_module is not None and importlib.util.find_spec(cls.sdk_module) is None:
        return f"not installed: {install_hint(name)}"
    probe = getattr(cls, "is_available", None)
    if callable(probe) and not probe(env):
        return f"not configured: {ALL_NEEDS[name]}"
    try:
        check_sdk(name, cls)
    except ConfigurationError as exc:  # installed but broken: "all" goes on without it
        log.warning("integration_skipped", integration=name, reason=str(exc))
        return f"installed but does not import: {install_hint(name)} to repair it"
    return None


def _explain_all(env: Mapping[str, str]) -> list[IntegrationChoice]:
    reasons = {name: _why_all_skips(name, env) for name in INTEGRATIONS}
    for name, other in _UNLESS_PICKED.items():
        if reasons[name] is None and reasons[other] is None:
            reasons[name] = f"{other} is picked, and {name} logs through it (as in transformers)"
    return [
        IntegrationChoice(name, reason is None, reason or "") for name, reason in reasons.items()
    ]


def available_integrations(env: Mapping[str, str]) -> list[str]:
    """The integrations ``"all"`` picks: implemented, installed, and configured in ``env``."""
    return [choice.name for choice in _explain_all(env) if choice.picked]


def _names(report_to: str | Sequence[str] | None) -> list[str]:
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
    if len(names) > 1 and ("all" in names or "none" in names):
        raise ConfigurationError(
            f"report_to may use 'all' or 'none' only on their own, got {names!r}"
        )
    return names


def explain_report_to(
    report_to: str | Sequence[str] | None, env: Mapping[str, str]
) -> list[IntegrationChoice]:
    """Every integration, in registry order, picked or skipped (with the reason) for ``report_to``.

    Names given explicitly are checked as ``resolve_report_to`` checks them (an unknown name, or
    an SDK that is missing or does not import, is an error); the others are "not named". Under
    ``"all"`` the picked ones are exactly ``available_integrations(env)``.
    """
    names = _names(report_to)
    if names == ["all"]:
        return _explain_all(env)
    if names == ["none"]:
        names = []
    for name in names:
        # Unknown or unimplemented names, and SDKs missing or broken, fail here, before training.
        check_sdk(name, load_sink_class(name))
    wanted = set(names)
    why = "not named in report_to" if names else "report_to is 'none'"
    return [
        IntegrationChoice(name, name in wanted, "" if name in wanted else why)
        for name in INTEGRATIONS
    ]


def resolve_report_to(report_to: str | Sequence[str] | None, env: Mapping[str, str]) -> list[str]:
    """Normalise ``report_to`` as Hugging Face does: ``"all"``, ``"none"``, one name or a list.

    Returns the integrations to start, in the order given (``"all"``: the registry's order).
    """
    names = _names(report_to)
    if names == ["all"]:
        return available_integrations(env)
    if names == ["none"]:
        return []
    explain_report_to(names, env)  # the checks, with their errors
    return list(dict.fromkeys(names))


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

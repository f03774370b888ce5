"""``report_to`` resolution with Hugging Face's names."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._sink import Sink
from trainbus.orchestrator.registry import (
    ALL_NEEDS,
    EXTRAS,
    INTEGRATIONS,
    IntegrationChoice,
    build_sinks,
    explain_report_to,
    import_object,
    install_hint,
    load_sink_class,
    resolve_report_to,
)

HF_NAMES = {
    "tensorboard",
    "mlflow",
    "comet_ml",
    "wandb",
    "azure_ml",
    "codecarbon",
    "clearml",
    "dagshub",
    "flyte",
    "dvclive",
    "swanlab",
}


def test_registry_knows_every_hugging_face_name() -> None:
    """Every report_to name of Hugging Face's table is a key of the registry."""
    assert set(INTEGRATIONS) == HF_NAMES


def test_none_and_empty_mean_no_integration() -> None:
    """``"none"``, ``["none"]`` and an empty list resolve to no sinks at all."""
    assert resolve_report_to("none", {}) == []
    assert resolve_report_to(["none"], {}) == []
    assert resolve_report_to([], {}) == []


def test_all_picks_only_available_integrations() -> None:
    """``"all"`` has MLflow only with a tracking server configured, and no unimplemented name."""
    without = resolve_report_to("all", {})
    with_uri = resolve_report_to("all", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert "mlflow" not in without
    assert "mlflow" in with_uri
    assert not {name for name, spec in INTEGRATIONS.items() if spec is None} & set(with_uri)


def test_all_respects_disable_mlflow_integration() -> None:
    """``DISABLE_MLFLOW_INTEGRATION=TRUE`` keeps MLflow out of ``"all"`` even with a URI set."""
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}
    assert "mlflow" not in resolve_report_to("all", env)


def test_a_single_name_becomes_a_list() -> None:
    """A plain string names one integration, as in Hugging Face."""
    assert resolve_report_to("mlflow", {}) == ["mlflow"]


def test_unknown_name_lists_the_valid_ones() -> None:
    """An unknown name fails with a message that names it and lists every valid name."""
    with pytest.raises(ConfigurationError) as info:
        resolve_report_to(["mlflow", "tensorbored"], {})
    message = str(info.value)
    assert "'tensorbored'" in message
    assert all(repr(name) in message for name in HF_NAMES)


def test_known_but_unimplemented_name_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hugging Face name without a trainbus sink yet fails with 'not implemented yet'."""
    monkeypatch.setitem(cast(dict[str, str | None], INTEGRATIONS), "clearml", None)
    with pytest.raises(ConfigurationError, match="'clearml' is not implemented yet"):
        resolve_report_to("clearml", {})


def test_all_cannot_be_mixed_with_names() -> None:
    """``["all", "mlflow"]`` is ambiguous and rejected."""
    with pytest.raises(ConfigurationError, match="only on their own"):
        resolve_report_to(["all", "mlflow"], {})


def test_implemented_names_load_sink_classes() -> None:
    """Each implemented name whose module exists imports a ``Sink`` subclass."""
    loaded = 0
    for name, spec in INTEGRATIONS.items():
        if spec is None:
            continue
        try:
            cls = load_sink_class(name)
        except ConfigurationError as exc:
            assert "cannot import module" in str(exc)
            continue
        assert issubclass(cls, Sink)
        loaded += 1
    assert loaded >= 1


def test_remote_sinks_are_left_out_on_other_ranks(tmp_path: Path) -> None:
    """A rank-zero-only sink (MLflow) is built on rank 0 and skipped on rank 1."""
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    on_zero = build_sinks(["mlflow"], env, run_dir=tmp_path, run_name="r", world_rank=0)
    on_one = build_sinks(["mlflow"], env, run_dir=tmp_path, run_name="r", world_rank=1)
    assert [name for name, _ in on_zero] == ["mlflow"]
    assert on_one == []


def test_import_object_names_the_field() -> None:
    """A bad ``module:function`` string fails with the field name and the reason."""
    with pytest.raises(ConfigurationError, match="model must look like"):
        import_object("no_colon_here", field="model")
    with pytest.raises(ConfigurationError, match="model = 'no_such_module_x:f': cannot import"):
        import_object("no_such_module_x:f", field="model")
    with pytest.raises(ConfigurationError, match="has no attribute 'nope'"):
        import_object("json:nope", field="model")


class NeedsAMissingSdk(Sink):
    """A sink whose SDK is not installed anywhere."""

    sdk_module = "trainbus_no_such_sdk"


class AlwaysAvailable(Sink):
    """A sink ``"all"`` would always pick (no SDK, no ``is_available``)."""


def choices(report_to: str | list[str], env: dict[str, str]) -> dict[str, IntegrationChoice]:
    """``explain_report_to`` by integration name."""
    return {choice.name: choice for choice in explain_report_to(report_to, env)}


def test_all_names_why_each_integration_is_skipped() -> None:
    """Under ``"all"`` every integration gets a verdict: not configured names the variable,
    explicit-only says so, and the picked ones are exactly ``resolve_report_to``'s."""
    explained = choices("all", {})
    assert list(explained) == list(INTEGRATIONS)
    assert [n for n, c in explained.items() if c.picked] == resolve_report_to("all", {})
    assert not explained["mlflow"].picked
    assert "not configured" in explained["mlflow"].reason
    assert "MLFLOW_TRACKING_URI" in explained["mlflow"].reason
    assert "explicit only" in explained["flyte"].reason
    assert explained["tensorboard"].line().split() == ["tensorboard", "picked"]
    assert explained["mlflow"].line().startswith("mlflow       skipped: not configured")


def test_a_missing_sdk_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SDK that is not installed: ``"all"`` skips it naming the extra, and naming the
    integration explicitly is an error with ``pip install 'trainbus[<extra>]'``."""
    monkeypatch.setitem(INTEGRATIONS, "swanlab", f"{__name__}:NeedsAMissingSdk")
    assert choices("all", {})["swanlab"].reason == "not installed: pip install 'trainbus[swanlab]'"
    with pytest.raises(ConfigurationError, match=r"pip install 'trainbus\[swanlab\]'"):
        resolve_report_to(["swanlab"], {})


def test_azure_ml_is_skipped_when_mlflow_is_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in transformers, ``"all"`` does not pick AzureML beside MLflow (it logs through it)."""
    monkeypatch.setitem(INTEGRATIONS, "azure_ml", f"{__name__}:AlwaysAvailable")
    assert choices("all", {})["azure_ml"].picked
    with_mlflow = choices("all", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert with_mlflow["mlflow"].picked and not with_mlflow["azure_ml"].picked
    assert "mlflow is picked" in with_mlflow["azure_ml"].reason
    assert resolve_report_to(["azure_ml", "mlflow"], {}) == ["azure_ml", "mlflow"]  # named: both


def test_named_integrations_are_picked_and_the_rest_not_named() -> None:
    """With explicit names, those are picked and every other one is "not named in report_to";
    ``"none"`` picks nothing."""
    explained = choices(["tensorboard"], {})
    assert [n for n, c in explained.items() if c.picked] == ["tensorboard"]
    assert explained["dvclive"].reason == "not named in report_to"
    assert not any(c.picked for c in choices("none", {}).values())


def test_every_integration_has_an_extra_and_an_all_rule() -> None:
    """Each ``report_to`` name has its extra and its sentence for ``"all"``."""
    assert set(EXTRAS) == set(INTEGRATIONS) == set(ALL_NEEDS)
    assert install_hint("comet_ml") == "pip install 'trainbus[comet]'"

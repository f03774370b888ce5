"""``report_to`` resolution with Hugging Face's names."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from trainbus.bus._errors import ConfigurationError
from trainbus.bus._sink import Sink
from trainbus.orchestrator.registry import (
    INTEGRATIONS,
    build_sinks,
    import_object,
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

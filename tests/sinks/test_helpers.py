"""Pure helpers shared by the sinks: log rewriting, redaction, env parsing, HTTP error mapping."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from trainbus.bus._env import env_flag, env_int
from trainbus.bus._errors import ConfigurationError, PermanentSinkError, RetryableSinkError
from trainbus.bus._secrets import redact, redact_url
from trainbus.sinks._http import map_errors, parse_retry_after
from trainbus.sinks._mlflow_api import chunk_batches, metric_entry
from trainbus.sinks._rewrite import flatten, numeric_items, rewrite_logs, sanitize_key


def test_rewrite_logs_uses_hf_prefixes() -> None:
    """eval_/test_ keys become eval/ and test/, everything else goes under train/."""
    logs = {"loss": 1.0, "eval_loss": 2.0, "test_f1": 0.5, "epoch": 1.0, "train_runtime": 3.0}
    assert rewrite_logs(logs) == {
        "train/loss": 1.0,
        "eval/loss": 2.0,
        "test/f1": 0.5,
        "train/epoch": 1.0,
        "train/train_runtime": 3.0,
    }


def test_numeric_items_keeps_numbers_and_bools_only() -> None:
    """Strings and None are dropped; bools count as numbers, as in HF."""
    assert numeric_items({"a": 1, "b": 2.5, "c": "x", "d": None, "e": True}) == [
        ("a", 1.0),
        ("b", 2.5),
        ("e", 1.0),
    ]


def test_sanitize_and_flatten() -> None:
    """Unsafe characters become underscores; nested params become dotted keys."""
    assert sanitize_key("loss@top(1)") == "loss_top_1_"
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}


def test_redact_masks_secret_keys_and_url_credentials() -> None:
    """Secret-named keys, URL passwords and token query values are masked, the rest kept."""
    data = {
        "hub_token": "hf_abc",
        "api_key": "k",
        "tokenizer_name": "bert",
        "pad_token_id": 0,
        "uri": "https://user:pw@example.com/x?token=abc&page=2",
        "nested": [{"MLFLOW_TRACKING_PASSWORD": "pw"}],
        "empty_token": None,
        "push_token": "<PUSH_TOKEN>",
    }
    assert redact(data) == {
        "hub_token": "***",
        "api_key": "***",
        "tokenizer_name": "bert",
        "pad_token_id": 0,
        "uri": "https://user:***@example.com/x?token=***&page=2",
        "nested": [{"MLFLOW_TRACKING_PASSWORD": "***"}],
        "empty_token": None,
        "push_token": "<PUSH_TOKEN>",
    }
    assert data["hub_token"] == "hf_abc"
    assert redact_url("http://onlytoken@host/") == "http://***@host/"


def test_env_flag_and_int_name_the_variable_on_bad_values() -> None:
    """HF's truthy spellings are accepted; anything else raises naming the variable."""
    assert env_flag({"X": "yes"}, "X") and not env_flag({"X": "0"}, "X")
    assert env_flag({}, "X", default=True)
    with pytest.raises(ConfigurationError, match="X"):
        env_flag({"X": "maybe"}, "X")
    assert env_int({"N": " 12 "}, "N") == 12
    with pytest.raises(ConfigurationError, match="MLFLOW_MAX_LOG_PARAMS"):
        env_int({"MLFLOW_MAX_LOG_PARAMS": "ten"}, "MLFLOW_MAX_LOG_PARAMS")


def test_parse_retry_after_reads_seconds_and_dates() -> None:
    """Retry-After is either delta-seconds or an HTTP date."""
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    date = email.utils.formatdate(1000.0 + 30, usegmt=True)
    assert parse_retry_after(date, now=1000.0) == pytest.approx(30.0)
    assert parse_retry_after("soon") is None


def _raise_for(status: int, headers: dict[str, str] | None = None, body: str = "") -> None:
    request = httpx.Request("POST", "http://127.0.0.1/api/2.0/mlflow/runs/log-batch")
    response = httpx.Response(status, headers=headers, text=body, request=request)
    with map_errors("MLflow"):
        response.raise_for_status()


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_map_errors_retryable_statuses(status: int) -> None:
    """408, 429 and 5xx are retryable and carry the Retry-After hint."""
    with pytest.raises(RetryableSinkError) as info:
        _raise_for(status, {"Retry-After": "2"})
    assert info.value.retry_after == 2.0


def test_map_errors_permanent_status_keeps_body() -> None:
    """Other 4xx are permanent and keep the server's explanation."""
    with pytest.raises(PermanentSinkError) as info:
        _raise_for(400, body='{"error_code": "INVALID_PARAMETER_VALUE"}')
    assert info.value.status == 400
    assert "INVALID_PARAMETER_VALUE" in info.value.body


def test_map_errors_transport_failures_are_retryable() -> None:
    """Timeouts and refused connections are retryable."""
    for exc in (httpx.ConnectTimeout("slow"), httpx.ConnectError("refused")):
        with pytest.raises(RetryableSinkError), map_errors("MLflow"):
            raise exc


def test_chunk_batches_respects_every_server_limit() -> None:
    """Metrics, params and tags are split at 1000/100/100 per request and under 1 MB."""
    metrics = [metric_entry(f"m{i % 7}", float(i), 1, i) for i in range(2500)]
    params = [{"key": f"p{i}", "value": "v"} for i in range(250)]
    tags = [{"key": f"t{i}", "value": "x" * 7000} for i in range(150)]
    chunks = list(chunk_batches(metrics, params, tags))
    assert sum(len(c.metrics) for c in chunks) == 2500
    assert sum(len(c.params) for c in chunks) == 250
    assert sum(len(c.tags) for c in chunks) == 150
    for chunk in chunks:
        assert len(chunk.metrics) <= 1000 and len(chunk.params) <= 100 and len(chunk.tags) <= 100
        assert chunk.entities() <= 1000
        encoded = httpx.Request("POST", "http://x", json=chunk.body("r")).content
        assert len(encoded) < 1_000_000


def test_metric_entry_spells_non_finite_values() -> None:
    """NaN and infinities use the protobuf JSON spellings the server parses."""
    assert metric_entry("a", float("nan"), 1, 2)["value"] == "NaN"
    assert metric_entry("a", float("-inf"), 1, 2)["value"] == "-Infinity"
    assert metric_entry("a", 0.5, 1, 2) == {"key": "a", "value": 0.5, "timestamp": 1, "step": 2}

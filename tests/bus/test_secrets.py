"""The one secret rule (``trainbus.bus._secrets``): which names are secrets, and masking."""

from __future__ import annotations

import pytest

from trainbus.bus._secrets import MASK, is_secret, redact, redact_url

SECRET_NAMES = [
    "hub_token",
    "api_key",
    "passwd",
    "auth_header",
    "db_credential",
    "db_password",
    "client_secret",
    "token",
    "HF_TOKEN",
    "COMET_API_KEY",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "DAGSHUB_USER_TOKEN",
    "WANDB_API_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "apiKey",
    "accessToken",
    "Authorization",
    "private_key",
    "api_key_2",
    "oauth_client",
    "AWS_ACCESS_KEY_ID",
    "api_key_id",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "refresh_token",
    "session_token",
    "input_token",
]
PLAIN_NAMES = [
    "tokenizer_name",
    "tokenizer_class",
    "max_tokens",
    "num_tokens",
    "pad_token_id",
    "eos_token_id",
    "image_token_index",
    "token_type_ids",
    "include_num_input_tokens_seen",
    "num_input_tokens_seen",
    "include_tokens_per_second",
    "train_tokens_per_second",
    "num_token_seen",
    "input_token_seen",
    "max_token",
    "total_token_count",
    "tokens_seen",
    "num_key_value_heads",
    "author",
    "keyword",
    "monkey",
    "learning_rate",
    "output_dir",
    "metric_for_best_model",
    "label_key",
    "text_key",
    "sort_key",
    "cache_key",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_secrets(name: str) -> None:
    """Each of these names holds a credential under the one rule."""
    assert is_secret(name)


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_plain_names_are_not_secrets(name: str) -> None:
    """Each of these names holds ordinary data (token counts and ids are not credentials)."""
    assert not is_secret(name)


def test_urls_lose_passwords_and_secret_query_values_only() -> None:
    """User-info passwords, token/key/signature query values are masked; other parameters kept."""
    url = "https://user:pw@example.com/x?token=abc&page=2&X-Amz-Signature=s&key=k&sort=asc"
    assert redact_url(url) == (
        "https://user:***@example.com/x?token=***&page=2&X-Amz-Signature=***&key=***&sort=asc"
    )
    assert redact_url("http://onlytoken@host/") == "http://***@host/"


def test_redact_keeps_placeholders_and_empty_values_and_never_mutates() -> None:
    """``"<HUB_TOKEN>"`` and ``None`` stay readable; nested secrets are masked in a copy."""
    data = {"hub_token": "<HUB_TOKEN>", "api_key": None, "nested": ({"passwd": "pw"},)}
    assert redact(data) == {
        "hub_token": "<HUB_TOKEN>",
        "api_key": None,
        "nested": ({"passwd": MASK},),
    }
    assert data["nested"] == ({"passwd": "pw"},)

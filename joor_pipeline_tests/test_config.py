"""Configuration from environment variables: defaults, the built-in sandbox, and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from joor_pipeline.config import HOSTS, Secret, load_settings
from joor_pipeline.joor.errors import ConfigError

V4 = {
    "JOOR_API_VERSION": "v4",
    "JOOR_ACCOUNT_ID": "24180",
    "JOOR_CLIENT_ID": "cid",
    "JOOR_CLIENT_SECRET": "csecret-value",
    "JOOR_USERNAME": "me",
    "JOOR_PASSWORD": "pw-value",
}


def test_nothing_configured_means_builtin_sandbox() -> None:
    s = load_settings({})
    assert s.builtin_sandbox
    assert (s.api_version, s.format, s.page_size, s.data_dir) == ("v2", "json", 100, Path("data"))
    assert s.concurrency == 4
    assert s.target == "built-in sandbox"


def test_v2_production_hosts() -> None:
    s = load_settings({"JOOR_API_TOKEN": "tok"})
    assert not s.builtin_sandbox
    assert s.base_url == HOSTS["production"]["base_url"] == "https://api.jooraccess.com"


def test_v4_sandbox_hosts() -> None:
    s = load_settings({**V4, "JOOR_ENVIRONMENT": "Sandbox"})
    assert s.base_url == "https://apisandbox.jooraccess.com"
    assert s.auth_url == "https://atlas-sandbox.jooraccess.com/auth/"


def test_base_url_override_brings_its_own_token_endpoint() -> None:
    s = load_settings({"JOOR_BASE_URL": "http://127.0.0.1:8765/", "JOOR_API_TOKEN": "t"})
    assert s.base_url == "http://127.0.0.1:8765"
    assert s.auth_url == "http://127.0.0.1:8765/auth/"
    s = load_settings({**V4, "JOOR_BASE_URL": "http://h:1", "JOOR_AUTH_URL": "http://a:2/auth/"})
    assert s.auth_url == "http://a:2/auth/"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOOR_BASE_URL": "http://127.0.0.1:1"}, "JOOR_API_TOKEN is required"),
        ({"JOOR_ACCOUNT_ID": "1"}, "did you mean JOOR_API_VERSION=v4"),
        ({"JOOR_API_VERSION": "v4", "JOOR_CLIENT_ID": "x"}, "needs JOOR_ACCOUNT_ID, JOOR_CLIENT_SECRET"),
        ({"JOOR_API_VERSION": "v3"}, "JOOR_API_VERSION must be one of v2, v4"),
        ({"JOOR_FORMAT": "csv"}, "JOOR_FORMAT must be one of json, xml"),
        ({"JOOR_ENVIRONMENT": "staging"}, "JOOR_ENVIRONMENT must be one of production, sandbox"),
        ({"JOOR_PAGE_SIZE": "many"}, "JOOR_PAGE_SIZE must be a whole number"),
        ({"JOOR_PAGE_SIZE": "0"}, "JOOR_PAGE_SIZE must be greater than 0"),
        ({"JOOR_RATE_LIMIT_WINDOW": "-1"}, "JOOR_RATE_LIMIT_WINDOW must be greater than 0"),
        ({"JOOR_CONCURRENCY": "0"}, "JOOR_CONCURRENCY must be greater than 0, got 0"),
        ({"JOOR_CONCURRENCY": "-2"}, "JOOR_CONCURRENCY must be greater than 0"),
        ({"JOOR_CONCURRENCY": "four"}, "JOOR_CONCURRENCY must be a whole number, got 'four'"),
        ({"JOOR_CONCURRENCY": "2.5"}, "JOOR_CONCURRENCY must be a whole number"),
        ({"JOOR_BASE_URL": "api.jooraccess.com", "JOOR_API_TOKEN": "t"}, "must start with http"),
        ({"JOOR_BASE_URL": "https://api.jooraccess.com/v2", "JOOR_API_TOKEN": "t"}, "without the version"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_concurrency_is_read_from_the_environment_and_the_resource() -> None:
    from joor_pipeline.assets.resources import JoorApiResource

    assert load_settings({"JOOR_CONCURRENCY": " 8 "}).concurrency == 8
    assert load_settings({"JOOR_CONCURRENCY": "1"}).concurrency == 1
    assert JoorApiResource(concurrency="3").settings().concurrency == 3
    with pytest.raises(ConfigError, match="JOOR_CONCURRENCY must be greater than 0"):
        JoorApiResource(concurrency="0").settings()


def test_every_problem_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"JOOR_FORMAT": "csv", "JOOR_PAGE_SIZE": "x"})
    assert "JOOR_FORMAT" in str(info.value) and "JOOR_PAGE_SIZE" in str(info.value)


def test_secrets_never_print() -> None:
    s = load_settings({**V4, "JOOR_API_TOKEN": "tok-value"})
    text = repr(s) + str(s) + f"{s}"
    for secret in ("csecret-value", "pw-value", "tok-value"):
        assert secret not in text
    assert isinstance(s.password, Secret) and s.password.reveal() == "pw-value"

"""Configuration: one declaration of every setting, validation that names the variable, no silent sandbox."""

from __future__ import annotations

import math
from dataclasses import fields
from datetime import date
from pathlib import Path

import pytest

from joor_pipeline.config import (
    HOSTS,
    NOT_CONFIGURED,
    SETTINGS,
    JoorSettings,
    Secret,
    check_data_dir,
    configuration_problem,
    declaration_mismatches,
    first_snapshot_date,
    flatten_workers_setting,
    help_text,
    load_account,
    load_accounts,
    load_settings,
    read_setting,
    readme_table,
    replace_readme_table,
)
from joor_pipeline.joor.errors import ConfigError

V4 = {
    "JOOR_API_VERSION": "v4",
    "JOOR_ACCOUNT_ID": "24180",
    "JOOR_CLIENT_ID": "cid",
    "JOOR_CLIENT_SECRET": "csecret-value",
    "JOOR_USERNAME": "me",
    "JOOR_PASSWORD": "pw-value",
}
TOKEN = {"JOOR_API_TOKEN": "tok"}
README = Path(__file__).resolve().parents[1] / "README.md"


def test_nothing_configured_is_one_line_saying_what_to_set() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({})
    message = str(info.value)
    assert message == NOT_CONFIGURED and "\n" not in message
    for name in ("JOOR_API_TOKEN", "JOOR_API_VERSION=v4", "JOOR_CLIENT_SECRET", "JOOR_ENVIRONMENT=builtin"):
        assert name in message
    # Settings that do not point at a JOOR do not make one: still not configured.
    with pytest.raises(ConfigError, match="no JOOR account configured"):
        load_settings({"JOOR_ENVIRONMENT": "production", "JOOR_FORMAT": "xml", "JOOR_DATA_DIR": "some/dir"})


def test_builtin_sandbox_only_when_asked() -> None:
    s = load_settings({"JOOR_ENVIRONMENT": "BuiltIn"})
    assert s.builtin_sandbox and s.environment == "builtin"
    assert (s.api_version, s.format, s.page_size, s.data_dir) == ("v2", "json", 100, Path("data"))
    assert s.target == "built-in sandbox"
    assert not load_settings(TOKEN).builtin_sandbox
    with pytest.raises(ConfigError, match="JOOR_BASE_URL points at a server but JOOR_ENVIRONMENT=builtin"):
        load_settings({"JOOR_ENVIRONMENT": "builtin", "JOOR_BASE_URL": "http://127.0.0.1:1"})


def test_v2_production_hosts() -> None:
    s = load_settings(TOKEN)
    assert s.base_url == HOSTS["production"]["base_url"] == "https://api.jooraccess.com"
    assert (s.max_response_mb, s.max_pages, s.timeout, s.concurrency) == (64.0, 10_000, 30.0, 1)


def test_v4_sandbox_hosts() -> None:
    s = load_settings({**V4, "JOOR_ENVIRONMENT": "Sandbox"})
    assert s.base_url == "https://apisandbox.jooraccess.com"
    assert s.auth_url == "https://atlas-sandbox.jooraccess.com/auth/"


def test_base_url_override_brings_its_own_token_endpoint() -> None:
    s = load_settings({"JOOR_BASE_URL": "http://127.0.0.1:8765/", "JOOR_API_TOKEN": "t"})
    assert s.base_url == "http://127.0.0.1:8765"
    assert s.auth_url == "http://127.0.0.1:8765/auth/"
    s = load_settings({**V4, "JOOR_BASE_URL": "http://[::1]:1", "JOOR_AUTH_URL": "http://a:2/auth/"})
    assert (s.base_url, s.auth_url) == ("http://[::1]:1", "http://a:2/auth/")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOOR_BASE_URL": "http://127.0.0.1:1"}, "JOOR_API_TOKEN is required"),
        ({"JOOR_ACCOUNT_ID": "1"}, "did you mean JOOR_API_VERSION=v4"),
        ({"JOOR_API_VERSION": "v4", "JOOR_CLIENT_ID": "x"}, "needs JOOR_ACCOUNT_ID, JOOR_CLIENT_SECRET"),
        ({**TOKEN, "JOOR_API_VERSION": "v3"}, "JOOR_API_VERSION must be one of v2, v4"),
        ({**TOKEN, "JOOR_FORMAT": "csv"}, "JOOR_FORMAT must be one of json, xml"),
        ({**TOKEN, "JOOR_ENVIRONMENT": "staging"}, "JOOR_ENVIRONMENT must be one of production, sandbox, builtin"),
        ({**TOKEN, "JOOR_PAGE_SIZE": "many"}, "JOOR_PAGE_SIZE must be a whole number from 1 to 1,000"),
        ({**TOKEN, "JOOR_PAGE_SIZE": "0"}, "JOOR_PAGE_SIZE must be a whole number from 1 to 1,000, got '0'"),
        ({**TOKEN, "JOOR_CONCURRENCY": "99999999999999999999"}, "JOOR_CONCURRENCY must be a whole number from 1 to"),
        ({**TOKEN, "JOOR_CONCURRENCY": "-2"}, "JOOR_CONCURRENCY must be a whole number"),
        ({**TOKEN, "JOOR_CONCURRENCY": "2.5"}, "JOOR_CONCURRENCY must be a whole number"),
        ({**TOKEN, "JOOR_RATE_LIMIT_WINDOW": "nan"}, "JOOR_RATE_LIMIT_WINDOW must be a number from 0.1 to 86,400 s"),
        ({**TOKEN, "JOOR_RATE_LIMIT_WINDOW": "inf"}, "JOOR_RATE_LIMIT_WINDOW must be a number"),
        ({**TOKEN, "JOOR_RATE_LIMIT_WINDOW": "-1"}, "JOOR_RATE_LIMIT_WINDOW must be a number"),
        ({**TOKEN, "JOOR_TIMEOUT": "nan"}, "JOOR_TIMEOUT must be a number from 0.1 to 3,600 s, got 'nan'"),
        ({**TOKEN, "JOOR_TIMEOUT": "inf"}, "JOOR_TIMEOUT must be a number"),
        ({**TOKEN, "JOOR_TIMEOUT": "-inf"}, "JOOR_TIMEOUT must be a number"),
        ({**TOKEN, "JOOR_TIMEOUT": "1e308"}, "JOOR_TIMEOUT must be a number"),
        ({**TOKEN, "JOOR_MAX_ATTEMPTS": "1e3"}, "JOOR_MAX_ATTEMPTS must be a whole number"),
        ({**TOKEN, "JOOR_MAX_RESPONSE_MB": "1e9"}, "JOOR_MAX_RESPONSE_MB must be a number from 0.01 to 4,096 MB"),
        ({**TOKEN, "JOOR_MAX_PAGES": "0"}, "JOOR_MAX_PAGES must be a whole number from 1 to 10,000,000"),
        ({**TOKEN, "JOOR_SANDBOX_CONNECTIONS": "1" * 30}, "JOOR_SANDBOX_CONNECTIONS must be a whole number"),
        ({"JOOR_BASE_URL": "api.jooraccess.com", **TOKEN}, "JOOR_BASE_URL must be an http:// or https:// URL"),
        ({"JOOR_BASE_URL": "ftp://h", **TOKEN}, "JOOR_BASE_URL must be an http:// or https:// URL"),
        ({"JOOR_BASE_URL": "http://[::1", **TOKEN}, "JOOR_BASE_URL is not a valid URL, got 'http://\\[::1'"),
        ({"JOOR_BASE_URL": "http://h:99999", **TOKEN}, "JOOR_BASE_URL is not a valid URL"),
        ({"JOOR_BASE_URL": "http://h/?a=1", **TOKEN}, "JOOR_BASE_URL must not have a query"),
        ({"JOOR_BASE_URL": "https://api.jooraccess.com/v2", **TOKEN}, "without the version"),
        ({**V4, "JOOR_AUTH_URL": "http://"}, "JOOR_AUTH_URL must be an http:// or https:// URL with a host"),
    ],
)
def test_bad_settings_name_the_variable_on_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(env)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2-secret@127.0.0.1:8765",
        "https://hunter2-secret@api.jooraccess.com",
        "http://user:hunter2-secret@[::1",  # unparseable, and still redacted
        "http://u:hunter2-secret@secret@host/",  # an unencoded @ in the password
    ],
)
def test_a_password_in_a_url_is_refused_and_never_echoed(url: str) -> None:
    for name in ("JOOR_BASE_URL", "JOOR_AUTH_URL"):
        with pytest.raises(ConfigError, match=f"{name} must not carry a user name or password") as info:
            load_settings({**V4, name: url})
        assert "hunter2" not in str(info.value) and "secret@" not in str(info.value)
        assert "***@" in str(info.value)


def test_values_at_the_bounds_are_accepted() -> None:
    s = load_settings(
        {
            **TOKEN,
            "JOOR_TIMEOUT": "3600",
            "JOOR_RATE_LIMIT_WINDOW": "0.1",
            "JOOR_CONCURRENCY": " 64 ",
            "JOOR_MAX_RESPONSE_MB": "0.5",
            "JOOR_MAX_PAGES": "10_000_000",
            "JOOR_SANDBOX_SEED": "0",
        }
    )
    assert (s.timeout, s.rate_limit_window, s.concurrency) == (3600.0, 0.1, 64)
    assert (s.max_response_mb, s.max_pages, s.sandbox_seed) == (0.5, 10_000_000, 0)
    assert isinstance(s.timeout, float) and isinstance(s.concurrency, int)


def test_every_numeric_setting_is_bounded_and_its_default_is_inside() -> None:
    for setting in SETTINGS:
        if setting.kind in ("int", "float"):
            assert setting.low is not None and setting.high is not None, setting.name
            assert math.isfinite(setting.high)
            if setting.default is not None:
                assert setting.low <= setting.default <= setting.high, setting.name


def test_every_problem_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({**TOKEN, "JOOR_FORMAT": "csv", "JOOR_PAGE_SIZE": "x", "JOOR_TIMEOUT": "nan"})
    assert all(name in str(info.value) for name in ("JOOR_FORMAT", "JOOR_PAGE_SIZE", "JOOR_TIMEOUT"))


def test_secrets_never_print() -> None:
    s = load_settings({**V4, "JOOR_API_TOKEN": "tok-value"})
    text = repr(s) + str(s) + f"{s}"
    for secret in ("csecret-value", "pw-value", "tok-value"):
        assert secret not in text
    assert isinstance(s.password, Secret) and s.password.reveal() == "pw-value"


def test_other_settings_read_where_they_are_used() -> None:
    assert flatten_workers_setting({}) is None
    assert flatten_workers_setting({"JOOR_FLATTEN_WORKERS": " 3 "}) == 3
    with pytest.raises(ConfigError, match="JOOR_FLATTEN_WORKERS must be a whole number from 1 to 256"):
        flatten_workers_setting({"JOOR_FLATTEN_WORKERS": "100000"})
    assert first_snapshot_date({}) == date(2025, 1, 1)
    assert first_snapshot_date({"JOOR_FIRST_SNAPSHOT_DATE": "2026-02-03"}) == date(2026, 2, 3)
    with pytest.raises(ConfigError, match="JOOR_FIRST_SNAPSHOT_DATE must be a date"):
        first_snapshot_date({"JOOR_FIRST_SNAPSHOT_DATE": "yesterday"})


def test_configuration_problem_is_the_same_line_or_none() -> None:
    assert configuration_problem({}) == NOT_CONFIGURED
    assert configuration_problem({"JOOR_ENVIRONMENT": "builtin"}) is None
    assert "JOOR_TIMEOUT" in str(configuration_problem({**TOKEN, "JOOR_TIMEOUT": "inf"}))


def test_data_dir_must_be_a_writable_directory(tmp_path: Path) -> None:
    assert check_data_dir(tmp_path / "new" / "data") == tmp_path / "new" / "data"
    assert not (tmp_path / "new").exists()  # checked, not made
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ConfigError, match=f"JOOR_DATA_DIR {file} is not a directory"):
        check_data_dir(file)
    with pytest.raises(ConfigError, match=r"--data-dir .* would be under .*file, which is not a directory"):
        check_data_dir(file / "below", "--data-dir")


# ---- one declaration --------------------------------------------------------------------------------------------


def test_settings_dataclass_matches_the_declaration() -> None:
    assert declaration_mismatches() == []
    declared = {s.field for s in SETTINGS}
    # Every JoorSettings field is declared, except the one load_settings derives.
    assert {f.name for f in fields(JoorSettings)} - declared == {"builtin_sandbox"}
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)
    assert all(s.name.startswith("JOOR_") for s in SETTINGS)


def test_settings_named_in_the_interfaces_are_declared() -> None:
    names = {s.name: s for s in SETTINGS}
    assert names["JOOR_MAX_RESPONSE_MB"].default == 64.0
    assert names["JOOR_MAX_PAGES"].default == 10_000
    assert names["JOOR_FIRST_SNAPSHOT_DATE"].default == date(2025, 1, 1)
    assert "builtin" in names["JOOR_ENVIRONMENT"].choices


def test_resources_carry_exactly_the_declared_fields() -> None:
    from joor_pipeline.assets.resources import DataDirResource, JoorApiResource

    for resource, cls in (("joor", JoorApiResource), ("storage", DataDirResource)):
        declared = {s.field: s for s in SETTINGS if s.resource == resource}
        assert set(cls.model_fields) == set(declared)
        for name, info in cls.model_fields.items():
            assert info.description is not None and info.description.startswith(declared[name].name)
    assert JoorApiResource(api_token="t", concurrency=" 8 ").settings().concurrency == 8
    with pytest.raises(ConfigError, match="JOOR_CONCURRENCY must be a whole number"):
        JoorApiResource(api_token="t", concurrency="0").settings()
    with pytest.raises(ConfigError, match="no JOOR account configured"):
        JoorApiResource().settings()


def test_help_lists_every_setting_with_its_bounds() -> None:
    text = help_text()
    for setting in SETTINGS:
        assert setting.name in text
        if setting.bounds and not setting.choices:
            assert setting.bounds in text
    assert "JOOR_TIMEOUT" in text and "0.1 to 3,600 s" in text


def test_readme_configuration_table_is_generated_from_the_declaration() -> None:
    readme = README.read_text(encoding="utf-8")
    assert readme_table() in readme, "README out of date: run `uv run python -m joor_pipeline.config --write-readme`"
    assert replace_readme_table(readme) == readme
    for setting in SETTINGS:
        assert f"| `{setting.name}` |" in readme


# ---- never echo a secret (issue 19) -------------------------------------------------------------------------------

PASTED = "tok-7f3a9c-PASTED-d41e88b0c2"


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_accounts(env)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("key", ["api_token_env", "client_secret_env", "password_env"])
@pytest.mark.parametrize("value", [PASTED, "PASTED_AS_A_NAME_7f3a9c", f"{PASTED} ", "x" * 200])
def test_the_value_of_an_env_key_is_never_printed(tmp_path: Path, key: str, value: str) -> None:
    """A secret pasted where the name of its variable belongs, valid as a name or not, set or not: never echoed."""
    path = tmp_path / "accounts.toml"
    path.write_text(f'[accounts.a]\n{key} = "{value}"\n', encoding="utf-8")
    message = config_error({"JOOR_ACCOUNTS_FILE": str(path)})
    assert f"{path} [accounts.a]: {key}" in message
    assert value.strip()[:6] not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JOOR_PAGE_SIZE", PASTED),
        ("JOOR_FORMAT", PASTED),
        ("JOOR_TIMEOUT", f" {PASTED} "),
        ("JOOR_FIRST_SNAPSHOT_DATE", PASTED),
        ("JOOR_BASE_URL", f"https://api.example/{PASTED}/v2"),
        ("JOOR_ENVIRONMENT", f"sandbox-{PASTED}"),  # a value holding the secret
        ("JOOR_FORMAT", PASTED[:12]),  # a piece of it
    ],
)
@pytest.mark.parametrize("holder", ["JOOR_API_TOKEN", "JOOR_CLIENT_SECRET", "JOOR_PASSWORD"])
def test_a_secret_pasted_into_another_variable_is_never_printed(name: str, value: str, holder: str) -> None:
    env = {**V4, "JOOR_API_TOKEN": "tok", holder: PASTED, name: value}
    problems: list[str] = []
    read_setting(env, name, problems)
    try:
        load_settings(env)
    except ConfigError as exc:
        problems.append(str(exc))
    assert problems and all(name in problem for problem in problems)
    for problem in problems:
        assert PASTED[:8] not in problem and PASTED[-8:] not in problem
        assert "not shown" in problem


def test_a_secret_of_another_account_pasted_into_a_setting_is_never_printed(tmp_path: Path) -> None:
    """Account a's page_size holds account b's token, named only in b's table: the file's secrets are all known."""
    path = tmp_path / "accounts.toml"
    path.write_text(
        '[accounts.a]\napi_token_env = "A_TOKEN"\npage_size = "' + PASTED + '"\n\n'
        '[accounts.b]\napi_token_env = "B_TOKEN"\n',
        encoding="utf-8",
    )
    env = {"JOOR_ACCOUNTS_FILE": str(path), "A_TOKEN": "token-of-a", "B_TOKEN": PASTED}
    for message in (config_error(env), str(configuration_problem(env))):
        assert "[accounts.a]: page_size must be a whole number" in message
        assert PASTED[:8] not in message and "not shown" in message
    with pytest.raises(ConfigError) as info:
        load_account(env, "a")
    assert PASTED[:8] not in str(info.value)


def test_a_secret_in_the_process_environment_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings read where they are used (the flatten's) know the process's secrets too."""
    monkeypatch.setenv("JOOR_API_TOKEN", PASTED)
    with pytest.raises(ConfigError, match="JOOR_FLATTEN_WORKERS must be a whole number") as info:
        flatten_workers_setting({"JOOR_FLATTEN_WORKERS": PASTED})
    assert PASTED[:8] not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"https://api.example/?token={PASTED}",
        f"https://api.example/?{PASTED}",
        f"https://api.example/#{PASTED}",
        f"https://api.example/v2/?access_token={PASTED}",
        f"http://[::1/?token={PASTED}",  # unparseable, and still masked
    ],
)
def test_a_query_string_in_a_url_is_masked_whole(url: str) -> None:
    with pytest.raises(ConfigError, match="JOOR_BASE_URL") as info:
        load_settings({"JOOR_API_TOKEN": "tok", "JOOR_BASE_URL": url})
    message = str(info.value)
    assert "?" + PASTED[:1] not in message and "=" + PASTED[:1] not in message and "#" + PASTED[:1] not in message
    assert PASTED[:3] not in message.replace("JOOR_", "")

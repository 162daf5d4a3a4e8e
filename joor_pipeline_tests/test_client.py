"""The JOOR client over real HTTP against the sandbox: auth, formats, pagination, retries, pacing, errors."""

from __future__ import annotations

import time

import pytest

from joor_pipeline.joor.client import JoorClient, RetryPolicy, parse_retry_after, redact_url
from joor_pipeline.joor.errors import (
    AuthError,
    JoorApiError,
    NotFoundError,
    PaginationError,
    PayloadError,
    RetriesExhausted,
)
from joor_pipeline.joor.pacing import CreditPacer
from joor_pipeline.joor.parse import parse_page
from joor_pipeline.sandbox import run_sandbox
from joor_pipeline_tests.conftest import sandbox_settings

FAST_RETRY = RetryPolicy(max_attempts=6, max_elapsed=30.0, backoff_base=0.01, backoff_max=0.05)


def all_connections(client: JoorClient, **kwargs) -> list[dict]:
    return [c for page in client.iter_connection_pages(**kwargs) for c in page.page.connections]


def ids(connections: list[dict]) -> list[str]:
    return [c["customer_account_id"] for c in connections]


# ---- pagination ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connections", "page_size", "pages"),
    [(5, 100, 1), (120, 7, 18), (120, 120, 1), (121, 40, 4), (1, 1, 1)],
)
def test_pagination_walks_every_connection_once(connections: int, page_size: int, pages: int) -> None:
    with run_sandbox(connections=connections, seed=3, rate_limit_credits=0) as sb:
        with JoorClient(sandbox_settings(sb, page_size=page_size)) as client:
            fetched = list(client.iter_connection_pages())
    got = [c for p in fetched for c in p.page.connections]
    assert len(fetched) == pages
    assert [p.start_from for p in fetched] == [i * page_size for i in range(pages)]
    assert ids(got) == [str(c["customer_account_id"]) for c in sb.connections]
    assert len(set(ids(got))) == connections


def test_empty_account_gives_one_empty_page() -> None:
    with run_sandbox(connections=0, rate_limit_credits=0) as sb:
        with JoorClient(sandbox_settings(sb)) as client:
            fetched = list(client.iter_connection_pages())
    assert len(fetched) == 1
    assert fetched[0].page.connections == []


def test_non_advancing_next_start_is_an_error_not_a_loop(sandbox) -> None:
    sandbox.faults.stuck_pagination = True
    with JoorClient(sandbox_settings(sandbox, page_size=10)) as client:
        with pytest.raises(PaginationError, match="does not advance"):
            all_connections(client)
        assert client.stats.requests == 2


# ---- auth --------------------------------------------------------------------------------------------------------


def test_v2_token_auth(sandbox) -> None:
    with JoorClient(sandbox_settings(sandbox, api_version="v2")) as client:
        assert len(all_connections(client)) == 120
        assert client.stats.token_requests == 0


def test_v2_wrong_token_is_refused_without_echoing_it(sandbox) -> None:
    from joor_pipeline.config import Secret

    settings = sandbox_settings(sandbox, api_token=Secret("not-the-token-xyz"))
    with JoorClient(settings) as client, pytest.raises(AuthError) as info:
        client.get_connection_by_customer_code("JBNY")
    assert info.value.status == 401
    assert info.value.code not in (None, 0)
    assert "not-the-token-xyz" not in str(info.value)


def test_v4_password_grant_and_bearer(sandbox) -> None:
    with JoorClient(sandbox_settings(sandbox, api_version="v4", page_size=30)) as client:
        assert len(all_connections(client)) == 120
        assert client.stats.token_requests == 1
    assert sandbox.stats.tokens_issued == 1


def test_v4_wrong_password_is_refused(sandbox) -> None:
    from joor_pipeline.config import Secret

    settings = sandbox_settings(sandbox, api_version="v4", password=Secret("wrong-password-123"))
    with JoorClient(settings) as client, pytest.raises(AuthError) as info:
        client.get_connection_by_customer_code("JBNY")
    assert "wrong-password-123" not in str(info.value)
    assert "v4 credentials" in str(info.value)


def test_v4_wrong_account_is_refused(sandbox) -> None:
    settings = sandbox_settings(sandbox, api_version="v4", account_id="999")
    with JoorClient(settings) as client, pytest.raises(AuthError):
        client.get_connection_by_customer_code("JBNY")


def test_v4_token_is_renewed_before_expiry() -> None:
    with run_sandbox(connections=3, token_ttl=1, rate_limit_credits=0) as sb:
        with JoorClient(sandbox_settings(sb, api_version="v4")) as client:
            client.get_connection_by_customer_code("JBNY")
            time.sleep(1.1)
            client.get_connection_by_customer_code("JBNY")
            assert client.stats.token_requests == 2
            # Renewal happens before the call, so JOOR never saw an expired token.
            assert sb.stats.by_status.get(401, 0) == 0


def test_v4_revoked_token_reauthenticates_once(sandbox) -> None:
    with JoorClient(sandbox_settings(sandbox, api_version="v4")) as client:
        client.get_connection_by_customer_code("JBNY")
        sandbox.revoke_tokens()
        assert client.get_connection_by_customer_code("JBNY")["customer_code"] == "JBNY"
        assert client.stats.token_requests == 2
    assert sandbox.stats.by_status.get(401) == 1


# ---- formats ----------------------------------------------------------------------------------------------------


def test_json_and_xml_give_identical_canonical_structures(sandbox, seeds_dir) -> None:
    results = {}
    for fmt in ("json", "xml"):
        with JoorClient(sandbox_settings(sandbox, fmt=fmt, page_size=25)) as client:
            results[fmt] = (client.get_connection_by_customer_code("JBNY"), all_connections(client))
    assert results["json"] == results["xml"]
    seed = parse_page((seeds_dir / "connection-example.json").read_bytes(), "json").connections[0]
    assert results["xml"][0] == seed


def test_xml_wrapper_with_one_child_is_a_list_and_empty_element_is_empty_string(sandbox) -> None:
    with JoorClient(sandbox_settings(sandbox, fmt="xml")) as client:
        jbny = client.get_connection_by_customer_code("JBNY")
    assert isinstance(jbny["doors"], list) and len(jbny["doors"]) == 1
    assert jbny["doors"][0]["door_shipping_address_id"] == "214920"
    assert jbny["billing"]["billing_addresses"][0]["billing_code"] == ""
    assert jbny["discounts"][2]["division_id"] == ""


def test_fetch_by_id_and_customer_code_agree(sandbox) -> None:
    with JoorClient(sandbox_settings(sandbox)) as client:
        by_code = client.get_connection_by_customer_code("JBNY")
        by_id = client.get_connection(24181)
    assert by_code == by_id


def test_unknown_code_and_id_are_not_found(sandbox) -> None:
    with JoorClient(sandbox_settings(sandbox)) as client:
        with pytest.raises(NotFoundError) as info:
            client.get_connection_by_customer_code("NO SUCH/CODE")
        assert info.value.status == 404
        assert info.value.log_id
        with pytest.raises(NotFoundError):
            client.get_connection(1)


# ---- retries and faults -------------------------------------------------------------------------------------------


def test_retries_through_faults_lose_and_duplicate_nothing(sandbox) -> None:
    sandbox.faults.script = ["500", "ok", "503", "drop", "ok", "truncate", "502", "ok", "429"]
    with JoorClient(sandbox_settings(sandbox, page_size=10), retry=FAST_RETRY) as client:
        got = all_connections(client)
        assert client.stats.retries == 6
        assert client.stats.transport_errors == 2
    assert ids(got) == [str(c["customer_account_id"]) for c in sandbox.connections]


def test_random_faults_still_give_every_connection_once() -> None:
    with run_sandbox(connections=300, seed=5, rate_limit_credits=0) as sb:
        sb.faults.error_rate = 0.15
        sb.faults.drop_rate = 0.05
        sb.faults.truncate_rate = 0.05
        retry = RetryPolicy(max_attempts=12, max_elapsed=60, backoff_base=0.005, backoff_max=0.02)
        with JoorClient(sandbox_settings(sb, page_size=10), retry=retry) as client:
            got = all_connections(client)
            retried = client.stats.retries
    assert ids(got) == [str(c["customer_account_id"]) for c in sb.connections]
    assert retried > 0


def test_retries_are_capped_then_a_clear_error(sandbox) -> None:
    sandbox.faults.script = ["503"] * 10
    retry = RetryPolicy(max_attempts=3, backoff_base=0.01)
    with JoorClient(sandbox_settings(sandbox), retry=retry) as client:
        with pytest.raises(RetriesExhausted, match=r"after 3 attempt\(s\).*HTTP 503"):
            client.get_connection(24181)


def test_429_honours_retry_after() -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    with run_sandbox(connections=20, rate_limit_credits=3, rate_limit_window=1.0) as sb:
        # The client's own pacer is generous, so the server's limit is what it meets.
        with JoorClient(sandbox_settings(sb, page_size=5), retry=FAST_RETRY, sleep=sleep) as client:
            got = all_connections(client)
            throttled = client.stats.throttled
    assert len(got) == 20
    assert throttled >= 1
    assert any(s >= 1.0 for s in slept), slept  # Retry-After: 1, not the 10 ms backoff


def test_pacing_keeps_within_the_credit_budget() -> None:
    with run_sandbox(connections=24, rate_limit_credits=5, rate_limit_window=0.5) as sb:
        settings = sandbox_settings(sb, page_size=2, rate_limit_credits=5, rate_limit_window=0.5)
        pacer = CreditPacer(5, 0.5, margin=0.05)
        with JoorClient(settings, pacer=pacer) as client:
            assert len(all_connections(client)) == 24
            assert client.stats.throttled == 0
    assert sb.stats.throttled == 0
    assert pacer.stats.windows >= 3
    assert pacer.stats.waited_seconds > 0


def test_garbage_body_is_a_clear_error(sandbox) -> None:
    sandbox.faults.script = ["garbage"]
    with JoorClient(sandbox_settings(sandbox)) as client, pytest.raises(PayloadError) as info:
        client.get_connection(24181)
    assert "invalid JSON" in str(info.value)
    assert "/v2/connection/24181/" in str(info.value)


def test_non_zero_response_code_carries_comment_and_log_id(sandbox) -> None:
    sandbox.faults.error_code = 17
    with JoorClient(sandbox_settings(sandbox)) as client, pytest.raises(JoorApiError) as info:
        all_connections(client)
    assert info.value.code == 17
    assert info.value.comment
    assert info.value.log_id
    assert "log_id" in str(info.value)


# ---- helpers --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), ("0", 0.0), (" 2.5 ", 2.5), ("", None), (None, None), ("soon", None)],
)
def test_parse_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=lambda: now) == 30.0


def test_redact_url_masks_credentials_only() -> None:
    url = redact_url("https://x/v2/connection/?start_from=0&password=hunter2&account=7")
    assert "hunter2" not in url
    assert "account=7" in url and "start_from=0" in url


def test_pacer_never_exceeds_budget_in_a_window() -> None:
    now = [0.0]
    pacer = CreditPacer(10, 5.0, margin=0.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    stamps = []
    for _ in range(35):
        pacer.acquire(1)
        stamps.append(now[0])
    per_window: dict[int, int] = {}
    for t in stamps:
        per_window[int(t // 5.0)] = per_window.get(int(t // 5.0), 0) + 1
    assert max(per_window.values()) == 10
    assert pacer.stats.credits_used == 35
    assert pacer.stats.windows == 4

"""The JOOR client over real HTTP against the sandbox: auth, formats, pagination, retries, pacing, errors."""

from __future__ import annotations

import copy
import threading
import time

import pytest

from joor_pipeline.joor.client import FetchedPage, JoorClient, RetryPolicy, parse_retry_after, redact_url
from joor_pipeline.joor.errors import (
    AuthError,
    JoorApiError,
    NotFoundError,
    PaginationError,
    PayloadError,
    RetriesExhausted,
)
from joor_pipeline.joor.pacing import Cancelled, CreditPacer
from joor_pipeline.joor.parse import parse_page
from joor_pipeline.sandbox import Faults, run_sandbox
from joor_pipeline_tests.conftest import sandbox_settings
from joor_pipeline_tests.fake_time import FakeTime

FAST_RETRY = RetryPolicy(max_attempts=6, max_elapsed=30.0, backoff_base=0.01, backoff_max=0.05)


def all_connections(client: JoorClient, **kwargs) -> list[dict]:
    return [c for page in client.iter_connection_pages(**kwargs) for c in page.page.connections]


def ids(connections: list[dict]) -> list[str]:
    return [c["customer_account_id"] for c in connections]


def served_ids(sandbox) -> list[str]:
    return [str(c["customer_account_id"]) for c in sandbox.connections]


def fetch_threads() -> list[str]:
    """Threads of a concurrent walk still alive (the client names them ``joor-fetch-*``)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("joor-fetch")]


def comparable(page: FetchedPage) -> tuple[int, int, str, bytes]:
    """A page as a walk yields it, but for the log_id JOOR stamps on every call."""
    assert page.log_id
    return page.index, page.start_from, page.url, page.body.replace(page.log_id.encode(), b"")


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


@pytest.mark.parametrize("concurrency", [1, 4])
def test_non_advancing_next_start_is_an_error_not_a_loop(sandbox, concurrency: int) -> None:
    sandbox.faults.stuck_pagination = True
    yielded: list[int] = []
    with JoorClient(sandbox_settings(sandbox, page_size=10, concurrency=concurrency)) as client:
        with pytest.raises(PaginationError, match="does not advance"):
            for page in client.iter_connection_pages():
                yielded.append(page.start_from)
        # Page by page, the stuck page is the last request; concurrently, at most the pages planned ahead follow.
        assert client.stats.requests == 2 if concurrency == 1 else client.stats.requests <= 2 + 2 * concurrency
    assert yielded == [0, 10]
    assert fetch_threads() == []


# ---- concurrent pagination ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connections", "fmt"),
    [(0, "json"), (1, "json"), (10, "json"), (11, "json"), (95, "json"), (95, "xml"), (100, "json")],
)
def test_concurrent_walk_yields_what_the_page_by_page_walk_yields(connections: int, fmt: str) -> None:
    with run_sandbox(connections=connections, seed=3, rate_limit_credits=0) as sb:
        walks = {}
        for concurrency in (1, 4):
            with JoorClient(sandbox_settings(sb, fmt=fmt, page_size=10, concurrency=concurrency)) as client:
                walks[concurrency] = list(client.iter_connection_pages())
    assert [comparable(p) for p in walks[4]] == [comparable(p) for p in walks[1]]
    assert [p.page.connections for p in walks[4]] == [p.page.connections for p in walks[1]]
    assert ids([c for p in walks[4] for c in p.page.connections]) == served_ids(sb)
    assert len(walks[4]) == max(1, -(-connections // 10))
    assert fetch_threads() == []


def test_planned_walk_starts_where_asked(sandbox) -> None:
    with JoorClient(sandbox_settings(sandbox, page_size=10, concurrency=4)) as client:
        fetched = list(client.iter_connection_pages(start_from=35))
    assert [p.start_from for p in fetched] == [35, 45, 55, 65, 75, 85, 95, 105, 115]
    assert [p.index for p in fetched] == list(range(9))
    assert ids([c for p in fetched for c in p.page.connections]) == served_ids(sandbox)[35:]


@pytest.mark.parametrize(("concurrency", "peak"), [(1, 1), (4, 4)])
def test_concurrency_bounds_the_requests_in_flight(concurrency: int, peak: int) -> None:
    with run_sandbox(connections=60, rate_limit_credits=0, faults=Faults(latency_ms=50)) as sb:
        with JoorClient(sandbox_settings(sb, page_size=5, concurrency=concurrency)) as client:
            got = all_connections(client)
    assert ids(got) == served_ids(sb)
    if concurrency == 1:
        assert sb.stats.max_concurrent == 1
    else:
        assert 1 < sb.stats.max_concurrent <= peak


def test_concurrent_walk_through_faults_loses_and_duplicates_nothing(sandbox) -> None:
    sandbox.faults.script = ["ok", "500", "drop", "ok", "truncate", "503", "429", "502", "ok", "504"]
    with JoorClient(sandbox_settings(sandbox, page_size=10, concurrency=4), retry=FAST_RETRY) as client:
        fetched = list(client.iter_connection_pages())
        assert client.stats.retries == 7
        assert client.stats.transport_errors == 2
        assert client.stats.throttled == 1
    assert [p.index for p in fetched] == list(range(12))
    assert [p.start_from for p in fetched] == list(range(0, 120, 10))
    assert ids([c for p in fetched for c in p.page.connections]) == served_ids(sandbox)
    assert sandbox.faults.script == []


def test_page_failing_for_good_ends_the_walk_with_its_error(sandbox) -> None:
    sandbox.faults.script = ["ok", *["503"] * 40]
    retry = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.01)
    yielded: list[int] = []
    with JoorClient(sandbox_settings(sandbox, page_size=10, concurrency=4), retry=retry) as client:
        pages = client.iter_connection_pages()
        with pytest.raises(RetriesExhausted, match="start_from=10&"):
            for page in pages:
                yielded.append(page.index)
        assert fetch_threads() == []
        with pytest.raises(StopIteration):
            next(pages)
    assert yielded == [0]


def test_error_mid_walk_stops_after_the_pages_before_it(sandbox) -> None:
    with JoorClient(sandbox_settings(sandbox, page_size=10, concurrency=4)) as client:
        pages = client.iter_connection_pages()
        yielded = [next(pages) for _ in range(3)]
        sandbox.faults.error_code = 17
        with pytest.raises(JoorApiError) as info:
            yielded.extend(pages)
        assert info.value.code == 17
        assert fetch_threads() == []
    # Pages already fetched when JOOR started failing still come, in order; none after the failed one.
    assert 3 <= len(yielded) < 12
    assert [p.index for p in yielded] == list(range(len(yielded)))
    assert ids([c for p in yielded for c in p.page.connections]) == served_ids(sandbox)[: 10 * len(yielded)]


def test_consumer_stopping_early_leaves_no_thread_behind() -> None:
    with run_sandbox(connections=200, rate_limit_credits=0, faults=Faults(latency_ms=20)) as sb:
        with JoorClient(sandbox_settings(sb, page_size=5, concurrency=4)) as client:
            pages = client.iter_connection_pages()
            assert [next(pages).index for _ in range(3)] == [0, 1, 2]
            assert fetch_threads()
            # However long the consumer dawdles, only a bounded window of pages is requested ahead of it:
            # the first page, twice the concurrency planned ahead, one more for each planned page consumed.
            # The window is reached (however slow the machine), then nothing more goes while the consumer waits.
            bound = 1 + 2 * 4 + 2
            deadline = time.monotonic() + 30
            while sb.stats.requests < bound and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sb.stats.requests == bound
            time.sleep(0.2)
            assert sb.stats.requests == bound
            pages.close()
            assert fetch_threads() == []


def _more_connections(sandbox, n: int) -> list[dict]:
    extra = []
    for i in range(n):
        connection = copy.deepcopy(sandbox.connections[i % len(sandbox.connections)])
        connection["customer_account_id"] = 900_000 + i
        connection["customer_code"] = f"GROWN-{i}"
        extra.append(connection)
    return extra


@pytest.mark.parametrize(("connections", "grow_after"), [(95, 1), (195, 5)])
def test_account_growing_during_the_walk_loses_nothing(connections: int, grow_after: int) -> None:
    # The growth lands before the last planned page is requested (at most 2 x 4 pages are requested ahead of the
    # consumer), so that page sees the grown account whatever the timing.
    with run_sandbox(connections=connections, seed=4, rate_limit_credits=0) as sb:
        with JoorClient(sandbox_settings(sb, page_size=10, concurrency=4)) as client:
            pages = client.iter_connection_pages()
            fetched = [next(pages) for _ in range(grow_after)]
            sb.connections.extend(_more_connections(sb, 17))
            fetched.extend(pages)
    total = connections + 17
    assert len(sb.connections) == total
    assert ids([c for p in fetched for c in p.page.connections]) == served_ids(sb)
    assert [p.start_from for p in fetched] == list(range(0, total, 10))
    assert [p.index for p in fetched] == list(range(len(fetched)))
    # The first page promised the original count: the walk went past that plan, page by page.
    assert fetched[0].page.response.count == connections


def test_account_shrinking_during_the_walk_stops_where_joor_says() -> None:
    with run_sandbox(connections=95, seed=4, rate_limit_credits=0) as sb:
        with JoorClient(sandbox_settings(sb, page_size=10, concurrency=4)) as client:
            pages = client.iter_connection_pages()
            fetched = [next(pages)]
            del sb.connections[35:]
            fetched.extend(pages)
            assert fetch_threads() == []
    assert [p.start_from for p in fetched] == [0, 10, 20, 30]
    assert ids([c for p in fetched for c in p.page.connections]) == served_ids(sb)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrent_walk_under_a_rate_limit_meets_no_429(concurrency: int) -> None:
    """Real time, as threads need it (a fake clock runs ahead while requests are in flight); the margin is generous:
    a request may reach the sandbox up to 300 ms after it took its credits, however loaded the machine."""
    with run_sandbox(connections=60, rate_limit_credits=10, rate_limit_window=1.0) as sb:
        settings = sandbox_settings(
            sb, page_size=2, rate_limit_credits=10, rate_limit_window=1.0, concurrency=concurrency
        )
        with JoorClient(settings, pacer=CreditPacer(10, 1.0, margin=0.3)) as client:
            got = all_connections(client)
            assert client.stats.throttled == 0
            assert client.pacer.stats.windows >= 3
    assert ids(got) == served_ids(sb)
    assert sb.stats.throttled == 0
    assert sb.stats.credits_used == 30


def late_joor(fake: FakeTime, first_delay: float) -> tuple[dict, list[float]]:
    """JOOR's clock as the requests meet it: the first arrives ``first_delay`` after taking its credits, the rest
    at once (set ``delay[0]``). The variation, not the delay itself, is what the pacer's margin allows for."""
    delay = [first_delay]
    return {"clock": lambda: fake.clock() + delay[0], "sleep": fake.sleep}, delay


@pytest.mark.parametrize("dawdle", [299.0, 300.02, 303.0])
def test_burst_after_a_pause_at_the_window_end_meets_no_429(dawdle: float) -> None:
    """A request sent just after JOOR's window closed opens JOOR's next one: it must count there, not here."""
    fake = FakeTime()
    joor_clock, delay = late_joor(fake, 0.05)
    with run_sandbox(connections=13, rate_limit_credits=10, rate_limit_window=300.0, **joor_clock) as sb:
        settings = sandbox_settings(sb, page_size=1, rate_limit_credits=10, rate_limit_window=300.0, concurrency=1)
        with JoorClient(settings, **fake.pair()) as client:
            margin = client.pacer.margin
            pages = client.iter_connection_pages()
            first = next(pages)
            delay[0] = 0.0
            # The consumer dawdles until around the end of the window, inside the client's margin, then bursts.
            assert 300 - margin < dawdle < 300 + margin
            fake.advance(dawdle)
            got = [first, *pages]
            assert client.stats.throttled == 0
    assert len(got) == 13
    assert sb.stats.throttled == 0


def test_without_the_margin_the_same_burst_meets_a_429() -> None:
    """The edge the margin guards: a pacer that trusts its own window end to the last moment is refused."""
    fake = FakeTime()
    joor_clock, delay = late_joor(fake, 0.05)
    with run_sandbox(connections=13, rate_limit_credits=10, rate_limit_window=300.0, **joor_clock) as sb:
        settings = sandbox_settings(sb, page_size=1, rate_limit_credits=10, rate_limit_window=300.0, concurrency=1)
        pacer = CreditPacer(10, 300.0, margin=0.0, **fake.pair())
        with JoorClient(settings, pacer=pacer, **fake.pair()) as client:
            pages = client.iter_connection_pages()
            first = next(pages)
            delay[0] = 0.0
            fake.advance(300.02)
            got = [first, *pages]
            assert client.stats.throttled == 1
    assert len(got) == 13
    assert sb.stats.throttled == 1


# ---- auth with concurrency -------------------------------------------------------------------------------------


def test_v4_concurrent_walk_asks_for_one_token(sandbox) -> None:
    with JoorClient(sandbox_settings(sandbox, api_version="v4", page_size=10, concurrency=4)) as client:
        assert ids(all_connections(client)) == served_ids(sandbox)
        assert client.stats.token_requests == 1
    assert sandbox.stats.tokens_issued == 1


def test_v4_concurrent_first_calls_ask_for_one_token() -> None:
    # 200 ms in the server: long enough for the six calls to overlap there however loaded the machine.
    with run_sandbox(connections=5, rate_limit_credits=0, faults=Faults(latency_ms=200)) as sb:
        with JoorClient(sandbox_settings(sb, api_version="v4")) as client:
            start = threading.Barrier(6)
            codes: list[str] = []

            def call() -> None:
                start.wait()
                codes.append(client.get_connection_by_customer_code("JBNY")["customer_code"])

            threads = [threading.Thread(target=call) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert client.stats.token_requests == 1
    assert codes == ["JBNY"] * 6
    assert sb.stats.tokens_issued == 1
    assert sb.stats.max_concurrent > 1


def test_v4_token_revoked_mid_walk_is_renewed_once() -> None:
    with run_sandbox(connections=120, rate_limit_credits=0, faults=Faults(latency_ms=50)) as sb:
        with JoorClient(sandbox_settings(sb, api_version="v4", page_size=10, concurrency=4)) as client:
            pages = client.iter_connection_pages()
            fetched = [next(pages)]
            sb.revoke_tokens()
            fetched.extend(pages)
            assert client.stats.token_requests == 2
    assert ids([c for p in fetched for c in p.page.connections]) == served_ids(sb)
    # Several requests in flight met the revoked token; one of them renewed it for all.
    assert sb.stats.by_status.get(401, 0) > 1
    assert sb.stats.tokens_issued == 2


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
    fake = FakeTime()
    with run_sandbox(connections=3, token_ttl=1000, rate_limit_credits=0, **fake.pair()) as sb:
        with JoorClient(sandbox_settings(sb, api_version="v4"), **fake.pair()) as client:
            client.get_connection_by_customer_code("JBNY")
            fake.advance(899.0)
            client.get_connection_by_customer_code("JBNY")
            assert client.stats.token_requests == 1
            # A tenth of the lifetime before expiry, while JOOR still takes the old token, a new one is asked for.
            fake.advance(2.0)
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
    fake = FakeTime()
    with run_sandbox(connections=20, rate_limit_credits=3, rate_limit_window=30.0, **fake.pair()) as sb:
        # The client's own pacer is generous, so the server's limit is what it meets.
        settings = sandbox_settings(sb, page_size=5, concurrency=1, rate_limit_window=30.0)
        with JoorClient(settings, retry=FAST_RETRY, **fake.pair()) as client:
            got = all_connections(client)
            throttled = client.stats.throttled
    assert len(got) == 20
    assert throttled == 1
    assert fake.slept == [30.0]  # Retry-After: 30, not the 10 ms backoff


def test_pacing_keeps_within_the_credit_budget() -> None:
    fake = FakeTime()
    with run_sandbox(connections=24, rate_limit_credits=5, rate_limit_window=300.0, **fake.pair()) as sb:
        settings = sandbox_settings(sb, page_size=2, rate_limit_credits=5, rate_limit_window=300.0, concurrency=1)
        pacer = CreditPacer(5, 300.0, margin=1.0, **fake.pair())
        with JoorClient(settings, pacer=pacer, **fake.pair()) as client:
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


def fake_time() -> tuple[list[float], dict]:
    now = [0.0]
    return now, {"clock": lambda: now[0], "sleep": lambda s: now.__setitem__(0, now[0] + s)}


def test_pacer_sends_nothing_in_the_margin_before_a_window_ends() -> None:
    now, clock = fake_time()
    pacer = CreditPacer(10, 1.0, margin=0.1, **clock)
    pacer.acquire(1)
    now[0] = 0.85
    assert pacer.acquire(1) == 0.0
    now[0] = 0.95
    # Sent now, it could reach JOOR after its window closed and open the next one there, unseen here.
    assert pacer.acquire(1) == pytest.approx(0.15)
    assert now[0] == pytest.approx(1.1)
    assert pacer.stats.windows == 2
    assert pacer.stats.credits_used == 3


def test_pacer_window_shorter_than_its_margin_still_sends() -> None:
    _, clock = fake_time()
    pacer = CreditPacer(5, 0.05, **clock)
    for _ in range(3):
        pacer.acquire(1)
    assert pacer.stats.credits_used == 3
    assert pacer.stats.windows == 3


def test_pacer_429s_from_several_requests_keep_the_latest_reset() -> None:
    now, clock = fake_time()
    pacer = CreditPacer(10, 300.0, **clock)
    pacer.acquire(1)
    pacer.exhausted(2.0)
    now[0] = 0.5
    pacer.exhausted(1.0)  # an answer that left JOOR earlier, arriving later
    assert pacer.acquire(1) == pytest.approx(1.5)
    assert now[0] == pytest.approx(2.0)


def test_pacer_wait_ends_when_cancelled() -> None:
    pacer = CreditPacer(1, 60.0)
    pacer.acquire(1)
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def wait_for_credits() -> None:
        try:
            pacer.acquire(1, cancel=cancel)
        except Cancelled as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_credits)
    waiter.start()
    cancel.set()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert len(outcome) == 1
    assert pacer.stats.credits_used == 1


def test_pages_for_landing_skip_the_text_spelling_of_json_leaves(sandbox) -> None:
    with JoorClient(sandbox_settings(sandbox, page_size=50)) as client:
        native = [c for p in client.iter_connection_pages(canonical=False) for c in p.page.connections]
        text = all_connections(client)
    assert len(native) == len(text) == 120
    assert native[0]["customer_account_id"] == 24181 and text[0]["customer_account_id"] == "24181"
    assert native[0]["customer_code"] == text[0]["customer_code"] == "JBNY"

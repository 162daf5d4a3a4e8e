"""A rate budget shared with other integrations: 429s waited out as JOOR's window requires, on one fake timeline."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import pytest

from joor_pipeline.joor.client import ERROR_BUDGET, JoorClient, RetryPolicy
from joor_pipeline.joor.errors import RetriesExhausted
from joor_pipeline.joor.pacing import MIN_THROTTLE_WAIT, CreditPacer
from joor_pipeline.pipeline import fetch_snapshot
from joor_pipeline.sandbox import Faults, run_sandbox
from joor_pipeline.storage.raw import read_manifest
from joor_pipeline_tests.conftest import sandbox_settings
from joor_pipeline_tests.fake_time import FakeTime
from joor_pipeline_tests.raw_fixtures import raw_snapshot_dir, snap

DAY = date(2026, 11, 2)


def served_ids(sandbox) -> list[str]:
    return [str(c["customer_account_id"]) for c in sandbox.connections]


def landed_ids(client: JoorClient, report) -> list[str]:
    from joor_pipeline.joor.parse import parse_page

    pages = [Path(report.path) / page["file"] for page in report.manifest["pages"]]
    return [str(c["customer_account_id"]) for p in pages for c in parse_page(p.read_bytes(), "json").connections]


class Waits(list[tuple[str, float]]):
    """What ``on_wait`` heard."""

    def __call__(self, reason: str, seconds: float) -> None:
        self.append((reason, seconds))

    def throttled(self) -> list[float]:
        return [s for r, s in self if "HTTP 429" in r]


# ---- a drained window --------------------------------------------------------------------------------------------


def test_retry_after_longer_than_the_old_120s_cap_is_waited_out(tmp_path: Path) -> None:
    """Another integration drained a 200 s window: JOOR asks for 200 s, the fetch waits them and loses nothing."""
    fake = FakeTime()
    with run_sandbox(connections=60, rate_limit_credits=300, rate_limit_window=200.0, **fake.pair()) as sb:
        assert sb.spend(300) == 300
        settings = sandbox_settings(sb, page_size=10, rate_limit_credits=100, rate_limit_window=200.0, concurrency=1)
        waits = Waits()
        with JoorClient(settings, **fake.pair()) as client:
            report = fetch_snapshot(client, tmp_path, snap(DAY), on_wait=waits)
            assert client.stats.throttled == 1
            assert client.retry_budget == ERROR_BUDGET + 2 * 200.0
        assert landed_ids(client, report) == served_ids(sb)
    assert waits.throttled() == [pytest.approx(200.0)]
    (reason, _), *_ = waits
    assert "other integrations" in reason
    assert 200.0 <= fake.elapsed < 210.0
    assert read_manifest(tmp_path, snap(DAY))["throttled"] == 1
    assert sb.stats.throttled == 1


def test_the_old_fixed_budget_would_have_given_up_at_once(tmp_path: Path) -> None:
    """The regression itself: with a 120 s budget a 200 s Retry-After fails at the first 429."""
    fake = FakeTime()
    with run_sandbox(connections=10, rate_limit_credits=300, rate_limit_window=200.0, **fake.pair()) as sb:
        sb.spend(300)
        settings = sandbox_settings(sb, rate_limit_window=200.0, concurrency=1)
        with JoorClient(settings, retry=RetryPolicy(max_elapsed=120.0), **fake.pair()) as client:
            with pytest.raises(RetriesExhausted, match=r"after 1 attempt\(s\) \(1 answered 429\).*budget 120s"):
                fetch_snapshot(client, tmp_path, snap(DAY))
    assert not raw_snapshot_dir(tmp_path, DAY).exists()


def test_drained_window_without_retry_after_waits_a_whole_window(tmp_path: Path) -> None:
    fake = FakeTime()
    with run_sandbox(
        connections=30, rate_limit_credits=300, rate_limit_window=300.0, retry_after=False, **fake.pair()
    ) as sb:
        sb.spend(300)
        settings = sandbox_settings(sb, page_size=10, rate_limit_credits=300, rate_limit_window=300.0, concurrency=1)
        waits = Waits()
        with JoorClient(settings, **fake.pair()) as client:
            report = fetch_snapshot(client, tmp_path, snap(DAY), on_wait=waits)
            margin = client.pacer.margin
        assert landed_ids(client, report) == served_ids(sb)
    # With no word from JOOR on when its window ends, it may have just begun: a whole window, and the margin.
    assert waits.throttled() == [pytest.approx(300.0 + margin)]
    assert sb.stats.throttled == 1


def test_window_drained_midway_through_a_concurrent_fetch_loses_nothing(tmp_path: Path) -> None:
    fake = FakeTime()
    with run_sandbox(connections=200, rate_limit_credits=300, rate_limit_window=300.0, **fake.pair()) as sb:
        settings = sandbox_settings(sb, page_size=5, rate_limit_credits=300, rate_limit_window=300.0, concurrency=4)
        waits = Waits()
        with JoorClient(settings, **fake.pair()) as client:
            pages = client.iter_connection_pages(on_wait=waits)
            got = [next(pages) for _ in range(3)]
            # Another integration takes everything left in JOOR's window while requests are in flight.
            sb.spend(300)
            got.extend(pages)
            assert client.stats.throttled >= 1
    assert [str(c["customer_account_id"]) for p in got for c in p.page.connections] == served_ids(sb)
    assert [p.start_from for p in got] == list(range(0, 200, 5))
    # The wait was announced (once per reset: see test_a_wait_is_announced_once_however_many_requests_wait; here
    # the fake clock runs ahead while requests are in flight, so a 429 may arrive after its window was waited out).
    assert waits.throttled()


# ---- a 429 storm ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_429_storm_longer_than_the_attempts_is_waited_out(tmp_path: Path, concurrency: int) -> None:
    """30 refusals in a row, each asking for a second: no attempt is spent on them, no row is lost."""
    fake = FakeTime()
    with run_sandbox(connections=120, rate_limit_credits=0, faults=Faults(rate_limit_storm=30), **fake.pair()) as sb:
        settings = sandbox_settings(sb, page_size=10, concurrency=concurrency, max_attempts=3)
        waits = Waits()
        with JoorClient(settings, **fake.pair()) as client:
            report = fetch_snapshot(client, tmp_path, snap(DAY), on_wait=waits)
            assert client.stats.throttled == 30
            assert client.stats.server_errors == 0
        assert landed_ids(client, report) == served_ids(sb)
    assert sb.stats.throttled == 30
    assert waits.throttled()
    assert all(s <= MIN_THROTTLE_WAIT for s in waits.throttled())


def test_endless_429s_end_in_one_clear_error_within_the_budget(tmp_path: Path) -> None:
    fake = FakeTime()
    storm = Faults(rate_limit_storm=10**6)
    with run_sandbox(connections=10, rate_limit_credits=0, faults=storm, **fake.pair()) as sb:
        settings = sandbox_settings(sb, rate_limit_window=20.0, concurrency=1)
        with JoorClient(settings, **fake.pair()) as client:
            budget = client.retry_budget
            with pytest.raises(RetriesExhausted, match=r"answered 429.*HTTP 429 \(JOOR's rate limit") as info:
                fetch_snapshot(client, tmp_path, snap(DAY))
    assert budget == ERROR_BUDGET + 2 * 20.0
    assert fake.elapsed <= budget
    # Retry-After: 1 each time: about one request a second of the budget, not a busy loop.
    assert budget - 5 <= sb.stats.throttled <= budget + 1
    assert "sandbox-token" not in str(info.value)
    assert not raw_snapshot_dir(tmp_path, DAY).exists()


# ---- another integration at a steady rate -------------------------------------------------------------------------


@pytest.mark.parametrize(("share", "throttled"), [(60, False), (300, True)])
def test_competing_integration_and_this_pipelines_share(tmp_path: Path, share: int, throttled: bool) -> None:
    """Another integration spends 0.7 credits/s of 300 per 300 s; each request takes a second.

    With JOOR_RATE_LIMIT_CREDITS at this pipeline's share (60) JOOR never refuses it; at the whole budget JOOR
    refuses it, and the fetch waits each window out: the same rows either way.
    """
    fake = FakeTime()
    faults = Faults(latency_ms=1000, competing_rate=0.7)
    with run_sandbox(
        connections=200, rate_limit_credits=300, rate_limit_window=300.0, faults=faults, **fake.pair()
    ) as sb:
        settings = sandbox_settings(sb, page_size=1, rate_limit_credits=share, rate_limit_window=300.0, concurrency=1)
        waits = Waits()
        with JoorClient(settings, **fake.pair()) as client:
            report = fetch_snapshot(client, tmp_path, snap(DAY), on_wait=waits)
        assert landed_ids(client, report) == served_ids(sb)
    assert sb.stats.competing_credits > 100
    assert (sb.stats.throttled > 0) is throttled
    assert bool(waits.throttled()) is throttled
    if not throttled:
        assert waits and all("this pipeline's share" in reason for reason, _ in waits)


# ---- the pacer after a 429 ----------------------------------------------------------------------------------------


def test_after_a_429_the_pacer_takes_the_account_as_spent_until_the_window_ends() -> None:
    fake = FakeTime()
    pacer = CreditPacer(300, 300.0, **fake.pair())
    pacer.acquire(1)
    fake.advance(10.0)
    # Without Retry-After: a whole window from now (JOOR's may have just begun), not the rest of ours.
    assert pacer.exhausted(None) == pytest.approx(300.0 + pacer.margin)
    waits = Waits()
    assert pacer.acquire(1, on_wait=waits) == pytest.approx(300.0 + pacer.margin)
    assert len(waits.throttled()) == 1


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(200.0, 200.0), (86_400.0, 300.0), (0.0, MIN_THROTTLE_WAIT), (None, 300.0)],
)
def test_retry_after_is_honoured_up_to_one_window(retry_after: float | None, expected: float) -> None:
    fake = FakeTime()
    pacer = CreditPacer(300, 300.0, margin=0.0, **fake.pair())
    assert pacer.exhausted(retry_after) == pytest.approx(expected)
    assert pacer.acquire(1) == pytest.approx(expected)


def test_a_wait_is_announced_once_however_many_requests_wait() -> None:
    """Four requests wait for the same reset: on_wait hears of it once, with the reason and the seconds."""
    fake = FakeTime()
    arrived = threading.Barrier(5, timeout=10)
    release = threading.Event()

    def sleep(seconds: float) -> None:
        arrived.wait()
        release.wait(10)
        fake.advance(0)  # the timeline is moved by the test once every request waits

    pacer = CreditPacer(10, 60.0, margin=0.0, clock=fake.clock, sleep=sleep)
    pacer.acquire(1)
    pacer.exhausted(42.0)
    waits = Waits()
    threads = [threading.Thread(target=pacer.acquire, kwargs={"on_wait": waits}) for _ in range(4)]
    for t in threads:
        t.start()
    arrived.wait()
    fake.advance(42.0)
    release.set()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert waits == [(waits[0][0], pytest.approx(42.0))]
    assert "HTTP 429" in waits[0][0] and "other integrations" in waits[0][0]
    assert pacer.stats.credits_used == 5

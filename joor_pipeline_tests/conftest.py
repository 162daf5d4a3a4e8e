"""Shared fixtures: the seed documents, a sandbox on loopback, settings that point at it, the object-store emulators
(each started once per session, here only) and the storage backends on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from joor_pipeline.config import JoorSettings, Secret
from joor_pipeline_tests.backends import backend, cloud_backend, local_backend  # noqa: F401 - fixtures
from joor_pipeline_tests.emulators import azurite, fake_gcs, moto  # noqa: F401 - fixtures: one of each per session

#: The spec's example payloads, copied verbatim from the JOOR documents (see seeds/README.md).
SEEDS_DIR = Path(__file__).resolve().parent / "seeds"


@pytest.fixture(scope="session")
def seeds_dir() -> Path:
    if not SEEDS_DIR.is_dir():
        pytest.fail(f"the seed documents are missing from {SEEDS_DIR}")
    return SEEDS_DIR


def sandbox_settings(
    sandbox,
    *,
    api_version: str = "v2",
    fmt: str = "json",
    page_size: int = 100,
    data_dir: Path | None = None,
    **overrides,
) -> JoorSettings:
    """Settings aimed at a running sandbox with its own credentials."""
    c = sandbox.config
    values = dict(
        api_version=api_version,
        environment="sandbox",
        base_url=sandbox.base_url,
        auth_url=sandbox.auth_url,
        api_token=Secret(c.api_token),
        account_id=c.account_id,
        client_id=c.client_id,
        client_secret=Secret(c.client_secret),
        username=c.username,
        password=Secret(c.password),
        format=fmt,
        page_size=page_size,
        data_dir=data_dir or Path("data"),
        rate_limit_credits=100_000,
        rate_limit_window=300.0,
        timeout=5.0,
        max_attempts=6,
    )
    values.update(overrides)
    return JoorSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def sandbox() -> Iterator:
    from joor_pipeline.sandbox import run_sandbox

    with run_sandbox(connections=120, seed=11, rate_limit_credits=0) as sb:
        yield sb

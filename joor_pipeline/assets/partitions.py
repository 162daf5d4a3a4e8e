"""The partitions shared by every partitioned asset, check and job: JOOR account by daily snapshot date.

``MultiPartitionsDefinition`` of two dimensions (the idiomatic Dagster way to partition by two keys):

- ``account``: a **static** dimension, the accounts configured when the definitions load (``JOOR_ACCOUNTS_FILE``,
  or ``default`` without one). Accounts are configuration, like the first snapshot date: adding one means editing
  the file and its secrets' variables, and the code location is restarted anyway to read them. A dynamic dimension
  would let an account be added from the UI, without its credentials: a partition that can only fail.
- ``date``: daily partitions from ``JOOR_FIRST_SNAPSHOT_DATE`` (ISO date, declared with its default in
  ``config.SETTINGS``): set it to the day the brand's first snapshot was taken, so the UI offers no date before
  it. JOOR serves only the current state, so a date before the first snapshot can never be filled.

Both are read when the definitions load (Dagster builds partitions at import time): restart the code location
after changing them. Every run of one partition carries the tags ``dagster/partition/account`` and
``dagster/partition/date``; the instance limits runs per ``dagster/partition/account`` value to one (see
``dagster_home.example/dagster.yaml``), so one account's fetches never overlap while accounts run side by side.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import date
from typing import Final

import dagster as dg

from joor_pipeline.config import BY_NAME, DEFAULT_ACCOUNT, account_names, first_snapshot_date
from joor_pipeline.joor.errors import ConfigError

log = logging.getLogger(__name__)

FIRST_SNAPSHOT_VAR: Final = "JOOR_FIRST_SNAPSHOT_DATE"
DEFAULT_FIRST_SNAPSHOT_DATE: Final = BY_NAME[FIRST_SNAPSHOT_VAR].default.isoformat()
ACCOUNT_DIMENSION: Final = "account"
DATE_DIMENSION: Final = "date"
#: The run tag Dagster puts on every run of one multi-dimensional partition, for its account.
ACCOUNT_TAG: Final = f"dagster/partition/{ACCOUNT_DIMENSION}"


def build_daily_partitions(environ: Mapping[str, str] | None = None) -> dg.DailyPartitionsDefinition:
    """Daily partitions from the first snapshot date; ``end_offset=1`` makes today a partition, so the schedule
    and "materialize" target today's snapshot."""
    start = first_snapshot_date(environ).isoformat()
    return dg.DailyPartitionsDefinition(start_date=start, end_offset=1, timezone="UTC")


def configured_accounts(environ: Mapping[str, str] | None = None) -> list[str]:
    """The account names the definitions offer; ``['default']`` when the accounts file cannot be read (the
    problem is shown on the fetch asset and fails its runs, see ``definitions.build_defs``)."""
    try:
        return account_names(os.environ if environ is None else environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return [DEFAULT_ACCOUNT]


def build_partitions(environ: Mapping[str, str] | None = None) -> dg.MultiPartitionsDefinition:
    """account by date (see the module docstring)."""
    return dg.MultiPartitionsDefinition(
        {
            ACCOUNT_DIMENSION: dg.StaticPartitionsDefinition(configured_accounts(environ)),
            DATE_DIMENSION: build_daily_partitions(environ),
        }
    )


def partition_key(account: str, snapshot_date: date) -> dg.MultiPartitionKey:
    """The key of one account's snapshot date."""
    return dg.MultiPartitionKey({ACCOUNT_DIMENSION: account, DATE_DIMENSION: snapshot_date.isoformat()})


def partition_of(key: str | dg.MultiPartitionKey) -> tuple[str, date]:
    """(account, snapshot date) of a partition key."""
    if not isinstance(key, dg.MultiPartitionKey):
        key = snapshot_partitions.get_partition_key_from_str(key)
    by_dimension = key.keys_by_dimension
    return by_dimension[ACCOUNT_DIMENSION], date.fromisoformat(by_dimension[DATE_DIMENSION])


#: The partitions of this code location (accounts and first date as they were when the definitions loaded).
snapshot_partitions: Final = build_partitions()
daily_partitions: Final = snapshot_partitions.get_partitions_def_for_dimension(DATE_DIMENSION)
ACCOUNTS: Final = snapshot_partitions.get_partitions_def_for_dimension(ACCOUNT_DIMENSION).get_partition_keys()
START_DATE: Final = daily_partitions.start.date().isoformat()  # type: ignore[attr-defined]

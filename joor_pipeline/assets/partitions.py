"""The daily snapshot partitions shared by every partitioned asset, check and job.

They begin at ``JOOR_FIRST_SNAPSHOT_DATE`` (ISO date, declared with its default in ``config.SETTINGS``): set it to the
day the brand's first snapshot was taken, so the UI offers no date before it. JOOR serves only the current
state, so a date before the first snapshot can never be filled. Read when the definitions load (Dagster builds
partitions at import time): restart the code location after changing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import dagster as dg

from joor_pipeline.config import BY_NAME, first_snapshot_date

FIRST_SNAPSHOT_VAR: Final = "JOOR_FIRST_SNAPSHOT_DATE"
DEFAULT_FIRST_SNAPSHOT_DATE: Final = BY_NAME[FIRST_SNAPSHOT_VAR].default.isoformat()


def build_daily_partitions(environ: Mapping[str, str] | None = None) -> dg.DailyPartitionsDefinition:
    """Daily partitions from the first snapshot date; ``end_offset=1`` makes today a partition, so the schedule
    and "materialize" target today's snapshot."""
    start = first_snapshot_date(environ).isoformat()
    return dg.DailyPartitionsDefinition(start_date=start, end_offset=1, timezone="UTC")


#: The partitions of this code location (``JOOR_FIRST_SNAPSHOT_DATE`` as it was when the definitions loaded).
daily_partitions: Final = build_daily_partitions()
START_DATE: Final = daily_partitions.start.date().isoformat()

"""The daily snapshot partitions shared by every partitioned asset, check and job."""

from __future__ import annotations

from typing import Final

import dagster as dg

#: First selectable snapshot date in the UI; backfills before it make no sense for a current-state API.
START_DATE: Final = "2025-01-01"

#: ``end_offset=1`` makes today's date a partition, so the schedule and "materialize" target today's snapshot.
daily_partitions: Final = dg.DailyPartitionsDefinition(start_date=START_DATE, end_offset=1, timezone="UTC")

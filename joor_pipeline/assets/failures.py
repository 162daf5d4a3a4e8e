"""What a run's failure is made of, read from its Dagster events: a failed step's root cause as one line (what
``joor-pipeline run`` prints last and what an alert names), and each asset check's outcome.

Shared by the CLI's in-process runs (``batch.py``) and the daemon's alert sensors (``assets/sensors.py``), so
both say the same thing; it imports nothing of the project.
"""

from dataclasses import dataclass, field
from typing import Any, Final

import dagster as dg

#: The longest root-cause line printed (the whole error is in the run's event log).
MAX_CAUSE_CHARS: Final = 2000


def error_line(error: Any) -> str:
    """The user-code error in a step failure's cause chain, as one line (Dagster's wrappers skipped)."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.cause or error.context
    ours = [e for e in chain if not e.cls_name.startswith("Dagster")] or chain
    cause = ours[0]
    text = " ".join(cause.message.split())
    # format_exception_only() prefixes the qualified class name; our own errors read well without it.
    prefix, _, rest = text.partition(": ")
    if prefix.startswith("joor_pipeline."):
        text = rest
    elif "." in prefix and " " not in prefix:
        text = f"{cause.cls_name}: {rest}"
    return text if len(text) <= MAX_CAUSE_CHARS else text[: MAX_CAUSE_CHARS - 1] + "…"


def step_failure(event: dg.DagsterEvent) -> tuple[str, str]:
    """(one line, whole error) of a step failure."""
    data = event.event_specific_data
    user = getattr(data, "user_failure_data", None)
    error = getattr(data, "error", None)
    detail = error.to_string() if error is not None else (event.message or "")
    if user is not None and user.description:
        return " ".join(user.description.split()), detail
    if error is None:
        return event.message or "failed", detail
    return error_line(error), detail


@dataclass
class CheckOutcome:
    """One asset check's result in a run (a table's ``blocking_rules`` or ``warning_rules``, or a dbt test)."""

    asset: str
    check: str
    passed: bool
    severity: str
    failures: int | None
    #: The rules that failed, each with what failed (a table check's; empty for a dbt test).
    failed_rules: list[str] = field(default_factory=list)


def check_outcome(evaluation: Any) -> CheckOutcome:
    """A check evaluation (``AssetCheckEvaluation``) as a :class:`CheckOutcome`: its ``failures`` and
    ``failed_rules`` metadata read when present."""
    metadata = evaluation.metadata
    failures = metadata.get("failures")
    rules = getattr(metadata.get("failed_rules"), "data", None)
    return CheckOutcome(
        asset=evaluation.asset_key.to_user_string(),
        check=evaluation.check_name,
        passed=evaluation.passed,
        severity=evaluation.severity.value,
        failures=int(failures.value) if failures is not None else None,
        failed_rules=[str(rule) for rule in rules] if isinstance(rules, list) else [],
    )

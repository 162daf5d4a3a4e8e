"""The connection test as a Dagster job an operator launches from the UI (wiring only: the work is
:func:`joor_pipeline.joor.check.check_connection`, as for ``joor-pipeline check``).

A job of one op, not an asset or an asset check: it materializes nothing, and no selection of the daily graph
(``AssetSelection.all()``) picks it up. It reads and writes no data.
"""

import os
from typing import Any, Final

import dagster as dg

from joor_pipeline.assets.logs import forward_logs
from joor_pipeline.assets.resources import JoorApiResource
from joor_pipeline.config import UnknownAccount, account_names, accounts_file
from joor_pipeline.joor.check import CHECK_RETRY, ConnectionCheck, check_connection
from joor_pipeline.joor.errors import ConfigError
from joor_pipeline.pipeline import connect

CHECK_JOB: Final = "joor_connection_check"


class ConnectionCheckConfig(dg.Config):
    """Run configuration of the connection test."""

    account: str = ""
    """One configured account to test; empty tests every one."""


def _accounts(joor: JoorApiResource, chosen: str) -> tuple[list[str], bool]:
    """The accounts to test (a ConfigError naming the configured ones for an unknown name), and whether they come
    from an accounts file."""
    env = {**os.environ, **joor.environ()} if joor.accounts_file is not None else joor.environ()  # type: ignore[attr-defined]
    names = account_names(env)
    if chosen and chosen not in names:
        raise UnknownAccount(chosen, names)
    return ([chosen] if chosen else names), accounts_file(env) is not None


def _metadata(found: ConnectionCheck) -> dict[str, Any]:
    estimate = found.estimate
    return {
        "ok": found.ok,
        "problem": found.problem or "",
        "base_url": found.base_url,
        "api_version": found.api_version,
        "format": found.format,
        "joor_reported_total": found.total,
        "log_id": found.log_id or "",
        "rate_limit_headers": dg.MetadataValue.json(found.rate_limit_headers),
        "requests": found.requests,
        "full_fetch_estimate_seconds": dg.MetadataValue.float(round(estimate.seconds, 1)) if estimate else None,
        "report": dg.MetadataValue.md("```\n" + "\n".join(found.lines()) + "\n```"),
    }


@dg.op(
    # Nothing to store: the report is the step's metadata and log, so no IO manager writes anything.
    out=dg.Out(dg.Nothing),
    description=(
        "Test the connection to JOOR of every configured account (or the one in the run config) in at most 4 "
        "requests: credentials, the list endpoint, JOOR's total, rate-limit headers, a full fetch's duration."
    ),
)
def connection_check(
    context: dg.OpExecutionContext, config: ConnectionCheckConfig, joor: JoorApiResource
) -> dg.Output[None]:
    """The same test as ``joor-pipeline check``; fails with one line per account that has a problem."""
    try:
        accounts, in_file = _accounts(joor, config.account.strip())
        settings = {account: joor.settings(account=account) for account in accounts}
    except ConfigError as exc:
        raise dg.Failure(description=str(exc)) from None
    failed: list[str] = []
    metadata: dict[str, Any] = {}
    with forward_logs(context):
        for account in accounts:
            with connect(settings[account], retry=CHECK_RETRY) as client:
                found = check_connection(client, account=account, in_accounts_file=in_file)
            for line in found.lines():
                context.log.info(line)
            metadata.update({f"{account}/{key}": value for key, value in _metadata(found).items()})
            if found.problem:
                failed.append(f"account {account}: {found.problem}")
    if failed:
        raise dg.Failure(description="; ".join(failed), metadata=metadata)
    return dg.Output(None, metadata=metadata)


@dg.job(
    name=CHECK_JOB,
    description="The connection test: launch it before the first fetch, or when a fetch fails on credentials or the "
    "network (run config: ops.connection_check.config.account, empty for every account). Not part of the daily "
    "graph; writes nothing.",
)
def joor_connection_check_job() -> None:
    connection_check()

"""Retention: prune's rules and boundaries on a fake today, dry runs, a kill at every write, builds, the Dagster job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from joor_pipeline import layout
from joor_pipeline.assets.prune import PRUNE_JOB
from joor_pipeline.assets.resources import DataDirResource, JoorApiResource
from joor_pipeline.cli import main
from joor_pipeline.definitions import JOB_NAME, build_defs
from joor_pipeline.flatten import TABLES
from joor_pipeline.flatten.runner import flatten_snapshot, stage_snapshot
from joor_pipeline.joor.errors import ConfigError
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.prune import Retention, load_retention, plan_prune, prune
from joor_pipeline.sandbox import generate_connections
from joor_pipeline.storage.inventory import stored_snapshots
from joor_pipeline.storage.parquet import partition_rows, published_dates, published_files
from joor_pipeline.storage.publish import quarantine_dir, recover
from joor_pipeline.storage.raw import iter_raw_pages, raw_snapshot_exists, read_manifest
from joor_pipeline.warehouse import ANALYST_MODELS, build_warehouse
from joor_pipeline_tests.backends import DEAD_WRITER_LEASE, Backend, held_elsewhere
from joor_pipeline_tests.model_fixtures import parquet_root, query, write_snapshot
from joor_pipeline_tests.raw_fixtures import land, snap
from joor_pipeline_tests.test_publication import KILLER, records, writes_of
from joor_pipeline_tests.test_warehouse import COMPARED, retailers

TODAY = date(2026, 11, 23)


def ago(days: int, today: date = TODAY) -> date:
    return today - timedelta(days=days)


def utc_today() -> date:
    return datetime.now(UTC).date()


def publish(data_dir: Path, day: date, *, account: str = "default", flatten: bool = True, seed: int = 1) -> None:
    """Land a small raw snapshot of ``day`` and, unless told, flatten it (raw and Parquet published)."""
    land(data_dir, day, generate_connections(12, seed=seed), account=account)
    if flatten:
        flatten_snapshot(data_dir, snap(day, account), workers=1)


def holdings(data_dir: Path) -> set[tuple[str, date, str]]:
    """(account, date, kind) of every published snapshot."""
    return {(s.key.account, s.key.snapshot_date, s.kind) for s in stored_snapshots(data_dir) if s.published}


def everything(backend: Backend) -> dict[str, int]:
    """Every object of the data (local scratch excepted), with its size."""
    return {key: size for key, size in backend.store.list("").items() if key in set(backend.objects())}


def whole(data_dir: Path, key: SnapshotKey) -> dict[str, bool]:
    """Each target of a date, read whole through its manifest (True), or not there at all (False); a target that
    is listed but not whole raises."""
    found = {"raw": raw_snapshot_exists(data_dir, key)}
    if found["raw"]:
        assert sum(len(c) for _entry, c, _log in iter_raw_pages(data_dir, key)) == 12
    for table in TABLES:
        files = published_files(data_dir, table, key)
        found[table] = bool(files)
        if files:
            partition_rows(files)  # every file it lists is there, at its size, and reads
    return found


# ---- the rules, on a fake today -----------------------------------------------------------------------------------


@pytest.fixture
def aged(local_backend: Backend) -> Path:
    """An account `default` (configured) and `brand_b` (found only in the data) with snapshots of several ages."""
    data_dir = local_backend.data_dir
    for age in (12, 10, 8, 7, 1):
        publish(data_dir, ago(age), seed=age)
    publish(data_dir, ago(11), flatten=False)  # its flatten never ran: the raw snapshot is the only copy
    publish(data_dir, ago(12), flatten=False, seed=99)  # re-landed, then its flatten failed a blocking check:
    with stage_snapshot(data_dir, snap(ago(12))) as staged:
        staged.quarantine({"failed_checks": ["connections.example"]})
    for age in (20, 15):
        publish(data_dir, ago(age), account="brand_b", seed=age)
    return data_dir


def test_the_rules_and_the_boundaries_on_a_fake_today(aged: Path) -> None:
    data_dir = aged
    retention = Retention(raw_days=7, parquet_days=9)
    plan = plan_prune(data_dir, retention, today=TODAY, configured=["default"])
    gone = [(r.key.account, r.key.snapshot_date, r.kind, r.configured) for r in plan.removals]
    assert gone == [
        ("brand_b", ago(20), "raw", False),
        ("brand_b", ago(20), "parquet", False),
        ("default", ago(10), "raw", True),
        ("default", ago(10), "parquet", True),
        ("default", ago(8), "raw", True),  # 8 days old: past 7 days of raw, within 9 days of Parquet
    ]
    assert plan.unconfigured == ["brand_b"] and plan.accounts == ["brand_b", "default"]
    kept = {(k.key.account, k.key.snapshot_date, k.kind): k.reason for k in plan.kept}
    assert kept == {
        ("brand_b", ago(15), "raw"): "the account's latest raw snapshot",
        ("brand_b", ago(15), "parquet"): "the account's latest Parquet partitions (the models' latest snapshot)",
        ("default", ago(11), "raw"): "its Parquet is not published: the raw snapshot is the only copy of the date",
        ("default", ago(12), "raw"): "a flatten of it waits in quarantine for a re-flatten",
        ("default", ago(12), "parquet"): "a flatten of it waits in quarantine for a re-flatten",
    }

    # Exactly N days old stays, one day more goes: 7 days of raw, 9 of Parquet; the boundaries move with today.
    def removed(days: int, kind: str) -> set[date]:
        later = plan_prune(data_dir, retention, today=TODAY + timedelta(days=days), configured=["default"])
        return {r.key.snapshot_date for r in later.removals if r.kind == kind and r.key.account == "default"}

    assert removed(0, "raw") == {ago(10), ago(8)} and removed(1, "raw") == {ago(10), ago(8), ago(7)}
    assert removed(0, "parquet") == {ago(10)} and removed(1, "parquet") == {ago(10)}
    assert removed(2, "parquet") == {ago(10), ago(8)}
    only_parquet = plan_prune(data_dir, Retention(parquet_days=10), today=TODAY, configured=["default"])
    assert [(r.key.account, r.key.snapshot_date, r.kind) for r in only_parquet.removals] == [
        ("brand_b", ago(20), "parquet")
    ]


def test_a_dry_run_deletes_nothing_and_the_prune_deletes_exactly_its_list(aged: Path, local_backend: Backend) -> None:
    data_dir = aged
    retention = Retention(raw_days=7, parquet_days=9)
    before = everything(local_backend)
    heard: list[tuple[str, date, str]] = []
    dry = prune(
        data_dir,
        retention,
        today=TODAY,
        configured=["default"],
        dry_run=True,
        on_removed=lambda r, _plan: heard.append((r.key.account, r.key.snapshot_date, r.kind)),
    )
    assert everything(local_backend) == before  # not a byte written, moved or deleted
    listed = [(r.key.account, r.key.snapshot_date, r.kind) for r in dry.removed]
    assert heard == listed and len(listed) == 5
    raw_files = {r.key: (r.files, r.bytes) for r in dry.removed if r.kind == "raw" and r.key.account == "default"}
    folder = layout.raw_snapshot(snap(ago(10)))
    assert raw_files[snap(ago(10))] == (
        len([k for k in before if k.startswith(folder + "/")]),
        sum(size for k, size in before.items() if k.startswith(folder + "/")),
    )

    done = prune(data_dir, retention, today=TODAY, configured=["default"])
    assert [(r.key.account, r.key.snapshot_date, r.kind, r.files, r.bytes) for r in done.removed] == [
        (r.key.account, r.key.snapshot_date, r.kind, r.files, r.bytes) for r in dry.removed
    ]
    assert not done.failed and done.bytes == dry.bytes > 0
    assert holdings(data_dir) == {
        ("default", ago(12), "raw"),
        ("default", ago(12), "parquet"),
        ("default", ago(11), "raw"),
        ("default", ago(8), "parquet"),
        ("default", ago(7), "raw"),
        ("default", ago(7), "parquet"),
        ("default", ago(1), "raw"),
        ("default", ago(1), "parquet"),
        ("brand_b", ago(15), "raw"),
        ("brand_b", ago(15), "parquet"),
    }
    after = everything(local_backend)
    gone = set(before) - set(after)
    assert sum(before[key] for key in gone) == done.bytes and not set(after) - set(before)
    # Nothing of a pruned date is left (but its lock file, never deleted: see storage.local): no file, no folder,
    # no record; what stays reads whole.
    for key in (snap(ago(10)), snap(ago(20), "brand_b")):
        assert not any(key.partition in name for name in after if not name.startswith(layout.LOCKS)), key
        assert not (data_dir / layout.raw_snapshot(key)).exists()
        assert not (data_dir / layout.table_partition("connections", key)).exists()
    assert not [k for k in after if k.startswith(layout.JOURNALS)]
    assert whole(data_dir, snap(ago(7))) == dict.fromkeys(["raw", *TABLES], True)
    assert read_manifest(data_dir, snap(ago(11)))["page_count"] == 1
    assert quarantine_dir(data_dir, snap(ago(12))).is_dir()
    # A second prune has nothing left to do.
    again = prune(data_dir, retention, today=TODAY, configured=["default"])
    assert again.removed == [] and everything(local_backend) == after


def test_one_account_and_an_account_found_only_in_the_data(aged: Path) -> None:
    retention = Retention(raw_days=3)
    only_b = prune(aged, retention, today=TODAY, configured=["default"], account="brand_b")
    assert [(r.key.account, r.key.snapshot_date, r.kind) for r in only_b.removed] == [("brand_b", ago(20), "raw")]
    assert ("default", ago(10), "raw") in holdings(aged)
    with pytest.raises(ConfigError, match=r"unknown account 'brand_c': it is not configured \(default\) and .* "):
        plan_prune(aged, retention, today=TODAY, configured=["default"], account="brand_c")
    # A configured account without any data is no error: nothing of it to prune.
    assert prune(aged, retention, today=TODAY, configured=["default", "new"], account="new").removed == []


def test_a_date_held_by_another_process_is_skipped_and_named(local_backend: Backend) -> None:
    data_dir = local_backend.data_dir
    for age in (30, 20, 1):
        publish(data_dir, ago(age), seed=age)
    with held_elsewhere(local_backend, snap(ago(30))) as holder:
        report = prune(data_dir, Retention(raw_days=5), today=TODAY, configured=["default"])
    assert [r.key.snapshot_date for r in report.removed] == [ago(20)]
    (line,) = report.failed
    assert line.startswith(f"raw {ago(30)}: snapshot {ago(30)} is busy: pid {holder.pid} on ")
    assert raw_snapshot_exists(data_dir, snap(ago(30)))
    assert [
        r.key.snapshot_date for r in prune(data_dir, Retention(raw_days=5), today=TODAY, configured=["default"]).removed
    ] == [ago(30)]


# ---- the settings and the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"JOOR_RETAIN_RAW_DAYS": "0"}, "JOOR_RETAIN_RAW_DAYS must be a whole number from 1 to 36,500 days, got '0'"),
        ({"JOOR_RETAIN_RAW_DAYS": "nan"}, "JOOR_RETAIN_RAW_DAYS must be a whole number"),
        ({"JOOR_RETAIN_PARQUET_DAYS": "30d"}, "JOOR_RETAIN_PARQUET_DAYS must be a whole number"),
        ({"JOOR_RETAIN_PARQUET_DAYS": "36501"}, "JOOR_RETAIN_PARQUET_DAYS must be a whole number"),
        (
            {"JOOR_RETAIN_RAW_DAYS": "30", "JOOR_RETAIN_PARQUET_DAYS": "7"},
            "JOOR_RETAIN_PARQUET_DAYS (7) must be at least JOOR_RETAIN_RAW_DAYS (30)",
        ),
    ],
)
def test_a_bad_retention_is_one_line_and_exit_2(
    local_backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env, problem
) -> None:
    publish(local_backend.data_dir, ago(30, utc_today()))
    publish(local_backend.data_dir, ago(1, utc_today()))
    before = everything(local_backend)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["prune", "--data-dir", local_backend.location]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: invalid JOOR configuration: ")
    assert problem in err
    assert everything(local_backend) == before
    with pytest.raises(ConfigError):
        load_retention(env)


def test_retention_is_per_deployment_never_per_account(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text('[accounts.brand_a]\napi_token_env = "T"\nretain_raw_days = 3\n', encoding="utf-8")
    from joor_pipeline.config import load_accounts

    with pytest.raises(
        ConfigError,
        match="retain_raw_days is set for the whole deployment, not per account: set JOOR_RETAIN_RAW_DAYS instead",
    ):
        load_accounts({"JOOR_ACCOUNTS_FILE": str(accounts), "T": "token"})


def test_the_command_prints_a_line_per_snapshot_and_a_total(
    local_backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    today = utc_today()
    data_dir = local_backend.data_dir
    for age in (40, 30, 1):
        publish(data_dir, ago(age, today), seed=age)
    command = ["prune", "--data-dir", local_backend.location]
    assert main(command) == 0  # nothing set: nothing deleted, and it says why
    assert capsys.readouterr().out == (
        "nothing to delete: JOOR_RETAIN_RAW_DAYS and JOOR_RETAIN_PARQUET_DAYS are unset, so every snapshot is kept\n"
    )
    monkeypatch.setenv("JOOR_RETAIN_RAW_DAYS", "20")
    monkeypatch.setenv("JOOR_RETAIN_PARQUET_DAYS", "35")
    before = everything(local_backend)
    assert main([*command, "--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    assert everything(local_backend) == before
    assert main(command) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.replace("would delete", "deleted") for line in dry] == lines
    assert [line.split()[:4] for line in lines[:-1]] == [
        ["deleted", "default", str(ago(40, today)), "raw"],
        ["deleted", "default", str(ago(40, today)), "parquet"],
        ["deleted", "default", str(ago(30, today)), "raw"],
    ]
    assert all(" files " in line and line.rstrip(")").split("bytes")[0].strip()[-1].isdigit() for line in lines[:-1])
    assert lines[-1].startswith("deleted 3 snapshot(s) (2 raw, 1 Parquet) of 1 account(s): ")
    assert "JOOR_RETAIN_RAW_DAYS=20, JOOR_RETAIN_PARQUET_DAYS=35" in lines[-1] and err == ""
    assert main([*command, "--account", "nobody"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown account 'nobody': it is not configured (default)")


def test_the_command_ends_in_one_error_line_when_a_date_is_busy(
    local_backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    today = utc_today()
    for age in (40, 30, 1):
        publish(local_backend.data_dir, ago(age, today), seed=age)
    monkeypatch.setenv("JOOR_RETAIN_RAW_DAYS", "20")
    with held_elsewhere(local_backend, snap(ago(40, today))) as holder:
        assert main(["prune", "--data-dir", local_backend.location]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split()[:4] == ["deleted", "default", str(ago(30, today)), "raw"]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]
    busy = f"raw {ago(40, today)}: snapshot {ago(40, today)} is busy: pid {holder.pid} on "
    assert errors[0].startswith("error: 1 date(s) could not be pruned (the others were; the next prune tries again): ")
    assert busy in errors[0]


# ---- a kill at every write, on every backend ----------------------------------------------------------------------


def killed_prune(backend: Backend, put: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``joor-pipeline prune`` on a store that SIGKILLs it at its ``put``-th write (test_publication's KILLER; the
    warehouse build's lock, a lease renewed in the background on an object store, is not counted either)."""
    killer = KILLER.replace(
        '("_work/locks/", "_work/damaged/")', '("_work/locks/", "_work/damaged/", "_work/warehouse/")'
    )
    assert killer != KILLER
    argv = [sys.executable, "-c", killer, "prune", "--data-dir", backend.location]
    environment = {**backend.env, **env, "KILL_AT_PUT": str(put), "JOOR_STORE_LEASE_SECONDS": DEAD_WRITER_LEASE}
    return subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=300)


def recovered(backend: Backend) -> None:
    """What the next run does first (a prune, a fetch, a flatten): recover, once a dead writer's lease expired."""
    deadline = time.monotonic() + 60
    while True:
        recover(backend.data_dir)
        if not records(backend):
            return
        assert time.monotonic() < deadline, records(backend)
        time.sleep(0.2)


def test_a_prune_killed_at_every_write_leaves_each_target_whole_or_gone(backend: Backend) -> None:
    """Killed at each write (on an emulator, the first and last of each step): every target of the pruned date is
    whole or not there, all whole before the commit point; the next run's recovery ends at all old or all gone."""
    today = utc_today()
    old, latest = snap(ago(40, today)), snap(ago(1, today))
    publish(backend.data_dir, latest.snapshot_date, seed=2)
    env = {"JOOR_RETAIN_RAW_DAYS": "10", "JOOR_RETAIN_PARQUET_DAYS": "20"}
    targets = 1 + len(TABLES)
    # The pending record, the journal (the commit point), each target's manifest, each target's files, the two
    # records deleted.
    commit = 2
    publish(backend.data_dir, old.snapshot_date, seed=3)
    total = writes_of(killed_prune(backend, 0, env))
    assert total == commit + 2 * targets + 2
    assert whole(backend.data_dir, old) == dict.fromkeys(["raw", *TABLES], False)
    steps = {1, 2, 3, 4, commit + targets, commit + targets + 1, commit + 2 * targets, total - 1, total}
    for put in sorted(steps) if backend.emulated else range(1, total + 1):
        if not raw_snapshot_exists(backend.data_dir, old):
            publish(backend.data_dir, old.snapshot_date, seed=3)
        baseline = read_manifest(backend.data_dir, old)["publication_id"]
        killed = killed_prune(backend, put, env)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        backend.expire_dead_leases()
        seen = whole(backend.data_dir, old)  # each target whole or not there: never half a partition
        assert sum(seen.values()) == (targets if put <= commit else max(targets - (put - commit - 1), 0)), put
        recovered(backend)
        assert set(whole(backend.data_dir, old).values()) == {put <= commit}, put
        if put <= commit:
            assert read_manifest(backend.data_dir, old)["publication_id"] == baseline
        else:
            assert not [key for key in backend.objects() if old.partition in key and layout.LOCKS not in key], put
            assert not (backend.data_dir / layout.STORE_CACHE / layout.raw_snapshot(old)).exists(), put
        assert whole(backend.data_dir, latest) == dict.fromkeys(["raw", *TABLES], True)
        assert records(backend) == []
    publish(backend.data_dir, old.snapshot_date, seed=3)
    done = killed_prune(backend, 0, env)  # the next ordinary prune goes through
    assert done.returncode == 0, done.stderr
    assert whole(backend.data_dir, old) == dict.fromkeys(["raw", *TABLES], False)
    # An object store's raw pages downloaded here for the flatten go with their snapshot.
    assert not (backend.data_dir / layout.STORE_CACHE / layout.raw_snapshot(old)).exists()
    assert (backend.data_dir / layout.STORE_CACHE).is_dir() == backend.emulated


# ---- the warehouse after a Parquet prune --------------------------------------------------------------------------


def compared(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {name: sorted(query(data_dir, f"select * from {name}"), key=repr) for name in COMPARED}


def test_pruned_dates_leave_the_models_and_a_full_refresh_agrees(tmp_path: Path) -> None:
    """A build after a Parquet prune withdraws the pruned dates (their history is recomputed from the dates left);
    the incremental build and a full refresh give the same tables."""
    root = parquet_root(tmp_path)
    days = [ago(age) for age in (6, 5, 4, 3, 2, 1)]
    for content, day in enumerate(days):
        write_snapshot(root, day, retailers(content))
        build_warehouse(tmp_path)
    assert query(tmp_path, "select count(*) from int_snapshots") == [(6,)]
    report = prune(tmp_path, Retention(parquet_days=3), today=TODAY, configured=["default"])
    assert [(r.key.snapshot_date, r.kind) for r in report.removed] == [(day, "parquet") for day in days[:3]]
    assert published_dates(tmp_path, account="default") == days[3:]

    build = build_warehouse(tmp_path)
    assert not build.full_refresh and build.refresh_dates == days[:3]  # withdrawn: deleted from the models
    assert [day for (day,) in query(tmp_path, "select snapshot_date from int_snapshots order by 1")] == days[3:]
    first = query(tmp_path, "select min(valid_from), min(last_seen_snapshot_date) from retailer_history")
    assert first == [(days[3], days[3])]
    for model in ANALYST_MODELS:
        for column in date_columns(tmp_path, model):
            found = query(tmp_path, f"select count(*) from {model} where {column} < ?", [days[3]])
            assert found == [(0,)], (model, column)
    incremental = compared(tmp_path)
    assert build_warehouse(tmp_path, full_refresh=True).full_refresh
    assert compared(tmp_path) == incremental


def date_columns(data_dir: Path, model: str) -> list[str]:
    """The date columns of a model that name a snapshot (valid_to may name the first date after a pruned one)."""
    found = query(
        data_dir,
        "select column_name from information_schema.columns where table_name = ? and data_type = 'DATE'",
        [model],
    )
    return [name for (name,) in found if name in ("snapshot_date", "valid_from", "last_seen_snapshot_date")]


# ---- the Dagster job ----------------------------------------------------------------------------------------------


@pytest.fixture
def dagster_instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def test_the_prune_job_runs_in_process_with_its_dry_run_and_its_metadata(
    local_backend: Backend, dagster_instance: dg.DagsterInstance
) -> None:
    today = utc_today()
    data_dir = local_backend.data_dir
    for age in (40, 30, 1):
        publish(data_dir, ago(age, today), seed=age)
    storage = DataDirResource(data_dir=local_backend.location, retain_raw_days="20", retain_parquet_days="35")
    defs = build_defs({}, resources={"joor": JoorApiResource(), "storage": storage})
    assert PRUNE_JOB not in {node.name for node in defs.resolve_job_def(JOB_NAME).nodes}
    schedule = defs.resolve_schedule_def("joor_prune_schedule")
    assert schedule.job_name == PRUNE_JOB and schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    job = defs.resolve_job_def(PRUNE_JOB)
    before = everything(local_backend)

    def metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
        (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        return {key: value.value for key, value in output.event_specific_data.metadata.items()}  # type: ignore[union-attr]

    dry = job.execute_in_process(
        instance=dagster_instance, run_config={"ops": {"prune_snapshots": {"config": {"dry_run": True}}}}
    )
    assert dry.success and everything(local_backend) == before
    shown = metadata(dry)
    assert shown["dry_run"] is True and shown["snapshots_to_delete"] == 3 and shown["raw_snapshots"] == 2
    assert f"| default | {ago(40, today)} | parquet |" in shown["would_delete"]

    done = job.execute_in_process(instance=dagster_instance)
    assert done.success
    went = metadata(done)
    assert went["snapshots_deleted"] == 3 and went["bytes"] == shown["bytes"] > 0
    assert went["retention"] == "JOOR_RETAIN_RAW_DAYS=20, JOOR_RETAIN_PARQUET_DAYS=35"
    assert sum(size for key, size in before.items() if key not in everything(local_backend)) == went["bytes"]
    assert holdings(data_dir) == {
        ("default", ago(30, today), "parquet"),
        ("default", ago(1, today), "raw"),
        ("default", ago(1, today), "parquet"),
    }
    logged = [e.message for e in dagster_instance.all_logs(done.run_id) if "deleted  default" in (e.message or "")]
    assert len(logged) == 3

    # A bad setting fails the run with the command line's one line.
    bad = build_defs(
        {},
        resources={
            "joor": JoorApiResource(),
            "storage": DataDirResource(data_dir=local_backend.location, retain_raw_days="0"),
        },
    )
    failed = bad.resolve_job_def(PRUNE_JOB).execute_in_process(instance=dagster_instance, raise_on_error=False)
    assert not failed.success
    description = failed.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert description.startswith("invalid JOOR configuration: JOOR_RETAIN_RAW_DAYS must be a whole number")
    json.dumps(went)  # plain values only

"""A Postgres instance (dagster_home.example/dagster.yaml) without the postgres extra: one error line naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
CLI: Final = str(Path(sys.executable).parent / "joor-pipeline")

#: On PYTHONPATH first, this makes `import dagster_postgres` fail as it does in an install without the extra.
BLOCKER: Final = (
    "raise ModuleNotFoundError(\"No module named 'dagster_postgres' (blocked by the test)\", name='dagster_postgres')\n"
)


def test_a_postgres_instance_without_the_postgres_extra_is_one_line_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "dagster_postgres.py").write_text(BLOCKER, encoding="utf-8")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home.example" / "dagster.yaml", home / "dagster.yaml")
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOOR_", "DAGSTER_"))}
    env |= {
        "PYTHONPATH": str(blocker),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_USER": "dagster",
        "DAGSTER_PG_PASSWORD": "not-a-real-password",
        "DAGSTER_PG_DB": "dagster",
        "JOOR_ENVIRONMENT": "builtin",
        "JOOR_DATA_DIR": str(data_dir),
    }
    for command in (["run"], ["demo"]):
        done = subprocess.run([CLI, *command], env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert done.stdout == "" or command == ["demo"], done.stdout  # (demo says what it is about to do first)
        [line] = done.stderr.splitlines()
        expected = (
            f"error: {home / 'dagster.yaml'} names dagster_postgres.DagsterPostgresStorage, "
            "which needs the optional package dagster-postgres: install the postgres extra ("
        )
        assert line.startswith(expected), line
        assert "--all-extras" in line and "'joor-pipeline[postgres]'" in line, line
        assert "not-a-real-password" not in done.stderr
        # Stopped before anything was fetched or written.
        assert not (data_dir / "raw").exists(), command

"""Test databases: PostgreSQL (found or started), SQLite files, MariaDB.

PostgreSQL is looked for, in order: PROCESSFLOW_TEST_DATABASE_URL, a server on
127.0.0.1:5432, then a throwaway cluster started in a temporary directory when
PostgreSQL's server programs are installed. Only where none exists are the
PostgreSQL tests skipped, with the reason; under CI that is an error.

Each test gets its own database, cloned from a template migrated once per run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from processflow import migrate
from processflow.db import normalize_url

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


def _reachable(url: str) -> str | None:
    try:
        engine = sa.create_engine(
            normalize_url(url), connect_args={"connect_timeout": 3}
        )
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        engine.dispose()
        return None
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ThrowawayCluster:
    """A PostgreSQL cluster in a temporary directory, for machines without one."""

    directory: Path
    port: int
    run_as: list[str] = field(default_factory=list)

    @classmethod
    def start(cls) -> ThrowawayCluster | None:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = shutil.which("initdb") or (candidates[-1] if candidates else None)
        if initdb is None:
            return None
        bin_dir = Path(initdb).parent
        directory = Path(tempfile.mkdtemp(prefix="processflow-pg-"))
        run_as: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            shutil.chown(directory, "postgres")
            run_as = ["runuser", "-u", "postgres", "--"]
        port = _free_port()
        data = directory / "data"
        subprocess.run(
            [
                *run_as,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *run_as,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-l",
                str(directory / "log"),
                "-o",
                f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        return cls(directory, port, run_as)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        bin_dir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]).parent
        subprocess.run(
            [
                *self.run_as,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.directory / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def find_postgres() -> tuple[str | None, str, ThrowawayCluster | None]:
    """(admin URL or None, how it was found or why not, cluster to stop)."""
    explicit = os.environ.get("PROCESSFLOW_TEST_DATABASE_URL")
    if explicit:
        problem = _reachable(explicit)
        if problem:
            return None, f"PROCESSFLOW_TEST_DATABASE_URL unreachable: {problem}", None
        return explicit, "PROCESSFLOW_TEST_DATABASE_URL", None
    problem = _reachable(DEFAULT_PG_URL)
    if problem is None:
        return DEFAULT_PG_URL, "server on 127.0.0.1:5432", None
    try:
        cluster = ThrowawayCluster.start()
    except (OSError, subprocess.CalledProcessError) as error:
        return (
            None,
            f"no server on 127.0.0.1:5432 ({problem}); "
            f"throwaway cluster failed: {error}",
            None,
        )
    if cluster is None:
        return (
            None,
            f"no server on 127.0.0.1:5432 ({problem}) and no initdb installed",
            None,
        )
    return cluster.url, f"throwaway cluster on port {cluster.port}", cluster


class PostgresDatabases:
    """Creates per-test databases from a template migrated once."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = normalize_url(admin_url)
        self.admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self.template = f"pf_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._created: list[str] = []
        self._create(self.template, template=None)
        migrate.upgrade(self.url_for(self.template))
        # A template must have no open connections when it is cloned.
        self._terminate(self.template)

    def url_for(self, name: str) -> str:
        return (
            make_url(self.admin_url)
            .set(database=name)
            .render_as_string(hide_password=False)
        )

    def _create(self, name: str, template: str | None) -> None:
        suffix = f' TEMPLATE "{template}"' if template else ""
        for attempt in range(50):
            try:
                with self.admin.connect() as connection:
                    connection.exec_driver_sql(f'CREATE DATABASE "{name}"{suffix}')
                break
            except sa.exc.OperationalError:
                # The template is briefly busy while another clone runs.
                if attempt == 49:
                    raise
                time.sleep(0.05)
        self._created.append(name)

    def _terminate(self, name: str) -> None:
        with self.admin.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )

    def new(self, migrated: bool = True) -> str:
        name = f"pf_{uuid.uuid4().hex[:12]}"
        self._create(name, self.template if migrated else None)
        return self.url_for(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        assert name is not None
        self._terminate(name)
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        if name in self._created:
            self._created.remove(name)

    def close(self) -> None:
        for name in list(reversed(self._created)):
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self.drop(self.url_for(name))
        self.admin.dispose()


class SqliteDatabases:
    """Migrated SQLite files, copied from one migrated once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.template = directory / "template.db"
        migrate.upgrade(f"sqlite:///{self.template}")

    def new(self, directory: Path, migrated: bool = True) -> str:
        path = directory / f"pf_{uuid.uuid4().hex[:8]}.db"
        if migrated:
            shutil.copyfile(self.template, path)
        return f"sqlite:///{path}"


def mariadb_problem() -> str | None:
    return _reachable(MARIADB_URL)


def new_mariadb_database() -> str:
    name = f"pf_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(MARIADB_URL)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )
    engine.dispose()
    return (
        make_url(MARIADB_URL).set(database=name).render_as_string(hide_password=False)
    )


def drop_mariadb_database(url: str) -> None:
    engine = sa.create_engine(MARIADB_URL)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            f"DROP DATABASE IF EXISTS `{make_url(url).database}`"
        )
    engine.dispose()

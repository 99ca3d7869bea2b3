"""A PostgreSQL server of the stack's own, for the Prefect and MLflow servers' backend stores.

`LocalPostgres(folder).start()` makes a cluster in `folder` on first use (initdb, password
authentication, listening on 127.0.0.1 only), starts it, and creates the databases `prefect` and
`mlflow`. It uses the server binaries of Debian's `postgresql` package (`make postgres` installs
it). PostgreSQL refuses to run as root: as root, the cluster belongs to, and the server runs as,
the package's `postgres` user.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from flows.stack import HOST, free_port

DATABASES = ("prefect", "mlflow")
USER = "spine"
INSTALL_HINT = "install Debian's package: `make postgres` (as root: apt-get install postgresql)"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or no way to run them."""


def server_bin_dir() -> Path:
    """The folder of initdb / pg_ctl: Debian's versioned folder (newest first), else the PATH."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(candidate).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb) found: {INSTALL_HINT}")


class LocalPostgres:
    """A cluster in `folder`, served on 127.0.0.1:`port` (a free port by default)."""

    def __init__(self, folder: str | Path, port: int | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.data = self.folder / "data"
        self.port = port or free_port()
        self.bin = server_bin_dir()
        self.as_postgres = os.geteuid() == 0  # root: run the server as the package's user
        self.password_file = self.folder / "password"

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def url(self, database: str, driver: str) -> str:
        """SQLAlchemy URL of a database, with its credentials: pass it in the environment, never log it.
        The driver always named (asyncpg for Prefect, psycopg2 for MLflow): SQLAlchemy 2.1's default
        for a bare postgresql:// is psycopg 3."""
        return f"postgresql+{driver}://{USER}:{self.password}@{HOST}:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"`{' '.join(args[:2])}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def _own(self) -> None:
        """As root: the cluster's folder belongs to `postgres`, which must also reach it."""
        if not self.as_postgres:
            return
        shutil.chown(self.folder, "postgres", "postgres")
        reach = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.folder)], capture_output=True)
        if reach.returncode != 0:
            raise PostgresUnavailable(
                f"user postgres cannot write {self.folder} (a parent folder is closed to it): use a folder "
                "under /tmp or /var/lib, or run as a user other than root"
            )

    def init(self) -> None:
        """initdb, once: password authentication only, this machine only."""
        if (self.data / "PG_VERSION").is_file():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.password_file.is_file():
            self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
            self.password_file.chmod(0o600)
        self._own()
        secret = self.folder / ".initdb-password"
        secret.write_text(self.password + "\n")
        if self.as_postgres:
            shutil.chown(secret, "postgres", "postgres")
        try:
            self._run(
                "initdb", "-D", str(self.data), "--username", USER, "--pwfile", str(secret),
                "--auth", "scram-sha-256", "--encoding", "UTF8", "--no-instructions",
            )  # fmt: skip
        finally:
            secret.unlink(missing_ok=True)

    def start(self) -> LocalPostgres:
        self.init()
        options = f"-p {self.port} -c listen_addresses={HOST} -k {self.folder}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"), "-w", "start")
        self.create_databases()
        return self

    def create_databases(self) -> None:
        import psycopg2

        db = psycopg2.connect(host=HOST, port=self.port, user=USER, password=self.password, dbname="postgres")
        db.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with db.cursor() as cursor:
                for name in DATABASES:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cursor.fetchone() is None:
                        cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            db.close()

    def query(self, database: str, sql: str, parameters: tuple = ()) -> list[tuple]:
        """Rows of one query (for checks: what the servers wrote)."""
        import psycopg2

        db = psycopg2.connect(host=HOST, port=self.port, user=USER, password=self.password, dbname=database)
        try:
            with db.cursor() as cursor:
                cursor.execute(sql, parameters)
                return cursor.fetchall()
        finally:
            db.close()

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

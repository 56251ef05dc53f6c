"""A throwaway PostgreSQL cluster for `make run` and the tests, or an external one.

The cluster lives entirely in one directory (data, unix socket, superuser
password), listens only on 127.0.0.1, and runs as an unprivileged user when we
are root, because initdb and postgres refuse to run as root.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

from devstack.procs import (
    RunAs,
    StackError,
    gid_of,
    groups_of,
    log,
    make_owned_dir,
    make_owned_file,
    pid_alive,
    run_command,
    tail,
    uid_of,
    unprivileged_user,
    wait_gone,
)

DATABASE = "podmesh"
SUPERUSER = "podmesh"
PG_ROOT = Path("/usr/lib/postgresql")
SETTINGS_FILE = "podmesh.conf"


class Postgres(Protocol):
    """What the stack needs from PostgreSQL, managed here or given by DATABASE_URL."""

    @property
    def managed(self) -> bool: ...
    @property
    def owner_dsn(self) -> str: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def restart(self) -> None: ...
    def kill_now(self) -> None: ...


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)) or (0,)


def find_bindir() -> Path:
    """The newest installed server's bin directory.

    Debian's /usr/bin and /usr/local/bin entries may be wrappers (pg_wrapper or
    worse) that pick a cluster by their own rules, so the versioned directory wins.
    """
    override = os.environ.get("PODMESH_PG_BINDIR")
    if override:
        return Path(override)
    found = [p.parent for p in PG_ROOT.glob("*/bin/initdb")]
    if found:
        return max(found, key=lambda b: _version_key(b.parent.name))
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        bindir = Path(out.stdout.strip())
        if out.returncode == 0 and (bindir / "initdb").exists():
            return bindir
    raise StackError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: run `make system-deps` "
        "as root, install the `postgresql` package, or set DATABASE_URL"
    )


class PostgresServer:
    """A cluster in root/ (data/, socket/, superuser-password)."""

    managed = True

    def __init__(
        self,
        root: Path,
        port: int,
        *,
        fast: bool = False,
        log_path: Path | None = None,
        bindir: Path | None = None,
        host: str = "127.0.0.1",
        database: str = DATABASE,
        superuser: str = SUPERUSER,
    ) -> None:
        self.root = root.absolute()
        self.port = port
        self.fast = fast
        self.host = host
        self.database = database
        self.superuser = superuser
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_path = (log_path or self.root / "postgres.log").absolute()
        self._bindir = bindir
        self._password_file = self.root / "superuser-password"
        self._password: str | None = None
        self._run_as: RunAs | None = None
        self._run_as_resolved = False

    # --- addresses ---------------------------------------------------------

    @property
    def password(self) -> str:
        if self._password is None:
            try:
                self._password = self._password_file.read_text().strip()
            except FileNotFoundError:
                self._password = secrets.token_urlsafe(24)
        return self._password

    @property
    def owner_dsn(self) -> str:
        return self.dsn(self.database)

    def dsn(self, database: str) -> str:
        return (
            f"postgresql://{quote(self.superuser, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(database, safe='')}"
        )

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    @property
    def run_as(self) -> RunAs | None:
        if not self._run_as_resolved:
            self._run_as = unprivileged_user()
            self._run_as_resolved = True
        return self._run_as

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, PermissionError):
            return None
        try:
            pid = int(first)
        except ValueError:
            return None
        return pid if pid_alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self.running:
            return
        owner = self.run_as
        make_owned_dir(self.root, owner)
        make_owned_dir(self.socket_dir, owner)
        make_owned_file(self.log_path, owner)
        if not (self.data_dir / "PG_VERSION").exists():
            await self._initdb(owner)
        self._write_settings(owner)
        try:
            await self._pg_ctl("start", "-l", str(self.log_path), "-w", "-t", "120", within=150)
        except StackError as exc:
            raise StackError(
                f"PostgreSQL did not start on {self.host}:{self.port}: {exc}\n"
                f"last lines of {self.log_path}:\n{tail(self.log_path)}"
            ) from None
        await self._ensure_database()

    async def stop(self) -> None:
        postmaster = self.pid
        if postmaster is None:
            return
        try:
            await self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60", within=90)
        except StackError as exc:
            log.warning("fast shutdown of PostgreSQL failed (%s); stopping it immediately", exc)
            await self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30", within=60)
        # pg_ctl returns once postmaster.pid is gone, a moment before the process is.
        if not await wait_gone(postmaster, 10.0):
            raise StackError(f"PostgreSQL (pid {postmaster}) still runs after pg_ctl stop")

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def kill_now(self) -> None:
        """Last-resort synchronous stop, for atexit and interrupted runs."""
        if not self.running:
            return
        subprocess.run(
            [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "immediate",
             "-s", "-w", "-t", "30"],
            capture_output=True,
            cwd="/",
            env=self._env(),
            user=uid_of(self.run_as),
            group=gid_of(self.run_as),
            extra_groups=groups_of(self.run_as),
        )  # fmt: skip

    # --- internals ---------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # Stray PG* variables (PGDATA, PGPORT, PGHOST...) must not redirect the tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    async def _pg_ctl(self, *args: str, within: float) -> str:
        return await run_command(
            [self.bindir / "pg_ctl", args[0], "-D", self.data_dir, "-s", *args[1:]],
            run_as=self.run_as,
            env=self._env(),
            within=within,
        )

    async def _initdb(self, owner: RunAs | None) -> None:
        self._password_file.write_text(self.password + "\n")
        self._password_file.chmod(0o600)
        if owner is not None:
            os.chown(self._password_file, owner.uid, owner.gid)
        argv: list[str | Path] = [
            self.bindir / "initdb",
            "-D", self.data_dir,
            "-U", self.superuser,
            f"--pwfile={self._password_file}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        ]  # fmt: skip
        if self.fast:
            argv.append("--no-sync")
        await run_command(argv, run_as=owner, env=self._env(), within=180)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude_if_exists = '{SETTINGS_FILE}'\n")

    def _write_settings(self, owner: RunAs | None) -> None:
        # Rewritten on every start: a reused data directory takes this run's port.
        path = self.data_dir / SETTINGS_FILE
        lines = [f"{key} = {value}\n" for key, value in self._settings().items()]
        path.write_text("# written by devstack/postgres.py on each start\n" + "".join(lines))
        if owner is not None:
            os.chown(path, owner.uid, owner.gid)

    def _settings(self) -> Mapping[str, str]:
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "200",
            # Sized for the 2-core, shared machine the brief measured on.
            "shared_buffers": "'256MB'",
            "effective_cache_size": "'1GB'",
            "work_mem": "'8MB'",
            "maintenance_work_mem": "'128MB'",
            "max_wal_size": "'2GB'",
            "max_parallel_workers_per_gather": "1",
            "random_page_cost": "1.1",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        if (self.bindir.parent / "lib" / "timescaledb.so").exists():
            settings["shared_preload_libraries"] = "'timescaledb'"
            settings["timescaledb.telemetry_level"] = "off"
        if self.fast:
            # Tests throw the cluster away: durability only costs time here.
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        return settings

    async def _ensure_database(self) -> None:
        conn = await _connect(self.dsn("postgres"), attempts=20)
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", self.database
            )
            if not exists:
                await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()


class ExternalPostgres:
    """DATABASE_URL: someone else runs it, so start/stop only check and let go."""

    managed = False

    def __init__(self, dsn: str) -> None:
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise StackError("DATABASE_URL must be a postgresql:// URL")
        self._dsn = dsn

    @property
    def owner_dsn(self) -> str:
        return self._dsn

    async def start(self) -> None:
        conn = await _connect(self._dsn, attempts=3)
        await conn.close()

    async def stop(self) -> None:
        return None

    async def restart(self) -> None:
        raise StackError("PostgreSQL comes from DATABASE_URL: the stack cannot restart it")

    def kill_now(self) -> None:
        return None


def postgres_from_env(
    root: Path,
    port: int,
    *,
    fast: bool = False,
    log_path: Path | None = None,
    env: Mapping[str, str] = os.environ,
) -> PostgresServer | ExternalPostgres:
    url = env.get("DATABASE_URL")
    if url:
        return ExternalPostgres(url)
    return PostgresServer(root, port, fast=fast, log_path=log_path)


def with_credentials(dsn: str, user: str, password: str) -> str:
    """The same server and database as dsn, logged in as user."""
    parts = urlsplit(dsn)
    hostport = parts.netloc.rpartition("@")[2]
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("user", "password")]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))


async def _connect(dsn: str, *, attempts: int) -> asyncpg.Connection:
    last: BaseException | None = None
    for _ in range(attempts):
        try:
            return await asyncpg.connect(dsn, timeout=5)
        except (OSError, asyncpg.CannotConnectNowError, TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.25)
    raise StackError(f"cannot connect to PostgreSQL at {_redact(dsn)}: {last}")


def _redact(dsn: str) -> str:
    parts = urlsplit(dsn)
    user, _, hostport = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{name}:***@{hostport}" if user else hostport, parts.path,
                       "", ""))  # fmt: skip

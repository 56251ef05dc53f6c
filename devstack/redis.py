"""A throwaway redis-server on loopback, or the one REDIS_URL names.

Nothing in Redis is the only copy of anything (ARCHITECTURE.md section 6), so
the throwaway server keeps no snapshot and no append-only file. It still asks for a
password: any local user or process (a browser page's DNS-rebinding trick included)
could otherwise read the caches and counters, or write them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

from devstack.procs import (
    PidRegistry,
    RunAs,
    StackError,
    make_owned_dir,
    make_owned_file,
    spawn,
    tail,
    terminate,
    unprivileged_user,
)


class Redis(Protocol):
    @property
    def managed(self) -> bool: ...
    @property
    def url(self) -> str: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def restart(self) -> None: ...
    def kill_now(self) -> None: ...


def find_redis_server() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise StackError(
            "redis-server not found: run `make system-deps` as root, install the "
            "`redis-server` package, or set REDIS_URL"
        )
    return found


def _command(*words: str) -> bytes:
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def ping(host: str, port: int, within: float = 1.0, password: str | None = None) -> bool:
    """True when something on host:port answers a RESP PING with PONG (after AUTH)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within)
    except (OSError, TimeoutError):
        return False
    try:
        if password is not None:
            writer.write(_command("AUTH", password))
            await writer.drain()
            if not (await asyncio.wait_for(reader.readline(), within)).startswith(b"+OK"):
                return False
        writer.write(_command("PING"))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), within)
        return line.startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


class RedisServer:
    """redis-server in the foreground as our child, working directory root/."""

    managed = True

    def __init__(
        self,
        root: Path,
        port: int,
        *,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
        registry: PidRegistry | None = None,
        password: str | None = None,
    ) -> None:
        self.root = root.absolute()
        self.port = port
        self.host = host
        # Kept for restart(); written to root/password for redis-cli (-a or AUTH).
        self.password = password or secrets.token_urlsafe(32)
        self.log_path = (log_path or self.root / "redis.log").absolute()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_as: RunAs | None = None
        # Lets a later run kill this server if our process dies without stopping it.
        self._registry = registry

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/0"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    @property
    def config_file(self) -> Path:
        return self.root / "redis.conf"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def argv(self) -> list[str]:
        # The password is in the config file, not on a command line every user can read.
        return [
            find_redis_server(),
            str(self.config_file),
            "--bind", self.host,
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.root),
            "--save", "",
            "--appendonly", "no",
            "--logfile", "",
            "--loglevel", "notice",
        ]  # fmt: skip

    async def start(self) -> None:
        if self.running:
            return
        # Redis does not need root either; it runs as the database user.
        self._run_as = unprivileged_user()
        make_owned_dir(self.root, self._run_as)
        self._write_secret(self.config_file, f"requirepass {self.password}\n")
        self._write_secret(self.password_file, self.password + "\n")
        self.proc = spawn(self.argv(), log_path=self.log_path, run_as=self._run_as)
        if self._registry is not None:
            self._registry.record("redis", self.proc)
        deadline = time.monotonic() + self.start_timeout
        while not await ping(self.host, self.port, password=self.password):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                state = (
                    f"exited with {self.proc.returncode}"
                    if self.proc.poll() is not None
                    else f"did not answer PING within {self.start_timeout:.0f}s"
                )
                await self.stop()
                raise StackError(
                    f"redis-server on {self.host}:{self.port} {state}; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            await asyncio.sleep(0.05)

    def _write_secret(self, path: Path, text: str) -> None:
        make_owned_file(path, self._run_as)
        path.chmod(0o600)
        path.write_text(text)

    async def stop(self) -> None:
        if self.proc is None:
            return
        await terminate(self.proc, sig=signal.SIGTERM, grace=10.0)
        self.proc = None
        if self._registry is not None:
            self._registry.forget("redis")

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def kill_now(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class ExternalRedis:
    """REDIS_URL: checked at start, never stopped."""

    managed = False

    def __init__(self, url: str) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise StackError("REDIS_URL must be a redis:// URL")
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    async def start(self) -> None:
        parts = urlsplit(self._url)
        # Authenticated or TLS servers cannot be pinged this simply; let the services say.
        pingable = parts.scheme == "redis" and not parts.password and parts.hostname
        if pingable and not await ping(parts.hostname or "", parts.port or 6379, within=3.0):
            raise StackError(f"nothing answers PING at REDIS_URL {parts.hostname}:{parts.port}")

    async def stop(self) -> None:
        return None

    async def restart(self) -> None:
        raise StackError("Redis comes from REDIS_URL: the stack cannot restart it")

    def kill_now(self) -> None:
        return None


def redis_from_env(
    root: Path,
    port: int,
    *,
    log_path: Path | None = None,
    env: Mapping[str, str] = os.environ,
    registry: PidRegistry | None = None,
) -> RedisServer | ExternalRedis:
    url = env.get("REDIS_URL")
    if url:
        return ExternalRedis(url)
    return RedisServer(root, port, log_path=log_path, registry=registry)

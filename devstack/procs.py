"""Process plumbing shared by the PostgreSQL, Redis and whole-stack helpers."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("devstack")

# Name of the account created when the machine has no `postgres` user yet.
FALLBACK_USER = "podmesh"


class StackError(RuntimeError):
    """Something in the local platform failed to start, answer or stop."""


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account the data-owning servers run under."""

    name: str
    uid: int
    gid: int


def uid_of(run_as: RunAs | None) -> int | None:
    return run_as.uid if run_as is not None else None


def gid_of(run_as: RunAs | None) -> int | None:
    return run_as.gid if run_as is not None else None


def groups_of(run_as: RunAs | None) -> list[int] | None:
    # [] (not None) makes Popen call setgroups: root's supplementary groups go too.
    return [] if run_as is not None else None


def unprivileged_user() -> RunAs | None:
    """The account to drop to when we are root; None when we are not root.

    initdb refuses to run as root, and neither PostgreSQL nor Redis needs it.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_USER):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name, entry.pw_uid, entry.pw_gid)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    nologin = shutil.which("nologin") or "/usr/sbin/nologin"
    subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--shell", nologin,
         FALLBACK_USER],
        check=True,
        capture_output=True,
    )  # fmt: skip
    entry = pwd.getpwnam(FALLBACK_USER)
    log.info("created system user %s to run PostgreSQL and Redis", FALLBACK_USER)
    return RunAs(FALLBACK_USER, entry.pw_uid, entry.pw_gid)


def make_owned_dir(path: Path, owner: RunAs | None, mode: int = 0o700) -> None:
    """Creates path (if needed) owned by owner and lets owner reach it."""
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
        ensure_traversable(path.parent, owner)
    path.chmod(mode)


def make_owned_file(path: Path, owner: RunAs | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)


def ensure_traversable(directory: Path, owner: RunAs) -> None:
    """Adds o+x (search only, never read) where owner could not pass an ancestor.

    The unprivileged server must be able to walk down to its data directory,
    which may live under a 0700 home directory such as /root.
    """
    for ancestor in [directory.resolve(), *directory.resolve().parents]:
        st = ancestor.stat()
        if st.st_uid == owner.uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid == owner.gid:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            log.warning("adding o+x to %s so %s can reach its data", ancestor, owner.name)
            ancestor.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


async def run_command(
    argv: Sequence[str | os.PathLike[str]],
    *,
    run_as: RunAs | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    within: float = 120.0,
) -> str:
    """Runs a short command to completion and returns its combined output."""
    proc = await asyncio.create_subprocess_exec(
        *[str(a) for a in argv],
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        # The unprivileged user cannot always read our working directory.
        cwd=str(cwd) if cwd is not None else "/",
        start_new_session=True,
        user=uid_of(run_as),
        group=gid_of(run_as),
        extra_groups=groups_of(run_as),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        name = Path(str(argv[0])).name
        raise StackError(f"{name} did not finish within {within:.0f}s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise StackError(
            f"{' '.join(str(a) for a in argv)} exited with {proc.returncode}:\n{text.strip()}"
        )
    return text


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    run_as: RunAs | None = None,
) -> subprocess.Popen[bytes]:
    """Starts a long-running child with its output appended to log_path.

    The child gets its own session: Ctrl-C in a terminal must reach only the
    devstack process, which then stops the children in order.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting\n".encode())
        out.flush()
        return subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd is not None else "/",
            start_new_session=True,
            user=uid_of(run_as),
            group=gid_of(run_as),
            extra_groups=groups_of(run_as),
        )


async def wait_exit(proc: subprocess.Popen[bytes], within: float) -> int | None:
    """Polls (the child may outlive any one event loop) until exit or timeout."""
    deadline = time.monotonic() + within
    while (code := proc.poll()) is None:
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.05)
    return code


async def terminate(
    proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, grace: float = 20.0
) -> int:
    """Sends sig, waits up to grace seconds, then SIGKILLs; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        code = await wait_exit(proc, grace)
        if code is not None:
            return code
        log.warning("pid %d ignored signal %d for %.0fs: killing it", proc.pid, sig, grace)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    code = await wait_exit(proc, 10.0)
    if code is None:
        raise StackError(f"pid {proc.pid} survived SIGKILL")
    return code


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port.

    SO_REUSEADDR as the servers themselves set it: connections of a previous
    run lingering in TIME_WAIT do not make the port busy.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct ports the kernel picked as free just now."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


# --- leftovers of a run that was killed before it could clean up -----------------

PIDS_FILE = "pids.json"


def _start_ticks(pid: int) -> int | None:
    """When pid started (clock ticks since boot): with the pid, names one process.

    Command lines cannot serve: redis-server and postgres rewrite their titles.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[19])


class PidRegistry:
    """Remembers the children of a run dir so that a later run can reap them."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / PIDS_FILE

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def record(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        data = self._load()
        data[name] = {"pid": proc.pid, "started": _start_ticks(proc.pid)}
        self._write(data)

    def forget(self, name: str) -> None:
        data = self._load()
        if data.pop(name, None) is not None:
            self._write(data)

    def _write(self, data: dict[str, dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)

    def kill_leftovers(self) -> list[str]:
        """SIGKILLs recorded children still alive (checked by start time, so a
        recycled pid is never hit), waits for them to go, and returns their names."""
        killed: dict[str, int] = {}
        for name, entry in self._load().items():
            pid = entry.get("pid")
            started = entry.get("started")
            if isinstance(pid, int) and started is not None and _start_ticks(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed[name] = pid
        # Their ports are free only once they are gone.
        deadline = time.monotonic() + 10.0
        while any(pid_alive(pid) for pid in killed.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.path.unlink(missing_ok=True)
        return list(killed)


def pid_alive(pid: int) -> bool:
    """True while pid runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rpartition(")")[2].split()[0] != "Z"


async def wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True

"""A throwaway PgBouncer (Debian's ``pgbouncer``) in front of a PostgreSQL server, on loopback.

``Bouncer(host, port, dbname, mode)`` writes its configuration to a temp directory, starts
``pgbouncer`` on a free port (as the ``postgres`` user when the tests run as root: PgBouncer
refuses to run as root) and stops it on ``close()``. Trust authentication, one database
(``dbname``, same name on both sides), ``pool_mode`` ``transaction`` or ``session``. Raises
:class:`BouncerUnavailable` when the binary is missing (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["Bouncer", "BouncerUnavailable"]


class BouncerUnavailable(RuntimeError):
    """No usable ``pgbouncer`` here."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bouncer:
    """A running PgBouncer; a context manager (stopped on exit)."""

    def __init__(
        self, host: str, port: int, dbname: str, mode: str, *, pool_size: int = 20
    ) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.access(binary, os.X_OK):
            raise BouncerUnavailable(
                "no pgbouncer binary (Debian: apt-get install pgbouncer; .ci/run installs it)"
            )
        self.mode = mode
        self.dbname = dbname
        self.port = _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="dbpool-bouncer-"))
        user = None
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise BouncerUnavailable(
                    "pgbouncer refuses root and there is no postgres user"
                ) from None
            os.chown(self._dir, user.pw_uid, user.pw_gid)
        (self._dir / "users.txt").write_text('"postgres" ""\n')
        (self._dir / "pgbouncer.ini").write_text(
            f"""[databases]
{dbname} = host={host} port={port} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self._dir / "users.txt"}
admin_users = postgres
pool_mode = {mode}
default_pool_size = {pool_size}
max_client_conn = 200
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits,application_name
logfile = {self._dir / "pgbouncer.log"}
pidfile = {self._dir / "pgbouncer.pid"}
"""
        )
        if user is not None:
            for name in ("users.txt", "pgbouncer.ini"):
                os.chown(self._dir / name, user.pw_uid, user.pw_gid)
        command = [binary, str(self._dir / "pgbouncer.ini")]
        if user is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        self._proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BouncerUnavailable(f"pgbouncer exited: {self.log()[-1000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise BouncerUnavailable("pgbouncer did not listen within 10 s")

    def url(self, **query: str) -> str:
        """The flask-dbpool URL of the database through PgBouncer."""
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}" + (
            f"?{tail}" if tail else ""
        )

    def admin_url(self) -> str:
        """PgBouncer's admin console (``SHOW POOLS`` …)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/pgbouncer"

    def log(self) -> str:
        path = self._dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Bouncer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

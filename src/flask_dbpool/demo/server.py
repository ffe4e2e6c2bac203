"""Run a WSGI app on werkzeug's threaded development server in a background thread."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from werkzeug.serving import (
    BaseWSGIServer,
    WSGIRequestHandler,
    get_sockaddr,
    make_server,
    select_address_family,
)

from flask_dbpool.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["DemoServer"]


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or on a free port if ``port`` is taken."""
    family = select_address_family(host, port)
    candidates = (port, 0) if port else (0,)
    for candidate in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(get_sockaddr(host, candidate, family))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            if candidate == candidates[-1]:
                raise ConfigError(f"cannot listen on {host}:{candidate}: {exc}") from None
            continue
        return sock
    raise AssertionError("unreachable")


class DemoServer:
    """werkzeug's threaded server running ``app`` in a daemon thread.

    ``DemoServer(app, "127.0.0.1", 5000)`` listens at once (on a free port if 5000 is busy:
    compare :attr:`port` with :attr:`requested_port`); :meth:`start` serves in the background;
    :meth:`stop` shuts down and closes the socket. Use it as a context manager to do both.
    Requests are logged only while :attr:`log_requests` is true.
    """

    def __init__(self, app: WSGIApplication, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requested_port = port
        self._log = threading.Event()
        log = self._log

        class Handler(WSGIRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                if log.is_set():
                    super().log_request(code, size)

        sock = _bind(host, port)
        try:
            # werkzeug duplicates the descriptor, so ours is closed either way.
            self._server: BaseWSGIServer = make_server(
                host,
                sock.getsockname()[1],
                app,
                threaded=True,
                request_handler=Handler,
                fd=sock.fileno(),
            )
        finally:
            sock.close()
        self.host = host
        self.port: int = self._server.port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:5000``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def log_requests(self) -> bool:
        """Whether each request is logged (werkzeug's access log on stderr)."""
        return self._log.is_set()

    @log_requests.setter
    def log_requests(self, value: bool) -> None:
        if value:
            self._log.set()
        else:
            self._log.clear()

    def start(self) -> None:
        """Serve in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"demo-server-{self.port}",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket. Idempotent."""
        if self._thread is not None:
            self._server.shutdown()  # serve_forever closes the socket on its way out
            self._thread.join(timeout=10)
            self._thread = None
        else:
            self._server.server_close()

    def __enter__(self) -> DemoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

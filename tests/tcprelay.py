"""A loopback TCP relay in front of a real server: a small fault proxy.

``freeze()`` makes the relay stop forwarding in both directions while keeping every socket
open: to the client it looks like a server (or a network path) that stopped answering, with
no reset and no FIN, as with a frozen VM or a dropped route (a black hole). ``thaw()``
resumes forwarding. ``reset()`` aborts every connection through it with a TCP reset (a
firewall or load balancer dropping its state). ``latency`` (seconds) delays every chunk
forwarded. Used for tests that need network faults without touching the shared server.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["TCPRelay"]


class TCPRelay:
    """Relays ``127.0.0.1:<port>`` to ``(host, port)``; a context manager (closes on exit)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        self.latency = 0.0
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="tcprelay", daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        """Stop forwarding (sockets stay open; bytes in flight wait in kernel buffers)."""
        self._frozen.set()

    def thaw(self) -> None:
        """Resume forwarding."""
        self._frozen.clear()

    def reset(self) -> None:
        """Abort every connection now with a TCP reset to both ends (SO_LINGER 0); new
        connections are relayed as before."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        """Stop the relay and close every socket."""
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass
            self._sockets.clear()

    def __enter__(self) -> TCPRelay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(
                target=self._pump, args=(client, server), name="tcprelay-pump", daemon=True
            ).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peer = {client: server, server: client}
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(server, selectors.EVENT_READ)
            while not self._stopped.is_set():
                if self._frozen.is_set():
                    self._stopped.wait(0.05)
                    continue
                try:
                    events = selector.select(timeout=0.05)
                except (OSError, ValueError):  # reset() closed its sockets
                    return
                for key, _ in events:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        for s in (client, server):
                            try:
                                s.close()
                            except OSError:
                                pass
                        return
                    if self.latency:
                        time.sleep(self.latency)
                    try:
                        peer[sock].sendall(data)
                    except OSError:
                        return

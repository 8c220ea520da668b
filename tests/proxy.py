"""A TCP proxy in front of a real server that loses one call on the way, as a network
that drops, or a server killed around a write, does.

Armed with `drop_next`, the next message holding `marker` reaches the server, and its
reply is lost with the connection. `swallow_next` loses the message itself, so the
server never sees it; `cut_next` forwards it and hangs up at once, while the server is
still at it. `refusing` closes new connections at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class ReplyDropper:
    """Forwards every connection to `target`, losing one call when armed."""

    def __init__(self, target: tuple[str, int], marker: bytes) -> None:
        self.target, self.marker = target, marker
        self.drop_next = threading.Event()
        self.swallow_next = threading.Event()
        self.cut_next = threading.Event()
        self.refusing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self.refusing.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:  # the target refused: so does the proxy, and it goes on accepting
                client.close()
                continue
            dropping = threading.Event()
            threading.Thread(target=self._up, args=(client, server, dropping), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, dropping), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, dropping: threading.Event) -> None:
        while data := _recv(client):
            if self.marker in data and self._armed(self.swallow_next):
                break
            if self.marker in data and self._armed(self.drop_next):
                dropping.set()  # before the call goes: its reply may come back at once
            try:
                server.sendall(data)
            except OSError:
                break  # the server side was hung up (by _down, once a reply was lost)
            if self.marker in data and self._armed(self.cut_next):
                # Half-closed: the server reads the call before the end (a full close with
                # unread bytes would reset the connection, and the server drop the call).
                with contextlib.suppress(OSError):
                    server.shutdown(socket.SHUT_WR)
                _hang_up(client)
                return
        _hang_up(client)
        _hang_up(server)

    def _down(self, server: socket.socket, client: socket.socket, dropping: threading.Event) -> None:
        while data := _recv(server):
            if dropping.is_set():  # the server has run it and answered: lose the answer
                break
            try:
                client.sendall(data)
            except OSError:
                break  # the client side was cut
        _hang_up(client)
        _hang_up(server)

    @staticmethod
    def _armed(event: threading.Event) -> bool:
        if event.is_set():
            event.clear()
            return True
        return False


def _hang_up(sock: socket.socket) -> None:
    """Close at once, waking a thread blocked reading it (close alone would not)."""
    with contextlib.suppress(OSError):  # already gone
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""

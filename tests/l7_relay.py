"""A recording TCP relay on loopback, between a real client library and a real server.

Every chunk each side sends is forwarded unchanged and recorded with its direction and a
timestamp, per connection, in order: what a capture of the connection's read and write
calls would give the L7 parsers, with no kernel in the way.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator

from otelbpf.protocols.exchange import Direction, Exchange
from otelbpf.protocols.l7 import Connection

Record = tuple[Direction, int, bytes]


class Relay:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[list[Record]] = []
        self.upstream_ports: list[int] = []  # the relay's own port towards the server, per connection
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Relay:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until every relayed connection has ended (the clients closed theirs)."""
        deadline = time.monotonic() + timeout
        while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(t.is_alive() for t in self._threads), "a relayed connection is still open"

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=5)
            records: list[Record] = []
            self.connections.append(records)
            self.upstream_ports.append(server.getsockname()[1])
            thread = threading.Thread(target=self._pump, args=(client, server, records), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket, server: socket.socket, records: list[Record]) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, (Direction.CLIENT, server))
        selector.register(server, selectors.EVENT_READ, (Direction.SERVER, client))
        open_sides = 2
        try:
            while open_sides and not self._stop.is_set():
                for key, _ in selector.select(0.1):
                    direction, peer = key.data
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        chunk = sock.recv(65536)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        selector.unregister(sock)
                        open_sides -= 1
                        try:
                            peer.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        continue
                    records.append((direction, time.monotonic_ns(), chunk))
                    peer.sendall(chunk)
        finally:
            selector.close()
            client.close()
            server.close()


def replay(records: list[Record], protocol: str | None = None) -> tuple[list[Exchange], Connection]:
    """The exchanges the L7 layer makes of one recorded connection (detected unless told)."""
    return replay_captured(records, 1 << 62, protocol)


def replay_all(relay: Relay) -> Iterator[tuple[list[Exchange], Connection]]:
    for records in relay.connections:
        yield replay(records)


def free_port() -> int:
    """A loopback port nobody listens on now (for a server the test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def replay_captured(records: list[Record], limit: int, protocol: str | None = None,
                    keep_literals: bool = False) -> tuple[list[Exchange], Connection]:
    """As replay(), but as a kernel capture copying at most `limit` bytes of each read or
    write would give it: the prefix, and how many bytes were not copied."""
    connection = Connection(protocol, keep_literals=keep_literals)
    exchanges: list[Exchange] = []
    for direction, ts_ns, chunk in records:
        exchanges += connection.feed(direction, ts_ns, chunk[:limit], max(0, len(chunk) - limit))
    exchanges += connection.close(records[-1][1] if records else 0)
    return exchanges, connection


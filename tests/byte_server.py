"""A TCP server for tests with known byte counts.

Each client sends an 8-byte big-endian reply size, then its payload, then shuts down its
sending side; the server reads everything, answers with exactly reply-size bytes, closes.
Usage: python byte_server.py HOST CONNECTIONS [--linger]   (prints its port on stdout)
--linger: after the last connection, stay until stdin closes (a test that needs the server's
process still there to be named from /proc).
"""

import socket
import sys

host, count = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as srv:
    srv.bind((host, 0))
    srv.listen(64)
    print(srv.getsockname()[1], flush=True)
    for _ in range(count):
        conn, _ = srv.accept()
        with conn:
            header = b""
            while len(header) < 8:
                header += conn.recv(8 - len(header))
            while conn.recv(1 << 20):
                pass
            reply = int.from_bytes(header, "big")
            chunk = b"r" * min(reply, 1 << 20)
            while reply:
                n = conn.send(chunk[:reply])
                reply -= n
if sys.argv[3:] == ["--linger"]:
    sys.stdin.read()

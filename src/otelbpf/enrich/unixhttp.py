"""GET of a JSON document from a runtime's HTTP API on a unix socket (Docker's, CRI-O's), with
every way it can go wrong said as RuntimeUnavailable with a short reason."""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

from otelbpf.enrich.runtime import RuntimeUnavailable

MAX_RESPONSE_BYTES = 1 << 20  # a container's description is a few KiB


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def get_json(runtime: str, socket_path: str, path: str, timeout: float) -> dict[str, Any] | None:
    """The JSON object at path; None for 404 (no such container)."""
    where = f"{runtime} socket {socket_path}"
    if not os.path.exists(socket_path):
        raise RuntimeUnavailable(runtime, "missing", f"{where}: not there")
    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        raw = response.read(MAX_RESPONSE_BYTES + 1)
    except TimeoutError:
        raise RuntimeUnavailable(runtime, "timeout", f"{where}: no answer in {timeout}s") from None
    except http.client.HTTPException as exc:
        raise RuntimeUnavailable(runtime, "garbage", f"{where}: not an HTTP answer ({type(exc).__name__})") from None
    except OSError as exc:
        raise RuntimeUnavailable(runtime, "unavailable", f"{where}: {exc.strerror or exc}") from None
    finally:
        conn.close()
    if response.status == 404:
        return None
    if response.status != 200 or len(raw) > MAX_RESPONSE_BYTES:
        raise RuntimeUnavailable(runtime, "garbage", f"{where}: HTTP {response.status} for {path}")
    try:
        body = json.loads(raw)
    except ValueError:
        raise RuntimeUnavailable(runtime, "garbage", f"{where}: not JSON") from None
    if not isinstance(body, dict):
        raise RuntimeUnavailable(runtime, "garbage", f"{where}: not a container")
    return body


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def string_map(value: Any) -> dict[str, str]:
    return {str(k): v for k, v in mapping(value).items() if isinstance(v, str)}

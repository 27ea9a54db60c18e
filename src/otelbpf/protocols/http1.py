"""HTTP/1.0 and 1.1 message heads from the first bytes of socket messages.

Pure and total: any bytes give a result (possibly empty), never an exception, because the
input is whatever a process wrote to a socket, cut at the capture size. Only what spans and
metrics need is kept: request line, Host, User-Agent, traceparent, Expect, and the body
framing that lets pipelined messages in one buffer be found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
MAX_MESSAGES = 64  # pipelined messages taken from one buffer
_WANTED = {b"host", b"user-agent", b"traceparent", b"expect", b"content-length", b"transfer-encoding"}
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEXISH = re.compile(r"^(?=.*\d)[0-9a-fA-F]{16,}$")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) (\d{3})(?: |\r|\n|$)")


@dataclass(frozen=True, slots=True)
class Request:
    method: str            # as sent, upper case; see method_attribute() for the metric value
    target: str            # request target (path and query, or an absolute URL)
    version: str           # "1.0" or "1.1"
    host: str | None = None
    user_agent: str | None = None
    traceparent: str | None = None
    expect_continue: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    version: str

    @property
    def informational(self) -> bool:
        """1xx (100 Continue...): a final response still follows."""
        return 100 <= self.status < 200


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: bytes        # 16 bytes
    parent_id: bytes       # 8 bytes
    sampled: bool


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _head(data: bytes, start: int) -> tuple[list[bytes], int | None]:
    """Lines of the head at start and the offset after it (None: the head is cut off)."""
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        lines = data[start:].split(b"\r\n")
        return lines[:-1] if len(lines) > 1 else lines, None  # the last line may be cut
    return data[start:end].split(b"\r\n"), end + 4


def _headers(lines: list[bytes]) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if sep:
            key = name.strip().lower()
            if key in _WANTED and key not in headers:
                headers[key] = value.strip()
    return headers


def _next_message(data: bytes, head_end: int | None, headers: dict[bytes, bytes]) -> int | None:
    """Where the next pipelined message starts, when this one's body is known to fit."""
    if head_end is None or b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return None
    length = headers.get(b"content-length", b"0")
    if not length.isdigit() or len(length) > 12:
        return None
    end = head_end + int(length)
    return end if end < len(data) else None


def _request_at(data: bytes, start: int) -> tuple[Request | None, int | None]:
    lines, head_end = _head(data, start)
    parts = lines[0].split(b" ") if lines else []
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[0].isalpha():
        return None, None
    if len(parts[0]) > 16 or not parts[1]:
        return None, None
    headers = _headers(lines[1:])
    host, agent, parent = (headers.get(k) for k in (b"host", b"user-agent", b"traceparent"))
    request = Request(
        method=_text(parts[0]).upper(),
        target=_text(parts[1]),
        version=_text(parts[2][5:]),
        host=_text(host) if host is not None else None,
        user_agent=_text(agent) if agent is not None else None,
        traceparent=_text(parent) if parent is not None else None,
        expect_continue=headers.get(b"expect", b"").lower() == b"100-continue",
    )
    return request, _next_message(data, head_end, headers)


def parse_requests(data: bytes) -> list[Request]:
    """Requests whose request line starts data, then any pipelined after the first."""
    requests: list[Request] = []
    start: int | None = 0
    while start is not None and len(requests) < MAX_MESSAGES:
        request, start = _request_at(data, start)
        if request is None:
            break
        requests.append(request)
    return requests


def parse_responses(data: bytes) -> list[Response]:
    """Responses whose status line starts data, then any pipelined after the first."""
    responses: list[Response] = []
    start: int | None = 0
    while start is not None and len(responses) < MAX_MESSAGES:
        match = _STATUS_LINE.match(data, start)
        if match is None:
            break
        lines, head_end = _head(data, start)
        response = Response(int(match.group(2)), "1." + _text(match.group(1)))
        responses.append(response)
        if response.informational or response.status in (204, 304):
            start = head_end if head_end is not None and head_end < len(data) else None
        else:
            start = _next_message(data, head_end, _headers(lines[1:]))
    return responses


def method_attribute(method: str) -> str:
    """http.request.method: a known method, else "_OTHER" (semantic conventions)."""
    return method if method in METHODS else "_OTHER"


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target; an absolute URL (proxy form) gives its path."""
    if "://" in target:
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    path, _, query = target.partition("?")
    return path.partition("#")[0], query


def route_of(path: str) -> str:
    """A low-cardinality guess at http.route: ids become placeholders.

    /users/42/orders/7f3e... -> /users/{id}/orders/{id}; numbers, UUIDs and long hex strings
    with a digit are ids. It is a guess: ids that look like words stay.
    """
    segments = []
    for segment in path.split("/"):
        if segment.isdigit() or _UUID.match(segment) or _HEXISH.match(segment):
            segments.append("{id}")
        else:
            segments.append(segment)
    return "/".join(segments) or "/"


def parse_traceparent(value: str | None) -> TraceContext | None:
    """W3C traceparent; None when absent or invalid (all-zero ids and version ff are invalid)."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(1) == "ff":
        return None
    trace_id, parent_id = bytes.fromhex(match.group(2)), bytes.fromhex(match.group(3))
    if not any(trace_id) or not any(parent_id):
        return None
    return TraceContext(trace_id, parent_id, bool(int(match.group(4), 16) & 1))

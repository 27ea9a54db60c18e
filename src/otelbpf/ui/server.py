"""The web UI's HTTP server: static pages from the package and a JSON API over the store.

Every request needs the access token: `?token=` in the URL the agent prints (answered with
a cookie and a redirect that drops the token from the address bar), the cookie, or an
`Authorization: Bearer` header. The server binds to loopback only and checks the Host
header, so a web page elsewhere cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hmac
import json
import logging
import secrets
import threading
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from otelbpf.store import QueryError, StoreError, queries
from otelbpf.store.client import check_read_only, state_file, write_state
from otelbpf.store.queries import Queryable

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
COOKIE = "otelbpf_token"
PAGES = ("/", "/processes", "/traces", "/map", "/flame", "/sql")  # one page each; app.js draws the view
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
MAX_QUERY_BYTES = 1 << 20
MAX_ROWS = 10_000


def _window(params: dict) -> float | None:
    value = params.get("window", [""])[0]
    return float(value) if value.replace(".", "", 1).isdigit() else None


def _seconds(params: dict, name: str) -> float:
    value = params.get(name, [""])[0]
    return float(value) if value.replace(".", "", 1).isdigit() else 0.0


def _limit(params: dict, default: int) -> int:
    value = params.get("limit", [""])[0]
    return min(int(value), MAX_ROWS) if value.isdigit() else default


# GET /api/<name>: the ready-made queries, with ?window=SECONDS and ?limit=N.
API = {
    "summary": lambda db, p: queries.summary(db),
    "top": lambda db, p: queries.top_processes(db, _window(p), _limit(p, 20)),
    "events": lambda db, p: queries.process_events(db, _window(p), _limit(p, 100)),
    "processes": lambda db, p: queries.process_lifecycles(db, _window(p), _limit(p, 500)),
    "traces": lambda db, p: queries.traces(db, _window(p), _limit(p, 50), p.get("order", ["slowest"])[0],
                                           service=p.get("service", [""])[0] or None,
                                           route=p.get("route", [""])[0] or None),
    "security": lambda db, p: queries.security_events(db, _window(p), _limit(p, 200)),
    "trace": lambda db, p: queries.trace_spans(db, p.get("id", [""])[0]),
    "red": lambda db, p: queries.red(db, _window(p), _limit(p, 100)),
    "service_map": lambda db, p: queries.service_map(db, _window(p), _limit(p, 500)),
    "talkers": lambda db, p: queries.top_talkers(db, _window(p), _limit(p, 20)),
    "flame": lambda db, p: queries.flame(db, _window(p), _seconds(p, "end_ago"), p.get("process", [""])[0] or None,
                                         _limit(p, MAX_ROWS)),
}


def _json_value(value):
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


class UiServer:
    def __init__(self, db: Queryable, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 store_path: str | Path | None = None) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"the UI binds to loopback only (127.0.0.1, localhost or ::1), not {host}")
        self.db, self.host, self._wanted_port = db, host, port
        self.token = token or secrets.token_urlsafe(24)
        self._store_path = store_path  # where to record url + token for the commands
        self._server: ThreadingHTTPServer | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The address to open, token included."""
        return f"{self.base_url}/?token={self.token}"

    def start(self) -> UiServer:
        owner = self

        class Handler(_Handler):
            ui = owner

        server_class = ThreadingHTTPServer
        if ":" in self.host:
            import socket

            class _V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6
            server_class = _V6
        try:
            self._server = server_class((self.host, self._wanted_port), Handler)
        except OSError as e:
            raise OSError(f"cannot serve the UI on {self.host}:{self._wanted_port}: {e.strerror or e}") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="ui-http", daemon=True).start()
        if self._store_path is not None:
            write_state(self._store_path, self.base_url, self.token)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._store_path is not None:
            state_file(self._store_path).unlink(missing_ok=True)


class _Handler(BaseHTTPRequestHandler):
    ui: UiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass

    # -- access ---------------------------------------------------------------------------
    def _authorized(self) -> bool:
        offered = []
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            offered.append(auth[7:].strip())
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        if COOKIE in cookie:
            offered.append(cookie[COOKIE].value)
        offered += parse_qs(urlsplit(self.path).query).get("token", [])
        return any(hmac.compare_digest(t.encode(), self.ui.token.encode()) for t in offered)

    def _host_ok(self) -> bool:
        host = self.headers.get("Host", "")
        return host in {f"{name}:{self.ui.port}" for name in ("127.0.0.1", "localhost", "[::1]")}

    def _gate(self) -> bool:
        if not self._host_ok():
            self._send(403, "text/plain", b"forbidden: open the UI through 127.0.0.1 or localhost\n")
            return False
        if not self._authorized():
            self._send(401, "text/plain",
                       b"access token required: open the URL with ?token= that otelbpf printed at start\n")
            return False
        return True

    # -- routes ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        if not self._gate():
            return
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        if "token" in params:  # trade the token in the address for a cookie, then drop it
            self.send_response(303)
            self.send_header("Set-Cookie", f"{COOKIE}={self.ui.token}; HttpOnly; SameSite=Strict; Path=/")
            kept = urlencode([(k, v) for k, vs in params.items() if k != "token" for v in vs])
            self.send_header("Location", (url.path or "/") + (f"?{kept}" if kept else ""))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path in PAGES or url.path.startswith("/trace/"):
            self._static("index.html")
        elif url.path.startswith("/static/"):
            self._static(url.path.removeprefix("/static/"))
        elif url.path.startswith("/api/") and url.path[5:] in API:
            self._api(lambda: API[url.path[5:]](self.ui.db, params))
        else:
            self._send_json(404, {"error": f"nothing at {url.path}"})

    def do_POST(self) -> None:
        if not self._gate():
            return
        if urlsplit(self.path).path != "/api/query":
            self._send_json(404, {"error": "POST goes to /api/query only"})
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_QUERY_BYTES:
            self._send_json(413, {"error": f"send a JSON body under {MAX_QUERY_BYTES} bytes with Content-Length"})
            return
        try:
            body = json.loads(self.rfile.read(int(length)) or b"{}")
            sql, params = str(body["sql"]), list(body.get("params") or [])
            max_rows = min(int(body.get("max_rows") or MAX_ROWS), MAX_ROWS)
        except (ValueError, KeyError, TypeError):
            self._send_json(400, {"error": 'the body must be JSON like {"sql": "SELECT ..."}'})
            return

        def run():
            check_read_only(sql)
            return self.ui.db.query(sql, params, max_rows=max_rows)
        self._api(run)

    # -- replies --------------------------------------------------------------------------
    def _api(self, run) -> None:
        try:
            result = run()
        except QueryError as e:
            self._send_json(400, {"error": str(e)})
            return
        except StoreError as e:
            self._send_json(503, {"error": str(e)})
            return
        self._send_json(200, {"columns": result.columns, "rows": [list(r) for r in result.rows]})

    def _static(self, name: str) -> None:
        asset = resources.files("otelbpf.ui").joinpath("static", name)
        if "/" in name or not asset.is_file():
            self._send_json(404, {"error": f"no asset {name}"})
            return
        self._send(200, STATIC_TYPES.get(Path(name).suffix, "application/octet-stream"), asset.read_bytes())

    def _send_json(self, status: int, payload: dict) -> None:
        self._send(status, "application/json", json.dumps(payload, default=_json_value).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type + ("; charset=utf-8" if content_type.startswith("text") else ""))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self'; script-src 'self'")
        self.end_headers()
        self.wfile.write(body)

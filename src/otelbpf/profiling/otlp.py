"""The OTLP profiles signal (Alpha, opentelemetry-proto profiles/v1development): a Profile as
an ExportProfilesServiceRequest, sent over OTLP/HTTP to /v1development/profiles.

Every table of the dictionary starts with its zero entry, as the specification requires.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import threading
import time

import urllib3
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource

from otelbpf import __version__
from otelbpf.export.otlp_settings import RetrySettings
from otelbpf.export.retry import (
    RETRYABLE_HTTP_STATUSES,
    PermanentError,
    RetryableError,
    parse_retry_after,
    send_with_retry,
)
from otelbpf.profiling.model import Profile
from otelbpf.signals.model import Resource
from otelbpf.symbols.symbolizer import Frame

log = logging.getLogger(__name__)

SCOPE = "otelbpf.sensors.profile"
PATH = "/v1development/profiles"


class _Tables:
    def __init__(self, d: pb.ProfilesDictionary):
        self.d = d
        self.strings: dict[str, int] = {"": 0}
        d.string_table.append("")
        d.mapping_table.add()
        d.location_table.add()
        d.function_table.add()
        d.stack_table.add()
        d.attribute_table.add()
        self.mappings: dict[tuple, int] = {}
        self.functions: dict[str, int] = {}
        self.locations: dict[tuple, int] = {}
        self.stacks: dict[tuple[int, ...], int] = {}
        self.attributes: dict[tuple[str, object], int] = {}

    def string(self, s: str) -> int:
        if s not in self.strings:
            self.strings[s] = len(self.d.string_table)
            self.d.string_table.append(s)
        return self.strings[s]

    def mapping(self, frame: Frame) -> int:
        m = frame.mapping
        key = (frame.module, m.start, m.end, m.offset) if m else (frame.module, 0, 0, 0)
        if key not in self.mappings:
            self.mappings[key] = len(self.d.mapping_table)
            attrs = [self.attribute("process.executable.build_id.gnu", frame.build_id)] if frame.build_id else []
            self.d.mapping_table.add(memory_start=key[1], memory_limit=key[2], file_offset=key[3],
                                     filename_strindex=self.string(key[0]), attribute_indices=attrs)
        return self.mappings[key]

    def function(self, name: str) -> int:
        if name not in self.functions:
            self.functions[name] = len(self.d.function_table)
            s = self.string(name)
            self.d.function_table.add(name_strindex=s, system_name_strindex=s)
        return self.functions[name]

    def location(self, frame: Frame) -> int:
        key = (frame.module, frame.address, frame.name)
        if key not in self.locations:
            self.locations[key] = len(self.d.location_table)
            attrs = [self.attribute("profile.frame.type", "kernel" if frame.kernel else "native")]
            self.d.location_table.add(mapping_index=self.mapping(frame), address=frame.address,
                                      lines=[pb.Line(function_index=self.function(frame.name))],
                                      attribute_indices=attrs)
        return self.locations[key]

    def stack(self, frames: tuple[Frame, ...]) -> int:
        ids = tuple(self.location(f) for f in frames)
        if ids not in self.stacks:
            self.stacks[ids] = len(self.d.stack_table)
            self.d.stack_table.add(location_indices=ids)
        return self.stacks[ids]

    def attribute(self, key: str, value: str | int) -> int:
        if (key, value) not in self.attributes:
            self.attributes[key, value] = len(self.d.attribute_table)
            any_value = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
            self.d.attribute_table.add(key_strindex=self.string(key), value=any_value)
        return self.attributes[key, value]


def to_request(profile: Profile, resource: Resource) -> ExportProfilesServiceRequest:
    req = ExportProfilesServiceRequest()
    t = _Tables(req.dictionary)
    out = req.resource_profiles.add(
        resource=PbResource(attributes=[KeyValue(key=k, value=_any(v)) for k, v in resource.attributes]))
    scope = out.scope_profiles.add(scope=InstrumentationScope(name=SCOPE, version=__version__))
    p = scope.profiles.add(time_unix_nano=profile.start_unix_ns, duration_nano=profile.duration_ns,
                           period=profile.period_ns)
    p.sample_type.type_strindex, p.sample_type.unit_strindex = t.string("samples"), t.string("count")
    p.period_type.type_strindex, p.period_type.unit_strindex = t.string("cpu"), t.string("nanoseconds")
    for stack, n in profile.counts.items():
        p.samples.add(stack_index=t.stack(stack.frames), values=[n],
                      attribute_indices=[t.attribute("process.pid", stack.pid),
                                         t.attribute("thread.name", stack.comm)])
    return req


def _any(value) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    return AnyValue(string_value=str(value))


class OtlpProfilesExporter:
    """POSTs each profile as binary protobuf to ENDPOINT/v1development/profiles (an endpoint
    given with that path is used as it is)."""

    def __init__(self, endpoint: str, resource: Resource, timeout: float = 10.0):
        self.url = endpoint if endpoint.rstrip("/").endswith(PATH) else endpoint.rstrip("/") + PATH
        self._resource = resource
        self._http = urllib3.PoolManager(timeout=timeout, retries=False)

    def export(self, profile: Profile) -> None:
        """Raises OSError naming the endpoint and the HTTP status when it is refused."""
        body = to_request(profile, self._resource).SerializeToString()
        try:
            resp = self._http.request("POST", self.url, body=body,
                                      headers={"Content-Type": "application/x-protobuf"})
        except urllib3.exceptions.HTTPError as e:
            raise OSError(f"OTLP profiles export to {self.url} failed: {e}") from None
        if resp.status != 200:
            raise OSError(f"OTLP profiles export to {self.url} refused: HTTP {resp.status} "
                          f"{resp.data[:200]!r}")


class RetryingProfilesExporter(OtlpProfilesExporter):
    """The profile sensor's OTLP profiles export from `otelbpf run`: profiles queue here (a
    few, the oldest dropped when the endpoint falls behind) and a thread sends them, retrying
    the retryable HTTP statuses (429, 502, 503, 504: export.retry) and connection failures
    with the exporter's backoff, honouring Retry-After. Other statuses drop that profile."""

    def __init__(self, endpoint: str, resource: Resource, retry: RetrySettings | None = None,
                 timeout: float = 10.0, queue_size: int = 4):
        super().__init__(endpoint, resource, timeout)
        self._retry = retry or RetrySettings()
        self._queue: collections.deque[Profile] = collections.deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._wake = threading.Event()  # cuts a backoff wait short at shutdown
        self._deadline = math.inf
        self._closing = False
        self.sent = self.failed = self.dropped = self.retries = 0
        self._thread = threading.Thread(target=self._run, name="profiles-otlp", daemon=True)
        self._thread.start()

    def __call__(self, profile: Profile) -> None:
        with self._cond:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
                log.warning("OTLP profiles export to %s is behind: dropped the oldest profile", self.url)
            self._queue.append(profile)
            self._cond.notify()

    def _send(self, body: bytes) -> None:
        try:
            resp = self._http.request("POST", self.url, body=body, headers={"Content-Type": "application/x-protobuf"})
        except urllib3.exceptions.HTTPError as e:
            raise RetryableError(f"OTLP profiles export to {self.url} failed: {e}") from None
        if resp.status == 200:
            return
        message = f"OTLP profiles export to {self.url} refused: HTTP {resp.status} {resp.data[:200]!r}"
        if resp.status in RETRYABLE_HTTP_STATUSES:
            raise RetryableError(message, parse_retry_after(resp.headers.get("Retry-After")))
        raise PermanentError(message)

    def _on_retry(self, error: str) -> None:
        self.retries += 1
        log.info("%s; retrying", error)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                profile = self._queue.popleft()
            body = to_request(profile, self._resource).SerializeToString()
            try:
                send_with_retry(functools.partial(self._send, body), self._retry, self._wake.wait, self._on_retry,
                                lambda: self._deadline)
                self.sent += 1
            except (RetryableError, PermanentError) as e:
                self.failed += 1
                log.warning("%s; profile dropped", e)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Sends what is queued, giving up on retries after `timeout` seconds."""
        self._deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout + 1)
        self._wake.set()
        self._thread.join(1)

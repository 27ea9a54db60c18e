"""Who a container is, asked of the container runtimes on the node (containerd, Docker) off the
data path: a lookup never waits for a socket.

ContainerDirectory.peek answers from its cache at once. A container not seen before is queued
for a worker thread that asks each runtime in turn, and PENDING is answered until it has; so
identity is captured when a container's first event is seen, and a container that exits
before the next drain is still named. The cache is bounded (least recently used go first);
a container found is kept while it is asked for and forgotten `ttl` seconds after it was last
asked; a container no runtime knows, or a runtime that failed, is asked again after
`retry_after` seconds. A runtime that is missing, slow or answers garbage leaves the
container unnamed, and is counted by reason; it never raises into the caller.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from otelbpf.enrich.pods import Pod

log = logging.getLogger(__name__)

class Pending(enum.Enum):
    PENDING = "pending"


PENDING: Final = Pending.PENDING  # peek's answer while a lookup is queued or running


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    runtime: str  # container.runtime: containerd | docker
    name: str | None = None  # container.name
    image_name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)  # the container's own (compose labels)
    pod: Pod | None = None
    pod_container_name: str | None = None  # k8s.container.name
    namespace: str | None = None  # the runtime's namespace it was found in (containerd)


class RuntimeUnavailable(Exception):
    """A runtime's socket did not answer as that runtime: reason is a short counter label."""

    def __init__(self, runtime: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.runtime = runtime
        self.reason = reason


class RuntimeClient(Protocol):
    name: str

    def container(self, container_id: str) -> Container | None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    container: Container | None
    expires: float


class ContainerDirectory:
    def __init__(self, clients: Sequence[RuntimeClient], max_entries: int = 4096, ttl: float = 300.0,
                 retry_after: float = 10.0, max_queued: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self.clients = list(clients)
        self.max_entries = max_entries
        self.ttl = ttl
        self.retry_after = retry_after
        self.max_queued = max_queued
        self._clock = clock
        self._cache: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._queued: collections.OrderedDict[str, None] = collections.OrderedDict()  # FIFO of ids to ask for
        self._busy = False
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._closed = False
        # counters: found, not_found, dropped (queue full), failed:<runtime>:<reason>
        self.counts: collections.Counter[str] = collections.Counter()
        self._said: set[tuple[str, str]] = set()  # failures logged once each

    def peek(self, container_id: str) -> Container | Pending | None:
        """The container, None when no runtime knows it (or none answered), PENDING while it is
        being asked for. Never waits on a runtime."""
        now = self._clock()
        with self._lock:
            entry = self._cache.get(container_id)
            if entry is not None and (entry.expires > now or container_id in self._queued):
                self._cache.move_to_end(container_id)
                if entry.container is not None:
                    entry.expires = now + self.ttl  # kept while asked for
                return entry.container
            if container_id not in self._queued:
                if len(self._queued) >= self.max_queued:
                    self.counts["dropped"] += 1
                    return None if entry is None else entry.container
                self._queued[container_id] = None
                self._start_worker()
                self._wake.notify()
            return PENDING if entry is None else entry.container

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued or being asked (for tests and shutdown), False after timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queued or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5)
        for client in self.clients:
            client.close()

    def _start_worker(self) -> None:
        if self._worker is None and not self._closed:
            self._worker = threading.Thread(target=self._run, name="identity-runtime", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queued and not self._closed:
                    self._busy = False
                    self._wake.notify_all()
                    self._wake.wait()
                if self._closed:
                    self._busy = False
                    return
                container_id, _ = self._queued.popitem(last=False)
                self._busy = True
            found = self._ask(container_id)
            now = self._clock()
            with self._lock:
                self._cache[container_id] = _Entry(found, now + (self.ttl if found else self.retry_after))
                self._cache.move_to_end(container_id)
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
                self.counts["found" if found else "not_found"] += 1

    def _ask(self, container_id: str) -> Container | None:
        for client in self.clients:
            try:
                found = client.container(container_id)
            except RuntimeUnavailable as exc:
                self._failed(exc.runtime, exc.reason, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001  a runtime's garbage must not end the worker
                self._failed(client.name, "garbage", f"{client.name}: {type(exc).__name__}: {exc}")
                continue
            if found is not None:
                return found
        return None

    def _failed(self, runtime: str, reason: str, detail: str) -> None:
        self.counts[f"failed:{runtime}:{reason}"] += 1
        if (runtime, reason) not in self._said:
            self._said.add((runtime, reason))
            # a runtime that is not installed is no fault; one that does not answer is
            level = logging.DEBUG if reason == "missing" else logging.WARNING
            log.log(level, "container identity: %s (its containers stay unnamed until it answers)", detail)

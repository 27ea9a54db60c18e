"""A bounded hand-off from the thread that drains a ring buffer to the one that decodes it.

Draining only copies bytes, so it keeps up with the kernel even when decoding (Python per
event, for rich events like exec) falls behind during a burst: the burst waits here, in
user space, instead of filling the ring until the kernel drops. The bound is in bytes;
when it is reached the drain thread waits, the ring fills, and the kernel's drop counter
says so.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from otelbpf.kernel.ringbuf import RecordBatch

log = logging.getLogger(__name__)


class Backlog:
    def __init__(self, handle: Callable[[RecordBatch], None], max_bytes: int, name: str):
        self._handle = handle
        self._max_bytes = max_bytes
        self._batches: collections.deque[RecordBatch] = collections.deque()
        self._bytes = 0
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._run, name=f"decode-{name}", daemon=True)
        self._thread.start()

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def put(self, batch: RecordBatch, timeout: float | None = None) -> bool:
        """Queue a batch; waits while the backlog is full. False if it timed out or is closed."""
        if not len(batch):
            return True
        size = batch.data.nbytes
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or self._bytes + size <= self._max_bytes
                                       or not self._batches, timeout):
                return False
            if self._closed:
                return False
            self._batches.append(batch)
            self._bytes += size
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            self._cond.notify_all()
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued batch has been decoded."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._batches and not self._busy, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Decode what is queued (up to timeout), then stop the decoder thread."""
        self.wait_idle(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._batches or self._closed)
                if not self._batches:
                    return
                batch = self._batches.popleft()
                self._busy = True
            try:
                self._handle(batch)
            except Exception:  # one bad batch must not stop decoding
                log.exception("decoding a batch of %d records failed", len(batch))
            finally:
                with self._cond:
                    self._bytes -= batch.data.nbytes
                    self._busy = False
                    self._cond.notify_all()

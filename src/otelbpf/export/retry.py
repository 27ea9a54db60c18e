"""Retrying a send: which failures are worth another try and how long to wait.

Transports raise RetryableError (with the server's delay hint when it gave one) or
PermanentError; `send_with_retry` waits the hint or an exponential backoff with jitter.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from typing import TypeVar

from otelbpf.export.otlp_settings import RetrySettings

T = TypeVar("T")
JITTER = 0.5  # each wait is the interval times a random factor in [0.5, 1.5], as the collector

RETRYABLE_HTTP_STATUSES = frozenset({429, 502, 503, 504})


class RetryableError(Exception):
    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay  # seconds the server asked us to wait, if it said


class PermanentError(Exception):
    pass


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def send_with_retry(
    send: Callable[[], T],
    policy: RetrySettings,
    sleep: Callable[[float], object],  # what it returns is not used (Event.wait's bool)
    on_retry: Callable[[str], None],
    deadline: Callable[[], float],
) -> T:
    """Calls send until it succeeds, fails permanently or time runs out.

    `deadline()` is re-read before every wait (a monotonic time; shutdown moves it closer);
    `sleep` may return early (shutdown wakes it). Raises the last error when giving up.
    """
    started = time.monotonic()
    interval = policy.initial_interval
    while True:
        try:
            return send()
        except RetryableError as error:
            if error.delay is not None:
                delay = error.delay
            else:
                delay = interval * random.uniform(1 - JITTER, 1 + JITTER)
                interval = min(interval * policy.multiplier, policy.max_interval)
            now = time.monotonic()
            if now - started + delay > policy.max_elapsed or now + delay > deadline():
                raise
            on_retry(str(error))
            sleep(delay)

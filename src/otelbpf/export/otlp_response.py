"""What an OTLP receiver answered, in the terms the exporter counts."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message


@dataclass(frozen=True)
class Sent:
    rejected: int = 0
    message: str = ""


def partial_success(response: Message, codec) -> Sent:
    """Items the receiver rejected in a 200 answer (OTLP partial success): counted, never retried."""
    partial = response.partial_success
    return Sent(rejected=getattr(partial, codec.rejected_field), message=partial.error_message)

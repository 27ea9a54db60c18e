"""OTLP/JSON encoding rules on top of protobuf's JSON mapping.

OTLP/JSON differs from the standard mapping in two ways handled here: enums are integers,
and trace/span ids are hex strings instead of base64. Keys are lowerCamelCase and 64-bit
integers decimal strings, which json_format already does; unknown fields are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})
M = TypeVar("M", bound=Message)


def _convert_ids(node: object, convert) -> None:
    """Rewrite id fields in place wherever they occur (spans, links, logs, exemplars)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = convert(value)
            else:
                _convert_ids(value, convert)
    elif isinstance(node, list):
        for item in node:
            _convert_ids(item, convert)


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _hex_to_b64(value: str) -> str:
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise ValueError(f"trace/span id {value!r} is not a hex string") from exc
    return base64.b64encode(raw).decode()


def to_json(message: Message) -> bytes:
    tree = json_format.MessageToDict(message, use_integers_for_enums=True)
    _convert_ids(tree, _b64_to_hex)
    return json.dumps(tree, separators=(",", ":")).encode()


def from_json(data: bytes | str, message_class: type[M]) -> M:
    """Parse OTLP/JSON; raises ValueError with the reason when the body is not valid."""
    try:
        tree = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc
    try:
        _convert_ids(tree, _hex_to_b64)
        return json_format.ParseDict(tree, message_class(), ignore_unknown_fields=True)
    except (json_format.ParseError, binascii.Error, TypeError) as exc:
        raise ValueError(f"body is not a valid {message_class.DESCRIPTOR.name}: {exc}") from exc

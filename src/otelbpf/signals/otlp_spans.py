"""Span columns -> the Span messages of an OTLP request, with no Python per span.

A span's bytes are

    [ScopeSpans.spans tag][its length][trace id][span id][parent id, when it has one]
    [start, end][the shape's fields: name, kind, attributes, status][int attributes]

Spans of one layout (the same shape, a parent or none, varints of the same lengths) have bytes
of one width: they are filled in as the rows of one byte matrix, a column block per field,
and the matrix's bytes are the spans' fields back to back. A shape (signals.model.SpanShape)
is encoded once and then cached by the object, as a producer reuses its shapes from batch to
batch.
"""

from __future__ import annotations

import threading

import numpy as np

from otelbpf.signals.model import SpanColumns, SpanShape

_TAG_SPAN = 0x12  # ScopeSpans.spans
_TAG_TRACE_ID, _TAG_SPAN_ID, _TAG_PARENT = 0x0A, 0x12, 0x22
_TAG_START, _TAG_END = (7 << 3) | 1, (8 << 3) | 1  # fixed64
_TAG_NAME, _TAG_KIND, _TAG_STATUS = 0x2A, 0x30, 0x7A
_TAG_ATTRIBUTE = 0x4A  # Span.attributes
_CACHE_LIMIT = 1 << 14
FEW = 8  # spans of one layout below which they are encoded one by one

# The fixed part of every span: trace id, span id, start and end.
_IDS_WIDTH = 2 + 16 + 2 + 8
_TIMES_WIDTH = 18
_PARENT_WIDTH = 10
_KINDS = [b""] + [bytes((_TAG_KIND, k)) for k in range(1, 6)]  # SpanKind 0 is left out, as proto3 does


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def varints(values: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, width) uint8 varint bytes of values (int64 as two's complement) and their lengths;
    width: by default as many bytes as the largest value needs."""
    v = values.astype(np.int64).view(np.uint64)
    if width is None:
        width = max(1, (int(v.max()).bit_length() + 6) // 7) if len(v) else 1
    lengths = np.ones(len(v), np.int64)
    for k in range(1, width):
        lengths += v >= np.uint64(1 << (7 * k))
    shifts = (7 * np.arange(width, dtype=np.uint64))[None, :]
    out = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    out |= np.where(np.arange(width)[None, :] < (lengths - 1)[:, None], 0x80, 0).astype(np.uint8)
    return out, lengths


class SpanEncoder:
    """Encodes span columns; keeps the encoded bytes of the shapes and attribute keys it saw."""

    def __init__(self, attribute_fields) -> None:
        """attribute_fields: Attributes -> list of tagged KeyValue fields (signals.otlp's
        cached attribute encoder)."""
        self._attribute_fields = attribute_fields
        self._shapes: dict[int, tuple[SpanShape, bytes]] = {}
        self._int_heads: dict[str, bytes] = {}
        self._names: dict[str, bytes] = {}
        self._scratch = threading.local()  # per exporting thread: see encode()

    def shape_bytes(self, shape: SpanShape) -> bytes:
        known = self._shapes.get(id(shape))
        if known is not None and known[0] is shape:
            return known[1]
        name = self._names.get(shape.name)
        if name is None:
            if len(self._names) >= _CACHE_LIMIT:
                self._names.clear()
            name = self._names[shape.name] = (
                _length_delimited(_TAG_NAME, shape.name.encode("utf-8", "replace")) if shape.name else b"")
        parts = [name, _KINDS[shape.kind] if 0 <= shape.kind < len(_KINDS) else
                 bytes((_TAG_KIND,)) + _varint(int(shape.kind))]
        attributes = shape.attributes
        parts += self._attribute_fields(attributes if type(attributes) is dict else dict(attributes))
        if shape.status_code or shape.status_message:
            status = b""
            if shape.status_message:
                status += _length_delimited(0x12, shape.status_message.encode("utf-8", "replace"))
            if shape.status_code:
                status += b"\x18" + _varint(int(shape.status_code))
            parts.append(_length_delimited(_TAG_STATUS, status))
        encoded = b"".join(parts)
        if len(self._shapes) >= _CACHE_LIMIT:
            self._shapes.clear()
        self._shapes[id(shape)] = (shape, encoded)
        return encoded

    def _int_head(self, key: str) -> bytes:
        """An int attribute's KeyValue field up to its AnyValue's varint, less the two length
        bytes that depend on the varint's length (filled per span)."""
        head = self._int_heads.get(key)
        if head is None:
            key_field = _length_delimited(0x0A, key.encode("utf-8", "replace"))
            if len(key_field) + 13 >= 0x80:
                raise ValueError(f"span attribute key {key!r} is too long for an int column")
            head = self._int_heads[key] = key_field
        return head

    def begin(self) -> None:
        """A new request: what encode() returned for the last one may be overwritten."""
        self._scratch.used = 0

    def _room(self, size: int) -> np.ndarray:
        """size bytes of this thread's scratch buffer after what this request used. The buffer
        is kept from request to request: fresh memory for every request would cost a page
        fault per 4 KiB written, more than the encoding itself."""
        scratch = self._scratch
        buffer, used = getattr(scratch, "buffer", None), getattr(scratch, "used", 0)
        if buffer is None or used + size > len(buffer):
            # Views of the old buffer stay valid: they keep it alive.
            buffer = scratch.buffer = np.empty(max(2 * (used + size), 1 << 20), np.uint8)
            used = 0
        scratch.used = used + size
        return buffer[used:used + size]

    def encode(self, columns: SpanColumns, rows: np.ndarray) -> list[memoryview | bytes]:
        """The tagged ScopeSpans.spans fields of the given rows, back to back, valid until the
        next begin() of this thread. Spans of one layout are encoded together, so they come
        grouped by layout, not in row order (the order of spans in a request carries no
        meaning)."""
        n = len(rows)
        if n == 0:
            return []
        shape_bytes = [self.shape_bytes(s) for s in columns.shapes]
        shape_lengths = np.array([len(b) for b in shape_bytes], np.int64)
        shape = columns.shape[rows].astype(np.int64)
        has_parent = columns.parent_span_id[rows].any(axis=1)
        ints = []  # (key field, varint digits (n, 10), their lengths (n,))
        for key, values in columns.ints.items():
            digits, lengths = varints(values[rows])
            ints.append((self._int_head(key), digits, lengths))
        body = _IDS_WIDTH + _TIMES_WIDTH + _PARENT_WIDTH * has_parent + shape_lengths[shape]
        for key_field, _, lengths in ints:
            body = body + len(key_field) + 5 + lengths  # tag, KeyValue length, key, value tag and
            # length, int tag, varint
        length_digits, length_lengths = varints(body, 4)

        # A layout: everything that sets the widths of a span's bytes.
        layout = np.stack([shape, has_parent, length_lengths, *(lengths for _, _, lengths in ints)], axis=1)
        order = np.lexsort(layout.T[::-1])
        cuts = np.flatnonzero((np.diff(layout[order], axis=0) != 0).any(axis=1)) + 1
        trace_id, span_id = columns.trace_id[rows], columns.span_id[rows]
        parent = columns.parent_span_id[rows]
        start, end = columns.start[rows].astype("<u8"), columns.end[rows].astype("<u8")
        # A layout of few spans (row objects, each with its own attribute dict, are a shape
        # each) costs more as a matrix than span by span.
        sizes = np.diff(np.concatenate([[0], cuts, [n]]))
        in_few = np.repeat(sizes < FEW, sizes)
        few, many = order[in_few], order[~in_few]
        big = sizes[sizes >= FEW]
        groups = np.split(many, np.cumsum(big)[:-1]) if len(big) else []
        encoded_few = self._one_by_one(few, shape_bytes, shape, has_parent, body, ints, columns, rows) \
            if len(few) else b""
        total = int(body[many].sum() + len(many) + length_lengths[many].sum())
        out = self._room(total)
        written = 0
        for group in groups:
            first = group[0]
            encoded = shape_bytes[shape[first]]
            n_length = int(length_lengths[first])
            widths = [1, n_length, _IDS_WIDTH, _PARENT_WIDTH if has_parent[first] else 0, _TIMES_WIDTH,
                      len(encoded)]
            widths += [len(key_field) + 5 + int(lengths[first]) for key_field, _, lengths in ints]
            size = len(group) * sum(widths)
            m = out[written:written + size].reshape(len(group), sum(widths))
            written += size
            m[:, 0] = _TAG_SPAN
            m[:, 1:1 + n_length] = length_digits[group, :n_length]
            at = 1 + n_length
            m[:, at], m[:, at + 1], m[:, at + 2:at + 18] = _TAG_TRACE_ID, 16, trace_id[group]
            m[:, at + 18], m[:, at + 19], m[:, at + 20:at + 28] = _TAG_SPAN_ID, 8, span_id[group]
            at += _IDS_WIDTH
            if has_parent[first]:
                m[:, at], m[:, at + 1], m[:, at + 2:at + 10] = _TAG_PARENT, 8, parent[group]
                at += _PARENT_WIDTH
            m[:, at], m[:, at + 9] = _TAG_START, _TAG_END
            m[:, at + 1:at + 9] = start[group].view(np.uint8).reshape(-1, 8)
            m[:, at + 10:at + 18] = end[group].view(np.uint8).reshape(-1, 8)
            at += _TIMES_WIDTH
            m[:, at:at + len(encoded)] = np.frombuffer(encoded, np.uint8)
            at += len(encoded)
            for key_field, digits, lengths in ints:
                used = int(lengths[first])
                k = len(key_field)
                m[:, at], m[:, at + 1] = _TAG_ATTRIBUTE, k + 3 + used  # KeyValue: key, value tag, length, AnyValue
                m[:, at + 2:at + 2 + k] = np.frombuffer(key_field, np.uint8)
                m[:, at + 2 + k], m[:, at + 3 + k], m[:, at + 4 + k] = 0x12, 1 + used, 0x18
                m[:, at + 5 + k:at + 5 + k + used] = digits[group, :used]
                at += k + 5 + used
        assert written == total
        return [memoryview(out.data), encoded_few]

    @staticmethod
    def _one_by_one(picked: np.ndarray, shape_bytes: list[bytes], shape: np.ndarray, has_parent: np.ndarray,
                    body: np.ndarray, ints: list, columns: SpanColumns, rows: np.ndarray) -> bytes:
        """The spans at positions `picked` (of rows), joined span by span."""
        at = rows[picked]
        fixed = np.empty((len(picked), _IDS_WIDTH + _TIMES_WIDTH), np.uint8)
        fixed[:, 0], fixed[:, 1], fixed[:, 2:18] = _TAG_TRACE_ID, 16, columns.trace_id[at]
        fixed[:, 18], fixed[:, 19], fixed[:, 20:28] = _TAG_SPAN_ID, 8, columns.span_id[at]
        fixed[:, 28], fixed[:, 37] = _TAG_START, _TAG_END
        fixed[:, 29:37] = columns.start[at].astype("<u8").view(np.uint8).reshape(-1, 8)
        fixed[:, 38:46] = columns.end[at].astype("<u8").view(np.uint8).reshape(-1, 8)
        fixed_bytes = fixed.tobytes()
        width = fixed.shape[1]
        parents = columns.parent_span_id[at]
        int_values = [(key_field, values[at].tolist()) for key_field, values in
                      ((k, columns.ints[key]) for (k, _, _), key in zip(ints, columns.ints))]
        parts: list[bytes] = []
        for j, (i, length, parent) in enumerate(zip(shape[picked].tolist(), body[picked].tolist(),
                                                     has_parent[picked].tolist())):
            parts += (b"\x12", _varint(length), fixed_bytes[j * width:(j + 1) * width])
            if parent:
                parts.append(b"\x22\x08" + parents[j].tobytes())
            parts.append(shape_bytes[i])
            for key_field, values in int_values:
                digits = _varint(values[j])
                parts += (bytes((_TAG_ATTRIBUTE, len(key_field) + 3 + len(digits))), key_field,
                          bytes((0x12, 1 + len(digits), 0x18)), digits)
        return b"".join(parts)

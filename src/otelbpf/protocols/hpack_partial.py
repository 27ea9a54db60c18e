"""HPACK decoding when the start of the connection was missed: what can be decoded is.

The encoder's dynamic table holds entries we never saw. Entries added from now on go in
front of them and the oldest are evicted first, so the entries we saw added keep exact
indices (62, 63, ... newest first) for as long as they fit the table; an index past them is
an entry we never saw, and that one field is left out. Static-table fields and literals
decode as usual, with hpack's own integer and Huffman decoding.
"""

from __future__ import annotations

from hpack.hpack import decode_integer
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable, table_entry_size

STATIC = HeaderTable.STATIC_TABLE
DEFAULT_TABLE_SIZE = 4096


class PartialDecoder:
    def __init__(self, max_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.max_size = max_size
        self.known: list[tuple[bytes | None, bytes | None]] = []  # newest first; None: name or value unseen
        self.sizes: list[int] = []

    def decode(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
        """(the fields that decoded, how many did not). Raises ValueError on a broken block."""
        data = memoryview(block)
        fields: list[tuple[bytes, bytes]] = []
        missing = 0
        pos = 0
        while pos < len(data):
            first = data[pos]
            if first & 0x80:  # indexed field
                index, used = decode_integer(data[pos:], 7)
                pos += used
                name, value = self._entry(index)
                if name is None or value is None:
                    missing += 1
                else:
                    fields.append((name, value))
                continue
            if first & 0xe0 == 0x20:  # dynamic table size update
                size, used = decode_integer(data[pos:], 5)
                pos += used
                self.max_size = size
                self._evict()
                continue
            indexing = first & 0xc0 == 0x40
            index, used = decode_integer(data[pos:], 6 if indexing else 4)
            pos += used
            if index:
                name = self._entry(index)[0]
            else:
                name, pos = self._string(data, pos)
            value, pos = self._string(data, pos)
            if indexing:
                self._add(name, value)
            if name is None:
                missing += 1
            else:
                fields.append((name, value))
        return fields, missing

    def _entry(self, index: int) -> tuple[bytes | None, bytes | None]:
        if index == 0:
            raise ValueError("index 0")
        if index <= len(STATIC):
            return STATIC[index - 1]
        dynamic = index - len(STATIC) - 1
        return self.known[dynamic] if dynamic < len(self.known) else (None, None)

    @staticmethod
    def _string(data: memoryview, pos: int) -> tuple[bytes, int]:
        if pos >= len(data):
            raise ValueError("string cut off")
        huffman = data[pos] & 0x80
        length, used = decode_integer(data[pos:], 7)
        pos += used
        if pos + length > len(data):
            raise ValueError("string longer than its block")
        raw = bytes(data[pos:pos + length])
        return (decode_huffman(raw) if huffman else raw), pos + length

    def _add(self, name: bytes | None, value: bytes) -> None:
        size = table_entry_size(name or b"", value)  # an unseen name's length is unknown: a guess
        self.known.insert(0, (name, value))
        self.sizes.insert(0, size)
        self._evict()

    def _evict(self) -> None:
        while self.sizes and sum(self.sizes) > self.max_size:
            self.sizes.pop()
            self.known.pop()

"""Bulk reader of BPF ring buffers: mmap the buffer, copy every ready record out in one go.

No Python runs per record on the fast path. The kernel's layout (kernel/bpf/ringbuf.c):
a consumer page we may write, then a producer page and the data area mapped twice in a
row, so any record can be read as one contiguous slice even when it wraps. Each record
has an 8-byte header: u32 length (bit 31 BUSY: still being written, stop there; bit 30
DISCARD: skip it) and u32 page offset; records are padded to 8 bytes. We advance the
consumer position once per batch, which is what frees the space for the producer.

Memory ordering, as libbpf's reader has it: the producer position is loaded with acquire
semantics, the headers that follow are read plainly and then fenced (acquire) before any record
is copied, and the consumer position is stored with release semantics after the copy
(kernel/barriers.py: three calls per batch).
"""

from __future__ import annotations

import mmap
import select
import struct
import time
from dataclasses import dataclass

import numpy as np

from otelbpf.kernel.barriers import OrderingUnavailable, ordering
from otelbpf.kernel.errors import BpfError
from otelbpf.kernel.objects import BPF_MAP_TYPE_RINGBUF, Map

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8
PAGE_SIZE = mmap.PAGESIZE
_HEADER = struct.Struct("<I")  # a record header's length word


def record_stride(payload: int) -> int:
    """Bytes a record of `payload` bytes occupies in the ring: header + payload, 8-aligned."""
    return (payload + HEADER_SIZE + 7) & ~7


# The sensors' min_gap for wait(): a busy ring is drained about 50 times a second, in batches.
DRAIN_GAP = 0.02


@dataclass(slots=True)
class RecordBatch:
    """Records drained in one read: `data` holds payloads back to back at `offsets`."""

    data: np.ndarray      # uint8
    offsets: np.ndarray   # int64, start of each payload in data
    lengths: np.ndarray   # uint32, payload length of each record

    def __len__(self) -> int:
        return len(self.offsets)

    def fixed(self, dtype: np.dtype) -> np.ndarray:
        """All records as one structured array (they must be at least dtype.itemsize long)."""
        dtype = np.dtype(dtype)
        n = len(self)
        if n == 0:
            return np.zeros(0, dtype=dtype)
        if (self.lengths < dtype.itemsize).any():
            raise ValueError(f"records shorter than {dtype.itemsize} bytes in batch")
        stride = record_stride(int(self.lengths[0]))
        if self.lengths.min() == self.lengths.max() and (n == 1 or (np.diff(self.offsets) == stride).all()):
            # Uniform records at a fixed stride in data (none discarded between): a strided view, no copy.
            return np.ndarray((n,), dtype=dtype, buffer=self.data, offset=int(self.offsets[0]), strides=(stride,))
        idx = self.offsets[:, None] + np.arange(dtype.itemsize)
        return self.data[idx].view(dtype).reshape(n)

    def matrix(self, offset: int, width: int) -> np.ndarray:
        """Bytes offset..offset+width of every record as one (n, width) uint8 array: a strided
        view of uniform records, else a copy (records shorter than that read what follows them)."""
        n = len(self)
        if n == 0:
            return np.zeros((0, width), np.uint8)
        stride = record_stride(int(self.lengths[0]))
        if self.lengths.min() == self.lengths.max() and (n == 1 or (np.diff(self.offsets) == stride).all()) \
                and int(self.offsets[-1]) + offset + width <= len(self.data):
            return np.ndarray((n, width), np.uint8, buffer=self.data, offset=int(self.offsets[0]) + offset,
                              strides=(stride, 1))
        idx = np.minimum(self.offsets[:, None] + offset + np.arange(width), len(self.data) - 1)
        return self.data[idx]

    def payload(self, i: int) -> memoryview:
        start = int(self.offsets[i])
        return self.data.data[start:start + int(self.lengths[i])]  # ndarray.data: memoryview(self.data)


_EMPTY = RecordBatch(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.uint32))


class RingBufferReader:
    """Drains one BPF_MAP_TYPE_RINGBUF map.

    record_size: the payload size of a ring whose records all have one size; enables the
    strided fast path. Variable-length rings (record_size=None) are walked header by
    header, which is fine at their event rates.
    """

    def __init__(self, ring: Map, record_size: int | None = None):
        if ring.type != BPF_MAP_TYPE_RINGBUF:
            raise BpfError(f"map {ring.name!r} is not a ring buffer")
        try:
            self._order = ordering()
        except OrderingUnavailable as exc:
            raise BpfError(str(exc)) from None
        self.name = ring.name
        self.size = ring.max_entries
        self._mask = self.size - 1
        self._last_read = 0.0
        self._fd = ring.fd
        self._consumer = mmap.mmap(self._fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(self._fd, PAGE_SIZE + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=PAGE_SIZE)
        self._bytes = np.frombuffer(self._producer, dtype=np.uint8)
        # Positions are read and written as whole aligned u64s: a byte-wise store (as
        # struct.pack_into does) can be seen half-done by the kernel, which then thinks
        # the ring is full and drops records.
        self._cons_pos = np.frombuffer(self._consumer, dtype=np.uint64, count=1)
        self._prod_pos = np.frombuffer(self._producer, dtype=np.uint64, count=1)
        # Their addresses for the barriers, taken once: ndarray.ctypes makes an object per use.
        self._cons_addr, self._prod_addr = self._cons_pos.ctypes.data, self._prod_pos.ctypes.data
        self._record_size = record_size or 0  # read only on the strided path (record_size given)
        self._stride = record_stride(record_size) if record_size else 0
        self._epoll: select.epoll | None = select.epoll()  # None once closed
        self._epoll.register(self._fd, select.EPOLLIN)
        self.records_read = 0
        self.bytes_read = 0

    # -- positions ------------------------------------------------------------------------
    def _consumer_pos(self) -> int:
        return int(self._cons_pos[0])  # only we write it

    def _producer_pos(self) -> int:
        if self._order.load_acquire is not None:
            return self._order.load_acquire(self._prod_addr)
        return int(self._prod_pos[0])

    def _set_consumer_pos(self, pos: int) -> None:
        if self._order.store_release is not None:
            self._order.store_release(self._cons_addr, pos)
        else:
            self._cons_pos[0] = pos

    def pending_bytes(self) -> int:
        return self._producer_pos() - self._consumer_pos()

    # -- waiting --------------------------------------------------------------------------
    def wait(self, timeout: float, min_gap: float = 0.0) -> bool:
        """Block until the kernel signals data (or timeout seconds); True if data is ready.

        min_gap: seconds to leave at least between two reads. The ring wakes the reader for
        the first record written after it caught up, so a reader that read on every wake
        would wake (and cost an irq_work in the traced process) for nearly every record at a
        few thousand records a second. With a gap, data that arrives sooner waits out the
        rest of it, unless an eighth of the ring is already used; after a quiet spell the
        first record is read at once."""
        ready = bool(self.pending_bytes())
        if not ready:
            assert self._epoll is not None, "the reader is closed"
            ready = bool(self._epoll.poll(timeout))
        if ready and min_gap > 0:
            gap = self._last_read + min_gap - time.monotonic()
            if gap > 0 and self.pending_bytes() < self.size // 8:
                time.sleep(gap)
        return ready

    # -- draining -------------------------------------------------------------------------
    def read(self, max_bytes: int | None = None) -> RecordBatch:
        """Take every committed record available now (up to max_bytes of ring)."""
        self._last_read = time.monotonic()
        cons = self._consumer_pos()
        prod = self._producer_pos()
        if max_bytes is not None:
            prod = min(prod, cons + max_bytes)
        if prod <= cons:
            return _EMPTY
        # Where each record starts, as runs of fixed-size records (numpy) and single records
        # walked header by header (a struct unpack each); the bytes are then copied once.
        runs: list[tuple[int, int, int]] = []  # (ring position, record count, payload length), in ring order
        pos = cons
        data, mask, unpack = self._producer, self._mask, _HEADER.unpack_from
        while pos < prod:
            if self._stride:
                n = self._fixed_run(pos, prod)
                if n:
                    runs.append((pos, n, self._record_size))
                    pos += n * self._stride
                    continue
            if prod - pos < HEADER_SIZE:
                break
            header = unpack(data, PAGE_SIZE + (pos & mask))[0]
            if header & BUSY_BIT:
                break  # not committed yet: records behind it must wait too
            length = header & ~(BUSY_BIT | DISCARD_BIT)
            if not header & DISCARD_BIT:
                runs.append((pos, 1, length))
            pos += record_stride(length)
        if self._order.fence_acquire is not None and runs:
            self._order.fence_acquire()  # the headers above, before the records they guard
        batch = self._gather(cons, pos, runs)
        self._set_consumer_pos(pos)
        self.records_read += len(batch)
        self.bytes_read += pos - cons
        return batch

    def _fixed_run(self, pos: int, prod: int) -> int:
        """How many records from pos on are committed, not discarded and of the fixed size."""
        n = (prod - pos) // self._stride
        if n == 0:
            return 0
        start = PAGE_SIZE + (pos & self._mask)
        headers = np.ndarray((n,), dtype=np.uint32, buffer=self._producer, offset=start, strides=(self._stride,))
        bad = np.flatnonzero(headers != self._record_size)
        return int(bad[0]) if len(bad) else n

    def _gather(self, cons: int, end: int, runs: list[tuple[int, int, int]]) -> RecordBatch:
        """One copy of the ring from cons to end (the data area is mapped twice, so it is
        contiguous even across the wrap; discarded records' bytes come along, unused), and
        where each record's payload starts in it."""
        if not runs:
            return _EMPTY
        start = PAGE_SIZE + (cons & self._mask)
        data = self._bytes[start:start + (end - cons)].copy()
        if len(runs) == 1:
            pos, n, length = runs[0]
            offsets = pos - cons + HEADER_SIZE + np.arange(n, dtype=np.int64) * record_stride(length)
            return RecordBatch(data, offsets, np.full(n, length, dtype=np.uint32))
        if all(n == 1 for _, n, _ in runs):  # variable-length records: no numpy per record
            offsets = np.fromiter((pos - cons + HEADER_SIZE for pos, _, _ in runs), np.int64, len(runs))
            return RecordBatch(data, offsets, np.fromiter((length for *_, length in runs), np.uint32, len(runs)))
        offsets_parts = [pos - cons + HEADER_SIZE + np.arange(n, dtype=np.int64) * record_stride(length)
                         for pos, n, length in runs]
        lengths_parts = [np.full(n, length, dtype=np.uint32) for _, n, length in runs]
        return RecordBatch(data, np.concatenate(offsets_parts), np.concatenate(lengths_parts))

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
            del self._bytes, self._cons_pos, self._prod_pos
            self._producer.close()
            self._consumer.close()

    def __enter__(self) -> RingBufferReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

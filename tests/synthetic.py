"""A synthetic ring buffer producer (tests/bpf/ringbuf_bench.bpf.c) for benchmarks and tests;
not part of the shipped package.

produce(n) makes the kernel write n records in one BPF_PROG_RUN call, so the reader can be
measured against a producer that is not itself the bottleneck.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from otelbpf.kernel import BpfObject

BPF_OBJECT = Path(__file__).resolve().parent / "bpf" / "ringbuf_bench.bpf.o"

BENCH_EVENT = np.dtype([
    ("seq", "<u8"), ("ktime_ns", "<u8"), ("cpu", "<u4"), ("batch", "<u4"), ("a", "<u8"), ("b", "<u8"),
])


class _ProduceArgs(ctypes.Structure):
    _fields_ = [("first_seq", ctypes.c_uint64), ("count", ctypes.c_uint32), ("batch", ctypes.c_uint32)]


class SyntheticProducer:
    def __init__(self, ring_bytes: int = 16 << 20):
        self.obj = BpfObject(BPF_OBJECT)
        try:
            self.obj.check_layout("bench_event", BENCH_EVENT)
            self.obj.maps["bench_events"].set_max_entries(ring_bytes)
            self.obj.load()
        except BaseException:
            self.obj.close()
            raise
        self.ring = self.obj.maps["bench_events"]
        self.next_seq = 0

    def produce(self, count: int, *, mixed: bool = False, batch: int = 0) -> None:
        """Write `count` records: fixed 40-byte ones, or (mixed) sizes 16..56 with every
        7th discarded."""
        args = _ProduceArgs(self.next_seq, count, batch)
        self.obj.programs["produce_mixed" if mixed else "produce"].test_run(bytes(args))
        self.next_seq += count

    def kernel_drops(self) -> int:
        return int(self.obj.maps["bench_drops"].percpu_u64().sum())

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> SyntheticProducer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

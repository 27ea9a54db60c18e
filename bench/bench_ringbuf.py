"""Ring buffer drain: bulk mmap reader vs libbpf ring_buffer__poll with a Python callback.

A kernel producer (BPF_PROG_RUN of a bpf_loop program) offers 40-byte records at rising
rates on one thread; the reader under test drains on another. Both readers face the same
producer and ring size in the same run. Bar: bulk >= 4M records/s with zero drops where
the producer can offer that many, and >= 3x the callback path.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.synthetic: the producer
from common import header, median, table
from otelbpf.kernel import libbpf
from otelbpf.kernel.ringbuf import RingBufferReader
from tests.synthetic import BENCH_EVENT, SyntheticProducer

RATES = [500_000, 1_000_000, 2_000_000, 4_000_000, 8_000_000, None]  # None: as fast as it can
SECONDS = 1.0
TICK = 0.002
ROUNDS = 3
RING = 16 << 20


def produce_paced(producer: SyntheticProducer, rate: int | None, done: threading.Event, offered: list) -> None:
    start = time.perf_counter()
    sent = 0
    chunk = 20_000
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= SECONDS:
            break
        if rate is None:
            n = chunk
        else:
            n = int(rate * min(elapsed + TICK, SECONDS)) - sent
            if n <= 0:
                time.sleep(TICK / 4)
                continue
        producer.produce(n)
        sent += n
    offered.append((sent, time.perf_counter() - start))
    done.set()


def drain_bulk(producer: SyntheticProducer, done: threading.Event) -> tuple[int, float]:
    reader = RingBufferReader(producer.ring, record_size=BENCH_EVENT.itemsize)
    got = 0
    cpu0 = time.thread_time()
    while not (done.is_set() and reader.pending_bytes() == 0):
        if reader.wait(0.01):
            got += len(reader.read().fixed(BENCH_EVENT)["seq"])  # as structured records, as a sensor sees them
    reader.close()
    return got, time.thread_time() - cpu0


def drain_callback(producer: SyntheticProducer, done: threading.Event) -> tuple[int, float]:
    count = [0]

    @libbpf.RING_BUFFER_SAMPLE_FN
    def on_record(ctx, data, size):
        count[0] += 1
        return 0

    rb = libbpf.ring_buffer__new(producer.ring.fd, on_record, None, None)
    cpu0 = time.thread_time()
    try:
        while True:
            n = libbpf.ring_buffer__poll(rb, 10)
            if done.is_set() and n == 0:
                break
    finally:
        libbpf.ring_buffer__free(rb)
    return count[0], time.thread_time() - cpu0


def trial(drain, rate):
    with SyntheticProducer(ring_bytes=RING) as producer:
        done = threading.Event()
        offered: list = []
        t = threading.Thread(target=produce_paced, args=(producer, rate, done, offered))
        start = time.perf_counter()
        t.start()
        got, cpu = drain(producer, done)
        wall = time.perf_counter() - start
        t.join()
        sent, produce_wall = offered[0]
        return {"offered": sent, "offered_rate": sent / produce_wall, "drained": got,
                "drops": producer.kernel_drops(), "rate": got / wall, "cpu": cpu}


def main() -> str:
    rows = []
    lossless = {"bulk": 0.0, "callback": 0.0}  # highest offered rate delivered without a drop
    peak = {"bulk": 0.0, "callback": 0.0}      # highest drain rate seen, drops or not
    for rate in RATES:
        for name, drain in (("bulk", drain_bulk), ("callback", drain_callback)):
            results = [trial(drain, rate) for _ in range(ROUNDS)]
            med = {k: median([r[k] for r in results]) for k in results[0]}
            peak[name] = max(peak[name], med["rate"])
            if max(r["drops"] for r in results) == 0:
                lossless[name] = max(lossless[name], med["offered_rate"])
            rows.append([name, "max" if rate is None else f"{rate:,}", med["offered_rate"], med["rate"],
                         int(med["drops"]), f"{100 * med['drops'] / max(med['offered'], 1):.1f}%",
                         med["cpu"]])
    ratio = lossless["bulk"] / max(lossless["callback"], 1)
    out = header("Ring buffer: bulk reader vs libbpf callback")
    out += (f"\n40-byte records, 16 MiB ring, {SECONDS:.0f} s per trial, median of {ROUNDS}; the producer "
            "(BPF_PROG_RUN of a bpf_loop program) runs on one thread, the reader on another.\n\n")
    out += table(["reader", "target rate/s", "offered/s", "drained/s", "dropped", "drop %", "reader CPU s"], rows)
    out += (f"\nHighest rate delivered with zero drops in every round: bulk {lossless['bulk']:,.0f}/s, "
            f"callback {lossless['callback']:,.0f}/s: {ratio:.1f}x (bar >= 3x: {'met' if ratio >= 3 else 'MISSED'}); "
            f"bulk lossless at >= 4M/s: {'met' if lossless['bulk'] >= 4e6 else 'MISSED'}. Peak drain rate (drops "
            f"or not): bulk {peak['bulk']:,.0f}/s, callback {peak['callback']:,.0f}/s.\n")
    return out


if __name__ == "__main__":
    print(main())

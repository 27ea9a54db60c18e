"""The bulk ring buffer reader against a real kernel producer (BPF_PROG_RUN)."""

import numpy as np
import pytest

from otelbpf.kernel.ringbuf import RingBufferReader
from tests.synthetic import BENCH_EVENT, SyntheticProducer


@pytest.fixture
def producer():
    with SyntheticProducer(ring_bytes=64 * 1024) as p:
        yield p


def test_fixed_records_arrive_in_order_across_wraparound(producer):
    reader = RingBufferReader(producer.ring, record_size=BENCH_EVENT.itemsize)
    seqs = []
    # 64 KiB ring, 48-byte slots: 1,301 records a round wrap the ring many times.
    for _ in range(97):
        producer.produce(1301)
        batch = reader.read()
        seqs.append(batch.fixed(BENCH_EVENT)["seq"].copy())
    seqs = np.concatenate(seqs)
    assert producer.kernel_drops() == 0
    assert np.array_equal(seqs, np.arange(97 * 1301))
    assert reader.records_read == 97 * 1301
    reader.close()


def test_full_ring_counts_drops_and_keeps_what_was_accepted(producer):
    reader = RingBufferReader(producer.ring, record_size=BENCH_EVENT.itemsize)
    capacity = 64 * 1024 // 48
    producer.produce(capacity + 777)  # nobody reads in between
    got = reader.read().fixed(BENCH_EVENT)["seq"]
    assert len(got) + producer.kernel_drops() == capacity + 777
    assert np.array_equal(got, np.arange(len(got)))  # the accepted ones, intact and in order
    reader.close()


def test_variable_length_and_discarded_records(producer):
    reader = RingBufferReader(producer.ring)
    total = 0
    seen, sizes = [], []
    for _ in range(31):
        producer.produce(1009, mixed=True)
        total += 1009
        batch = reader.read()
        for i in range(len(batch)):
            payload = np.frombuffer(batch.payload(i), dtype=np.uint64)
            seen.append(int(payload[0]))
            sizes.append((len(payload), int(payload[1])))
    expected = [s for s in range(total) if s % 7 != 0]
    assert producer.kernel_drops() == 0
    assert seen == expected
    assert all(n == words for n, words in sizes)


def test_fixed_fast_path_falls_back_on_discards(producer):
    # A reader that expects fixed 40-byte records still handles other sizes correctly.
    reader = RingBufferReader(producer.ring, record_size=40)
    producer.produce(500, mixed=True)
    producer.produce(300)
    batch = reader.read()
    lengths = batch.lengths
    assert len(batch) == len([s for s in range(500) if s % 7 != 0]) + 300
    assert (lengths[-300:] == 40).all()
    assert np.array_equal(batch.fixed(np.dtype([("seq", "<u8")]))["seq"][-300:], np.arange(500, 800))


def test_wait_wakes_on_data(producer):
    reader = RingBufferReader(producer.ring, record_size=BENCH_EVENT.itemsize)
    assert reader.wait(0.05) is False
    producer.produce(3)
    assert reader.wait(1.0) is True
    assert len(reader.read()) == 3


def test_reads_are_spaced_by_the_gap_unless_the_ring_fills(producer):
    import time

    reader = RingBufferReader(producer.ring, record_size=BENCH_EVENT.itemsize)
    producer.produce(1)
    started = time.monotonic()
    assert reader.wait(1.0, min_gap=0.3)  # after a quiet spell: at once
    assert time.monotonic() - started < 0.2
    assert len(reader.read()) == 1
    producer.produce(23)  # soon after a read: the rest of the gap is waited out, the records batch up
    started = time.monotonic()
    assert reader.wait(1.0, min_gap=0.3)
    assert 0.25 <= time.monotonic() - started < 1.0
    assert len(reader.read()) == 23
    producer.produce(64 * 1024 // 48 // 8 + 1)  # an eighth of the ring waits: no gap
    started = time.monotonic()
    assert reader.wait(1.0, min_gap=0.3)
    assert time.monotonic() - started < 0.2
    reader.close()


def test_concurrent_drain_loses_nothing():
    # Consumer and producer on different threads (and CPUs), the consumer reading as fast as it
    # can: every record arrives once, in order, and the kernel never finds the ring full.
    import threading
    import time

    with SyntheticProducer(ring_bytes=16 << 20) as producer:
        reader = RingBufferReader(producer.ring, record_size=BENCH_EVENT.itemsize)
        done = threading.Event()
        seqs = []

        def consume():
            while not done.is_set() or reader.pending_bytes():
                seqs.append(reader.read().fixed(BENCH_EVENT)["seq"].copy())

        t = threading.Thread(target=consume)
        t.start()
        for _ in range(301):  # about 5M records/s offered, well within the reader's rate
            producer.produce(7001)
            time.sleep(0.0015)
        done.set()
        t.join(timeout=30)
        reader.close()
        assert producer.kernel_drops() == 0
        assert np.array_equal(np.concatenate(seqs), np.arange(301 * 7001))

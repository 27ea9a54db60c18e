"""Partial HPACK decoding from a block in the middle of a connection, against hpack's own
encoder: every field it gives is the field that was sent (never a wrong one), and fields of
table entries added after the start decode in full."""

from __future__ import annotations

from hpack import Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbpf.protocols.hpack_partial import PartialDecoder

names = st.sampled_from([":method", ":path", "content-type", "x-request-id", "grpc-status", "user-agent", "x-a", "x-b"])
values = st.sampled_from(["GET", "POST", "/a", "/b/c", "application/grpc", "0", "14", "curl/8", "v" * 300, ""])
header_lists = st.lists(st.lists(st.tuples(names, values), min_size=1, max_size=6), min_size=1, max_size=12)


def is_subsequence(part, whole) -> bool:
    rest = iter(whole)
    return all(any(item == other for other in rest) for item in part)


@settings(max_examples=300, deadline=None)
@given(header_lists, st.integers(0, 11), st.sampled_from([4096, 256, 0]))
def test_fields_from_mid_stream_are_right_or_missing(blocks, start, table_size):
    encoder = Encoder()
    encoder.header_table_size = table_size
    encoded = [encoder.encode(block) for block in blocks]
    decoder = PartialDecoder()
    for block, wire in list(zip(blocks, encoded))[start:]:
        fields, missing = decoder.decode(wire)
        sent = [(n.encode(), v.encode()) for n, v in block]
        assert is_subsequence(fields, sent)
        assert len(fields) + missing == len(sent)


def test_entries_added_after_the_start_decode_in_full():
    encoder = Encoder()
    before = encoder.encode([("x-request-id", "old"), (":path", "/old")])
    first = encoder.encode([(":method", "POST"), (":path", "/svc/Method"), ("content-type", "application/grpc")])
    again = encoder.encode([(":method", "POST"), (":path", "/svc/Method"), ("content-type", "application/grpc"),
                            ("x-request-id", "old")])
    del before  # the decoder joins after this block
    decoder = PartialDecoder()
    assert decoder.decode(first) == ([(b":method", b"POST"), (b":path", b"/svc/Method"),
                                      (b"content-type", b"application/grpc")], 0)
    fields, missing = decoder.decode(again)
    assert fields[:3] == [(b":method", b"POST"), (b":path", b"/svc/Method"), (b"content-type", b"application/grpc")]
    assert missing == 1  # x-request-id: old was indexed before the decoder joined

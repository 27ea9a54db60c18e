"""pprof output: the Profile message of github.com/google/pprof/proto/profile.proto,
gzip-compressed as pprof expects on disk. Written with a small protobuf wire encoder (the
schema is stable and tiny), so no generated code or protoc is needed at run time.

Sample values: [samples/count, cpu/nanoseconds]; labels: pid (number) and thread (string).
"""

from __future__ import annotations

import gzip

from otelbpf.profiling.model import Profile
from otelbpf.symbols.maps import Mapping
from otelbpf.symbols.symbolizer import Frame

# Field numbers of profile.proto.
PROFILE_SAMPLE_TYPE, PROFILE_SAMPLE, PROFILE_MAPPING, PROFILE_LOCATION, PROFILE_FUNCTION = 1, 2, 3, 4, 5
PROFILE_STRING_TABLE, PROFILE_TIME_NANOS, PROFILE_DURATION_NANOS, PROFILE_PERIOD_TYPE, PROFILE_PERIOD = 6, 9, 10, 11, 12
PROFILE_DEFAULT_SAMPLE_TYPE = 14


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # int64 negatives are ten-byte two's complement
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value) if value else b""


def _bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _packed(field: int, values: list[int]) -> bytes:
    return _bytes(field, b"".join(_varint(v) for v in values)) if values else b""


class _Builder:
    def __init__(self) -> None:
        self.strings: dict[str, int] = {"": 0}
        self.mappings: dict[tuple, int] = {}
        self.functions: dict[str, int] = {}
        self.locations: dict[tuple, int] = {}
        self.body: list[bytes] = []

    def string(self, s: str) -> int:
        return self.strings.setdefault(s, len(self.strings))

    def mapping(self, frame: Frame) -> int:
        m: Mapping | None = frame.mapping
        if m is None:
            key = (frame.module, 0, 0, 0, frame.build_id)
        else:
            key = (m.path, m.start, m.end, m.offset, frame.build_id)
        if key not in self.mappings:
            mid = self.mappings[key] = len(self.mappings) + 1
            path, start, end, offset, build_id = key
            self.body.append(_bytes(PROFILE_MAPPING, b"".join([
                _int(1, mid), _int(2, start), _int(3, end), _int(4, offset), _int(5, self.string(path)),
                _int(6, self.string(build_id)), _int(7, 1)])))  # has_functions
        return self.mappings[key]

    def function(self, name: str) -> int:
        if name not in self.functions:
            fid = self.functions[name] = len(self.functions) + 1
            s = self.string(name)
            self.body.append(_bytes(PROFILE_FUNCTION, _int(1, fid) + _int(2, s) + _int(3, s)))
        return self.functions[name]

    def location(self, frame: Frame) -> int:
        key = (frame.module, frame.address, frame.name)
        if key not in self.locations:
            lid = self.locations[key] = len(self.locations) + 1
            line = _int(1, self.function(frame.name))
            self.body.append(_bytes(PROFILE_LOCATION, _int(1, lid) + _int(2, self.mapping(frame))
                                    + _int(3, frame.address) + _bytes(4, line)))
        return self.locations[key]


def encode(profile: Profile) -> bytes:
    """The serialized (uncompressed) Profile message."""
    b = _Builder()
    value_types = _bytes(PROFILE_SAMPLE_TYPE, _int(1, b.string("samples")) + _int(2, b.string("count")))
    value_types += _bytes(PROFILE_SAMPLE_TYPE, _int(1, b.string("cpu")) + _int(2, b.string("nanoseconds")))
    samples = []
    pid_key, thread_key = b.string("pid"), b.string("thread")
    for stack, n in profile.counts.items():
        ids = [b.location(f) for f in stack.frames]
        labels = _bytes(3, _int(1, pid_key) + _int(3, stack.pid))
        labels += _bytes(3, _int(1, thread_key) + _int(2, b.string(stack.comm)))
        samples.append(_bytes(PROFILE_SAMPLE, _packed(1, ids) + _packed(2, [n, n * profile.period_ns]) + labels))
    tail = (_int(PROFILE_TIME_NANOS, profile.start_unix_ns) + _int(PROFILE_DURATION_NANOS, profile.duration_ns)
            + _bytes(PROFILE_PERIOD_TYPE, _int(1, b.string("cpu")) + _int(2, b.string("nanoseconds")))
            + _int(PROFILE_PERIOD, profile.period_ns)
            + _int(PROFILE_DEFAULT_SAMPLE_TYPE, b.string("cpu")))
    strings = b"".join(_bytes(PROFILE_STRING_TABLE, s.encode()) for s in b.strings)
    return value_types + b"".join(samples) + b"".join(b.body) + tail + strings


def to_gzip(profile: Profile) -> bytes:
    return gzip.compress(encode(profile))

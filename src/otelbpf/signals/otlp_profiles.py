"""Mapping of profile batches to the OTLP profiles signal (Alpha, opentelemetry-proto
profiles/v1development): one ExportProfilesServiceRequest whose dictionary is shared by
every profile in it. Every table of the dictionary starts with its zero entry, as the
specification requires.

A batch's profile is duck-typed (otelbpf.profiling.model.Profile: counts of stacks of
frames), so this layer needs nothing from the profiler.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource

from otelbpf import __version__
from otelbpf.signals.model import ProfileBatch

HTTP_PATH = "/v1development/profiles"


class _Dictionary:
    """The request's shared tables, each entry added once."""

    def __init__(self, d: pb.ProfilesDictionary):
        self.d = d
        self.strings: dict[str, int] = {"": 0}
        d.string_table.append("")
        d.mapping_table.add()
        d.location_table.add()
        d.function_table.add()
        d.stack_table.add()
        d.attribute_table.add()
        self.mappings: dict[tuple, int] = {}
        self.functions: dict[str, int] = {}
        self.locations: dict[tuple, int] = {}
        self.stacks: dict[tuple[int, ...], int] = {}
        self.attributes: dict[tuple[str, object], int] = {}

    def string(self, s: str) -> int:
        if s not in self.strings:
            self.strings[s] = len(self.d.string_table)
            self.d.string_table.append(s)
        return self.strings[s]

    def mapping(self, frame) -> int:
        m = frame.mapping
        key = (frame.module, m.start, m.end, m.offset) if m else (frame.module, 0, 0, 0)
        if key not in self.mappings:
            self.mappings[key] = len(self.d.mapping_table)
            attrs = [self.attribute("process.executable.build_id.gnu", frame.build_id)] if frame.build_id else []
            self.d.mapping_table.add(memory_start=key[1], memory_limit=key[2], file_offset=key[3],
                                     filename_strindex=self.string(key[0]), attribute_indices=attrs)
        return self.mappings[key]

    def function(self, name: str) -> int:
        if name not in self.functions:
            self.functions[name] = len(self.d.function_table)
            s = self.string(name)
            self.d.function_table.add(name_strindex=s, system_name_strindex=s)
        return self.functions[name]

    def location(self, frame) -> int:
        key = (frame.module, frame.address, frame.name)
        if key not in self.locations:
            self.locations[key] = len(self.d.location_table)
            attrs = [self.attribute("profile.frame.type", "kernel" if frame.kernel else "native")]
            self.d.location_table.add(mapping_index=self.mapping(frame), address=frame.address,
                                      lines=[pb.Line(function_index=self.function(frame.name))],
                                      attribute_indices=attrs)
        return self.locations[key]

    def stack(self, frames: tuple) -> int:
        ids = tuple(self.location(f) for f in frames)
        if ids not in self.stacks:
            self.stacks[ids] = len(self.d.stack_table)
            self.d.stack_table.add(location_indices=ids)
        return self.stacks[ids]

    def attribute(self, key: str, value: str | int) -> int:
        if (key, value) not in self.attributes:
            self.attributes[key, value] = len(self.d.attribute_table)
            any_value = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
            self.d.attribute_table.add(key_strindex=self.string(key), value=any_value)
        return self.attributes[key, value]


def _any(value) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    return AnyValue(string_value=str(value))


def profiles_request(batches: Iterable[ProfileBatch]) -> ExportProfilesServiceRequest:
    """The official ExportProfilesServiceRequest for the batches, one resource entry each."""
    request = ExportProfilesServiceRequest()
    tables = _Dictionary(request.dictionary)
    for batch in batches:
        profile = batch.profile
        out = request.resource_profiles.add(
            resource=PbResource(attributes=[KeyValue(key=k, value=_any(v)) for k, v in batch.resource.attributes]))
        scope = out.scope_profiles.add(scope=InstrumentationScope(name=batch.scope, version=__version__))
        p = scope.profiles.add(time_unix_nano=profile.start_unix_ns, duration_nano=profile.duration_ns,
                               period=profile.period_ns)
        p.sample_type.type_strindex, p.sample_type.unit_strindex = tables.string("samples"), tables.string("count")
        p.period_type.type_strindex, p.period_type.unit_strindex = tables.string("cpu"), tables.string("nanoseconds")
        for stack, n in profile.counts.items():
            p.samples.add(stack_index=tables.stack(stack.frames), values=[n],
                          attribute_indices=[tables.attribute("process.pid", stack.pid),
                                             tables.attribute("thread.name", stack.comm)])
    return request


def encode_profiles_request(batches: Iterable[ProfileBatch]) -> bytes:
    return profiles_request(batches).SerializeToString()


def profile_item_count(batch: ProfileBatch) -> int:
    """Items are the profile's samples (one per distinct process, thread and stack)."""
    return len(batch.profile.counts)

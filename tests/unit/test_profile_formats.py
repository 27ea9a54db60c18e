"""Profile outputs: folded stacks, pprof (decoded with profile.proto compiled by protoc),
flame graph HTML/SVG and the diff colouring."""

from __future__ import annotations

import gzip
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from otelbpf.profiling import flamegraph, folded, output, pprof
from otelbpf.profiling.model import Profile, Stack
from otelbpf.symbols.maps import Mapping
from otelbpf.symbols.symbolizer import KERNEL_MODULE, Frame
from tests.conftest import require_tool

# The messages of github.com/google/pprof/proto/profile.proto that our encoder writes, with
# the same field numbers and types; compiled by protoc for an independent decoder.
PROFILE_PROTO = """
syntax = "proto3";
package perftools.profiles;
message Profile {
  repeated ValueType sample_type = 1;
  repeated Sample sample = 2;
  repeated Mapping mapping = 3;
  repeated Location location = 4;
  repeated Function function = 5;
  repeated string string_table = 6;
  int64 drop_frames = 7;
  int64 keep_frames = 8;
  int64 time_nanos = 9;
  int64 duration_nanos = 10;
  ValueType period_type = 11;
  int64 period = 12;
  repeated int64 comment = 13;
  int64 default_sample_type = 14;
}
message ValueType { int64 type = 1; int64 unit = 2; }
message Sample {
  repeated uint64 location_id = 1;
  repeated int64 value = 2;
  repeated Label label = 3;
}
message Label { int64 key = 1; int64 str = 2; int64 num = 3; int64 num_unit = 4; }
message Mapping {
  uint64 id = 1; uint64 memory_start = 2; uint64 memory_limit = 3; uint64 file_offset = 4;
  int64 filename = 5; int64 build_id = 6; bool has_functions = 7; bool has_filenames = 8;
  bool has_line_numbers = 9; bool has_inline_frames = 10;
}
message Location { uint64 id = 1; uint64 mapping_id = 2; uint64 address = 3; repeated Line line = 4; bool is_folded = 5; }
message Line { uint64 function_id = 1; int64 line = 2; }
message Function { uint64 id = 1; int64 name = 2; int64 system_name = 3; int64 filename = 4; int64 start_line = 5; }
"""


def decode_pprof(data: bytes, workdir) -> object:
    """Parse gzip'd pprof bytes with profile.proto messages compiled by protoc."""
    protoc = require_tool("protoc")
    (workdir / "profile.proto").write_text(PROFILE_PROTO)
    subprocess.run([protoc, f"-I{workdir}", f"--descriptor_set_out={workdir}/profile.desc", "profile.proto"],
                   check=True)
    fds = descriptor_pb2.FileDescriptorSet.FromString((workdir / "profile.desc").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("perftools.profiles.Profile"))
    return cls.FromString(gzip.decompress(data))


EXE = Mapping(0x400000, 0x401000, 0x1000, "08:01", 42, "/usr/bin/worker")


def user(name: str, addr: int) -> Frame:
    return Frame(name, EXE.path, addr, mapping=EXE, build_id="abcd")


def sample_profile() -> Profile:
    kernel = Frame("vfs_write", KERNEL_MODULE, 0xFFFFFFFF81000010, kernel=True)
    hot = (user("hot", 0x400100), user("caller", 0x400200), user("main", 0x400300))
    counts = Counter({
        Stack(7, "worker", hot): 23,
        Stack(7, "worker", (kernel, user("write_loop", 0x400400), user("main", 0x400300))): 5,
        Stack(9, "other", (user("main", 0x400300),)): 3,
    })
    return Profile(1_700_000_000_000_000_000, 2_000_000_000, 99, counts)


def test_folded_is_root_first_with_thread_and_kernel_suffix():
    stacks = folded.fold(sample_profile())
    assert stacks == Counter({"worker;main;caller;hot": 23, "worker;main;write_loop;vfs_write_[k]": 5,
                              "other;main": 3})
    assert folded.parse(folded.to_text(stacks)) == stacks


def test_folded_parse_names_the_bad_line():
    with pytest.raises(ValueError, match="line 2"):
        folded.parse("a;b 3\nnot a count\n")


def test_pprof_decodes_with_profile_proto(tmp_path):
    profile = sample_profile()
    msg = decode_pprof(pprof.to_gzip(profile), tmp_path)
    strings = list(msg.string_table)
    assert strings[0] == ""
    assert [(strings[t.type], strings[t.unit]) for t in msg.sample_type] == [("samples", "count"),
                                                                             ("cpu", "nanoseconds")]
    assert msg.period == 1_000_000_000 // 99 and strings[msg.period_type.type] == "cpu"
    assert msg.time_nanos == profile.start_unix_ns and msg.duration_nanos == profile.duration_ns
    functions = {f.id: strings[f.name] for f in msg.function}
    locations = {loc.id: loc for loc in msg.location}
    mappings = {m.id: m for m in msg.mapping}
    decoded = Counter()
    for s in msg.sample:
        names = tuple(functions[locations[i].line[0].function_id] for i in s.location_id)
        labels = {strings[lb.key]: (strings[lb.str] if lb.str else lb.num) for lb in s.label}
        decoded[(labels["pid"], labels["thread"], names)] += s.value[0]
        assert s.value[1] == s.value[0] * msg.period
    assert decoded == Counter({(7, "worker", ("hot", "caller", "main")): 23,
                               (7, "worker", ("vfs_write", "write_loop", "main")): 5,
                               (9, "other", ("main",)): 3})
    hot_loc = next(loc for loc in msg.location if functions[loc.line[0].function_id] == "hot")
    m = mappings[hot_loc.mapping_id]
    assert (strings[m.filename], m.memory_start, m.memory_limit, m.file_offset, strings[m.build_id]) == (
        "/usr/bin/worker", 0x400000, 0x401000, 0x1000, "abcd")
    assert hot_loc.address == 0x400100


def test_varint_encoding_matches_protobuf():
    from google.protobuf.internal import encoder
    for value in (0, 1, 127, 128, 300, 2**32, 2**63 - 1):
        out = []
        encoder._EncodeVarint(out.append, value)
        assert pprof._varint(value) == b"".join(out)


def test_flamegraph_html_is_self_contained_with_search_and_zoom():
    page = flamegraph.render_html(folded.fold(sample_profile()), "t</script>")
    assert "hot" in page and "caller" in page
    assert 'id="search"' in page and "zoomed = n" in page
    assert "<script src" not in page and "http" not in page.split("<script>")[1]
    assert "t</script>" not in page  # the title is escaped


def test_flamegraph_svg_is_well_formed_and_proportional():
    svg = flamegraph.render_svg(Counter({"a;hot": 75, "a;cold": 25}))
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    widths = {g.find(f"{ns}title").text.split(" (")[0]: float(g.find(f"{ns}rect").get("width"))
              for g in root.iter(f"{ns}g")}
    assert widths["all"] == pytest.approx(flamegraph.SVG_WIDTH)
    assert widths["hot"] == pytest.approx(3 * widths["cold"], rel=0.01)


def test_diff_tree_scales_the_baseline_and_colours_growth_red():
    baseline = Counter({"a;f": 50, "a;g": 50})
    newer = Counter({"a;f": 180, "a;g": 20})  # twice the samples; f grew from 50% to 90%
    tree = flamegraph.build_tree(newer, baseline)
    f = tree.children["a"].children["f"]
    assert f.value == 180 and f.baseline == pytest.approx(100)
    assert flamegraph._colour("f", f, tree.value, diff=True).startswith("rgb(255,")
    g = tree.children["a"].children["g"]
    assert flamegraph._colour("g", g, tree.value, diff=True).endswith(",255)")
    assert "const DIFF = true" in flamegraph.render_html(newer, baseline=baseline)


def test_output_format_from_file_name(tmp_path):
    profile = sample_profile()
    for name in ("p.html", "p.svg", "p.pb.gz", "p.folded"):
        output.write(profile, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 0
    with pytest.raises(ValueError, match=r"\.pb\.gz"):
        output.format_of("p.json")


def test_merge_adds_counts_and_widens_the_window():
    a, b = sample_profile(), sample_profile()
    b.start_unix_ns += 2_000_000_000
    a.merge(b)
    assert a.total == 62 and a.duration_ns == 4_000_000_000
    with pytest.raises(ValueError, match="99 and 19 Hz"):
        a.merge(Profile(0, 1, 19))

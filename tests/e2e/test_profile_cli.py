"""`otelbpf profile` and the profile sensor of `otelbpf run`, as subprocesses: every output
format opened by an independent reader (protoc-compiled profile.proto, an XML parser,
headless Chromium for the HTML flame graph)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import pytest

from otelbpf.profiling import folded
from otelbpf.receiver.otlp import OtlpReceiver
from tests.conftest import require_tool
from tests.kernel.test_profile import HOT
from tests.unit.test_profile_formats import decode_pprof

OTELBPF = [sys.executable, "-m", "otelbpf"]


@pytest.fixture(scope="module")
def hotprog(tmp_path_factory):
    gcc = require_tool("gcc")
    d = tmp_path_factory.mktemp("hot")
    (d / "hot.c").write_text(HOT)
    subprocess.run([gcc, "-O0", "-fno-omit-frame-pointer", "-o", str(d / "hotprog"), str(d / "hot.c")], check=True)
    return d / "hotprog"


def function_samples(msg) -> dict[str, int]:
    """Samples per leaf function of a decoded pprof Profile."""
    strings = msg.string_table
    names = {f.id: strings[f.name] for f in msg.function}
    leaf = {loc.id: names[loc.line[0].function_id] for loc in msg.location}
    out: dict[str, int] = {}
    for s in msg.sample:
        out[leaf[s.location_id[0]]] = out.get(leaf[s.location_id[0]], 0) + s.value[0]
    return out


def test_profile_command_writes_every_format(hotprog, tmp_path):
    workload = subprocess.Popen([str(hotprog), "4"])
    try:
        outs = [tmp_path / n for n in ("cpu.html", "cpu.svg", "cpu.pb.gz", "cpu.folded")]
        run = subprocess.run(OTELBPF + ["profile", "--pid", str(workload.pid), "--duration", "2", "--hz", "99"]
                             + [a for o in outs for a in ("--out", str(o))], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        # A second run compared with the first: the diff flame graph.
        diff = subprocess.run(OTELBPF + ["profile", "--pid", str(workload.pid), "--duration", "1", "--baseline",
                                         str(tmp_path / "cpu.folded"), "--out", str(tmp_path / "diff.html")],
                              capture_output=True, text=True, timeout=60)
        assert diff.returncode == 0, diff.stderr
    finally:
        workload.kill()
        workload.wait()
    stacks = folded.parse((tmp_path / "cpu.folded").read_text())
    assert {line.split(";")[0] for line in stacks} == {"hotprog"}  # --pid: nothing else
    top = stacks.most_common(1)[0][0]
    assert top.endswith(";main;outer_caller;middle_caller;hot_leaf_spin")
    assert 0.85 * 2 * 99 <= sum(stacks.values()) <= 1.15 * 2 * 99

    msg = decode_pprof((tmp_path / "cpu.pb.gz").read_bytes(), tmp_path)
    per_function = function_samples(msg)
    assert max(per_function, key=per_function.get) == "hot_leaf_spin"
    assert per_function["hot_leaf_spin"] >= 0.8 * sum(per_function.values())

    svg = ET.parse(tmp_path / "cpu.svg").getroot()
    assert any("hot_leaf_spin" in (t.text or "") for t in svg.iter("{http://www.w3.org/2000/svg}title"))
    assert "const DIFF = true" in (tmp_path / "diff.html").read_text()


def test_flame_graph_html_renders_in_headless_chromium(hotprog, tmp_path):
    chromium = require_tool("chromium")
    workload = subprocess.Popen([str(hotprog), "3"])
    try:
        run = subprocess.run(OTELBPF + ["profile", "--pid", str(workload.pid), "--duration", "1.5",
                                        "--out", str(tmp_path / "flame.html")], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
    finally:
        workload.kill()
        workload.wait()
    with tempfile.TemporaryDirectory() as profile_dir:
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                              "--disable-background-networking", "--disable-component-update", "--no-first-run",
                              f"--user-data-dir={profile_dir}", "--dump-dom", (tmp_path / "flame.html").as_uri()],
                             capture_output=True, text=True, timeout=60).stdout
    # The frames are drawn by the page's script: they exist only in the rendered DOM.
    drawn = re.findall(r'<div class="f[^"]*"[^>]*>([^<]*)</div>', dom)
    assert "hot_leaf_spin" in drawn and "middle_caller" in drawn, dom[:2000]


def test_agent_runs_the_profile_sensor_and_writes_pprof_files(hotprog, tmp_path):
    out_dir = tmp_path / "profiles"
    with OtlpReceiver("127.0.0.1", 0, 0) as receiver:
        env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint,
                   OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", OTELBPF_METRICS_INTERVAL="1",
                   OTELBPF_PROFILE__INTERVAL="1", OTELBPF_PROFILE__HZ="49", OTELBPF_PROFILE__OUTPUT_DIR=str(out_dir))
        workload = subprocess.Popen([str(hotprog), "6"])
        try:
            run = subprocess.run(OTELBPF + ["run", "--sensors", "profile", "--duration", "3.5", "--no-console"],
                                 env=env, capture_output=True, text=True, timeout=90)
        finally:
            workload.kill()
            workload.wait()
        assert run.returncode == 0, run.stderr
        metrics = {m.name for req in receiver.received_metrics() for rm in req.resource_metrics
                   for sm in rm.scope_metrics for m in sm.metrics}
    assert "otelbpf.profile.samples" in metrics
    files = sorted(out_dir.glob("cpu-*.pb.gz"))
    assert len(files) >= 2, run.stderr
    total = {}
    for f in files:
        for name, n in function_samples(decode_pprof(f.read_bytes(), tmp_path)).items():
            total[name] = total.get(name, 0) + n
    assert total.get("hot_leaf_spin", 0) >= 0.8 * 3 * 49

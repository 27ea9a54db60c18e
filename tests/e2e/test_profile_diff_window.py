"""`otelbpf profile --diff-window`: a diff flame graph of two time windows of one run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from otelbpf.profiling import folded
from tests.conftest import require_tool

OTELBPF = [sys.executable, "-m", "otelbpf"]

# Burns phase_one until the file named by argv[1] exists, then phase_two.
PHASES = r"""
#include <unistd.h>
volatile unsigned long sink;
__attribute__((noinline)) void phase_one(void) { for (int i = 0; i < 1000000; i++) sink += i; }
__attribute__((noinline)) void phase_two(void) { for (int i = 0; i < 1000000; i++) sink ^= i; }
int main(int argc, char **argv) {
    while (access(argv[1], F_OK) != 0) phase_one();
    for (;;) phase_two();
}
"""


def test_diff_window_compares_the_last_seconds_with_the_time_before(tmp_path, root):
    gcc = require_tool("gcc")
    (tmp_path / "phases.c").write_text(PHASES)
    binary = tmp_path / "phases"
    subprocess.run([gcc, "-O0", "-fno-omit-frame-pointer", "-o", str(binary), str(tmp_path / "phases.c")], check=True)
    flag = tmp_path / "switch"
    work = subprocess.Popen([str(binary), str(flag)])
    try:
        prof = subprocess.Popen(OTELBPF + ["profile", "--pid", str(work.pid), "--duration", "4", "--diff-window", "2",
                                           "--hz", "99", "--out", str(tmp_path / "d.html"),
                                           "--out", str(tmp_path / "d.folded")], stderr=subprocess.PIPE, text=True)
        prof.stderr.readline()  # "profiling ..." once sampling runs
        time.sleep(2.0)
        flag.touch()  # the workload switches at the windows' border
        _, err = prof.communicate(timeout=60)
        assert prof.returncode == 0, err
    finally:
        work.kill()
        work.wait()
    whole = folded.parse((tmp_path / "d.folded").read_text())
    by_leaf = {leaf: sum(n for s, n in whole.items() if s.endswith(leaf)) for leaf in ("phase_one", "phase_two")}
    assert min(by_leaf.values()) > 50, by_leaf  # the folded output holds both windows
    html = (tmp_path / "d.html").read_text()
    assert "last 2 s vs the 2 s before" in html
    data = json.loads(re.search(r"const ROOT = (.*?); //", html).group(1))
    # [name, samples, baseline samples, children]: phase_two grew, phase_one shrank

    def find(node, name):
        if node[0] == name:
            return node
        return next((f for kid in node[3] for f in [find(kid, name)] if f), None)
    two, one = find(data, "phase_two"), find(data, "phase_one")
    assert two[1] > two[2] and (one is None or one[1] < one[2]), (one, two)

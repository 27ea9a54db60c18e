"""The service map and the flame graph in headless Chromium, over an agent on its embedded
default (every sensor, the local store): a client -> server workload on loopback and a C
program with a known hot function, both compiled here."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.conftest import require, require_tool
from tests.e2e.test_store_agent import start_agent, wait_until
from tests.e2e.test_ui import page
from tests.kernel.test_profile import HOT

# One source, two executables: the agent names processes by their executable.
PEERS = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[2]);
    struct sockaddr_in a = {0};
    socklen_t len = sizeof a;
    char buf[4096];
    memset(buf, 'x', sizeof buf);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (argv[1][0] == 's') {  /* serve n connections: read the request, answer 4096 bytes */
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) return 1;
        getsockname(s, (struct sockaddr *)&a, &len);
        printf("%d\n", ntohs(a.sin_port));
        fflush(stdout);
        for (int i = 0; i < n; i++) {
            int c = accept(s, NULL, NULL);
            if (c < 0) return 2;
            if (read(c, buf, sizeof buf) <= 0) return 3;
            if (write(c, buf, sizeof buf) != sizeof buf) return 4;
            close(c);
        }
        return 0;
    }
    a.sin_port = htons(atoi(argv[3]));  /* client: n connections, 100 bytes out, read to EOF */
    for (int i = 0; i < n; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&a, sizeof a)) return 5;
        if (write(c, buf, 100) != 100) return 6;
        while (read(c, buf, sizeof buf) > 0) {}
        close(c);
    }
    /* Stay a moment: the network sensor names a process by /proc/PID/exe when it reads the
       closes (every 0.2 s); a client gone by then is named "unknown" (its bulk close path does
       not fall back to the kernel's comm yet). */
    sleep(1);
    return 0;
}
"""


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    gcc = require_tool("gcc")
    d = tmp_path_factory.mktemp("progs")
    tag = uuid.uuid4().hex[:6]
    (d / "peers.c").write_text(PEERS)
    (d / "hot.c").write_text(HOT)
    out = {"server": d / f"mapsrv{tag}", "client": d / f"mapcli{tag}", "hot": d / f"hot{tag}"}
    for name in ("server", "client"):
        subprocess.run([gcc, "-O1", "-o", str(out[name]), str(d / "peers.c")], check=True)
    subprocess.run([gcc, "-O0", "-fno-omit-frame-pointer", "-o", str(out["hot"]), str(d / "hot.c")], check=True)
    return out


@pytest.fixture(scope="module")
def full_agent(tmp_path_factory):
    require(os.geteuid() == 0, "needs root to load BPF programs")
    d = tmp_path_factory.mktemp("agent")
    running = start_agent(d / "store.duckdb", d / "agent.log", sensors=["process", "network", "profile"], extra_env={
        "OTELBPF_NETWORK__SAMPLE_INTERVAL": "1", "OTELBPF_PROFILE__INTERVAL": "1", "OTELBPF_PROFILE__HZ": "99"})
    yield running
    running.stop()


def test_service_map_shows_the_client_server_edge(full_agent, programs, tmp_path):
    server = subprocess.Popen([str(programs["server"]), "s", "5"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        client = subprocess.run([str(programs["client"]), "c", "5", str(port)], check=False, timeout=30)
        assert client.returncode == 0
        assert server.wait(30) == 0
    finally:
        server.kill()
    cli, srv = programs["client"].name, programs["server"].name
    edge = (f"SELECT sum(requests), sum(bytes_sent), sum(bytes_received) FROM service_edges "
            f"WHERE client = '{cli}' AND server = '{srv}'")
    assert wait_until(lambda: full_agent.query(edge)[0][0] == 5, 30), full_agent.query(
        "SELECT client, server, requests FROM service_edges")
    # Bytes are counted on the sampling interval and at close: all of them once the agent has seen the closes.
    assert wait_until(lambda: full_agent.query(edge)[0][1:] == (500, 5 * 4096), 15), full_agent.query(edge)
    assert full_agent.query(f"SELECT count(*) FROM service_edges WHERE client = '{srv}'") == [(0,)]

    dom = page(full_agent, "/map", tmp_path / "profile", "ui-service-map.png")
    assert 'id="service-map"' in dom
    assert f'class="edge" data-client="{cli}" data-server="{srv}" data-connections="5"' in dom
    assert f'data-name="{cli}"' in dom and f'data-name="{srv}"' in dom


def test_flame_graph_shows_the_hot_function(full_agent, programs, tmp_path):
    hot = programs["hot"].name
    subprocess.run([str(programs["hot"]), "3"], check=True, timeout=30)
    sql = (f"SELECT sum(samples) FILTER (WHERE stack LIKE '%outer_caller;middle_caller;hot_leaf_spin%'), sum(samples) "
           f"FROM profile_samples WHERE process_name = '{hot}'")
    # 99 Hz for 3 s of CPU is ~300 samples on an idle machine; a busy 2-CPU one gives it less.
    assert wait_until(lambda: (full_agent.query(sql)[0][0] or 0) >= 30, 30), full_agent.query(
        f"SELECT stack, samples FROM profile_samples WHERE process_name = '{hot}' ORDER BY samples DESC LIMIT 5")
    in_hot, total = full_agent.query(sql)[0]
    assert in_hot / total > 0.8  # the program spends its time in the spin loop

    dom = page(full_agent, "/flame?search=hot_leaf_spin", tmp_path / "profile", "ui-flame-graph.png")
    assert 'id="flamegraph"' in dom
    assert f'class="frame" data-name="{hot}"' in dom
    assert 'class="frame match" data-name="hot_leaf_spin"' in dom
    assert "matched “hot_leaf_spin”" in dom

"""Identity memory: what naming 500 pods and 2,000 containers costs the agent.

Each variant runs in a fresh interpreter and reports its peak RSS (ru_maxrss):
  A  the agent's modules imported, nothing named (the baseline);
  B  A, and 2,000 processes named from their cgroups (kubelet layout), no runtime asked;
  C  B, and the pods of 500 (4 containers each) known to the Kubernetes API source's index
     (fed the PodList the API would answer) and every process's resource carrying its
     container, pod, owner and service, through the container directory as the agent runs it.
The processes are a /proc-shaped tree on disk (cgroup and environ files), so the table reads
them as it reads /proc. Bar: C's peak RSS <= 100 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table

PODS = 500
CONTAINERS_PER_POD = 4
BAR_MB = 100.0


def make_world(root: Path) -> Path:
    """The /proc tree (one process per container, pids from 1000) and the PodList."""
    proc, items = root / "proc", []
    for p in range(PODS):
        uid, statuses = str(uuid.UUID(int=p + 1)), []
        for c in range(CONTAINERS_PER_POD):
            cid = f"{p:032x}{c:032x}"
            pid = 1000 + p * CONTAINERS_PER_POD + c
            (proc / str(pid)).mkdir(parents=True)
            (proc / str(pid) / "cgroup").write_text(f"0::/kubepods/burstable/pod{uid}/{cid}\n")
            (proc / str(pid) / "environ").write_bytes(b"PATH=/usr/bin:/bin\0HOME=/root\0LANG=C.UTF-8\0" * 8)
            statuses.append({"name": f"app-{c}", "containerID": f"containerd://{cid}",
                             "image": f"registry.local/team/app-{p}:1.{c}"})
        items.append({"metadata": {
            "name": f"svc{p}-6c8f9d7b5-k2x9z", "namespace": f"ns{p % 20}", "uid": uid,
            "labels": {"app.kubernetes.io/name": f"svc{p}", "pod-template-hash": "6c8f9d7b5", "team": f"t{p % 7}"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-01T10:00:00Z"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": f"svc{p}-6c8f9d7b5", "controller": True}]},
            "status": {"containerStatuses": statuses}})
    (root / "pods.json").write_text(json.dumps({"kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}))
    return root


VARIANT = r"""
import json, resource, sys
import otelbpf.agent  # noqa: F401  the agent's modules, as a running agent has them
from otelbpf.enrich.identity import IdentityTable
from otelbpf.enrich.kube import ApiClient, KubernetesSource
from otelbpf.enrich.runtime import ContainerDirectory
from otelbpf.signals.model import Resource
variant, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
host = Resource.of({"host.name": "node-a", "service.name": "otelbpf"})
named = 0
if variant != "A":
    directory = None
    if variant == "C":
        source = KubernetesSource(ApiClient("http://127.0.0.1:1"), "node-a")  # never started: fed below
        with open(root + "/pods.json") as f:
            source._pods_changed("LIST", json.load(f))  # the list as the watch loop applies it
        directory = ContainerDirectory([source], max_entries=4096, max_queued=n)
    table = IdentityTable(host, proc=root + "/proc", containers=directory)
    for pid in range(1000, 1000 + n):
        table.resource(pid, b"app")
    if directory is not None:
        assert directory.wait_idle(60)
    named = sum("k8s.pod.name" in dict(table.resource(pid, b"app").attributes) for pid in range(1000, 1000 + n))
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "named": named}))
"""


def run_variant(variant: str, root: Path, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", VARIANT, variant, str(root), str(n)], capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    n = PODS * CONTAINERS_PER_POD
    with tempfile.TemporaryDirectory(prefix="otelbpf-bench-identity-") as tmp:
        root = make_world(Path(tmp))
        results = {v: run_variant(v, root, n) for v in "ABC"}
    base = results["A"]["rss_mb"]
    rows = [[v, what, results[v]["named"], results[v]["rss_mb"], results[v]["rss_mb"] - base]
            for v, what in (("A", "agent modules only"), ("B", f"{n:,} processes from cgroups"),
                            ("C", f"and {PODS} pods / {n:,} containers named"))]
    print(header("Identity memory: 500 pods, 2,000 containers"))
    print(f"{n:,} processes, one per container; peak RSS of a fresh interpreter per variant.\n")
    print(table(["variant", "what", "processes with a pod", "peak RSS MB", "over A MB"], rows))
    verdict = "met" if results["C"]["rss_mb"] <= BAR_MB and results["C"]["named"] == n else "NOT met"
    print(f"Bar: C's peak RSS <= {BAR_MB:.0f} MB with every process named: {verdict} "
          f"({results['C']['rss_mb']:.1f} MB; the identity itself costs "
          f"{(results['C']['rss_mb'] - base) * 1024 / n:.1f} KiB per container).")


if __name__ == "__main__":
    main()

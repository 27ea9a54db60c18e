"""The Kubernetes API source against a stand-in server that speaks the list and watch
protocol (JSON lists with a resourceVersion, watch=true streams of newline-delimited events,
410 Gone). No kube-apiserver can be installed here (Debian ships none), so this is the one
stand-in of the identity tests; the pods it serves are as the API writes them."""

from __future__ import annotations

import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from otelbpf.enrich.identity import IdentityTable
from otelbpf.enrich.kube import ApiClient, KubernetesSource
from otelbpf.enrich.runtime import ContainerDirectory
from otelbpf.signals.model import Resource
from otelbpf.signals.registry import Registry

HOST = Resource.of({"host.name": "node-a", "service.name": "otelbpf"})
TOKEN = "test-token-23"
CID = {name: f"{i:02x}" * 32 for i, name in enumerate(("web", "db", "late", "batch"), start=0xA0)}


def pod(name: str, uid: str, container: str, cid: str, owner: tuple[str, str] | None = None, labels=None,
        annotations=None, version: str = "1") -> dict:
    meta = {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": version,
            "labels": labels or {}, "annotations": annotations or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "controller": True}]
    return {"kind": "Pod", "metadata": meta, "spec": {"nodeName": "node-a"},
            "status": {"containerStatuses": [{"name": container, "containerID": f"containerd://{cid}",
                                              "image": "registry.local/shop/app:1.4"}]}}


WEB = pod("web-6c8f9d7b5-k2x9z", "u-web", "httpd", CID["web"], ("ReplicaSet", "web-6c8f9d7b5"),
          labels={"app.kubernetes.io/name": "web"},
          annotations={"resource.opentelemetry.io/service.name": "storefront"})
DB = pod("db-0", "u-db", "postgres", CID["db"], ("StatefulSet", "db"), version="101")
LATE = pod("late-1", "u-late", "app", CID["late"], version="205")
BATCH = pod("backup-29001234-9xk2p", "u-batch", "dump", CID["batch"], ("Job", "backup-29001234"), version="102")
REPLICASET = {"kind": "ReplicaSet", "metadata": {
    "name": "web-6c8f9d7b5", "namespace": "shop", "resourceVersion": "40",
    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "controller": True}]}}


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.pods = [WEB]
        self.pods_version = "100"
        self.events: queue.Queue = queue.Queue()  # pod watch events to stream, in order
        self.requests: list[tuple[str, dict[str, list[str]], str | None]] = []
        self.stopping = threading.Event()


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.server.requests.append((url.path, query, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._json(401, {"kind": "Status", "code": 401})
        watching = query.get("watch") == ["true"]
        if url.path == "/apis/apps/v1/replicasets":
            if not watching:
                return self._json(200, {"kind": "ReplicaSetList", "metadata": {"resourceVersion": "50"},
                                        "items": [REPLICASET]})
            return self._stream(queue.Queue())  # no ReplicaSet changes
        if url.path != "/api/v1/pods" or query.get("fieldSelector") != ["spec.nodeName=node-a"]:
            return self._json(404, {"kind": "Status", "code": 404})
        if not watching:
            return self._json(200, {"kind": "PodList", "metadata": {"resourceVersion": self.server.pods_version},
                                    "items": self.server.pods})
        return self._stream(self.server.events)

    def _json(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _stream(self, events: queue.Queue) -> None:
        """A watch: one JSON event a line until the test says "end" (HTTP/1.0: the end of the
        connection ends the stream), or the server stops."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        while not self.server.stopping.is_set():
            try:
                event = events.get(timeout=0.05)
            except queue.Empty:
                continue
            if event == "end":
                return
            self.wfile.write(json.dumps(event).encode() + b"\n")
            self.wfile.flush()


@pytest.fixture
def api():
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def eventually(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError("not within the time allowed")


@pytest.fixture
def source(api):
    client = ApiClient(f"http://127.0.0.1:{api.server_address[1]}", TOKEN)
    watched = KubernetesSource(client, "node-a", sleep=lambda seconds: api.stopping.wait(min(seconds, 0.05)))
    watched.start()
    try:
        yield watched
    finally:
        api.stopping.set()  # ends the streams the watches wait on
        watched.close()


def test_pods_of_this_node_listed_then_watched_with_owners_labels_and_annotations(api, source, tmp_path):
    assert source.synced.wait(5)
    web = source.container(CID["web"])
    assert web is not None and web.pod is not None
    assert (web.pod.name, web.pod.namespace, web.pod.uid, web.name, web.image_name) == (
        "web-6c8f9d7b5-k2x9z", "shop", "u-web", "httpd", "registry.local/shop/app:1.4")
    assert web.pod.workload() == {"replicaset": "web-6c8f9d7b5", "deployment": "web"}  # the ReplicaSet's owner

    # The identity table names a process of that container, the pod's annotation first.
    (tmp_path / "23").mkdir()
    (tmp_path / "23" / "cgroup").write_text(f"0::/kubepods/burstable/podu-web/{CID['web']}\n")
    directory = ContainerDirectory([source])  # not closed here: closing it closes the source
    table = IdentityTable(HOST, proc=str(tmp_path), containers=directory, node_name="node-a")
    table.resource(23, b"httpd")
    assert directory.wait_idle(5)
    attrs = dict(table.resource(23, b"httpd").attributes)
    registry = Registry()
    table.register_metrics(registry)
    [api_metric] = [i for i in registry.instruments() if i.name == "otelbpf.identity.kubernetes_api"]
    assert {p.attributes["event"]: p.value for p in api_metric.points()}["pods.lists"] == 1
    assert (attrs["service.name"], attrs["k8s.deployment.name"], attrs["k8s.container.name"]) == ("storefront", "web", "httpd")

    # Watched changes: added, a Job of a CronJob, deleted.
    api.events.put({"type": "ADDED", "object": DB})
    api.events.put({"type": "ADDED", "object": BATCH})
    assert eventually(lambda: source.container(CID["db"])).pod.workload() == {"statefulset": "db"}
    assert eventually(lambda: source.container(CID["batch"])).pod.workload() == {"job": "backup-29001234",
                                                                                   "cronjob": "backup"}
    api.events.put({"type": "DELETED", "object": DB})
    eventually(lambda: source.container(CID["db"]) is None)

    pod_requests = [(q, auth) for path, q, auth in api.requests if path == "/api/v1/pods"]
    assert all(q["fieldSelector"] == ["spec.nodeName=node-a"] and auth == f"Bearer {TOKEN}" for q, auth in pod_requests)
    assert pod_requests[1][0]["resourceVersion"] == ["100"]  # the watch starts where the list was
    directory.close()


def test_a_watch_that_ends_resumes_from_the_last_version_and_410_gone_lists_again(api, source):
    assert source.synced.wait(5)
    api.events.put({"type": "ADDED", "object": DB})
    eventually(lambda: source.container(CID["db"]))
    api.events.put("end")  # the server ends the watch: resumed from DB's version, no new list
    eventually(lambda: source.counts["pods.watches"] == 2)
    watches = [q for path, q, _ in api.requests if path == "/api/v1/pods" and q.get("watch") == ["true"]]
    assert watches[-1]["resourceVersion"] == ["101"] and source.counts["pods.lists"] == 1

    api.pods, api.pods_version = [WEB, LATE], "300"  # meanwhile DB went and LATE came
    api.events.put({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}})
    eventually(lambda: source.counts["pods.lists"] == 2)
    assert source.counts["pods.gone"] == 1
    eventually(lambda: source.container(CID["late"]))
    assert source.container(CID["db"]) is None  # the new list replaced the index


def test_an_api_that_refuses_is_retried_and_counted(api):
    client = ApiClient(f"http://127.0.0.1:{api.server_address[1]}", "wrong-token")
    watched = KubernetesSource(client, "node-a", sleep=lambda seconds: api.stopping.wait(0.01))
    watched.start()
    try:
        eventually(lambda: watched.counts["pods.failures"] >= 3)
        assert watched.container(CID["web"]) is None and not watched.synced.is_set()
    finally:
        watched.close()


def test_off_without_a_service_account(tmp_path):
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert ApiClient.in_cluster(str(tmp_path), env) is None  # no token mounted
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert ApiClient.in_cluster(str(tmp_path), {}) is None  # not in a cluster
    client = ApiClient.in_cluster(str(tmp_path), env)
    assert client is not None and client.base_url == "https://10.96.0.1:443"

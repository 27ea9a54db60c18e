"""The Kubernetes API as a source of pod identity, optional: on only where the agent runs
with a service account (its token mounted), as OBI's and Tetragon's informers.

Two list-then-watch loops on threads of their own keep an index in memory:
  pods of this node only     GET /api/v1/pods?fieldSelector=spec.nodeName=<node>
  ReplicaSets                GET /apis/apps/v1/replicasets (their Deployment owners)
Each lists (taking the list's resourceVersion), then watches from it (watch=true, newline-
delimited JSON events: ADDED, MODIFIED, DELETED, BOOKMARK, ERROR). A watch that ends is
resumed from the last resourceVersion seen; 410 Gone (the version is too old, as an HTTP
status or an ERROR event) lists again. A failing API is retried with a doubling backoff and
counted; the index keeps what it had.

KubernetesSource.container(id) answers from the index without any request, so it is a
runtime client like containerd's for enrich.runtime: pods' owners come from their
ownerReferences (ReplicaSet -> its Deployment from the ReplicaSet index), their labels and
annotations from the pod, containers from status.containerStatuses[].containerID.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3

from otelbpf.enrich.pods import Pod
from otelbpf.enrich.runtime import Container

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
WATCH_SECONDS = 300  # the server ends each watch after this; it is resumed at once
MAX_BACKOFF = 30.0
MAX_LINE_BYTES = 4 << 20  # one watch event; a bigger line is not the API's
_CRONJOB_JOB = re.compile(r"^(.+)-(\d{8,})$")
_RUNTIME_OF_SCHEME = {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}


class Gone(Exception):
    """410: the resourceVersion is too old to watch from; list again."""


@dataclass(frozen=True, slots=True)
class _PodRecord:
    pod: Pod
    owner_kind: str | None
    owner_name: str | None
    containers: tuple[tuple[str, str, str, str | None], ...]  # (container id, runtime, name, image)


class ApiClient:
    """GETs against the API server with the service account's token."""

    def __init__(self, base_url: str, token: str | None = None, ca_file: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED" if ca_file else "CERT_NONE", ca_certs=ca_file,
                                         retries=False, maxsize=4)  # two watches and their lists

    @classmethod
    def in_cluster(cls, service_account: str = SERVICE_ACCOUNT, env: Mapping[str, str] = os.environ) -> ApiClient | None:
        """The API server as a pod sees it, or None without a service account (the source is off)."""
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        try:
            with open(os.path.join(service_account, "token"), encoding="ascii") as f:
                token = f.read().strip()
        except OSError:
            return None
        if not host or not token:
            return None
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", token, os.path.join(service_account, "ca.crt"))

    def list(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        response = self._http.request("GET", self._url(path, params), headers=self._headers,
                                      timeout=urllib3.Timeout(connect=self._timeout, read=self._timeout * 6))
        _check(response.status, path, response.data[:300])
        body = json.loads(response.data)
        if not isinstance(body, dict):
            raise ValueError(f"{path}: not a list")
        return body

    def watch(self, path: str, params: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """The events of one watch, until the server ends it."""
        response = self._http.request("GET", self._url(path, {**params, "watch": "true",
                                                               "timeoutSeconds": str(WATCH_SECONDS)}),
                                      headers=self._headers, preload_content=False,
                                      timeout=urllib3.Timeout(connect=self._timeout, read=WATCH_SECONDS + 30))
        try:
            if response.status != 200:
                _check(response.status, path, response.read(300))
            pending = b""
            while chunk := response.read1(65536):  # what has come, not a full 64 KiB: events are small
                pending += chunk
                if len(pending) > MAX_LINE_BYTES:
                    raise ValueError(f"{path}: a watch event over {MAX_LINE_BYTES} bytes")
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        event = json.loads(line)
                        if isinstance(event, dict):
                            yield event
        finally:
            response.release_conn()

    def _url(self, path: str, params: Mapping[str, str]) -> str:
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        return f"{self.base_url}{path}?{query}" if query else f"{self.base_url}{path}"


def _check(status: int, path: str, body: bytes) -> None:
    if status == 410:
        raise Gone(path)
    if status != 200:
        raise OSError(f"Kubernetes API {path}: HTTP {status}: {body.decode('utf-8', 'replace')}")


class KubernetesSource:
    """The index of this node's pods and the cluster's ReplicaSets, kept by watches."""

    name = "kubernetes"

    def __init__(self, api: ApiClient, node_name: str, sleep: Callable[[float], bool] | None = None) -> None:
        self.api = api
        self.node_name = node_name
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._lock = threading.Lock()
        self._pods: dict[str, _PodRecord] = {}  # uid -> pod
        self._containers: dict[str, tuple[str, int]] = {}  # container id -> (pod uid, index in its containers)
        self._deployments: dict[tuple[str, str], str] = {}  # (namespace, replicaset) -> deployment
        self.counts: collections.Counter[str] = collections.Counter()  # lists, watches, gone, failures
        self.synced = threading.Event()  # set once both lists have been read
        self._listed: set[str] = set()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        loops: list[tuple[str, dict[str, str], Callable[[str, dict[str, Any]], None], str]] = [
            ("/api/v1/pods", {"fieldSelector": f"spec.nodeName={self.node_name}"}, self._pods_changed, "pods"),
            ("/apis/apps/v1/replicasets", {}, self._replicaset_changed, "replicasets")]
        for path, params, apply, what in loops:
            thread = threading.Thread(target=self._loop, args=(path, params, apply, what), name=f"kube-{what}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=1)

    def container(self, container_id: str) -> Container | None:
        with self._lock:
            where = self._containers.get(container_id)
            record = self._pods.get(where[0]) if where else None
            if record is None or where is None:
                return None
            _, runtime, name, image = record.containers[where[1]]
            pod = record.pod
            owners = self._owners(record)
        pod = Pod(pod.name, pod.namespace, pod.uid, pod.labels, pod.annotations, owners)
        return Container(container_id, runtime, name=name, image_name=image, pod=pod, pod_container_name=name)

    # -- the watches ---------------------------------------------------------------------
    def _loop(self, path: str, params: dict[str, str], apply: Callable[[str, dict[str, Any]], None], what: str) -> None:
        backoff = 0.5
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = self.api.list(path, params)
                    self.counts[f"{what}.lists"] += 1
                    version = str((listed.get("metadata") or {}).get("resourceVersion", ""))
                    apply("LIST", listed)
                    self._mark_listed(what)
                self.counts[f"{what}.watches"] += 1
                for event in self.api.watch(path, {**params, "resourceVersion": version, "allowWatchBookmarks": "true"}):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(path)
                        raise OSError(f"Kubernetes API {path}: watch error {obj.get('message')}")
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        apply(kind, obj)
                    if self._stop.is_set():
                        return
                backoff = 0.5
            except Gone:
                self.counts[f"{what}.gone"] += 1
                version = None  # too old: list again
            except Exception as exc:  # noqa: BLE001  an API that fails is retried, never fatal
                self.counts[f"{what}.failures"] += 1
                if self.counts[f"{what}.failures"] == 1:
                    log.warning("Kubernetes API %s: %s (pods are named from the runtimes meanwhile; retrying)", what, exc)
                if self._sleep(backoff):
                    return
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _mark_listed(self, what: str) -> None:
        with self._lock:
            self._listed.add(what)
            if len(self._listed) == 2:
                self.synced.set()

    def _pods_changed(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "LIST":
            records = [r for r in (_pod_record(item) for item in obj.get("items") or []) if r]
            with self._lock:
                self._pods = {r.pod.uid or "": r for r in records}
                self._reindex()
            return
        record = _pod_record(obj)
        if record is None:
            return
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(record.pod.uid or "", None)
            else:
                self._pods[record.pod.uid or ""] = record
            self._reindex()

    def _reindex(self) -> None:
        self._containers = {cid: (uid, i) for uid, record in self._pods.items()
                            for i, (cid, *_rest) in enumerate(record.containers)}

    def _replicaset_changed(self, kind: str, obj: dict[str, Any]) -> None:
        items = (obj.get("items") or []) if kind == "LIST" else [obj]
        found = {}
        for item in items:
            meta = item.get("metadata") or {}
            owner = _controller(meta)
            if owner and owner[0] == "Deployment":
                found[(meta.get("namespace", ""), meta.get("name", ""))] = owner[1]
        with self._lock:
            if kind == "LIST":
                self._deployments = found
            elif kind == "DELETED":
                meta = obj.get("metadata") or {}
                self._deployments.pop((meta.get("namespace", ""), meta.get("name", "")), None)
            else:
                self._deployments.update(found)

    def _owners(self, record: _PodRecord) -> dict[str, str]:
        kind, name = record.owner_kind, record.owner_name
        if not kind or not name:
            return {}
        if kind == "ReplicaSet":
            deployment = self._deployments.get((record.pod.namespace, name))
            return {"replicaset": name, "deployment": deployment} if deployment else {"replicaset": name}
        if kind == "Job":
            cron = _CRONJOB_JOB.match(name)  # a CronJob's Jobs: <cronjob>-<scheduled minute>
            return {"job": name, "cronjob": cron.group(1)} if cron else {"job": name}
        return {kind.lower(): name} if kind in ("StatefulSet", "DaemonSet") else {}


def _controller(meta: dict[str, Any]) -> tuple[str, str] | None:
    for ref in meta.get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return str(ref.get("kind", "")), str(ref.get("name", ""))
    return None


def _pod_record(obj: dict[str, Any]) -> _PodRecord | None:
    meta = obj.get("metadata") or {}
    name, namespace, uid = meta.get("name"), meta.get("namespace"), meta.get("uid")
    if not (isinstance(name, str) and isinstance(namespace, str) and isinstance(uid, str)):
        return None
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if isinstance(v, str)}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if isinstance(v, str)}
    containers = []
    status = obj.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            scheme, sep, cid = str(cs.get("containerID") or "").partition("://")
            if sep and cid:
                containers.append((cid, _RUNTIME_OF_SCHEME.get(scheme, scheme), str(cs.get("name", "")), cs.get("image")))
    owner = _controller(meta)
    return _PodRecord(Pod(name, namespace, uid, labels, annotations), owner[0] if owner else None,
                      owner[1] if owner else None, tuple(containers))

"""A stand-in for the kubelet (and the scheduler), kept only for what the real node (node.py)
cannot do here:

- pods of images that are never built (the tests of the operator's API objects use inert image
  names) and GPUs to schedule them on (the node advertises 8 `nvidia.com/gpu`; this machine has
  none): the real kubelet would leave them in ImagePullBackOff or Pending;
- dozens of LLMServices and hundreds of pods at once (bench/operator_scale.py), which two cores
  cannot run as containers.

It runs nothing. It binds every unscheduled pod to one Node, gives it a loopback address and
reports it Running and Ready at once, which is what the Deployment and ReplicaSet controllers and
our operator observe. Pods marked for deletion are removed at once, as a kubelet does after its
containers stop. Whatever must really run (images, probes, restarts, Services, ConfigMap
projection) is tested on the real node.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import threading
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

NODE_NAME = "halffull-dev-stand-in"
FIRST_POD_IP = ipaddress.ip_address("127.0.10.1")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeletStandIn:
    """Run with `start()` (a daemon thread) and `stop()`."""

    def __init__(self, api_client: client.ApiClient, gpus: int = 8) -> None:
        self.core = client.CoreV1Api(api_client)
        self.gpus = gpus
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet-stand-in", daemon=True)
        self._next_ip = int(FIRST_POD_IP)
        self._ips: dict[str, str] = {}  # pod uid -> address

    def start(self) -> None:
        self._register_node()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _register_node(self) -> None:
        capacity = {"cpu": "64", "memory": "512Gi", "pods": "500", "nvidia.com/gpu": str(self.gpus)}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}},
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        with contextlib.suppress(ApiException):
            self.core.create_node(node)
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}  # fmt: skip
        self.core.patch_node_status(
            NODE_NAME,
            {"status": {"conditions": [ready], "capacity": capacity, "allocatable": capacity}},
        )

    def _address(self, uid: str) -> str:
        if uid not in self._ips:
            self._ips[uid] = str(ipaddress.ip_address(self._next_ip))
            self._next_ip += 1
        return self._ips[uid]

    def _run(self) -> None:
        rv = ""
        while not self._stop.is_set():
            try:
                if not rv:
                    pods = self.core.list_pod_for_all_namespaces()
                    for pod in pods.items:
                        self._handle(pod)
                    rv = pods.metadata.resource_version
                w = watch.Watch()
                for event in w.stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=rv,
                    timeout_seconds=5,
                    allow_watch_bookmarks=True,
                ):
                    obj = event["object"]
                    if event["type"] == "ERROR":  # e.g. 410 Gone: list again
                        rv = ""
                        break
                    if event["type"] == "BOOKMARK":
                        rv = obj["metadata"]["resourceVersion"]
                        continue
                    rv = obj.metadata.resource_version
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._handle(obj)
                    if self._stop.is_set():
                        w.stop()
            except ApiException as exc:
                if exc.status == 410:  # resourceVersion too old: list again
                    rv = ""
                elif not self._stop.is_set():
                    log.warning("kubelet stand-in: %s", exc.reason)
                    self._stop.wait(0.5)
            except Exception as exc:  # keep playing kubelet whatever happens
                if not self._stop.is_set():
                    log.warning("kubelet stand-in: %r", exc)
                    self._stop.wait(0.5)

    def _handle(self, pod: Any) -> None:
        md = pod.metadata
        try:
            if md.deletion_timestamp is not None:
                self.core.delete_namespaced_pod(md.name, md.namespace, grace_period_seconds=0)
                self._ips.pop(md.uid, None)
                return
            if not pod.spec.node_name:
                self.core.create_namespaced_binding(
                    md.namespace,
                    {
                        "apiVersion": "v1",
                        "kind": "Binding",
                        "metadata": {"name": md.name},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
                    },
                    _preload_content=False,
                )
                return
            if pod.spec.node_name == NODE_NAME and (pod.status.phase != "Running"):
                self._report_running(pod)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _report_running(self, pod: Any) -> None:
        ip = self._address(pod.metadata.uid)
        self._patch_status(pod.metadata.namespace, pod.metadata.name, pod, ip, ready=True)

    def _patch_status(self, namespace: str, name: str, pod: Any, ip: str, ready: bool) -> None:
        now = _now()
        flag = "True" if ready else "False"
        conditions = [
            {"type": t, "status": s, "lastTransitionTime": now}
            for t, s in (("PodScheduled", "True"), ("Initialized", "True"),
                         ("ContainersReady", flag), ("Ready", flag))
        ]  # fmt: skip
        containers = [
            {
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": ready,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for c in pod.spec.containers
        ]
        self.core.patch_namespaced_pod_status(
            name,
            namespace,
            {
                "status": {
                    "phase": "Running",
                    "hostIP": "127.0.0.1",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "startTime": now,
                    "conditions": conditions,
                    "containerStatuses": containers,
                }
            },
        )

"""The few Kubernetes calls the operator makes, on plain dicts, each write counted.

Objects are read as raw JSON (no model classes: what the server sent is what we compare) and
written with server-side apply under our own field manager, so fields set by other controllers
or by users outside what we manage are left alone.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import Counter

from halffull.api.spec import GROUP, PLURAL, VERSION
from halffull.builders.meta import FIELD_MANAGER

log = logging.getLogger(__name__)

API_WRITES = Counter(
    "halffull_operator_api_writes_total",
    "Write calls the operator made to the Kubernetes API",
    ["verb", "kind"],
)
API_READS = Counter(
    "halffull_operator_api_reads_total",
    "Read calls the operator made to the Kubernetes API",
    ["verb", "kind"],
)

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


@dataclass(frozen=True)
class _KindApi:
    api_version: str
    list: Callable[..., Any]
    patch: Callable[..., Any]
    delete: Callable[..., Any]


class Kube:
    """Typed-client calls for the kinds the operator owns, reading raw JSON."""

    def __init__(self, api_client: client.ApiClient, pdb_api_version: str = "policy/v1") -> None:
        self.api_client = api_client
        core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
        self.core = core
        self.custom = client.CustomObjectsApi(api_client)
        self.kinds: dict[str, _KindApi] = {
            "PodDisruptionBudget": self._by_path(pdb_api_version, "poddisruptionbudgets"),
            "NetworkPolicy": self._by_path("networking.k8s.io/v1", "networkpolicies"),
            "Deployment": _KindApi(
                "apps/v1",
                apps.list_namespaced_deployment,
                apps.patch_namespaced_deployment,
                apps.delete_namespaced_deployment,
            ),
            "Service": _KindApi(
                "v1",
                core.list_namespaced_service,
                core.patch_namespaced_service,
                core.delete_namespaced_service,
            ),
            "ConfigMap": _KindApi(
                "v1",
                core.list_namespaced_config_map,
                core.patch_namespaced_config_map,
                core.delete_namespaced_config_map,
            ),
        }

    def _by_path(self, api_version: str, plural: str) -> _KindApi:
        """A namespaced kind addressed by group, version and plural (the custom-objects calls
        build the same paths for built-in groups): the typed client no longer has policy/v1beta1,
        which is all a 1.20 API server serves for PodDisruptionBudgets."""
        group, version = api_version.split("/")
        c = self.custom

        def list_(namespace: str, **kw: Any) -> Any:
            return c.list_namespaced_custom_object(group, version, namespace, plural, **kw)

        def patch(name: str, namespace: str, body: Any, **kw: Any) -> Any:
            return c.patch_namespaced_custom_object(group, version, namespace, plural, name, body,
                                                    **kw)  # fmt: skip

        def delete(name: str, namespace: str, **kw: Any) -> Any:
            return c.delete_namespaced_custom_object(group, version, namespace, plural, name, **kw)

        return _KindApi(api_version, list_, patch, delete)

    @staticmethod
    def _json(resp: Any) -> Any:
        return json.loads(resp.data)

    def get_llmservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        API_READS.labels("get", "LLMService").inc()
        try:
            return self.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_llmservices(self, namespace: str | None) -> list[dict[str, Any]]:
        API_READS.labels("list", "LLMService").inc()
        if namespace is None:
            resp = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            resp = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return list(resp["items"])

    def list_children(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        API_READS.labels("list", kind).inc()
        resp = self.kinds[kind].list(namespace, label_selector=selector, _preload_content=False)
        items = list(self._json(resp)["items"])
        for item in items:  # list items come without their type
            item.setdefault("apiVersion", self.kinds[kind].api_version)
            item.setdefault("kind", kind)
        return items

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        API_READS.labels("list", "Pod").inc()
        resp = self.core.list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False
        )
        return list(self._json(resp)["items"])

    def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """A merge patch of a pod's metadata (the live-tuning fast path). Never fails the
        reconcile: a pod gone meanwhile needs nothing, and a refused patch (RBAC without `patch`
        on pods) only leaves the pod on the kubelet's periodic sync; False then."""
        API_WRITES.labels("patch", "Pod").inc()
        try:
            self.core.patch_namespaced_pod(
                name, namespace, patch, _content_type=MERGE, _preload_content=False
            )
        except ApiException as exc:
            if exc.status != 404:
                log.warning("pod %s/%s not touched (%s %s): tuning arrives at the kubelet's "
                            "next sync", namespace, name, exc.status, exc.reason)  # fmt: skip
            return False
        return True

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind, md = obj["kind"], obj["metadata"]
        API_WRITES.labels("apply", kind).inc()
        resp = self.kinds[kind].patch(
            md["name"],
            md["namespace"],
            obj,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
            _preload_content=False,
        )
        return dict(self._json(resp))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        API_WRITES.labels("delete", kind).inc()
        try:
            self.kinds[kind].delete(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        API_WRITES.labels("patch-status", "LLMService").inc()
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE
        )

    def post_event(
        self, owner: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        """A Kubernetes Event on the LLMService, for transitions users should see."""
        md = owner["metadata"]
        API_WRITES.labels("create", "Event").inc()
        self.core.create_namespaced_event(
            md["namespace"],
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{md['name']}.", "namespace": md["namespace"]},
                "involvedObject": {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": md["name"],
                    "namespace": md["namespace"],
                    "uid": md["uid"],
                },
                "reason": reason,
                "message": message[:1024],
                "type": type_,
                "source": {"component": FIELD_MANAGER},
                "firstTimestamp": now_rfc3339(),
                "lastTimestamp": now_rfc3339(),
                "count": 1,
            },
            _preload_content=False,
        )


def served_pdb_api_version(api_client: client.ApiClient) -> str:
    """policy/v1 where the API server has it (1.21+), else policy/v1beta1 (1.20)."""
    groups = client.ApisApi(api_client).get_api_versions().groups or []
    for group in groups:
        if group.name == "policy":
            served = {v.group_version for v in group.versions}
            return "policy/v1" if "policy/v1" in served else "policy/v1beta1"
    return "policy/v1"


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

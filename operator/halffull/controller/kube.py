"""The few Kubernetes calls the operator makes, on plain dicts, each write counted.

Objects are read as raw JSON (no model classes: what the server sent is what we compare) and
written with server-side apply under our own field manager, so fields set by other controllers
or by users outside what we manage are left alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import Counter

from halffull.api.spec import GROUP, PLURAL, VERSION
from halffull.builders.meta import FIELD_MANAGER
from halffull.controller.failures import ApiCallError

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


def _server_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


@contextlib.contextmanager
def calling(verb: str, kind: str) -> Iterator[None]:
    """Turn the client's exception into one that names what was attempted."""
    try:
        yield
    except ApiException as exc:
        retry_after = None
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            retry_after = float(str((exc.headers or {}).get("Retry-After")))
        raise ApiCallError(verb, kind, exc.status or 0, _server_message(exc), retry_after) from exc


@dataclass(frozen=True)
class _KindApi:
    api_version: str
    list: Callable[..., Any]
    list_all: Callable[..., Any]
    patch: Callable[..., Any]
    delete: Callable[..., Any]


class Kube:
    """Typed-client calls for the kinds the operator owns, reading raw JSON."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
        self.core = core
        self.custom = client.CustomObjectsApi(api_client)
        self.kinds: dict[str, _KindApi] = {
            "Deployment": _KindApi(
                "apps/v1",
                apps.list_namespaced_deployment,
                apps.list_deployment_for_all_namespaces,
                apps.patch_namespaced_deployment,
                apps.delete_namespaced_deployment,
            ),
            "Service": _KindApi(
                "v1",
                core.list_namespaced_service,
                core.list_service_for_all_namespaces,
                core.patch_namespaced_service,
                core.delete_namespaced_service,
            ),
            "ConfigMap": _KindApi(
                "v1",
                core.list_namespaced_config_map,
                core.list_config_map_for_all_namespaces,
                core.patch_namespaced_config_map,
                core.delete_namespaced_config_map,
            ),
        }

    @staticmethod
    def _json(resp: Any) -> Any:
        return json.loads(resp.data)

    def get_llmservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One LLMService, fresh from the API server (after a conflict). Read with a list by
        name: list and watch are the only reads the operator's RBAC grants on LLMServices."""
        API_READS.labels("list", "LLMService").inc()
        with calling("list", "LLMService"):
            resp = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, field_selector=f"metadata.name={name}"
            )
        items = resp.get("items") or []
        if not items:
            return None
        item = dict(items[0])
        item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
        item.setdefault("kind", "LLMService")
        return item

    def list_children(
        self, kind: str, namespace: str | None, selector: str
    ) -> list[dict[str, Any]]:
        """Children of `kind` in one namespace or in all (None), e.g. to fill the cache."""
        API_READS.labels("list", kind).inc()
        if kind == "Pod":
            api_version, one, every = (
                "v1", self.core.list_namespaced_pod, self.core.list_pod_for_all_namespaces,
            )  # fmt: skip
        else:
            api_version, one, every = (
                self.kinds[kind].api_version, self.kinds[kind].list, self.kinds[kind].list_all,
            )  # fmt: skip
        with calling("list", kind):
            if namespace is None:
                resp = every(label_selector=selector, _preload_content=False)
            else:
                resp = one(namespace, label_selector=selector, _preload_content=False)
        items = list(self._json(resp)["items"])
        for item in items:  # list items come without their type
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind, md = obj["kind"], obj["metadata"]
        API_WRITES.labels("apply", kind).inc()
        with calling("patch", kind):
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
            with calling("delete", kind):
                self.kinds[kind].delete(name, namespace, _preload_content=False)
        except ApiCallError as exc:
            if exc.status != 404:
                raise

    def patch_status(
        self, namespace: str, name: str, patch: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """A merge patch of the status (keys set to None are removed), conditional on
        `resource_version` when given: a stale read then gets 409 instead of overwriting."""
        API_WRITES.labels("patch-status", "LLMService").inc()
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        with calling("patch", "LLMService/status"):
            resp = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _content_type=MERGE,
                _preload_content=False,
            )  # fmt: skip
        return dict(self._json(resp))

    def post_event(
        self, owner: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        """A Kubernetes Event on the LLMService, for transitions users should see."""
        md = owner["metadata"]
        API_WRITES.labels("create", "Event").inc()
        with calling("create", "Event"):
            self._create_event(md, owner, reason, message, type_)

    def _create_event(
        self, md: dict[str, Any], owner: dict[str, Any], reason: str, message: str, type_: str
    ) -> None:
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


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

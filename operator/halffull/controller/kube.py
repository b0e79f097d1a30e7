"""The few Kubernetes calls the operator makes, on plain dicts, each write counted.

Objects are read as raw JSON (no model classes: what the server sent is what we compare).

A missing child is created with a plain create (POST); a child that exists is changed with
server-side apply under our own field manager, so fields set by other controllers or by users
outside what we manage are left alone, and fields we stopped setting are removed. On the API
server (v1.20) an apply of a new object costs 1.3-1.8 times the CPU of a create, and 1.3 (quiet)
to 3 (loaded) times its time (`bench/apiserver_write_cost.py`); a burst of new LLMServices is
nearly all creates.

A create records our fields under an "Update" entry of our manager, an apply under an "Apply"
entry, and the API server keeps the two apart: a field we stop setting would stay while the
Update entry still holds it. So before the first apply to a child we created, its Update entry
is folded into the Apply entry (`applied_ownership`, one merge patch of managedFields that
changes nothing else, conditional on the resourceVersion; kubectl does the same when it moves
an object from client-side to server-side apply). That happens once in a child's life, at its first
change; most children are never changed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import Counter

from halffull.api.spec import GROUP, PLURAL, VERSION
from halffull.builders.meta import FIELD_MANAGER, MANAGED_BY, OWNER_LABEL
from halffull.controller import trace
from halffull.controller.failures import ApiCallError

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

CHILD_SELECTOR = f"{OWNER_LABEL},app.kubernetes.io/managed-by={MANAGED_BY}"
"""Our children's labels: what the API server filters child watches and lists by."""
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


@contextlib.contextmanager
def traced(namespace: str, owner: str, kind: str, child: str) -> Iterator[None]:
    """Mark the response of a write (`trace`), failed or not."""
    try:
        yield
    finally:
        trace.mark("recv", namespace, owner, kind=kind, child=child)


@dataclass(frozen=True)
class _KindApi:
    api_version: str
    list: Callable[..., Any]
    list_all: Callable[..., Any]
    patch: Callable[..., Any]
    delete: Callable[..., Any]
    create: Callable[..., Any]


def _union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The union of two field sets in their FieldsV1 form (nested maps; a leaf is {})."""
    out = dict(a)
    for key, value in b.items():
        out[key] = _union(out[key], value) if key in out else value
    return out


def applied_ownership(
    entries: list[dict[str, Any]], manager: str, now: str
) -> list[dict[str, Any]] | None:
    """managedFields with `manager`'s Update entries folded into its Apply entry (one entry,
    operation Apply, owning the union of their fields); the others' entries as they are. None
    when there is nothing to fold, or when the entries are of different API versions (their
    field sets cannot simply be joined; the apply then goes ahead as before)."""
    ours = [e for e in entries if e.get("manager") == manager and not e.get("subresource")]
    if not any(e.get("operation") == "Update" for e in ours):
        return None
    versions = {e.get("apiVersion") for e in ours}
    if len(versions) != 1:
        return None
    fields: dict[str, Any] = {}
    for e in ours:
        fields = _union(fields, e.get("fieldsV1") or {})
    applied = {"manager": manager, "operation": "Apply", "apiVersion": versions.pop(),
               "time": now, "fieldsType": "FieldsV1", "fieldsV1": fields}  # fmt: skip
    return [applied, *(e for e in entries if not any(e is o for o in ours))]


def created_by_update(obj: dict[str, Any], manager: str = FIELD_MANAGER) -> bool:
    """Does `manager` hold fields of `obj` through an Update entry (we created it with POST)?"""
    return any(
        e.get("manager") == manager and e.get("operation") == "Update" and not e.get("subresource")
        for e in obj["metadata"].get("managedFields") or []
    )


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
                apps.list_deployment_for_all_namespaces,
                apps.patch_namespaced_deployment,
                apps.delete_namespaced_deployment,
                apps.create_namespaced_deployment,
            ),
            "Service": _KindApi(
                "v1",
                core.list_namespaced_service,
                core.list_service_for_all_namespaces,
                core.patch_namespaced_service,
                core.delete_namespaced_service,
                core.create_namespaced_service,
            ),
            "ConfigMap": _KindApi(
                "v1",
                core.list_namespaced_config_map,
                core.list_config_map_for_all_namespaces,
                core.patch_namespaced_config_map,
                core.delete_namespaced_config_map,
                core.create_namespaced_config_map,
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

        def list_all(**kw: Any) -> Any:
            return c.list_cluster_custom_object(group, version, plural, **kw)

        def patch(name: str, namespace: str, body: Any, **kw: Any) -> Any:
            return c.patch_namespaced_custom_object(group, version, namespace, plural, name, body,
                                                    **kw)  # fmt: skip

        def delete(name: str, namespace: str, **kw: Any) -> Any:
            return c.delete_namespaced_custom_object(group, version, namespace, plural, name, **kw)

        def create(namespace: str, body: Any, **kw: Any) -> Any:
            return c.create_namespaced_custom_object(group, version, namespace, plural, body, **kw)

        return _KindApi(api_version, list_, list_all, patch, delete, create)

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

    def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """A merge patch of a pod's metadata (the live-tuning fast path): the patched pod, for
        the cache, so the next pass does not touch it again before the watch event arrives.
        Never fails the reconcile: a pod gone meanwhile needs nothing, and a refused patch (RBAC
        without `patch` on pods) only leaves the pod on the kubelet's periodic sync; None then."""
        API_WRITES.labels("patch", "Pod").inc()
        try:
            resp = self.core.patch_namespaced_pod(
                name, namespace, patch, _content_type=MERGE, _preload_content=False
            )
        except ApiException as exc:
            if exc.status != 404:
                log.warning("pod %s/%s not touched (%s %s): tuning arrives at the kubelet's "
                            "next sync", namespace, name, exc.status, exc.reason)  # fmt: skip
            return None
        pod = dict(self._json(resp))
        pod.setdefault("apiVersion", "v1")
        pod.setdefault("kind", "Pod")
        return pod

    def write(self, obj: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
        """Make the child `obj` as desired: create it when `live` (what the cache holds) is
        None, else apply it (after folding our create's ownership into the apply's, once).
        A child the cache has not seen yet (created meanwhile, by us or another) is read and
        applied to."""
        if live is None:
            try:
                return self.create(obj)
            except ApiCallError as exc:
                if exc.status != 409:
                    raise
            md = obj["metadata"]
            live = self.read_child(obj["kind"], md["namespace"], md["name"])
            if live is None:  # deleted meanwhile, or not labelled as ours: apply as it is
                return self.apply(obj)
        if created_by_update(live):
            self.fold_ownership(obj, live)
        return self.apply(obj)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        md = obj["metadata"]
        return self._write("create", "create", obj, lambda api: api.create(
            md["namespace"], obj, field_manager=FIELD_MANAGER, _preload_content=False))  # fmt: skip

    def _write(
        self, counted: str, verb: str, obj: dict[str, Any], send: Callable[[_KindApi], Any]
    ) -> dict[str, Any]:
        """One write of a child by `send(api of its kind)`: counted, traced, its error naming
        `verb` and the kind; the object as stored comes back."""
        kind, md = obj["kind"], obj["metadata"]
        API_WRITES.labels(counted, kind).inc()
        owner = md.get("labels", {}).get(OWNER_LABEL, "")
        trace.mark("send", md["namespace"], owner, kind=kind, child=md["name"])
        with calling(verb, kind), traced(md["namespace"], owner, kind, md["name"]):
            resp = send(self.kinds[kind])
        return dict(self._json(resp))

    def read_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One child, fresh and whole (managedFields too), read with a list by name and our
        children's labels: the operator's RBAC grants list and watch on its children, not
        get."""
        API_READS.labels("list", kind).inc()
        with calling("list", kind):
            resp = self.kinds[kind].list(
                namespace, field_selector=f"metadata.name={name}",
                label_selector=CHILD_SELECTOR, _preload_content=False,
            )  # fmt: skip
        items = list(self._json(resp)["items"])
        return dict(items[0]) if items else None

    def fold_ownership(self, obj: dict[str, Any], live: dict[str, Any]) -> None:
        """Fold our Update entry of a child into our Apply entry (see the module's docstring),
        conditional on the version of `live`: 409 when the child changed since. The cache holds
        no field sets, so the child is read whole first (unless `live` is whole)."""
        kind, md = obj["kind"], obj["metadata"]
        if not any("fieldsV1" in e for e in live["metadata"].get("managedFields") or []):
            fresh = self.read_child(kind, md["namespace"], md["name"])
            if fresh is None:
                return  # gone, or no longer labelled as ours: the apply goes ahead
            live = fresh
        folded = applied_ownership(
            live["metadata"].get("managedFields") or [], FIELD_MANAGER, now_rfc3339()
        )
        if folded is None:
            return
        API_WRITES.labels("fold-ownership", kind).inc()
        body = {"metadata": {"resourceVersion": live["metadata"]["resourceVersion"],
                             "managedFields": folded}}  # fmt: skip
        with calling("patch", kind):
            self.kinds[kind].patch(
                md["name"], md["namespace"], body, field_manager=FIELD_MANAGER,
                _content_type=MERGE, _preload_content=False,
            )  # fmt: skip

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        md = obj["metadata"]
        return self._write("apply", "patch", obj, lambda api: api.patch(
            md["name"], md["namespace"], obj, field_manager=FIELD_MANAGER, force=True,
            _content_type=APPLY, _preload_content=False))  # fmt: skip

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
        trace.mark("send", namespace, name, kind="status", child=name)
        with calling("patch", "LLMService/status"), traced(namespace, name, "status", name):
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
        trace.mark("send", md["namespace"], md["name"], kind="Event", child=reason)
        with calling("create", "Event"), traced(md["namespace"], md["name"], "Event", reason):
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

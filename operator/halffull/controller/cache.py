"""What the operator has seen of the cluster: LLMServices and their children, as the watches
(and its own writes) delivered them.

The reconcile reads from here instead of making five GETs per pass. The watches carry a
server-side label selector (see `kube.CHILD_SELECTOR`), so only our children are held.
A write's response goes in at once, so the next pass does not repeat the write before its
watch event arrives; a watch event that is older than what is held (the write's response got
here first) is ignored.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from halffull.builders.meta import OWNER_LABEL

Ref = tuple[str, str, str]  # (kind, namespace, name)


def _version(obj: Mapping[str, Any]) -> int | None:
    """The resourceVersion as a number, where the server uses numbers (etcd revisions do).
    Versions are opaque by contract; when one is not a number, the newer arrival wins."""
    try:
        return int(obj["metadata"].get("resourceVersion") or "")
    except ValueError:
        return None


POD_STATUS_KEYS = ("phase", "conditions", "podIP", "containerStatuses")
"""What a reconcile reads of a pod's status: readiness, address, image pulls."""


def managers(obj: Mapping[str, Any]) -> list[dict[str, str]]:
    """Who manages fields of `obj` and how (manager and operation, without the fields)."""
    return [
        {"manager": e.get("manager", ""), "operation": e.get("operation", "")}
        for e in obj["metadata"].get("managedFields") or []
    ]


def slim(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """`obj` as held: managedFields only as who manages how (the field sets are large and never
    read here; the writes need to know whether a child was created by POST, `kube.Kube.write`);
    a pod without them, without its spec but the node it is bound to and without the status a
    reconcile never reads. With 500 LLMServices, their pods' full specs (the engine's
    arguments, probes, volumes) were the largest part of the operator's memory."""
    md = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
    if kind != "Pod":
        if obj["metadata"].get("managedFields"):
            md["managedFields"] = managers(obj)
        return {"kind": kind, **obj, "metadata": md}
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": kind,
        "metadata": md,
        "spec": {"nodeName": spec["nodeName"]} if spec.get("nodeName") else {},
        "status": {k: status[k] for k in POD_STATUS_KEYS if k in status},
    }


class ObjectCache:
    """Objects by kind, namespace and name, and children by owner. Fed from kopf's event
    handlers on the event loop and from reconciles in worker threads, hence the lock."""

    def __init__(self) -> None:
        self._objects: dict[Ref, dict[str, Any]] = {}
        self._by_owner: dict[tuple[str, str], set[Ref]] = {}
        self._lock = threading.Lock()

    def put(self, kind: str, obj: dict[str, Any]) -> None:
        obj = slim(kind, obj)
        md = obj["metadata"]
        ref = (kind, md.get("namespace") or "", md["name"])
        with self._lock:
            held = self._objects.get(ref)
            if held is not None and held["metadata"].get("uid") == md.get("uid"):
                new, old = _version(obj), _version(held)
                if new is not None and old is not None and new < old:
                    return
            self._unindex(ref)
            self._objects[ref] = obj
            owner = (md.get("labels") or {}).get(OWNER_LABEL)
            if owner:
                self._by_owner.setdefault((ref[1], owner), set()).add(ref)

    def drop(self, kind: str, namespace: str, name: str) -> None:
        ref = (kind, namespace, name)
        with self._lock:
            self._unindex(ref)
            self._objects.pop(ref, None)

    def _unindex(self, ref: Ref) -> None:
        held = self._objects.get(ref)
        if held is None:
            return
        owner = (held["metadata"].get("labels") or {}).get(OWNER_LABEL)
        refs = self._by_owner.get((ref[1], owner or ""))
        if refs is not None:
            refs.discard(ref)
            if not refs:
                del self._by_owner[(ref[1], owner or "")]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def owned(self, namespace: str, owner: str, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        """Objects of these kinds labelled as `owner`'s, in `namespace`."""
        with self._lock:
            refs = sorted(self._by_owner.get((namespace, owner), ()))
            return [self._objects[r] for r in refs if r[0] in kinds]

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


def matches(obj: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())

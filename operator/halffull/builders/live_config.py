"""The live-tuning fast path: which pods must be touched after their ConfigMap changed.

A kubelet refreshes a pod's ConfigMap volumes when it syncs the pod: on any change to the pod
object, else only every `syncFrequency` (60 s by default), so a patched alpha or beta would take
up to about a minute to reach the mounted file. The operator therefore writes a digest of what
each component reads live into an annotation on that component's running pods; a pod whose
annotation differs is patched, which makes its kubelet sync it at once. Pod templates never carry
the digest: tuning must not roll pods.

The router's digest leaves out the endpoint weights, which the metrics loop rewrites every few
seconds: the router reads them at the next ordinary kubelet sync, and a weight update does not
cost one pod write per router replica. Everything else in its file (policy, beta, poll period,
the set of endpoints) is in the digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from halffull.api.runtime_config import RouterEndpoint
from halffull.api.spec import LLMService
from halffull.builders import engine, meta, router

CONFIG_HASH_ANNOTATION = "serving.halffull.dev/config-hash"


def digests(
    svc: LLMService, endpoints: Sequence[RouterEndpoint], cluster_domain: str
) -> dict[str, str]:
    """Component label value -> digest of the configuration its pods read live."""
    out = {
        engine.COMPONENT: meta.desired_hash(
            engine.scheduler_config(svc).model_dump(mode="json", by_alias=True)
        )
    }
    if svc.spec.router.enabled:
        unweighted = [e.model_copy(update={"weight": 1.0}) for e in endpoints]
        cfg = router.router_config(svc, unweighted, cluster_domain)
        out[router.COMPONENT] = meta.desired_hash(cfg.model_dump(mode="json", by_alias=True))
    return out


def pods_to_touch(pods: Sequence[dict[str, Any]], wanted: dict[str, str]) -> list[tuple[str, str]]:
    """(pod name, digest) for each live pod whose annotation lags its component's digest. Pods
    not yet on a node read the ConfigMap when they start; terminating pods do not matter."""
    out = []
    for pod in pods:
        md = pod["metadata"]
        digest = wanted.get((md.get("labels") or {}).get("app.kubernetes.io/component", ""))
        if digest is None or md.get("deletionTimestamp") or not pod["spec"].get("nodeName"):
            continue
        if (md.get("annotations") or {}).get(CONFIG_HASH_ANNOTATION) != digest:
            out.append((md["name"], digest))
    return sorted(out)


def touch_patch(digest: str) -> dict[str, Any]:
    """The merge patch that brings a pod's annotation up to date."""
    return {"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: digest}}}

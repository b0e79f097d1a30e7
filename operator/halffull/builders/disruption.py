"""PodDisruptionBudgets for the engine and router pods, so that a node drain evicts one pod of each
at a time and the Service keeps serving.

`maxUnavailable: 1` rather than `minAvailable`: with a single replica, `minAvailable: 1` would
block every drain for good, while one pod at a time still lets drains finish.
"""

from __future__ import annotations

from typing import Any

from halffull import defaults as D
from halffull.api.spec import LLMService
from halffull.builders import meta

PDB_API_VERSIONS = ("policy/v1", "policy/v1beta1")
"""policy/v1 from Kubernetes 1.21; 1.20 serves only v1beta1, with the same fields used here."""


def pod_disruption_budget(
    svc: LLMService, name: str, component: str, api_version: str = PDB_API_VERSIONS[0]
) -> dict[str, Any]:
    if api_version not in PDB_API_VERSIONS:
        raise ValueError(f"PodDisruptionBudget apiVersion {api_version!r} is not one of "
                         f"{', '.join(PDB_API_VERSIONS)}")  # fmt: skip
    return meta.with_hash(
        {
            "apiVersion": api_version,
            "kind": "PodDisruptionBudget",
            "metadata": meta.object_meta(svc, name, component),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": meta.selector_labels(svc, component)},
            },
        }
    )


def graceful(pod_spec: dict[str, Any], container: dict[str, Any], drain_s: float) -> None:
    """Give a pod time to finish what it serves when it is deleted (rollout, drain, scale-down).

    The preStop sleep keeps the pod serving normally while Services and the routers' endpoint
    tables drop it; SIGTERM follows, and the process then has `drain_s` (plus a margin) to finish
    answers in flight before the kubelet kills it.
    """
    container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(D.PRESTOP_SLEEP_S)]}}}
    pod_spec["terminationGracePeriodSeconds"] = int(D.PRESTOP_SLEEP_S + drain_s + GRACE_MARGIN_S)


GRACE_MARGIN_S = 10

"""An image missing from the registry is the LLMService's Degraded reason, not only a pod event.

Here the kubelet's part is played by patching the pod's status as a kubelet does when it cannot
pull (the stand-in runs no containers); on the real node the pull itself fails."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster.test_operator import manifest
from tests.conftest import Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.cluster


def degraded(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    obj = cluster.get("llms", name, ns) or {}
    conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
    return conds.get("Degraded", {})


def test_image_pull_failure_sets_degraded_naming_the_image(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.require_local("plays the kubelet by patching pod status")
    cluster.apply(namespace, manifest("ip", replicas=1))
    pods: list[dict[str, Any]] = wait_for(
        lambda: [
            p for p in json.loads(cluster.kubectl(
                "get", "pods", "-n", namespace, "-o", "json",
                "-l", "app.kubernetes.io/component=router"))["items"]
            if p.get("status", {}).get("phase") == "Running"
        ],
        what="a running router pod",
    )  # fmt: skip
    pod = pods[0]
    image = pod["spec"]["containers"][0]["image"]
    waiting = {
        "reason": "ImagePullBackOff",
        "message": f'Back-off pulling image "{image}"',
    }
    status = {
        "status": {
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{
                "name": "router", "image": image, "imageID": "", "ready": False,
                "restartCount": 0, "state": {"waiting": waiting},
            }],
        }
    }  # fmt: skip
    name = pod["metadata"]["name"]
    cluster.kubectl("patch", "pod", name, "-n", namespace, "--subresource=status",
                    "--type", "strategic", "-p", json.dumps(status))  # fmt: skip
    cond = wait_for(
        lambda: (d := degraded(cluster, namespace, "ip")).get("reason") == "ImagePullFailed" and d,
        what="Degraded=ImagePullFailed",
    )
    assert cond["status"] == "True"
    assert image in cond["message"] and pod["metadata"]["name"] in cond["message"]
    events = cluster.kubectl("get", "events", "-n", namespace,
                             "--field-selector", "involvedObject.name=ip")  # fmt: skip
    assert "ImagePullFailed" in events
    # the image arrives: the pod runs, the condition clears
    cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", namespace, "--wait=false")
    wait_for(
        lambda: degraded(cluster, namespace, "ip").get("reason") == "AsExpected",
        what="Degraded cleared once the replacement pod runs",
    )

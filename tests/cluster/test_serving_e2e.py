"""End to end on the local control plane: the operator's children really run (the kubelet
stand-in starts the real router and fake engines on the pods' loopback addresses), requests go
through the router, the metrics loop turns the engines' /metrics into weights, and tuning
reaches the running router without a restart."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from halffull_dev.testing import prom
from tests.cluster.test_operator import manifest
from tests.conftest import E2E_IMAGES, Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.cluster


def conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj or {}).get("status", {}).get("conditions", [])}


def post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read()


def router_metric(ip: str, name: str) -> float:
    return prom.total(prom.scrape(f"http://{ip}:9000/metrics"), name)


@pytest.fixture
def e2e_operator(cluster: Cluster, namespace: str, tmp_path: Path) -> OperatorProcess:
    cluster.require_local("needs the kubelet stand-in's process runtime")
    op = OperatorProcess(cluster, namespace, tmp_path / "operator.log", images=E2E_IMAGES)
    op.start()
    yield op  # type: ignore[misc]
    op.stop()


def test_requests_flow_and_weights_follow_engine_metrics(
    cluster: Cluster, namespace: str, e2e_operator: OperatorProcess
) -> None:
    cluster.apply(
        namespace,
        manifest("e2e", replicas=2, metrics={"intervalSeconds": 1}, router={"pollIntervalMs": 50}),
    )
    wait_for(
        lambda: (
            conditions(cluster.get("llms", "e2e", namespace)).get("Ready", {}).get("status")
            == "True"
        ),
        timeout=90,
        what="Ready=True with running processes",
    )
    router_pod = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=router", "-o", "json"
        )
    )["items"][0]
    ip = router_pod["status"]["podIP"]
    model = "Qwen/Qwen2.5-0.5B-Instruct"
    status, body = post(
        f"http://{ip}:8000/v1/completions",
        {"model": model, "prompt": [1, 2, 3, 4], "max_tokens": 3},
    )
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3
    status, body = post(
        f"http://{ip}:8000/v1/chat/completions",
        {
            "model": model,
            "stream": True,
            "max_tokens": 3,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert status == 200 and body.rstrip().endswith(b"data: [DONE]")

    def table() -> list[dict[str, Any]] | None:
        obj = cluster.get("llms", "e2e", namespace) or {}
        rows = obj.get("status", {}).get("endpoints", [])
        ok = len(rows) == 2 and all("freeKvTokens" in r for r in rows)
        return rows if ok and conditions(obj)["MetricsAvailable"]["status"] == "True" else None

    rows = wait_for(table, timeout=30, what="status.endpoints from the engines' metrics")
    assert all(0 < r["weight"] <= 1 and r["address"].startswith("http://127.") for r in rows)
    cm = cluster.get("configmap", "e2e-router", namespace)
    assert cm is not None
    published = {e["name"]: e["weight"] for e in json.loads(cm["data"]["router.json"])["endpoints"]}
    assert published == {r["pod"]: r["weight"] for r in rows}

    # tuning reaches the running router (it reloads its projected ConfigMap), no restart
    engine_before = cluster.get("deployment", "e2e-engine", namespace)
    assert engine_before is not None
    assert router_metric(ip, "halffull_router_beta") != 4.0
    cluster.patch("llms", "e2e", namespace, {"spec": {"router": {"beta": 4.0}}})
    wait_for(
        lambda: router_metric(ip, "halffull_router_beta") == 4.0,
        timeout=30,
        what="the running router reports the new beta",
    )
    engine_after = cluster.get("deployment", "e2e-engine", namespace)
    assert engine_after is not None
    assert engine_after["metadata"]["generation"] == engine_before["metadata"]["generation"]
    assert router_pod["metadata"]["name"] in cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=router"
    )

    # an engine dies: its pod stops being Ready and leaves the table; the service stays Ready
    victim = rows[0]
    victim_ip = victim["address"].removeprefix("http://").split(":")[0]
    subprocess.run(
        ["pkill", "-f", f"halffull_dev.testing.fake_engine --host {victim_ip} "], check=True
    )

    def one_left() -> bool:
        obj = cluster.get("llms", "e2e", namespace) or {}
        pods = [r["pod"] for r in obj.get("status", {}).get("endpoints", [])]
        return victim["pod"] not in pods and len(pods) == 1

    wait_for(one_left, timeout=30, what="dead engine removed from status.endpoints")
    assert conditions(cluster.get("llms", "e2e", namespace))["Ready"]["status"] == "True"
    status, _ = post(
        f"http://{ip}:8000/v1/completions", {"model": model, "prompt": [1, 2], "max_tokens": 2}
    )
    assert status == 200

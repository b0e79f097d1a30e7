"""End to end on the real node: the operator's children run as containers (the router image and
the fake-engine image, built locally) on containerd under a real kubelet, requests go through
the router's Service (its cluster IP, kube-proxy), the metrics loop turns the engines' /metrics
into weights, tuning reaches the running router without a restart, and a killed engine container
is restarted by the kubelet while the router routes around it."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.cluster.test_operator import manifest
from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.node.conftest import conditions, kill_container, pods, post, router_metric

pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.slow]

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
# The fake engine takes its own flags through extraArgs (its image ignores vLLM's others).
FAKE_ENGINE = {"gpus": 0, "extraArgs": ["--seq-ms", "20"],
               "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}}}  # fmt: skip


def test_serving_on_the_real_node(
    node_cluster: Cluster, node_namespace: str, node_operator: OperatorProcess
) -> None:
    cluster, namespace = node_cluster, node_namespace
    cluster.apply(namespace, manifest("e2e", replicas=2, engine=FAKE_ENGINE,
                                      metrics={"intervalSeconds": 1},
                                      router={"pollIntervalMs": 50}))  # fmt: skip
    wait_for(
        lambda: (
            conditions(cluster.get("llms", "e2e", namespace)).get("Ready", {}).get("status")
            == "True"
        ),
        timeout=180,
        what="Ready=True with the containers running",
    )
    router_pod = pods(cluster, namespace, "router")[0]
    ip = router_pod["status"]["podIP"]
    assert not ip.startswith("127.")

    # the images' user and read-only root filesystem, as the kubelet runs them
    for pod in (router_pod, pods(cluster, namespace, "engine")[0]):
        name = pod["metadata"]["name"]
        assert cluster.kubectl("exec", "-n", namespace, name, "--", "id", "-u").strip() == "10001"
        denied = cluster.run("exec", "-n", namespace, name, "--", "touch", "/written")
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr

    # through the Service's cluster IP (kube-proxy), as clients in the cluster reach it
    svc = cluster.get("service", "e2e", namespace)
    assert svc is not None
    url = f"http://{svc['spec']['clusterIP']}:8000"

    # the router's Service has an address once the router is Ready (its engines in its table)
    def router_endpoints() -> object:
        eps = cluster.get("endpoints", "e2e", namespace) or {}
        return [a for s in eps.get("subsets") or [] for a in s.get("addresses") or []]

    wait_for(router_endpoints, timeout=120, what="the router in its Service's Endpoints")
    # a cluster IP that no Service holds is refused on this machine, never routed off it
    taken = cluster.kubectl("get", "svc", "-A", "-o", "jsonpath={.items[*].spec.clusterIP}")
    unused = next(f"10.96.255.{i}" for i in range(254, 0, -1) if f"10.96.255.{i}" not in taken)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((unused, 8000), timeout=10).close()
    status, body = post(f"{url}/v1/completions", {"model": MODEL, "prompt": [1, 2, 3, 4],
                                                  "max_tokens": 3})  # fmt: skip
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3
    status, body = post(f"{url}/v1/chat/completions", {
        "model": MODEL, "stream": True, "max_tokens": 3,
        "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert status == 200 and body.rstrip().endswith(b"data: [DONE]")

    def table() -> list[dict[str, Any]] | None:
        obj = cluster.get("llms", "e2e", namespace) or {}
        rows = obj.get("status", {}).get("endpoints", [])
        ok = len(rows) == 2 and all("freeKvTokens" in r for r in rows)
        return rows if ok and conditions(obj)["MetricsAvailable"]["status"] == "True" else None

    rows = wait_for(table, timeout=60, what="status.endpoints from the engines' metrics")
    assert all(0 < r["weight"] <= 1 and r["address"].startswith("http://10.") for r in rows)

    # tuning reaches the running router (the kubelet refreshes its ConfigMap volume); no restart
    engine_before = cluster.get("deployment", "e2e-engine", namespace)
    assert engine_before is not None
    assert router_metric(ip, "halffull_router_beta") != 4.0
    cluster.patch("llms", "e2e", namespace, {"spec": {"router": {"beta": 4.0}}})
    wait_for(lambda: router_metric(ip, "halffull_router_beta") == 4.0, timeout=150,
             interval=1, what="the running router reports the new beta")  # fmt: skip
    engine_after = cluster.get("deployment", "e2e-engine", namespace)
    assert engine_after is not None
    assert engine_after["metadata"]["generation"] == engine_before["metadata"]["generation"]
    router_now = pods(cluster, namespace, "router")[0]
    assert router_now["metadata"]["uid"] == router_pod["metadata"]["uid"]
    assert router_now["status"]["containerStatuses"][0]["restartCount"] == 0


def refused(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        pass
    return False


def test_killed_engine_is_restarted_while_the_router_routes_around_it(
    node_cluster: Cluster, node_namespace: str, node_operator: OperatorProcess
) -> None:
    cluster, namespace = node_cluster, node_namespace
    cluster.apply(namespace, manifest("kill", replicas=2, engine=FAKE_ENGINE,
                                      router={"pollIntervalMs": 50}))  # fmt: skip
    wait_for(lambda: conditions(cluster.get("llms", "kill", namespace)).get("Ready", {})
             .get("status") == "True", timeout=180, what="Ready=True")  # fmt: skip
    wait_for(lambda: len(((cluster.get("endpoints", "kill-engine", namespace) or {})
                          .get("subsets") or [{}])[0].get("addresses") or []) == 2,
             timeout=60, what="both engines in the engine Service's Endpoints")  # fmt: skip
    svc = cluster.get("service", "kill", namespace)
    assert svc is not None
    url = f"http://{svc['spec']['clusterIP']}:8000/v1/completions"
    victim = pods(cluster, namespace, "engine")[0]
    victim_ip = victim["status"]["podIP"]

    results: list[tuple[float, str]] = []  # (start time, outcome)
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status, body = post(url, {"model": MODEL, "prompt": [1, 2, 3],
                                          "max_tokens": 8, "stream": True})  # fmt: skip
                text = body.decode()
                ok = status == 200 and text.rstrip().endswith("data: [DONE]")
                outcome = "ok" if ok and '"error"' not in text else "in-band-error"
            except urllib.error.HTTPError as exc:
                outcome = f"http-{exc.code}"
            except OSError as exc:
                outcome = f"failed: {exc!r}"
            results.append((started, outcome))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    killed_at = time.monotonic()
    kill_container(victim)
    wait_for(lambda: refused(victim_ip, 8000), timeout=10, interval=0.02,
             what="the engine container dead (its port refused)")  # fmt: skip
    dead_at = time.monotonic()

    def ready_addresses() -> list[str]:
        eps = cluster.get("endpoints", "kill-engine", namespace) or {}
        return [a["ip"] for s in eps.get("subsets") or [] for a in s.get("addresses") or []]

    # readiness gates the Service: the victim leaves its Endpoints, then comes back restarted
    wait_for(lambda: victim_ip not in ready_addresses(), timeout=60, interval=0.2,
             what="the killed engine out of the engine Service's Endpoints")  # fmt: skip

    def restarted() -> bool:
        pod = cluster.get("pod", victim["metadata"]["name"], namespace) or {}
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return bool(statuses[0].get("restartCount", 0) >= 1 and statuses[0].get("ready"))

    wait_for(restarted, timeout=120, interval=0.5, what="the kubelet restarted the engine")
    wait_for(lambda: victim_ip in ready_addresses(), timeout=60, what="the engine back")
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(timeout=30)

    after = [outcome for started, outcome in results if started > dead_at]
    during = [outcome for started, outcome in results if killed_at - 1.0 <= started <= dead_at]
    assert len(after) > 10
    # zero failures among requests that started after the engine died (the router routes
    # around it). Those in flight at the kill end with an in-band error once their stream had
    # started, or the router's 502 before that (not retried: the engine may have run them;
    # see operator/halffull/router/failures.py); never a hang or a dropped connection.
    assert [o for o in after if o != "ok"] == []
    assert all(o in ("ok", "in-band-error", "http-502") for o in during), during

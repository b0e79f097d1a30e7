"""How long a `kubectl patch` of the router's tuning takes to reach the running router.

On the local cluster's real node (the router image and the fake-engine image, built by
hack/build-images.sh): patch `spec.router.beta` N times and time each stage from the patch: the
ConfigMap written by the operator, the file projected into the router pod by the kubelet (up to
its sync period plus its ConfigMap cache delay), and the router's /metrics reporting the new beta
(`halffull_router_beta`).

    .venv/bin/python bench/tuning_latency.py --patches 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client, config

from halffull_dev.cluster import images
from halffull_dev.cluster.controlplane import free_port
from halffull_dev.cluster.local import LocalCluster
from halffull_dev.testing import prom

NS = "default"
NAME = "tuning"


def router_beta(ip: str) -> float:
    return prom.total(prom.scrape(f"http://{ip}:9000/metrics"), "halffull_router_beta")


def wait(fn, limit_s: float = 60.0) -> float:  # type: ignore[no-untyped-def]
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        if fn():
            return time.perf_counter()
        time.sleep(0.005)
    raise TimeoutError("stage not reached")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patches", type=int, default=10)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="halffull-tuning-"))
    images.build(["pause", "router", "fake-engine"])
    cache = images.ImageCache()
    with LocalCluster(workdir / "cp", node="real") as cluster:
        api = config.new_client_from_config(str(cluster.kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        op = subprocess.Popen(
            [sys.executable, "-m", "halffull.cli", "operator", "-n", NS,
             "--metrics-port", str(free_port()), "--health-port", str(free_port()),
             "--engine-image", cache.require("fake-engine"),
             "--router-image", cache.require("router")],
            env=env, stdout=(workdir / "operator.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            body = {
                "apiVersion": "serving.halffull.dev/v1alpha1",
                "kind": "LLMService",
                "metadata": {"name": NAME},
                "spec": {"model": "m", "replicas": 1, "engine": {"gpus": 0}},
            }
            custom.create_namespaced_custom_object(
                "serving.halffull.dev", "v1alpha1", NS, "llmservices", body
            )

            def router_ready() -> str | None:
                pods = core.list_namespaced_pod(
                    NS, label_selector="app.kubernetes.io/component=router"
                ).items
                ok = [
                    p
                    for p in pods
                    if any(
                        c.type == "Ready" and c.status == "True" for c in p.status.conditions or []
                    )
                ]
                return ok[0].status.pod_ip if ok else None

            wait(router_ready, 120)
            ip = router_ready()
            assert ip is not None
            pods_dir = workdir / "cp" / "node" / "kubelet" / "pods"
            projected = next(pods_dir.glob("*/volumes/kubernetes.io~configmap/config"))
            stages: dict[str, list[float]] = {"ConfigMap written": [], "file projected": [],
                                              "router reports the new beta": []}  # fmt: skip
            for i in range(args.patches):
                beta = 1.0 + 0.5 * (i + 1)
                t0 = time.perf_counter()
                custom.patch_namespaced_custom_object(
                    "serving.halffull.dev", "v1alpha1", NS, "llmservices", NAME,
                    {"spec": {"router": {"beta": beta}}},
                )  # fmt: skip

                def cm_has(beta: float = beta) -> bool:
                    cm = core.read_namespaced_config_map(f"{NAME}-router", NS)
                    return bool(json.loads(cm.data["router.json"])["beta"] == beta)

                def file_has(beta: float = beta) -> bool:
                    try:
                        text = (projected / "router.json").read_text()
                    except OSError:
                        return False
                    return bool(json.loads(text)["beta"] == beta)

                t1 = wait(cm_has)
                t2 = wait(file_has)
                t3 = wait(lambda: router_beta(ip) == beta)  # noqa: B023
                stages["ConfigMap written"].append(t1 - t0)
                stages["file projected"].append(t2 - t0)
                stages["router reports the new beta"].append(t3 - t0)
        finally:
            op.terminate()
            op.wait(timeout=20)
    print(
        f"\nTuning latency, {args.patches} patches of spec.router.beta (seconds from the patch)\n"
    )
    print("| stage | p50 | max |")
    print("|---|---|---|")
    for stage, values in stages.items():
        print(f"| {stage} | {statistics.median(values):.3f} | {max(values):.3f} |")
    print("\nThe projection delay is the kubelet's sync period plus its ConfigMap cache delay")
    print("(up to about a minute with the default syncFrequency of 60 s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

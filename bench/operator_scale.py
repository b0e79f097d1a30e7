"""Operator at scale on the local control plane: apply N LLMServices, then watch it idle.

Reports p50/p99 time from create to all six children existing and to the first status write,
API writes by the operator (its own counter) and by everyone (the apiserver's counter) during a
steady-state window, and the operator's RSS. Not a test: it prints a table.

    .venv/bin/python bench/operator_scale.py --count 50 --steady-seconds 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from halffull_dev.cluster.controlplane import free_port
from halffull_dev.cluster.local import LocalCluster
from halffull_dev.testing import prom

NS = "bench"
CHILD_SUFFIXES = {
    "Deployment": ("-engine", "-router"),
    "Service": ("-engine", ""),
    "ConfigMap": ("-scheduler", "-router"),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Recorder:
    """Watches children and LLMServices, recording when each first appears."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.first_seen: dict[tuple[str, str], float] = {}
        self.status_at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def _watch(self, kind: str, fn: Any, *args: Any) -> None:
        w = watch.Watch()
        while not self.stop.is_set():
            for ev in w.stream(fn, *args, timeout_seconds=2, _preload_content=True):
                obj = ev["object"]
                now = time.perf_counter()
                if kind == "LLMService":
                    if obj.get("status", {}).get("observedGeneration"):
                        with self.lock:
                            self.status_at.setdefault(obj["metadata"]["name"], now)
                    continue
                with self.lock:
                    self.first_seen.setdefault((kind, obj.metadata.name), now)

    def start(self) -> None:
        core, apps = client.CoreV1Api(self.api), client.AppsV1Api(self.api)
        custom = client.CustomObjectsApi(self.api)
        targets = [
            ("Deployment", apps.list_namespaced_deployment, NS),
            ("Service", core.list_namespaced_service, NS),
            ("ConfigMap", core.list_namespaced_config_map, NS),
            ("LLMService", custom.list_namespaced_custom_object,
             "serving.halffull.dev", "v1alpha1", NS, "llmservices"),
        ]  # fmt: skip
        for kind, fn, *args in targets:
            threading.Thread(target=self._watch, args=(kind, fn, *args), daemon=True).start()

    def children_done(self, name: str) -> float | None:
        with self.lock:
            times = [
                self.first_seen.get((kind, name + suffix))
                for kind, suffixes in CHILD_SUFFIXES.items()
                for suffix in suffixes
            ]
        return None if any(t is None for t in times) else max(t for t in times if t)


WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"})


def apiserver_writes(cluster: LocalCluster) -> dict[str, float]:
    """Write requests the apiserver counted, by "verb resource code"."""
    text = cluster.control_plane.kubectl("get", "--raw", "/metrics").stdout
    out: dict[str, float] = {}
    for s in prom.parse(text):
        if s.name == "apiserver_request_total" and s.labels.get("verb") in WRITE_VERBS:
            key = f"{s.labels['verb']} {s.labels.get('resource')} {s.labels.get('code')}"
            out[key] = out.get(key, 0.0) + s.value
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--steady-seconds", type=float, default=60)
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="halffull-bench-"))
    with LocalCluster(workdir / "cp") as cluster:
        api = config.new_client_from_config(str(cluster.kubeconfig))
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
        metrics_port = free_port()
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        log = (workdir / "operator.log").open("wb")
        op = subprocess.Popen(
            [sys.executable, "-m", "halffull.cli", "operator", "-n", NS,
             "--metrics-port", str(metrics_port), "--health-port", str(free_port())],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    prom.scrape(metrics_url)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            time.sleep(2)  # let kopf start its watches
            recorder = Recorder(api)
            recorder.start()
            time.sleep(1)
            custom = client.CustomObjectsApi(api)
            created: dict[str, float] = {}
            for i in range(args.count):
                name = f"svc-{i:03d}"
                body = {
                    "apiVersion": "serving.halffull.dev/v1alpha1",
                    "kind": "LLMService",
                    "metadata": {"name": name},
                    "spec": {"model": "Qwen/Qwen2.5-0.5B-Instruct", "replicas": 1 + i % 3},
                }
                created[name] = time.perf_counter()
                custom.create_namespaced_custom_object(
                    "serving.halffull.dev", "v1alpha1", NS, "llmservices", body
                )
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                done = [recorder.children_done(n) for n in created]
                if all(done) and len(recorder.status_at) == len(created):
                    break
                time.sleep(0.1)
            child_lat = [recorder.children_done(n) - t for n, t in created.items()]  # type: ignore[operator]
            status_lat = [recorder.status_at[n] - t for n, t in created.items()]
            # settle: wait until every object reports Ready (kubelet stand-in runs the pods)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                items = custom.list_namespaced_custom_object(
                    "serving.halffull.dev", "v1alpha1", NS, "llmservices"
                )["items"]
                ready = sum(
                    any(c["type"] == "Ready" and c["status"] == "True"
                        for c in it.get("status", {}).get("conditions", []))
                    for it in items
                )  # fmt: skip
                if ready == len(created):
                    break
                time.sleep(0.5)
            time.sleep(5)
            m0, a0 = prom.scrape(metrics_url), apiserver_writes(cluster)
            time.sleep(args.steady_seconds)
            m1, a1 = prom.scrape(metrics_url), apiserver_writes(cluster)
            w = "halffull_operator_api_writes_total"
            r = "halffull_operator_reconciles_total"
            op_writes = prom.total(m1, w) - prom.total(m0, w)
            reconciles = prom.total(m1, r) - prom.total(m0, r)
            rss = rss_mb(op.pid)
            recorder.stop.set()
        finally:
            op.terminate()
            op.wait(timeout=20)

    print(f"\nOperator at scale: {args.count} LLMServices on the local control plane "
          f"(kube-apiserver v1.20.2, {os.cpu_count()} cores)\n")  # fmt: skip
    print("| measure | p50 | p99 | max |")
    print("|---|---|---|---|")
    for label, vals in (("create -> all 6 children exist (s)", child_lat),
                        ("create -> first status write (s)", status_lat)):  # fmt: skip
        print(f"| {label} | {statistics.median(vals):.3f} | {percentile(vals, 0.99):.3f} | "
              f"{max(vals):.3f} |")  # fmt: skip
    print(f"\n| steady state, {args.steady_seconds:.0f} s | value |")
    print("|---|---|")
    print(f"| operator API writes | {op_writes:.0f} |")
    others = {k: a1[k] - a0.get(k, 0.0) for k in a1 if a1[k] - a0.get(k, 0.0) > 0}
    print(f"| all API writes seen by the apiserver | {sum(others.values()):.0f} |")
    for key, n in sorted(others.items(), key=lambda kv: -kv[1])[:4]:
        print(f"| &nbsp;&nbsp;of which `{key}` | {n:.0f} |")
    print(f"| reconciles run (periodic resync included) | {reconciles:.0f} |")
    print(f"| operator RSS (MB) | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

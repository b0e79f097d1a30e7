"""How long a patched spec.scheduler.alpha and spec.router.beta take to be in force, with the
kubelet's ConfigMap projection alone ("default": up to its syncFrequency, 60 s by default) and
with the operator's fast path ("fast": it patches the config-hash annotation on the pods that read
the ConfigMap, so the kubelet syncs them at once; docs/operator.md).

Needs a cluster with a real kubelet (KUBECONFIG): the stand-in of the local control plane projects
files on its own timer and would measure nothing. For each path the benchmark runs its own
operator (`halffull operator -n NS`, with or without --no-tuning-fast-path) for a fresh namespace,
applies the LLMService in --manifest there, waits until it is Ready, then makes --patches patches,
each changing alpha and beta together, and times from the patch call to the engines' plugin
gauge `halffull_scheduler_alpha` (pod port 9464) and the routers' `halffull_router_beta` (pod
port 9000) reporting the new values on every pod. Pod addresses must be reachable from here (on
the local node they are). Prints p50, p99 and max per path and field.

    KUBECONFIG=... .venv/bin/python bench/live_tuning.py --manifest examples/llmservice-cpu.yaml \\
        --engine-image IMAGE --router-image IMAGE --patches 10
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from halffull.builders.meta import ENGINE_PLUGIN_METRICS_PORT, ROUTER_ADMIN_PORT
from halffull_dev.cluster.controlplane import free_port
from halffull_dev.testing import prom

GROUP, VERSION, PLURAL = "serving.halffull.dev", "v1alpha1", "llmservices"
ROOT = Path(__file__).resolve().parent.parent
GAUGES = {  # field -> (component, metrics port, gauge)
    "scheduler.alpha": ("engine", ENGINE_PLUGIN_METRICS_PORT, "halffull_scheduler_alpha"),
    "router.beta": ("router", ROUTER_ADMIN_PORT, "halffull_router_beta"),
}


def wait(fn: Callable[[], Any], limit_s: float, what: str, step_s: float = 0.02) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if got := fn():
                return got
        except Exception:  # not there yet: pods starting, metrics not served yet
            pass
        time.sleep(step_s)
    raise TimeoutError(f"{what}: not reached within {limit_s:.0f} s")


def ready_ips(core: client.CoreV1Api, ns: str, component: str) -> list[str]:
    pods = core.list_namespaced_pod(ns, label_selector=f"app.kubernetes.io/component={component}")
    return [
        p.status.pod_ip
        for p in pods.items
        if p.status.pod_ip
        and not p.metadata.deletion_timestamp
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def reports(ips: list[str], port: int, gauge: str, value: float) -> bool:
    urls = (f"http://{ip}:{port}/metrics" for ip in ips)
    return all(abs(prom.total(prom.scrape(u, 2.0), gauge) - value) < 1e-9 for u in urls)


def run_path(args: argparse.Namespace, fast: bool, workdir: Path) -> dict[str, list[float]]:
    api = config.new_client_from_config(args.kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = f"live-tuning-{'fast' if fast else 'default'}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    body = yaml.safe_load(Path(args.manifest).read_text())
    name = body["metadata"]["name"]
    cmd = [sys.executable, "-m", "halffull.cli", "operator", "-n", ns,
           "--metrics-port", str(free_port()), "--health-port", str(free_port()),
           "--engine-image", args.engine_image, "--router-image", args.router_image,
           "--tuning-fast-path" if fast else "--no-tuning-fast-path"]  # fmt: skip
    log = (workdir / f"operator-{ns}.log").open("wb")
    env = {**os.environ, "KUBECONFIG": args.kubeconfig}
    op = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    out: dict[str, list[float]] = {field: [] for field in args.fields.split(",")}
    try:
        wait(lambda: core.list_namespaced_service_account(ns).items, 30, "default ServiceAccount")
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
        gauges = {f: GAUGES[f] for f in args.fields.split(",")}
        ips = {
            comp: wait(lambda c=comp: ready_ips(core, ns, c), args.ready_timeout, f"{comp} ready")
            for comp, _, _ in gauges.values()
        }
        for comp, port, gauge in gauges.values():  # metrics served before the clock runs
            urls = [f"http://{ip}:{port}/metrics" for ip in ips[comp]]
            wait(lambda u=urls: [prom.scrape(x) for x in u], 60, f"{gauge} served")
        for i in range(args.patches):
            alpha, beta = round(0.2 + 0.01 * i, 4), float(100 + i)
            values = {"scheduler.alpha": alpha, "router.beta": beta}
            # start anywhere in the kubelet's sync period
            time.sleep(random.uniform(0.0, args.jitter_s))
            t0 = time.monotonic()
            custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                {"spec": {"scheduler": {"alpha": alpha}, "router": {"beta": beta}}})  # fmt: skip
            pending = dict(gauges)
            deadline = t0 + args.patch_timeout
            while pending and time.monotonic() < deadline:
                for field, (comp, port, gauge) in list(pending.items()):
                    try:
                        done = reports(ips[comp], port, gauge, values[field])
                    except OSError:
                        done = False
                    if done:
                        out[field].append(time.monotonic() - t0)
                        del pending[field]
                time.sleep(0.02)
            for field in pending:
                out[field].append(float("inf"))
            took = ", ".join(f"{f} {v[-1]:.2f} s" for f, v in out.items())
            print(f"  {'fast' if fast else 'default'} patch {i + 1}: {took}", flush=True)
    finally:
        op.terminate()
        try:
            op.wait(timeout=20)
        except subprocess.TimeoutExpired:
            op.kill()
        log.close()
        core.delete_namespace(ns)
    return out


def quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    ap.add_argument("--manifest", default=str(ROOT / "examples" / "llmservice-cpu.yaml"))
    ap.add_argument("--engine-image", default=os.environ.get("HALFFULL_ENGINE_IMAGE", ""))
    ap.add_argument("--router-image", default=os.environ.get("HALFFULL_ROUTER_IMAGE", ""))
    ap.add_argument("--patches", type=int, default=10)
    ap.add_argument("--paths", default="fast,default", help="fast, default or both")
    ap.add_argument("--fields", default=",".join(GAUGES), help="scheduler.alpha, router.beta")
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    ap.add_argument("--patch-timeout", type=float, default=180.0)
    ap.add_argument("--jitter-s", type=float, default=3.0)
    args = ap.parse_args()
    if not args.kubeconfig:
        ap.error("set KUBECONFIG (or --kubeconfig) to a cluster with a real kubelet")
    if not (args.engine_image and args.router_image):
        ap.error("--engine-image and --router-image (or HALFFULL_*_IMAGE) are required")
    workdir = Path(tempfile.mkdtemp(prefix="halffull-live-tuning-"))
    results = {}
    for path in args.paths.split(","):
        print(f"{path} path: {args.patches} patches", flush=True)
        results[path] = run_path(args, path == "fast", workdir)
    print("\nLive tuning: seconds from the patch to every pod's metrics reporting the new value")
    print(f"({args.patches} patches of alpha and beta together; operator logs in {workdir})\n")
    print("| path | field | n | p50 s | p99 s | max s |")
    print("|---|---|---|---|---|---|")
    for path, fields in results.items():
        for field, values in fields.items():
            print(f"| {path} | spec.{field} | {len(values)} | {statistics.median(values):.2f} | "
                  f"{quantile(values, 0.99):.2f} | {max(values):.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

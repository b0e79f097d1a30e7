"""Operator at scale on the local control plane, this checkout against a baseline commit, side by
side in the same run.

Both operators run at once against one control plane (etcd, kube-apiserver and
kube-controller-manager on this machine), each serving its own namespace (`-n`) plus a shared
`noise` namespace that holds no LLMService. There is no node: the pods of the children stay
Pending, and no LLMService ever becomes Ready. Phases, each taken by both operators in turn:

1. idle and reconcile latency (create -> all six children, one at a time) on an empty cluster;
2. the same with 5,000 unrelated ConfigMaps and 2,000 unrelated Pods (a node selector nothing
   matches) in `noise`; then `noise` is deleted;
3. a burst of N LLMServices created at once: p50/p99 create -> all children, -> first status;
4. with M existing: one more at a time (p99 over the tries), writes in a steady window, RSS.

Not a test: it prints tables. A full run takes about 15 minutes on 2 cores.

    .venv/bin/python bench/operator_scale.py                 # baseline main, all phases
    .venv/bin/python bench/operator_scale.py --existing 100 --steady-seconds 20 --noise-scale 0.1
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from halffull_dev.cluster.controlplane import free_port
from halffull_dev.cluster.local import LocalCluster
from halffull_dev.testing import prom

ROOT = Path(__file__).resolve().parent.parent
GROUP, VERSION, PLURAL = "serving.halffull.dev", "v1alpha1", "llmservices"
NOISE = "noise"
CHILD_SUFFIXES = {
    "Deployment": ("-engine", "-router"),
    "Service": ("-engine", ""),
    "ConfigMap": ("-scheduler", "-router"),
}
CHILD_RESOURCES = frozenset({"configmaps", "services", "deployments", "poddisruptionbudgets"})
"""What only the operators write (the controller-manager writes their status, not these)."""
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Recorder:
    """Watches children and LLMServices in some namespaces, recording when each first appears.
    One list, then one long watch per kind and namespace (never a re-list per loop)."""

    def __init__(self, api: client.ApiClient, namespaces: Iterable[str]) -> None:
        self.api = api
        self.namespaces = list(namespaces)
        self.first_seen: dict[tuple[str, str, str], float] = {}
        self.status_at: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def _watch(self, kind: str, ns: str, fn: Callable[..., Any], *args: Any) -> None:
        rv = None
        while not self.stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(fn, *args, resource_version=rv, timeout_seconds=30,
                                   allow_watch_bookmarks=False):  # fmt: skip
                    obj = ev["object"]
                    md = obj["metadata"] if isinstance(obj, dict) else obj.metadata.to_dict()
                    rv = md.get("resource_version") or md.get("resourceVersion")
                    self._seen(kind, ns, obj, md)
            except ApiException as exc:
                if exc.status == 410:
                    rv = None  # too old: list again
                else:
                    time.sleep(0.5)
            except (OSError, urllib3.exceptions.HTTPError):  # the control plane stops at the end
                time.sleep(0.5)

    def _seen(self, kind: str, ns: str, obj: Any, md: dict[str, Any]) -> None:
        now = time.perf_counter()
        with self.lock:
            if kind == "LLMService":
                if (obj.get("status") or {}).get("observedGeneration"):
                    self.status_at.setdefault((ns, md["name"]), now)
            else:
                self.first_seen.setdefault((ns, kind, md["name"]), now)

    def start(self) -> None:
        core, apps = client.CoreV1Api(self.api), client.AppsV1Api(self.api)
        custom = client.CustomObjectsApi(self.api)
        for ns in self.namespaces:
            for kind, fn, *args in (
                ("Deployment", apps.list_namespaced_deployment, ns),
                ("Service", core.list_namespaced_service, ns),
                ("ConfigMap", core.list_namespaced_config_map, ns),
                ("LLMService", custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL),
            ):
                threading.Thread(
                    target=self._watch, args=(kind, ns, fn, *args), daemon=True
                ).start()

    def children_done(self, ns: str, name: str) -> float | None:
        with self.lock:
            times = [
                self.first_seen.get((ns, kind, name + suffix))
                for kind, suffixes in CHILD_SUFFIXES.items()
                for suffix in suffixes
            ]
        return None if any(t is None for t in times) else max(t for t in times if t)


@dataclass
class Variant:
    """One operator under test: its code, namespace and process."""

    label: str
    pythonpath: str
    namespace: str
    workdir: Path
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def trace_path(self) -> Path:
        """The operator's timeline (`halffull.controller.trace`; a baseline may not write one)."""
        return self.workdir / f"trace-{self.namespace}.jsonl"

    def start(self, kubeconfig: Path) -> None:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": self.pythonpath,
               "HALFFULL_TRACE": str(self.trace_path)}  # fmt: skip
        log = (self.workdir / f"operator-{self.label}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "halffull.cli", "operator", "-n", self.namespace, "-n", NOISE,
             "--metrics-port", str(self.metrics_port), "--health-port", str(free_port())],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                self.metrics()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=20)
        self.proc.kill()  # nothing happens when it has exited
        self.proc.wait()

    def metrics(self) -> list[prom.Sample]:
        return prom.scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def writes(self) -> float:
        return prom.total(self.metrics(), "halffull_operator_api_writes_total")

    def writes_by_kind(self) -> dict[str, float]:
        """Writes so far by "verb kind" (child applies apart from status patches and Events)."""
        out: dict[str, float] = {}
        for s in self.metrics():
            if s.name == "halffull_operator_api_writes_total":
                key = f"{s.labels.get('verb')} {s.labels.get('kind')}"
                out[key] = out.get(key, 0.0) + s.value
        return out

    def reconciles(self) -> float:
        return prom.total(self.metrics(), "halffull_operator_reconciles_total")

    def rss_mb(self, field: str = "VmRSS") -> float:
        """Resident memory now (VmRSS) or at its peak so far (VmHWM)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        assert self.proc is not None
        return proc_cpu_s(self.proc.pid)


def spread(i: int, _: int) -> int:
    """Replicas 1, 2, 3, 1, ... for the i-th LLMService of a burst."""
    return 1 + i % 3


def body(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LLMService",
        "metadata": {"name": name},
        "spec": {"model": "Qwen/Qwen2.5-0.5B-Instruct", "replicas": replicas},
    }


class Bench:
    def __init__(self, cluster: LocalCluster, variants: list[Variant]) -> None:
        self.cluster = cluster
        self.variants = variants
        self.api = config.new_client_from_config(str(cluster.kubeconfig))
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.recorder = Recorder(self.api, [v.namespace for v in variants])
        # (phase, measure, by variant, the machine's 1-minute load average when measured)
        self.rows: list[tuple[str, str, dict[str, str], float]] = []
        self.create_returned: dict[tuple[str, str], float] = {}

    def create(self, ns: str, names: list[str], replicas: Callable[[int], int]) -> dict[str, float]:
        created = {}
        for i, name in enumerate(names):
            created[name] = time.perf_counter()
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, body(name, replicas(i))
            )
            self.create_returned[ns, name] = time.perf_counter()
        return created

    def wait_children(
        self, ns: str, created: dict[str, float], limit_s: float = 600
    ) -> list[float]:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            done = {n: self.recorder.children_done(ns, n) for n in created}
            if all(done.values()):
                return [done[n] - t for n, t in created.items()]  # type: ignore[operator]
            time.sleep(0.02)
        raise TimeoutError(f"children in {ns} not complete after {limit_s} s")

    def wait_status(self, ns: str, names: Iterable[str], limit_s: float = 600) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            with self.recorder.lock:
                if all((ns, n) in self.recorder.status_at for n in names):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"status in {ns} not written after {limit_s} s")

    def record(self, phase: str, measure: str, values: dict[str, str]) -> None:
        load = os.getloadavg()[0]
        self.rows.append((phase, measure, values, load))
        print(f"[{time.strftime('%H:%M:%S')}] {phase} | {measure} | {values} | load {load:.1f}",
              flush=True)  # fmt: skip

    def singles(self, phase: str, tries: int, tag: str) -> None:
        """One LLMService at a time, the variants taking turns: create -> all children."""
        lat: dict[str, list[float]] = {v.label: [] for v in self.variants}
        every: dict[str, dict[str, float]] = {v.label: {} for v in self.variants}
        for i in range(tries):
            for v in self.variants:
                name = f"{tag}-{i:03d}"
                created = self.create(v.namespace, [name], lambda _: 1)
                lat[v.label] += self.wait_children(v.namespace, created)
                every[v.label] |= created
                time.sleep(0.3)
        self.record(phase, f"one more, create -> children p50 / p99 over {tries} (s)",
                    {k: f"{statistics.median(x):.3f} / {percentile(x, 0.99):.3f}"
                     for k, x in lat.items()})  # fmt: skip
        for v in self.variants:
            self.attribute(v, every[v.label])

    def idle(self, phase: str, seconds: float) -> None:
        """RSS, CPU and API writes of each operator over a quiet window."""
        c0 = {v.label: v.cpu_s() for v in self.variants}
        w0 = {v.label: v.writes_by_kind() for v in self.variants}
        a0 = apiserver_writes(self.cluster)
        time.sleep(seconds)
        cpu = {v.label: 100 * (v.cpu_s() - c0[v.label]) / seconds for v in self.variants}
        by_kind = {
            v.label: {k: n - w0[v.label].get(k, 0.0) for k, n in v.writes_by_kind().items()}
            for v in self.variants
        }
        writes = {label: sum(kinds.values()) for label, kinds in by_kind.items()}
        for label, kinds in by_kind.items():
            named = ", ".join(f"{k}: {n:.0f}" for k, n in sorted(kinds.items()) if n)
            print(f"    {label}: writes in the window by kind: {named or 'none'}", flush=True)
        a1 = apiserver_writes(self.cluster)
        self.record(
            phase, "operator RSS (MB)", {v.label: f"{v.rss_mb():.0f}" for v in self.variants}
        )
        self.record(phase, f"operator CPU idle, {seconds:.0f} s (% of a core)",
                    {k: f"{x:.1f}" for k, x in cpu.items()})  # fmt: skip
        self.record(phase, f"operator API writes in {seconds:.0f} s steady",
                    {k: f"{x:.0f}" for k, x in writes.items()})  # fmt: skip
        total = sum(a1[k] - a0.get(k, 0.0) for k in a1)
        print(f"    all API writes the apiserver counted in the window: {total:.0f}", flush=True)

    def noise(self, scale: float) -> tuple[int, int]:
        """Unrelated ConfigMaps and Pods (a node selector nothing matches) in `noise`."""
        n_cm, n_pod = round(5000 * scale), round(2000 * scale)
        cm = {"data": {"k": "x" * 200}}
        container = {"name": "c", "image": "example.invalid/none:1"}
        pod = {
            "spec": {"nodeSelector": {"bench.halffull.dev/none": "x"}, "containers": [container]}
        }

        def make(i: int) -> None:
            if i < n_cm:
                self.core.create_namespaced_config_map(
                    NOISE, {"metadata": {"name": f"cm-{i}"}, **cm}, _preload_content=False
                )
            else:
                self.core.create_namespaced_pod(
                    NOISE, {"metadata": {"name": f"pod-{i}", "labels": {"app": "noise"}}, **pod},
                    _preload_content=False,
                )  # fmt: skip

        while True:  # pods need the namespace's default ServiceAccount
            try:
                self.core.read_namespaced_service_account("default", NOISE)
                break
            except ApiException:
                time.sleep(0.2)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(make, range(n_cm + n_pod)))
        return n_cm, n_pod

    def noise_phase(self, args: argparse.Namespace) -> None:
        """What unrelated objects cost each operator: CPU while they are created (their events),
        memory, and reconcile latency among them; then they are deleted."""
        c0 = {v.label: v.cpu_s() for v in self.variants}
        started = time.monotonic()
        n_cm, n_pod = self.noise(args.noise_scale)
        took = time.monotonic() - started
        print(f"    created {n_cm} ConfigMaps and {n_pod} Pods in {NOISE} in {took:.0f} s",
              flush=True)  # fmt: skip
        time.sleep(5)
        phase = f"+{n_cm} ConfigMaps, {n_pod} Pods unrelated"
        self.record(phase, "operator CPU while they were created (s)",
                    {v.label: f"{v.cpu_s() - c0[v.label]:.1f}" for v in self.variants})  # fmt: skip
        self.record(phase, "operator peak RSS so far (MB)",
                    {v.label: f"{v.rss_mb('VmHWM'):.0f}" for v in self.variants})  # fmt: skip
        self.idle(phase, args.idle_seconds)
        self.singles(phase, max(5, args.tries // 2), "noisy")
        self.core.delete_namespace(NOISE)
        while True:
            try:
                self.core.read_namespace(NOISE)
                time.sleep(1)
            except ApiException:
                break

    def burst(self, count: int) -> None:
        """N LLMServices per operator, created interleaved (a, b, a, b, ...) so that both see
        the same load; a burst run after the other's would meet its pods and ReplicaSets."""
        names = [f"burst-{i:03d}" for i in range(count)]
        created: dict[str, dict[str, float]] = {v.label: {} for v in self.variants}
        before, wall = self.cpu_by_process(), time.perf_counter()
        served_before = apiserver_write_seconds(self.cluster)
        writes_before = apiserver_writes(self.cluster)
        for i, name in enumerate(names):
            for v in self.variants:
                created[v.label] |= self.create(v.namespace, [name], functools.partial(spread, i))
        for v in self.variants:
            lat = self.wait_children(v.namespace, created[v.label])
            self.wait_status(v.namespace, names)
            with self.recorder.lock:
                st = [self.recorder.status_at[(v.namespace, n)] - created[v.label][n]
                      for n in names]  # fmt: skip
            for what, vals in (("all 6 children", lat), ("first status", st)):
                summary = f"{statistics.median(vals):.3f} / {percentile(vals, 0.99):.3f}"
                self.record(f"burst of {count}", f"create -> {what} p50 / p99 (s)",
                            {v.label: summary})  # fmt: skip
            self.attribute(v, created[v.label])
        after, wall = self.cpu_by_process(), time.perf_counter() - wall
        print(f"  CPU seconds in the burst's {wall:.1f} s: "
              + ", ".join(f"{k} {after[k] - before.get(k, 0.0):.1f}" for k in after)
              + f"; {machine_load()}")  # fmt: skip
        writes: dict[str, float] = {}
        for key, n in apiserver_writes(self.cluster).items():
            verb, resource, _ = key.split(" ")
            writes[f"{verb} {resource}"] = (
                writes.get(f"{verb} {resource}", 0.0) + n - (writes_before.get(key, 0.0))
            )
        total = sum(writes.values())
        print(f"  writes the API server served in the burst, all clients ({total:.0f}): "
              + ", ".join(f"{k} {n:.0f}" for k, n in sorted(writes.items(), key=lambda kv: -kv[1])
                          if n))  # fmt: skip
        served = apiserver_write_seconds(self.cluster)
        for verb, (total, n) in served.items():
            t0, n0 = served_before.get(verb, (0.0, 0.0))
            if n > n0:
                print(
                    f"  API server's own time per {verb}"
                    f"{'' if 'children' in verb else ' (all clients)'}: "
                    f"{(total - t0) / (n - n0) * 1000:.0f} ms mean over {n - n0:.0f}"
                )

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far of the control plane's processes and the operators."""
        out = {name: proc_cpu_s(p.pid) for name, p in self.cluster.control_plane._procs.items()}
        for v in self.variants:
            if v.proc is not None:
                out[f"operator ({v.label})"] = v.cpu_s()
        return out

    def attribute(self, v: Variant, created: dict[str, float]) -> None:
        """Where each LLMService's create -> all children went, from the operator's timeline
        (`trace.py`) and the recorder's watches: the median and the slowest three."""
        if not v.trace_path.exists() or not v.trace_path.stat().st_size:
            return
        marks = [json.loads(line) for line in v.trace_path.read_text().splitlines()]
        rows = []
        for name, t0 in created.items():
            done = self.recorder.children_done(v.namespace, name)
            mine = [m for m in marks if m["ns"] == v.namespace and m["name"] == name]
            if done is None or not mine:
                continue
            parts = split_latency(t0, self.create_returned[v.namespace, name], done, mine)
            if parts is not None:
                rows.append((done - t0, name, parts))
        rows.sort()
        if not rows:
            return
        print(f"  {v.label}: create -> all children, split (s): " + " | ".join(PARTS))
        for total, name, parts in [rows[len(rows) // 2], *rows[-3:]]:
            print(f"    {name} {total:.3f}: " + " | ".join(f"{parts[p]:.3f}" for p in PARTS))

    def existing(self, args: argparse.Namespace) -> None:
        phase = f"{args.existing} existing"
        more: dict[str, list[str]] = {}
        for v in self.variants:
            have = len(self.custom.list_namespaced_custom_object(
                GROUP, VERSION, v.namespace, PLURAL)["items"])  # fmt: skip
            more[v.label] = [f"exist-{i:03d}" for i in range(max(0, args.existing - have))]
        started = time.monotonic()
        created: dict[str, dict[str, float]] = {v.label: {} for v in self.variants}
        for i in range(max(len(names) for names in more.values())):  # interleaved: same load
            for v in self.variants:
                if i < len(more[v.label]):
                    name = more[v.label][i]
                    created[v.label] |= self.create(v.namespace, [name], lambda _: 1)
        for v in self.variants:
            self.wait_children(v.namespace, created[v.label])
            took = time.monotonic() - started
            print(f"    {v.label}: {len(created[v.label])} more served {took:.0f} s after the "
                  "first create", flush=True)  # fmt: skip
        time.sleep(10)
        self.singles(phase, args.tries, "single")
        self.settle()
        print(f"    steady window starts {time.monotonic() - started:.0f} s after the first create "
              "(engine Deployments without a node pass their 600 s progress deadline later, "
              "which the status reports)", flush=True)  # fmt: skip
        self.idle(phase, args.steady_seconds)

    def settle(self, quiet: float = 20, window_s: float = 10, limit_s: float = 300) -> None:
        """Wait until the cluster has settled: the controller-manager still works through the
        new Deployments (ReplicaSets, pods, their status) long after the operator is done, and
        each Deployment status it writes is a real change to the LLMService's status. Settled:
        at most `quiet` writes by anyone in `window_s`."""
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            before = sum(apiserver_writes(self.cluster).values())
            time.sleep(window_s)
            writes = sum(apiserver_writes(self.cluster).values()) - before
            if writes <= quiet:
                print(f"    settled after {time.monotonic() - started:.0f} s ({writes:.0f} writes "
                      f"in {window_s:.0f} s)", flush=True)  # fmt: skip
                return
        print(f"    NOT settled after {limit_s:.0f} s ({writes:.0f} writes in the last "
              f"{window_s:.0f} s)", flush=True)  # fmt: skip

    def table(self, load: str) -> None:
        labels = [v.label for v in self.variants]
        print(f"\n| phase | measure | {' | '.join(labels)} | load (1 min) |")
        print(f"|---|---|{'---|' * len(labels)}---|")
        for phase, measure, values, at in self.rows:
            cells = " | ".join(values.get(x, "") for x in labels)
            print(f"| {phase} | {measure} | {cells} | {at:.1f} |")
        print(f"\n{load}")


def apiserver_writes(cluster: LocalCluster) -> dict[str, float]:
    """Write requests the apiserver counted, by "verb resource code"."""
    text = cluster.control_plane.kubectl("get", "--raw", "/metrics").stdout
    out: dict[str, float] = {}
    for s in prom.parse(text):
        if s.name == "apiserver_request_total" and s.labels.get("verb") in WRITE_VERBS:
            key = f"{s.labels['verb']} {s.labels.get('resource')} {s.labels.get('code')}"
            out[key] = out.get(key, 0.0) + s.value
    return out


def apiserver_write_seconds(cluster: LocalCluster) -> dict[str, tuple[float, float]]:
    """The API server's own time serving writes (sum, count) by verb, from its metrics."""
    text = cluster.control_plane.kubectl("get", "--raw", "/metrics").stdout
    out: dict[str, tuple[float, float]] = {}
    for s in prom.parse(text):
        verb = s.labels.get("verb", "")
        if verb not in WRITE_VERBS or not s.name.startswith("apiserver_request_duration_seconds"):
            continue
        keys = [verb]
        if s.labels.get("resource") in CHILD_RESOURCES and not s.labels.get("subresource"):
            keys.append(f"{verb} of children")  # the operators' writes alone
        for key in keys:
            total, n = out.get(key, (0.0, 0.0))
            if s.name.endswith("_sum"):
                out[key] = (total + s.value, n)
            elif s.name.endswith("_count"):
                out[key] = (total, n + s.value)
    return out


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PARTS = ("create call", "watch+kopf", "queued", "in pass, API", "in pass, operator", "to watcher")


def split_latency(
    t0: float, returned: float, done: float, marks: list[dict[str, Any]]
) -> dict[str, float] | None:
    """create -> all children of one LLMService, cut at the operator's marks: the create call
    (API server), until kopf hands over the event (watch, kopf's batching), until the pass that
    wrote the children starts (the operator's queue), that pass until its last child write
    returned (time inside child writes' request/response = API, the rest = the operator's own
    CPU and pools), and until the recorder's watch saw them."""
    events = [m["t"] for m in marks if m["what"] == "event"]
    child_recv = [m for m in marks if m["what"] == "recv" and m["kind"] not in ("status", "Event")]
    if not events or not child_recv:
        return None
    last = max(m["t"] for m in child_recv)
    start = max(m["t"] for m in marks if m["what"] == "pass" and m["t"] <= last)
    sends = {(m["kind"], m["child"]): m["t"] for m in marks
             if m["what"] == "send" and start <= m["t"] <= last}  # fmt: skip
    spans = sorted((sends[m["kind"], m["child"]], m["t"]) for m in child_recv
                   if (m["kind"], m["child"]) in sends and m["t"] >= start)  # fmt: skip
    api, edge = 0.0, start
    for a, b in spans:  # the union of the writes' request -> response intervals
        api += max(0.0, b - max(a, edge))
        edge = max(edge, b)
    return {
        "create call": returned - t0,
        "watch+kopf": min(events) - returned,
        "queued": start - min(events),
        "in pass, API": api,
        "in pass, operator": last - start - api,
        "to watcher": done - last,
    }


def baseline_tree(commit: str, into: Path) -> str:
    """The baseline's production package, from git, as a PYTHONPATH entry."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "operator"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into / "operator")


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", default="main", help="commit to compare with ('' for none)")
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--existing", type=int, default=500)
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--steady-seconds", type=float, default=60)
    ap.add_argument("--idle-seconds", type=float, default=20)
    ap.add_argument("--noise-scale", type=float, default=1.0, help="1.0: 5,000 CMs + 2,000 Pods")
    ap.add_argument("--phases", default="empty,noise,burst,existing")
    args = ap.parse_args()
    phases = set(args.phases.split(","))

    workdir = Path(tempfile.mkdtemp(prefix="halffull-bench-"))
    here = str(ROOT / "operator")
    variants = [Variant("this checkout", here, "bench-new", workdir)]
    if args.baseline:
        (workdir / "base").mkdir()
        base = baseline_tree(args.baseline, workdir / "base")
        variants.insert(0, Variant(f"baseline {args.baseline}", base, "bench-base", workdir))
    load_before = machine_load()
    print(f"Machine before: {load_before}; no node: pods stay Pending, nothing becomes Ready",
          flush=True)  # fmt: skip
    with LocalCluster(workdir / "cp", node="none") as cluster:
        bench = Bench(cluster, variants)
        for ns in [NOISE, *(v.namespace for v in variants)]:
            bench.core.create_namespace({"metadata": {"name": ns}})
        try:
            for v in variants:
                v.start(cluster.kubeconfig)
            bench.recorder.start()
            time.sleep(3)
            if "empty" in phases:
                bench.idle("empty cluster", args.idle_seconds)
                bench.singles("empty cluster", max(5, args.tries // 2), "empty")
            if "noise" in phases:
                bench.noise_phase(args)
            if "burst" in phases:
                bench.burst(args.burst)
            if "existing" in phases:
                bench.existing(args)
            bench.recorder.stop.set()
        finally:
            for v in variants:
                v.stop()
    print(f"\nOperator at scale on the local control plane (kube-apiserver v1.20.2, etcd and "
          f"kube-controller-manager on the same {os.cpu_count()} cores), no node: pods stay "
          f"Pending. Operators run side by side, each in its own namespace.")  # fmt: skip
    bench.table(f"Machine load: before {load_before}; after {machine_load()} (other work shares "
                "these cores: compare the columns, not runs).")  # fmt: skip
    print(f"Logs: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What one write of the operator's children costs the API server, by verb.

Starts a local control plane without a node, creates N LLMServices (no operator runs), builds
their children with the operator's own builders and writes them one at a time, each batch with
one verb:

- new object: server-side apply (what the operator did), create (POST);
- the same object again, unchanged: apply, replace (PUT of the object as read), strategic-merge
  patch and JSON merge patch of the whole desired object;
- changed (a new desired-hash annotation): the same four.

For each batch it prints the API server's CPU time per write (its process, from /proc) and its
own request duration per write (`apiserver_request_duration_seconds`, by verb), and whether the
write stored a new resourceVersion. The controller-manager is stopped (SIGSTOP) while writing,
so that the Deployments' ReplicaSets and pods do not add their writes to the figures.

Not a test: it prints a table. State the load average beside the figures (it is printed).

    .venv/bin/python bench/apiserver_write_cost.py            # 20 LLMServices, 8 children each
    .venv/bin/python bench/apiserver_write_cost.py --services 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config

from halffull.api.spec import GROUP, PLURAL, VERSION, LLMService
from halffull.builders.children import Defaults, desired_children
from halffull.builders.meta import FIELD_MANAGER, HASH_ANNOTATION
from halffull.controller.kube import served_pdb_api_version
from halffull_dev.cluster.local import LocalCluster
from halffull_dev.testing import prom

PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
}
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON = "application/json"

Obj = dict[str, Any]


def collection(obj: Obj) -> str:
    api_version, ns = obj["apiVersion"], obj["metadata"]["namespace"]
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{ns}/{PLURALS[obj['kind']]}"


class Writer:
    """One write of one object, by verb, through the same client for every verb."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def call(self, method: str, path: str, body: Obj, content_type: str,
             query: list[tuple[str, str]] | None = None) -> Obj:  # fmt: skip
        return call(self.api, method, path, body, content_type, query)

    def apply(self, obj: Obj) -> Obj:
        path = f"{collection(obj)}/{obj['metadata']['name']}"
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        return self.call("PATCH", path, obj, APPLY, query)

    def create(self, obj: Obj) -> Obj:
        return self.call("POST", collection(obj), obj, JSON, [("fieldManager", FIELD_MANAGER)])

    def replace(self, obj: Obj) -> Obj:
        path = f"{collection(obj)}/{obj['metadata']['name']}"
        return self.call("PUT", path, obj, JSON, [("fieldManager", FIELD_MANAGER)])

    def patch(self, obj: Obj, content_type: str) -> Obj:
        path = f"{collection(obj)}/{obj['metadata']['name']}"
        return self.call("PATCH", path, obj, content_type, [("fieldManager", FIELD_MANAGER)])


def call(api: client.ApiClient, method: str, path: str, body: Obj | None, content_type: str,
         query: list[tuple[str, str]] | None = None, raw: bool = False) -> Any:  # fmt: skip
    """One request through the client's own serialization and transport."""
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    m, url, headers, data, _ = api.param_serialize(
        method, path, query_params=query or [], header_params=headers, body=body,
        auth_settings=["BearerToken"],
    )  # fmt: skip
    resp = api.call_api(m, url, header_params=headers, body=data)
    resp.read()
    if resp.status >= 400:
        raise RuntimeError(f"{method} {path}: {resp.status} {resp.data[:300]!r}")
    return resp.data.decode() if raw else dict(json.loads(resp.data))


def apiserver_seconds(api: client.ApiClient) -> dict[str, tuple[float, float]]:
    """(sum, count) of the API server's request durations by verb, for the child kinds."""
    out: dict[str, tuple[float, float]] = {}
    for s in prom.parse(call(api, "GET", "/metrics", None, "text/plain", raw=True)):
        if not s.name.startswith("apiserver_request_duration_seconds"):
            continue
        if s.labels.get("resource") not in PLURALS.values() or s.labels.get("subresource"):
            continue
        verb = s.labels.get("verb", "")
        total, n = out.get(verb, (0.0, 0.0))
        if s.name.endswith("_sum"):
            out[verb] = (total + s.value, n)
        elif s.name.endswith("_count"):
            out[verb] = (total, n + s.value)
    return out


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def changed(obj: Obj, tag: str) -> Obj:
    md = obj["metadata"]
    return {**obj, "metadata": {**md, "annotations": {**md["annotations"], HASH_ANNOTATION: tag}}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--services", type=int, default=20, help="LLMServices (8 children each)")
    args = ap.parse_args()
    rows: list[tuple[str, str, int, float, float, int, float]] = []
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="halffull-writecost-"))
    with LocalCluster(workdir / "cp", node="none") as cluster:
        api = config.new_client_from_config(str(cluster.kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        defaults = Defaults("engine:1", "router:1", pdb_api_version=served_pdb_api_version(api))
        writer = Writer(api)
        apiserver = cluster.control_plane._procs["kube-apiserver"].pid
        kcm = cluster.control_plane._procs["kube-controller-manager"].pid

        def children(ns: str) -> list[Obj]:
            core.create_namespace({"metadata": {"name": ns}})
            out = []
            for i in range(args.services):
                body = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMService",
                    "metadata": {"name": f"svc-{i:03d}"},
                    "spec": {"model": "Qwen/Qwen2.5-0.5B-Instruct", "replicas": 1 + i % 3},
                })  # fmt: skip
                out += desired_children(LLMService.from_body(body), defaults)
            return out

        Written = dict[tuple[str, str], Obj]

        def batch(case: str, verb: str, objs: list[Obj], write: Callable[[Obj], Obj],
                  before: dict[tuple[str, str], str] | None = None) -> Written:  # fmt: skip
            time.sleep(1)  # let the watch fan-out of the last batch finish
            s0, c0 = apiserver_seconds(api), proc_cpu_s(apiserver)
            cpu_started, wall = time.process_time(), time.perf_counter()
            written = {}
            for obj in objs:
                out = write(obj)
                written[obj["kind"], obj["metadata"]["name"]] = out
            wall = time.perf_counter() - wall
            time.sleep(0.5)
            cpu = proc_cpu_s(apiserver) - c0
            s1 = apiserver_seconds(api)
            served = sum(s1[v][0] - s0.get(v, (0.0, 0.0))[0] for v in s1)
            stored = sum(
                1 for k, o in written.items()
                if before is None or o["metadata"]["resourceVersion"] != before[k]
            )  # fmt: skip
            n = len(objs)
            rows.append(
                (case, verb, n, 1000 * cpu / n, 1000 * served / n, stored, os.getloadavg()[0])
            )
            print(f"  {case:10s} {verb:22s} {n} writes in {wall:.1f} s, client CPU "
                  f"{time.process_time() - cpu_started:.1f} s", flush=True)  # fmt: skip
            return written

        os.kill(kcm, signal.SIGSTOP)
        try:
            # New objects: one namespace per verb.
            applied = batch("new", "server-side apply", children("cost-apply"), writer.apply)
            created = batch("new", "create (POST)", children("cost-create"), writer.create)
            for name, live in (("applied", applied), ("created", created)):
                rv = {k: o["metadata"]["resourceVersion"] for k, o in live.items()}
                ns = next(iter(live.values()))["metadata"]["namespace"]
                again = rebuild(custom, ns, defaults)
                for case, objs in (("unchanged", again), ("changed", None)):
                    if objs is None:
                        objs = [changed(o, f"{name}-changed-{i}") for i, o in enumerate(again)]
                    tag = f"{case} ({name})"
                    out = batch(tag, "server-side apply", objs, writer.apply, rv)
                    rv = {k: o["metadata"]["resourceVersion"] for k, o in out.items()}
                    if case == "changed":
                        objs = [changed(o, f"{name}-smp-{i}") for i, o in enumerate(again)]
                    rv = {k: o["metadata"]["resourceVersion"] for k, o in batch(
                        tag, "strategic-merge patch", objs,
                        lambda o: writer.patch(o, STRATEGIC), rv).items()}  # fmt: skip
                    if case == "changed":
                        objs = [changed(o, f"{name}-merge-{i}") for i, o in enumerate(again)]
                    out = batch(tag, "JSON merge patch", objs, lambda o: writer.patch(o, MERGE), rv)
                    rv = {k: o["metadata"]["resourceVersion"] for k, o in out.items()}
                    # PUT sends the object as read (a replace must carry what the server
                    # filled in: clusterIP, defaults), with the change on top.
                    puts = [
                        changed(live_o, f"{name}-put-{i}") if case == "changed" else live_o
                        for i, live_o in enumerate(out.values())
                    ]  # fmt: skip
                    batch(tag, "replace (PUT)", puts, writer.replace, rv)
        finally:
            os.kill(kcm, signal.SIGCONT)
    load_after = os.getloadavg()
    print("\nAPI server cost per write of the operator's children (kube-apiserver v1.20.2, "
          f"{os.cpu_count()} cores, controller-manager stopped, no node)")  # fmt: skip
    print(
        "\n| object | verb | writes | API server CPU per write (ms) | "
        "API server time per write (ms) | stored a new version | load (1 min) |"
    )
    print("|---|---|---|---|---|---|---|")
    for case, verb, n, cpu, served, stored, load in rows:
        print(f"| {case} | {verb} | {n} | {cpu:.1f} | {served:.1f} | {stored} | {load:.1f} |")
    print(
        f"\nLoad average before {load_before[0]:.1f} / {load_before[1]:.1f}, after "
        f"{load_after[0]:.1f} / {load_after[1]:.1f} (1 / 5 min) on {os.cpu_count()} cores"
    )
    return 0


def rebuild(custom: client.CustomObjectsApi, ns: str, defaults: Defaults) -> list[Obj]:
    """The desired children of every LLMService in `ns`, from the builders."""
    items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    out: list[Obj] = []
    for body in sorted(items, key=lambda b: b["metadata"]["name"]):
        out += desired_children(LLMService.from_body(body), defaults)
    return out


if __name__ == "__main__":
    sys.exit(main())

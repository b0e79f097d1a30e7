"""A real Kubernetes node on this machine: containerd (CRI, runc), kubelet, kube-proxy and
kube-scheduler v1.20.2, on the pod network of `network.py`.

One node per machine: kube-proxy and the kubelet own fixed iptables chains (`KUBE-*`), so a
machine-wide lock serialises nodes (another one waits). The runtime's images stay in a cache of
their own (`IMAGE_STORE`) between runs; containers, pods, mounts and network do not: `stop()`
removes them, and `start()` first removes what a node that crashed left behind.

Settings this sandbox needs (see docs/development.md): containerd's `restrict_oom_score_adj`
and the kubelet's `--oom-score-adj=0` (no CAP_SYS_RESOURCE), runc (crun refuses the hybrid
cgroup v1/v2 mounts), cgroupfs without QoS cgroups, and a non-loopback node address (the bridge
gateway).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from halffull_dev.cluster import network
from halffull_dev.cluster.controlplane import (
    DEFAULT_BIN_DIR,
    ControlPlane,
    ControlPlaneError,
    free_port,
    issue_cert,
)
from halffull_dev.cluster.images import ImageCache

log = logging.getLogger(__name__)

NODE_NAME = "halffull-dev-node"
STATE_DIR = Path("/run/halffull-node")
LOCK_FILE = Path("/run/lock/halffull-node.lock")
CACHE = Path(os.environ.get("HALFFULL_CACHE", Path.home() / ".cache" / "halffull"))
IMAGE_STORE = CACHE / "node" / "containerd"
SYSTEM_BINARIES = {
    "containerd": "apt-get install containerd",
    "runc": "apt-get install runc",
    "ctr": "apt-get install containerd",
    "iptables": "apt-get install iptables",
    "ip": "apt-get install iproute2",
}
CNI_PLUGINS = Path("/usr/lib/cni")


class NodeError(RuntimeError):
    """The node could not start; the message names what failed."""


def missing_requirements(bin_dir: Path) -> list[str]:
    """What this machine lacks to run a node, each with how to get it."""
    missing = [f"{b} ({how})" for b, how in SYSTEM_BINARIES.items() if shutil.which(b) is None]
    if os.geteuid() != 0:
        missing.append("root (the node creates a bridge, iptables rules and mounts)")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_PLUGINS / plugin).exists():
            missing.append(f"{CNI_PLUGINS / plugin} (apt-get install containernetworking-plugins)")
    for binary in ("kubelet", "kube-proxy", "kube-scheduler"):
        if not (bin_dir / binary).exists():
            missing.append(f"{bin_dir / binary} (hack/build-kube.sh)")
    for path, feature in ((Path("/proc/filesystems"), "overlay"),):
        if feature not in path.read_text():
            missing.append(f"kernel feature {feature} (modprobe overlay)")
    return missing


def containerd_config(state: Path, pause_image: str, cni_conf_dir: Path) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{IMAGE_STORE}"
state = "{state / "containerd"}"
[grpc]
  address = "{state / "containerd.sock"}"
[{cri}]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.cni]
  bin_dir = "{CNI_PLUGINS}"
  conf_dir = "{cni_conf_dir}"
"""


def kubelet_config(pki: Path, port: int) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": network.GATEWAY,
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        # Only holders of a certificate from our CA (the apiserver) get in; they may do all.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "clusterDomain": "cluster.local",
        "hairpinMode": "hairpin-veth",
        "serializeImagePulls": False,
        # Local images are never pulled again: the kubelet must not collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "makeIPTablesUtilChains": True,
    }


def kube_proxy_config(kubeconfig: Path) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": network.GATEWAY,
        "clusterCIDR": network.POD_CIDR,
        "healthzBindAddress": f"127.0.0.1:{free_port()}",
        "metricsBindAddress": f"127.0.0.1:{free_port()}",
        "nodePortAddresses": [f"{network.GATEWAY}/32"],
        # 0: leave the machine's conntrack sysctls alone (they are not ours to change).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
    }


def _machine_lock(timeout_s: float) -> IO[str]:
    """The machine-wide node lock (released when the returned file is closed)."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    handle = LOCK_FILE.open("a+")
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise NodeError(
                    f"another node holds {LOCK_FILE} (one node per machine) after {timeout_s} s"
                ) from None
            if not announced:
                log.warning("node: another node runs on this machine; waiting for %s", LOCK_FILE)
                announced = True
            time.sleep(1)


def _alive(pid: int, name: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return name.encode() in cmdline


def _end(pid: int, name: str, grace_s: float = 10.0) -> None:
    """End process `pid` if it still runs `name` (a pid may have been reused)."""
    if not _alive(pid, name):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(pid, name):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _alive(pid, name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _shim_pids(address: Path) -> list[int]:
    """containerd-shim processes of the containerd at `address`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            args = proc.joinpath("cmdline").read_bytes().split(b"\0")
            if args and b"containerd-shim" in args[0] and str(address).encode() in args:
                pids.append(int(proc.name))
    return pids


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = proc.joinpath("stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(proc.name))
    return found


def end_shims(address: Path) -> None:
    """End the containers of the containerd at `address` and their shims: each container's
    first process (its pid namespace ends with it), then the shim."""
    for shim in _shim_pids(address):
        for child in _children(shim):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        _end(shim, "containerd-shim", grace_s=2)


def unmount_under(*roots: Path) -> None:
    """Unmount everything mounted below `roots`, deepest first."""
    prefixes = tuple(str(r) + "/" for r in roots)
    for _ in range(3):
        mounts = [
            line.split()[1].replace("\\040", " ")
            for line in Path("/proc/self/mounts").read_text().splitlines()
        ]
        ours = sorted((m for m in mounts if m.startswith(prefixes)), key=len, reverse=True)
        if not ours:
            return
        for mount in ours:
            if subprocess.run(["umount", mount], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mount], capture_output=True)


@dataclass
class Node:
    """Start with `start()` after the control plane (which must have been made with
    `address=network.GATEWAY` and `node_name=NODE_NAME`, and started after `prepare()`)."""

    workdir: Path
    plane: ControlPlane
    bin_dir: Path = DEFAULT_BIN_DIR
    lock_timeout_s: float = 1800.0
    images: ImageCache = field(default_factory=ImageCache)
    _lock: IO[str] | None = None
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def address(self) -> Path:
        return STATE_DIR / "containerd.sock"

    # --- start-up -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Before the control plane: check the machine, take the lock, clean up after any node
        that crashed, and create the bridge whose address the apiserver listens on."""
        missing = missing_requirements(self.bin_dir)
        if missing:
            raise NodeError("the node cannot start; missing: " + "; ".join(missing))
        pause = self.images.ref("pause")
        if pause is None:
            raise NodeError("image pause is not built: run hack/build-images.sh pause")
        self._lock = _machine_lock(self.lock_timeout_s)
        self.cleanup_stale()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / "workdir").write_text(str(self.workdir))
        try:
            network.setup(STATE_DIR)
        except network.NetworkError as exc:
            raise NodeError(f"pod network: {exc}") from exc

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        try:
            self._start_containerd()
            self._clear_runtime()
            self.images.import_all(self.ctr)
            self._start_kubelet()
            self._start_kube_proxy()
            self._start_scheduler()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = (self.workdir / "logs" / f"{name}.log").open("ab")
        self._procs[name] = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        pids = {n: p.pid for n, p in self._procs.items()}
        (STATE_DIR / "pids.json").write_text(json.dumps(pids))

    def _start_containerd(self) -> None:
        cni_dir = self.workdir / "cni"
        cni_dir.mkdir(parents=True, exist_ok=True)
        conf = network.cni_config(self.workdir / "cni-ipam")
        (cni_dir / "10-halffull.conflist").write_text(json.dumps(conf, indent=2))
        config = self.workdir / "containerd.toml"
        pause = self.images.ref("pause") or ""
        config.write_text(containerd_config(STATE_DIR, pause, cni_dir))
        IMAGE_STORE.mkdir(parents=True, exist_ok=True)
        self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait("containerd", lambda: self.ctr("version", check=False).returncode == 0, 60)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ctr", "--address", str(self.address), "-n", "k8s.io", *args],
            capture_output=True, text=True,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def _clear_runtime(self) -> None:
        """Remove the containers a previous node left in the image store's metadata: the CRI
        would bring its pods back otherwise."""
        for cid in self.ctr("containers", "list", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            for _ in range(50):
                if self.ctr("tasks", "delete", cid, check=False).returncode == 0:
                    break
                if "not found" in self.ctr("tasks", "ps", cid, check=False).stderr:
                    break
                time.sleep(0.1)
            self.ctr("containers", "delete", cid, check=False)

    def _start_kubelet(self) -> None:
        pki = self.plane.workdir / "pki"
        if not (pki / "kubelet.crt").exists():
            issue_cert(pki, "kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}",
                       [f"IP:{network.GATEWAY}"])  # fmt: skip
        self.kubelet_port = free_port()
        config = self.workdir / "kubelet.yaml"
        config.write_text(yaml.safe_dump(kubelet_config(pki, self.kubelet_port)))
        root = self.workdir / "kubelet"
        self._spawn("kubelet", [
            str(self.bin_dir / "kubelet"),
            "--config", str(config),
            "--kubeconfig", str(self.plane.client_kubeconfig("-node", "kubelet")),
            "--container-runtime", "remote",
            "--container-runtime-endpoint", f"unix://{self.address}",
            "--node-ip", network.GATEWAY, "--hostname-override", NODE_NAME,
            "--root-dir", str(root), "--cert-dir", str(root / "pki"),
            "--volume-plugin-dir", str(root / "volume-plugins"),
            "--pod-infra-container-image", self.images.ref("pause") or "",
            "--oom-score-adj", "0", "--v", "1",
        ])  # fmt: skip

    def _start_kube_proxy(self) -> None:
        kubeconfig = self.plane.client_kubeconfig("-proxy", "kube-proxy")
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump(kube_proxy_config(kubeconfig)))
        self._spawn("kube-proxy", [str(self.bin_dir / "kube-proxy"), "--config", str(config)])

    def _start_scheduler(self) -> None:
        self._spawn("kube-scheduler", [
            str(self.bin_dir / "kube-scheduler"),
            "--kubeconfig", str(self.plane.client_kubeconfig("-sched", "kube-scheduler")),
            "--leader-elect=false", "--port", "0", "--secure-port", "0", "--v", "1",
        ])  # fmt: skip

    def _node_ready(self) -> bool:
        proc = self.plane.kubectl("get", "node", NODE_NAME, "-o",
                                  "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                                  check=False)  # fmt: skip
        return proc.returncode == 0 and proc.stdout.strip() == "True"

    def _wait_ready(self) -> None:
        self._wait("kubelet", self._node_ready, 120)

    def _wait(self, name: str, ready: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pname, proc in self._procs.items():
                if proc.poll() is not None:
                    tail = self._log_tail(pname)
                    raise NodeError(f"{pname} exited ({proc.returncode}): {tail}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.5)
        raise NodeError(f"{name} not ready after {timeout} s: {self._log_tail(name)}")

    def _log_tail(self, name: str, lines: int = 5) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log at {path})"
        return f"see {path}:\n  " + "\n  ".join(text)

    # --- shut-down ------------------------------------------------------------------------
    def stop(self) -> None:
        for name in ("kube-scheduler", "kube-proxy", "kubelet"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                _end(proc.pid, name)
        if "containerd" in self._procs:
            with contextlib.suppress(Exception):
                self._clear_runtime()
            proc = self._procs.pop("containerd")
            _end(proc.pid, "containerd")
        self._teardown()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _teardown(self) -> None:
        end_shims(self.address)
        unmount_under(STATE_DIR, self.workdir)
        network.teardown(STATE_DIR)
        (STATE_DIR / "pids.json").unlink(missing_ok=True)

    def cleanup_stale(self) -> None:
        """What a node that crashed left: its processes (by the pids it recorded), shims,
        mounts (under its work directory, recorded in the state dir), network."""
        pids_file = STATE_DIR / "pids.json"
        if pids_file.exists():
            with contextlib.suppress(ValueError, OSError):
                for name, pid in json.loads(pids_file.read_text()).items():
                    if name != "containerd":  # after its containers (end_shims)
                        _end(int(pid), name)
        end_shims(self.address)
        if pids_file.exists():
            with contextlib.suppress(ValueError, OSError):
                containerd = json.loads(pids_file.read_text()).get("containerd")
                if containerd:
                    _end(int(containerd), "containerd")
        old_workdir = STATE_DIR / "workdir"
        roots = [STATE_DIR]
        if old_workdir.exists():
            roots.append(Path(old_workdir.read_text().strip()))
        end_shims(self.address)
        unmount_under(*roots)
        network.teardown(STATE_DIR)


def check_plane(plane: ControlPlane) -> None:
    if plane.address != network.GATEWAY or plane.node_name != NODE_NAME:
        raise ControlPlaneError("the control plane of a node listens on the bridge gateway")

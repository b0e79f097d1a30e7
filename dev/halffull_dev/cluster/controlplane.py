"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

The binaries come from `hack/build-kube.sh` (built from Debian's kubernetes source package and
cached under ~/.cache/halffull/kube/bin). Everything else lives in one work directory: data,
certificates, logs and the kubeconfig. The node (scheduler, kubelet, kube-proxy, containerd) is
`node.py`; with one, the apiserver listens on the pod network's gateway address instead of
127.0.0.1, so that pods reach it through the `kubernetes` Service.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_BIN_DIR = Path(
    os.environ.get("HALFFULL_KUBE_BIN", Path.home() / ".cache" / "halffull" / "kube" / "bin")
)
CONTROLLERS = (
    "garbagecollector,namespace,deployment,replicaset,endpoint,serviceaccount,serviceaccount-token"
)
NODE_CONTROLLERS = ",nodelifecycle,endpointslice"
SERVICE_CIDR = "10.96.0.0/16"


class ControlPlaneError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def issue_cert(pki: Path, name: str, subject: str, sans: list[str] | None = None) -> None:
    """`pki/name.crt` and `.key`, signed by `pki/ca.crt`, for `subject` and `sans`."""
    csr = pki / f"{name}.csr"
    _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
          "-keyout", str(pki / f"{name}.key"), "-out", str(csr)])  # fmt: skip
    ext = pki / f"{name}.ext"
    ext.write_text(f"subjectAltName={','.join(sans)}\n" if sans else "")
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"),
          "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "365",
          "-extfile", str(ext), "-out", str(pki / f"{name}.crt")])  # fmt: skip


@dataclass
class ControlPlane:
    """Start with `start()`, stop with `stop()`; or use as a context manager."""

    workdir: Path
    bin_dir: Path = DEFAULT_BIN_DIR
    etcd_bin: str = "etcd"
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    api_port: int = field(default_factory=free_port)
    address: str = "127.0.0.1"
    """Where the apiserver listens and what it advertises: a local, non-loopback address (the
    node's bridge gateway) when pods must reach it."""
    node_name: str = ""
    """The node whose kubelet gets a token (Node authorizer) and is called with a client
    certificate; empty: no node."""
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- start-up -------------------------------------------------------------------------
    def start(self, crds: list[Path] | None = None) -> None:
        """Start etcd and the apiserver, install `crds`, then start the controller manager
        (after the CRDs, so its garbage collector discovers them at once)."""
        for binary in ("kube-apiserver", "kube-controller-manager"):
            if not (self.bin_dir / binary).exists():
                raise ControlPlaneError(
                    f"{self.bin_dir / binary} is missing: run hack/build-kube.sh first"
                )
        if shutil.which(self.etcd_bin) is None:
            raise ControlPlaneError("etcd is missing: apt-get install etcd-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        try:
            self._keys()
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            for crd in crds or []:
                self.apply(crd)
            for crd in crds or []:
                self._wait_established(crd)
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise

    def _keys(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        if not (pki / "sa.key").exists():
            _run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"])
            _run(["openssl", "rsa", "-in", str(pki / "sa.key"), "-pubout", "-out",
                  str(pki / "sa.pub")])  # fmt: skip
        if not (pki / "ca.crt").exists():
            _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
                  "-subj", "/CN=halffull-dev-ca", "-keyout", str(pki / "ca.key"),
                  "-out", str(pki / "ca.crt")])  # fmt: skip
            sans = ["IP:127.0.0.1", "DNS:localhost", "IP:10.96.0.1", "DNS:kubernetes",
                    "DNS:kubernetes.default", "DNS:kubernetes.default.svc"]  # fmt: skip
            if self.address != "127.0.0.1":
                sans.append(f"IP:{self.address}")
            issue_cert(pki, "apiserver", "/CN=kube-apiserver", sans)
            # The apiserver's client certificate for calls to the kubelet (exec, logs,
            # port-forward); the kubelet trusts our CA and nothing anonymous.
            issue_cert(pki, "kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
        (self.workdir / "tokens.csv").write_text("".join(
            f"{self.token}{suffix},{user},{uid}{groups}\n"
            for suffix, user, uid, groups in self._token_users()
        ))  # fmt: skip

    def _token_users(self) -> list[tuple[str, str, str, str]]:
        """(token suffix, user, uid, groups) of each client of the apiserver."""
        users = [("", "admin", "admin", ',"system:masters"'),
                 ("-cm", "system:kube-controller-manager", "kcm", "")]  # fmt: skip
        if self.node_name:
            users += [
                ("-node", f"system:node:{self.node_name}", "kubelet", ',"system:nodes"'),
                ("-proxy", "system:kube-proxy", "kube-proxy", ""),
                ("-sched", "system:kube-scheduler", "kube-scheduler", ""),
            ]
        return users

    def client_kubeconfig(self, suffix: str, name: str) -> Path:
        """A kubeconfig for one of the node's components (token `suffix` of _token_users)."""
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(self._kubeconfig_doc(f"{self.token}{suffix}")))
        return path

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = (self.workdir / "logs" / f"{name}.log").open("ab")
        self._procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            self.etcd_bin, "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            "--quota-backend-bytes", str(2 * 1024**3), "--log-level", "warn",
        ])  # fmt: skip
        self._wait(lambda: self._http_ok(f"{self.etcd_url}/health"), "etcd", 30)

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            "--etcd-servers", self.etcd_url,
            "--bind-address", self.address, "--advertise-address", self.address,
            "--secure-port", str(self.api_port), "--insecure-port", "0",
            "--tls-cert-file", str(pki / "apiserver.crt"),
            "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--token-auth-file", str(self.workdir / "tokens.csv"),
            "--authorization-mode", "Node,RBAC" if self.node_name else "RBAC",
            "--kubelet-client-certificate", str(pki / "kubelet-client.crt"),
            "--kubelet-client-key", str(pki / "kubelet-client.key"),
            "--kubelet-certificate-authority", str(pki / "ca.crt"),
            "--kubelet-preferred-address-types", "InternalIP",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-cluster-ip-range", SERVICE_CIDR,
            "--allow-privileged=true",
            "--enable-admission-plugins", "NamespaceLifecycle,ServiceAccount",
            "--cert-dir", str(pki),
        ])  # fmt: skip
        self._wait(lambda: self._http_ok(f"{self.server}/readyz", auth=True), "kube-apiserver", 240)

    def _start_controller_manager(self) -> None:
        pki = self.workdir / "pki"
        self._spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            "--kubeconfig", str(self.client_kubeconfig("-cm", "kcm")),
            # With a node, its lifecycle controller lifts the kubelet's not-ready taint (and
            # marks the node NotReady if the kubelet stops); the stand-in sends no heartbeats.
            # kube-proxy 1.20 reads EndpointSlices, not Endpoints: without their controller it
            # rejects every connection to a Service's cluster IP (no endpoints).
            "--controllers", CONTROLLERS + (NODE_CONTROLLERS if self.node_name else ""),
            "--leader-elect=false", "--use-service-account-credentials=true",
            "--port", "0", "--secure-port", "0",
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(pki / "ca.crt"),
            "--service-cluster-ip-range", SERVICE_CIDR,
            "--concurrent-deployment-syncs", "10", "--concurrent-replicaset-syncs", "10",
        ])  # fmt: skip
        self._wait(self._default_sa_exists, "kube-controller-manager", 60)

    # --- helpers --------------------------------------------------------------------------
    def _kubeconfig_doc(self, token: str) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "halffull-dev",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.workdir / "pki" / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [
                {"name": "halffull-dev", "context": {"cluster": "halffull-dev", "user": "admin"}}
            ],
            "current-context": "halffull-dev",
        }

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(yaml.safe_dump(self._kubeconfig_doc(self.token)))

    def _http_ok(self, url: str, auth: bool = False) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        req = urllib.request.Request(url)
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["kubectl", "--kubeconfig", str(self.kubeconfig),
               "--cache-dir", str(self.workdir / "kubectl-cache"), *args]  # fmt: skip
        return subprocess.run(cmd, check=check, capture_output=True, text=True)

    def apply(self, path: Path) -> None:
        self.kubectl("apply", "-f", str(path))

    def _wait_established(self, crd: Path) -> None:
        for doc in yaml.safe_load_all(crd.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                             f"crd/{doc['metadata']['name']}")  # fmt: skip

    def _default_sa_exists(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default",
                            check=False).returncode == 0  # fmt: skip

    def _wait(self, ready: Callable[[], bool], name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited: see {self.workdir}/logs/{name}.log")
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} not ready after {timeout} s: see {self.workdir}/logs")

    def restart_apiserver(self, down_s: float = 0.0) -> None:
        """Stop kube-apiserver, keep it down `down_s` seconds, start it again (fault tests)."""
        proc = self._procs.pop("kube-apiserver")
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        time.sleep(down_s)
        self._start_apiserver()

    def alive(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs.values())

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)

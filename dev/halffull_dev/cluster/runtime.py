"""Optional container runtime for the kubelet stand-in: runs a local process for each container
whose image it knows, on the pod's loopback address, with its ConfigMap volumes projected.

ConfigMap volumes are projected the way the kubelet does it, so that the programs' live-reload
code meets the real layout: files are symlinks into `..data`, itself a symlink to a timestamped
directory that is swapped atomically when the ConfigMap changes. The stand-in resyncs every
`sync_period_s` (a real kubelet takes up to its sync period plus its cache TTL, about a minute
by default).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from halffull_dev.processes import stop_process
from halffull_dev.testing.volumes import publish as publish_volume

log = logging.getLogger(__name__)

# image substring -> builds the command line from (container args, projected mount map, pod ip)
CommandBuilder = Callable[[Sequence[str], Mapping[str, str], str], list[str]]


def _rewrite(args: Sequence[str], mounts: Mapping[str, str]) -> list[str]:
    """Container paths under a projected mount point at the local projection."""
    out = []
    for arg in args:
        for mount_path, local in mounts.items():
            if arg == mount_path or arg.startswith(mount_path + "/"):
                arg = local + arg[len(mount_path) :]
        out.append(arg)
    return out


def _flag(args: Sequence[str], name: str, default: str | None = None) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def fake_engine_command(args: Sequence[str], mounts: Mapping[str, str], ip: str) -> list[str]:
    """A vLLM engine container as the fast fake engine (same API and /metrics names)."""
    model = _flag(args, "--served-model-name") or _flag(args, "--model") or "model"
    port = _flag(args, "--port") or "8000"
    cmd = [sys.executable, "-m", "halffull_dev.testing.fake_engine", "--host", ip, "--port", port,
           "--model", model]  # fmt: skip
    for flag in ("--max-num-batched-tokens", "--max-num-seqs", "--max-model-len"):
        value = _flag(args, flag)
        if value is not None:
            cmd += [flag, value]
    return cmd


def router_command(args: Sequence[str], mounts: Mapping[str, str], ip: str) -> list[str]:
    """The router container as `halffull router` with the same arguments, on the pod address."""
    local = _rewrite(args, mounts)
    local[local.index("--host") + 1] = ip
    return [sys.executable, "-m", "halffull.cli", *local]


@dataclass
class _Running:
    namespace: str
    proc: subprocess.Popen[bytes]
    projections: dict[str, tuple[str, Path]]  # volume name -> (ConfigMap name, dir)
    probe: tuple[str, int, str] | None  # (ip, port, path) of the readiness probe
    log: Path


@dataclass
class ProcessRuntime:
    workdir: Path
    api: client.ApiClient
    commands: Mapping[str, CommandBuilder] = field(default_factory=dict)
    sync_period_s: float = 0.5

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self._pods: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sync = threading.Thread(target=self._sync_loop, name="configmap-sync", daemon=True)
        self._sync.start()

    def builder_for(self, image: str) -> CommandBuilder | None:
        return next((b for key, b in self.commands.items() if key in image), None)

    # --- pod lifecycle ----------------------------------------------------------------------
    def start(self, pod: Any, ip: str) -> bool:
        """Start the pod's first container if its image is known. False: nothing to run."""
        uid = pod.metadata.uid
        container = pod.spec.containers[0]
        builder = self.builder_for(container.image)
        if builder is None or uid in self._pods:
            return False
        pod_dir = self.workdir / "pods" / uid
        pod_dir.mkdir(parents=True, exist_ok=True)
        projections: dict[str, tuple[str, Path]] = {}
        mounts: dict[str, str] = {}
        volumes = {v.name: v for v in pod.spec.volumes or []}
        for mount in container.volume_mounts or []:
            volume = volumes.get(mount.name)
            if volume is None or volume.config_map is None:
                continue
            target = pod_dir / "volumes" / mount.name
            self._project(pod.metadata.namespace, volume.config_map.name, target)
            projections[mount.name] = (volume.config_map.name, target)
            mounts[mount.mount_path] = str(target)
        cmd = builder(list(container.args or []), mounts, ip)
        log_path = pod_dir / "container.log"
        env = {**os.environ, **{e.name: e.value for e in container.env or [] if e.value}}
        for mount_path, local in mounts.items():  # env values that point into a mount
            for k, v in list(env.items()):
                if v.startswith(mount_path):
                    env[k] = local + v[len(mount_path) :]
        with log_path.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        probe = None
        rp = container.readiness_probe
        if rp is not None and rp.http_get is not None:
            port = rp.http_get.port
            if isinstance(port, str):
                port = next(p.container_port for p in container.ports if p.name == port)
            probe = (ip, int(port), rp.http_get.path or "/")
        with self._lock:
            self._pods[uid] = _Running(pod.metadata.namespace, proc, projections, probe, log_path)
        log.info("runtime: %s/%s runs %s", pod.metadata.namespace, pod.metadata.name, cmd)
        return True

    def ready(self, uid: str) -> bool:
        """The readiness probe, as the kubelet runs it."""
        running = self._pods.get(uid)
        if running is None or running.proc.poll() is not None:
            return False
        if running.probe is None:
            return True
        ip, port, path = running.probe
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=1) as resp:
                return bool(200 <= resp.status < 400)
        except OSError:
            return False

    def stop(self, uid: str) -> None:
        with self._lock:
            running = self._pods.pop(uid, None)
        if running is None:
            return
        stop_process(running.proc, timeout=10)

    def close(self) -> None:
        self._stop.set()
        for uid in list(self._pods):
            self.stop(uid)

    # --- ConfigMap projection -------------------------------------------------------------
    def _project(self, namespace: str, name: str, target: Path) -> None:
        try:
            cm = self.core.read_namespaced_config_map(name, namespace)
            data: dict[str, str] = dict(cm.data or {})
        except ApiException as exc:
            if exc.status != 404:
                raise
            data = {}
        target.mkdir(parents=True, exist_ok=True)
        current = target / "..data"
        if current.exists() and all(
            (current / k).exists() and (current / k).read_text() == v for k, v in data.items()
        ) and len(list(current.iterdir())) == len(data):  # fmt: skip
            return
        publish_volume(target, data)  # the kubelet's atomic `..data` swap

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.sync_period_s):
            with self._lock:
                work = [
                    (r.namespace, cm, target)
                    for r in self._pods.values()
                    for cm, target in r.projections.values()
                ]
            for namespace, cm_name, target in work:
                try:
                    self._project(namespace, cm_name, target)
                except Exception as exc:  # keep syncing the others
                    log.warning("configmap sync %s/%s: %r", namespace, cm_name, exc)

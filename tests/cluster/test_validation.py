"""Invalid LLMServices are refused by the API server itself, with a message naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Cluster

pytestmark = pytest.mark.cluster

BASE = {"model": "Qwen/Qwen2.5-0.5B-Instruct"}

# (spec, field the error must name)
INVALID: list[tuple[dict[str, Any] | None, str]] = [
    (None, "spec"),
    ({}, "spec.model"),
    ({"model": ""}, "spec.model"),
    ({"model": "has spaces in it"}, "spec.model"),
    ({**BASE, "replicas": -1}, "spec.replicas"),
    ({**BASE, "replicas": "two"}, "spec.replicas"),
    ({**BASE, "scheduler": {"policy": "sjf"}}, "spec.scheduler.policy"),
    ({**BASE, "scheduler": {"alpha": -0.5}}, "spec.scheduler.alpha"),
    ({**BASE, "router": {"policy": "fastest"}}, "spec.router.policy"),
    ({**BASE, "router": {"beta": -1}}, "spec.router.beta"),
    ({**BASE, "router": {"pollIntervalMs": 5}}, "spec.router.pollIntervalMs"),
    ({**BASE, "router": {"replicas": 0}}, "spec.router.replicas"),
    ({**BASE, "engine": {"gpus": 17}}, "spec.engine.gpus"),
    ({**BASE, "engine": {"gpuMemoryUtilization": 1.5}}, "spec.engine.gpuMemoryUtilization"),
    ({**BASE, "engine": {"maxNumSeqs": 0}}, "spec.engine.maxNumSeqs"),
    ({**BASE, "engine": {"resources": {"limits": {"memory": "lots"}}}},
     "spec.engine.resources.limits.memory"),
    ({**BASE, "engine": {"tolerations": [{"operator": "Maybe"}]}},
     "spec.engine.tolerations[0].operator"),
    ({**BASE, "engine": {"env": [{"value": "x"}]}}, "spec.engine.env[0].name"),
    ({**BASE, "metrics": {"prometheusUrl": "prometheus:9090"}}, "spec.metrics.prometheusUrl"),
    # spec.source: exactly one kind, each with its required field and path form
    ({**BASE, "source": {}}, "spec.source"),
    ({**BASE, "source": {"huggingFace": {}, "image": {"path": "/m"}}}, "spec.source"),
    ({**BASE, "source": {"persistentVolumeClaim": {"path": "m"}}},
     "spec.source.persistentVolumeClaim.claimName"),
    ({**BASE, "source": {"persistentVolumeClaim": {"claimName": "c", "path": "/abs"}}},
     "spec.source.persistentVolumeClaim.path"),
    ({**BASE, "source": {"hostPath": {"path": "relative/dir"}}}, "spec.source.hostPath.path"),
    ({**BASE, "source": {"image": {}}}, "spec.source.image.path"),
    ({**BASE, "source": {"huggingFace": {"tokenSecret": {"key": "t"}}}},
     "spec.source.huggingFace.tokenSecret.name"),
    ({**BASE, "source": {"huggingFace": {"cacheClaimName": "Not_A_Name"}}},
     "spec.source.huggingFace.cacheClaimName"),
]  # fmt: skip


def test_at_least_ten_cases() -> None:
    assert len(INVALID) >= 10


@pytest.mark.parametrize(("spec", "field"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_llmservice_is_refused(
    cluster: Cluster, namespace: str, spec: dict[str, Any] | None, field: str
) -> None:
    body: dict[str, Any] = {
        "apiVersion": "serving.halffull.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "bad"},
    }
    if spec is not None:
        body["spec"] = spec
    proc = cluster.run("apply", "--validate=false", "-n", namespace, "-f", "-",
                       stdin=json.dumps(body))  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert "is invalid" in proc.stderr
    # 1.20 names list items without their index (spec.engine.env.name); newer servers add it
    names = {field, field.replace("[0]", "")}
    assert any(f"{n}:" in proc.stderr or f"{n} " in proc.stderr for n in names), proc.stderr
    assert cluster.get("llms", "bad", namespace) is None

"""spec.source in the engine pod: the --model argument, read-only volumes, the token reference,
and the default that leaves objects from before spec.source untouched."""

from __future__ import annotations

from typing import Any

import pytest

from halffull.api.validation import problems
from halffull.builders.children import Defaults
from halffull.builders.engine import engine_deployment, vllm_args
from tests.unit.test_builders import DEFAULTS, service


def pod(spec: dict[str, Any], defaults: Defaults = DEFAULTS) -> dict[str, Any]:
    dep = engine_deployment(service({"model": "org/m", **spec}), defaults.engine_image)
    return dep["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def env(spec: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in pod(spec)["containers"][0]["env"]}


def test_default_source_is_the_hub_and_adds_nothing_to_the_pod() -> None:
    implicit = engine_deployment(service({"model": "org/m"}), "img")
    explicit = engine_deployment(service({"model": "org/m", "source": {"huggingFace": {}}}), "img")
    assert implicit == explicit  # what the CRD defaults to: pods of old objects do not roll
    args = vllm_args(service({"model": "org/m"}))
    assert flag(args, "--model") == "org/m" and "--revision" not in args
    spec = implicit["spec"]["template"]["spec"]
    assert [v["name"] for v in spec["volumes"]] == ["scheduler-config", "cache", "tmp", "shm"]
    assert "HF_TOKEN" not in str(spec) and "HF_HUB_OFFLINE" not in str(spec)


def test_hub_token_comes_from_the_secret_by_reference_and_cache_claim_is_hf_home() -> None:
    src = {"huggingFace": {"tokenSecret": {"name": "hf"}, "revision": "abc123",
                           "cacheClaimName": "hf-cache"}}  # fmt: skip
    e = env({"source": src})
    assert e["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    }
    p = pod({"source": src})
    (vol,) = [v for v in p["volumes"] if v["name"] == "hf-cache"]
    assert vol == {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}
    (mount,) = [m for m in p["containers"][0]["volumeMounts"] if m["name"] == "hf-cache"]
    assert mount["mountPath"] == e["HF_HOME"]["value"] and "readOnly" not in mount
    assert flag(p["containers"][0]["args"], "--revision") == "abc123"


@pytest.mark.parametrize(
    ("source", "model_arg", "volume"),
    [
        ({"persistentVolumeClaim": {"claimName": "models", "path": "org/m-v2"}}, "/models/org/m-v2",
         {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}}),
        ({"persistentVolumeClaim": {"claimName": "models"}}, "/models",
         {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}}),
        ({"hostPath": {"path": "/srv/m"}}, "/models",
         {"hostPath": {"path": "/srv/m", "type": "Directory"}}),
    ],
)  # fmt: skip
def test_volume_sources_are_mounted_read_only_and_offline(
    source: dict[str, Any], model_arg: str, volume: dict[str, Any]
) -> None:
    p = pod({"source": source})
    container = p["containers"][0]
    assert flag(container["args"], "--model") == model_arg
    assert flag(container["args"], "--served-model-name") == "org/m"
    (vol,) = [v for v in p["volumes"] if v["name"] == "model"]
    assert vol == {"name": "model", **volume}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model"]
    assert mount == {"name": "model", "mountPath": "/models", "readOnly": True}
    assert env({"source": source})["HF_HUB_OFFLINE"]["value"] == "1"


def test_image_source_is_a_path_with_no_volume() -> None:
    p = pod({"source": {"image": {"path": "/opt/models/m"}}})
    assert flag(p["containers"][0]["args"], "--model") == "/opt/models/m"
    assert [v["name"] for v in p["volumes"]] == ["scheduler-config", "cache", "tmp", "shm"]


def test_cpu_engine_requests_no_gpu_and_no_tensor_parallelism() -> None:
    p = pod({"engine": {"gpus": 0, "resources": {"requests": {"cpu": "2"}}}})
    container = p["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "2"}}
    assert "--tensor-parallel-size" not in container["args"]


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ({"source": {"image": {"path": "/m"}, "hostPath": {"path": "/m"}}}, "spec.source must"),
        ({"source": {}}, "spec.source must set exactly one"),
        ({"source": {"persistentVolumeClaim": {"claimName": "c", "path": "a/../../etc"}}},
         "spec.source.persistentVolumeClaim.path"),
        ({"source": {"huggingFace": {"tokenSecret": {"name": "s"}}},
          "engine": {"env": [{"name": "X", "value": "1"}, {"name": "HF_TOKEN", "value": "t"}]}},
         "spec.engine.env[1]: HF_TOKEN"),
        ({"engine": {"extraArgs": ["--revision=main"]}}, "spec.source.huggingFace.revision"),
    ],
)  # fmt: skip
def test_source_problems_name_the_field(spec: dict[str, Any], expect: str) -> None:
    found = problems(service({"model": "m", **spec}))
    assert len(found) == 1 and expect in found[0], found

"""The API's pure parts: CRD schema vs typed defaults, examples, cross-field validation, status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from halffull.api import status as st
from halffull.api.spec import LLMService, LLMServiceSpec
from halffull.api.validation import problems

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "llmservices.serving.halffull.dev.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def crd_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """What the API server fills into an empty object of this schema."""
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if "default" in prop:
            value = prop["default"]
            out[name] = {**crd_defaults(prop), **value} if isinstance(value, dict) else value
    return out


def test_typed_defaults_agree_with_the_crd() -> None:
    server = crd_defaults(SCHEMA["properties"]["spec"])
    from_server = LLMServiceSpec.model_validate({"model": "m", **server})
    assert from_server == LLMServiceSpec.model_validate({"model": "m"})


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_examples_validate_against_the_crd_schema(name: str) -> None:
    for doc in yaml.safe_load_all((ROOT / "examples" / name).read_text()):
        jsonschema.validate(doc, SCHEMA)
        LLMService.from_body({**doc, "metadata": {**doc["metadata"], "namespace": "x",
                                                  "uid": "u"}})  # fmt: skip


def test_every_schema_field_has_a_description() -> None:
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, prop in node.get("properties", {}).items():
            here = f"{path}.{name}"
            if "description" not in prop and name not in ("metadata",):
                missing.append(here)
            walk(prop, here)
        if "items" in node:
            walk(node["items"], path + "[]")

    walk(SCHEMA, "")
    assert missing == []


def svc(spec: dict[str, Any], name: str = "ok") -> LLMService:
    return LLMService.from_body(
        {"metadata": {"name": name, "namespace": "n", "uid": "u"}, "spec": {"model": "m", **spec}}
    )


@pytest.mark.parametrize(
    ("spec", "name", "expect"),
    [
        ({"engine": {"extraArgs": ["--port=1"]}}, "ok", "spec.engine.extraArgs[0]: --port"),
        ({"engine": {"extraArgs": ["--x", "--scheduler-cls", "a.B"]}}, "ok",
         "spec.engine.extraArgs[1]: --scheduler-cls"),
        ({"engine": {"maxNumSeqs": 512, "maxNumBatchedTokens": 256}}, "ok",
         "spec.engine.maxNumBatchedTokens (256)"),
        ({"router": {"enabled": False, "apiKeySecret": {"name": "s"}}}, "ok",
         "spec.router.apiKeySecret"),
        ({}, "x" * 54, "metadata.name"),
        ({}, "1abc", "metadata.name"),
    ],
)  # fmt: skip
def test_problems_name_the_field(spec: dict[str, Any], name: str, expect: str) -> None:
    found = problems(svc(spec, name))
    assert len(found) == 1 and expect in found[0]


def test_valid_spec_has_no_problems() -> None:
    assert problems(svc({"engine": {"extraArgs": ["--enable-prefix-caching"]}}, "x" * 53)) == []


def rollout(desired: int, ready: int, **kw: Any) -> st.Rollout:
    return st.Rollout(desired=desired, replicas=desired, ready=ready, updated=desired, **kw)


def observed(**kw: Any) -> st.Observed:
    base: dict[str, Any] = {
        "generation": 2, "desired_replicas": 2, "router_enabled": True,
        "engine": rollout(2, 2), "router": rollout(1, 1),
    }  # fmt: skip
    return st.Observed(**{**base, **kw})


def test_ready_when_engines_and_router_serve() -> None:
    conds = {c["type"]: c for c in st.conditions([], observed(), "T1")}
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["reason"] == "Serving"
    assert conds["Progressing"]["status"] == "False"
    assert conds["Degraded"]["status"] == "False"
    assert all(c["observedGeneration"] == 2 for c in conds.values())


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"engine": rollout(2, 0)}, "NoEngineReady"),
        ({"router": rollout(1, 0)}, "RouterNotReady"),
        ({"desired_replicas": 0, "engine": rollout(0, 0)}, "ScaledToZero"),
        ({"engine": None, "router": None, "problems": ["bad"]}, "InvalidSpec"),
    ],
)
def test_not_ready_reasons(kw: dict[str, Any], reason: str) -> None:
    ready = st.ready(observed(**kw))
    assert (ready.status, ready.reason) == ("False", reason)


def test_partial_readiness_still_serves_but_progresses() -> None:
    obs = observed(engine=rollout(3, 1))
    assert st.ready(obs).status == "True" and "1/2" in st.ready(obs).message
    assert st.progressing(obs).status == "True"


def test_stalled_rollout_is_degraded() -> None:
    obs = observed(engine=rollout(2, 1, stalled_message="quota exceeded"))
    d = st.degraded(obs)
    assert (d.status, d.reason) == ("True", "RolloutStalled") and "quota" in d.message


def test_transition_time_moves_only_when_status_changes() -> None:
    first = st.conditions([], observed(engine=rollout(2, 0)), "T1")
    same = st.conditions(first, observed(engine=rollout(2, 0)), "T2")
    assert same == first  # nothing changed: identical, so the status is not rewritten
    changed = {c["type"]: c for c in st.conditions(first, observed(), "T3")}
    assert changed["Ready"]["lastTransitionTime"] == "T3"
    assert changed["Degraded"]["lastTransitionTime"] == "T1"


def test_rollout_from_deployment_reads_stalls_and_generations() -> None:
    dep = {
        "metadata": {"generation": 5},
        "status": {
            "observedGeneration": 4, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "False",
                            "reason": "ProgressDeadlineExceeded", "message": "too slow"}],
        },
    }  # fmt: skip
    r = st.Rollout.from_deployment(dep, 2)
    assert r is not None and not r.complete and r.stalled_message == "too slow"
    assert st.Rollout.from_deployment(None, 2) is None


def waiting_pod(name: str, reason: str, component: str = "engine") -> dict[str, Any]:
    state = {"waiting": {"reason": reason, "message": 'Back-off pulling image "r.example/x:1"'}}
    return {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": component}},
        "status": {"containerStatuses": [{"name": "c", "image": "r.example/x:1", "state": state}]},
    }


def test_image_pull_failure_names_pod_and_image_and_outranks_a_stalled_rollout() -> None:
    pods = [waiting_pod("b", "ErrImagePull"), waiting_pod("a", "ImagePullBackOff", "router"),
            waiting_pod("c", "ContainerCreating")]  # fmt: skip
    msg = st.image_pull_problem(pods)
    assert msg is not None and msg.startswith("router pod a cannot pull image 'r.example/x:1'")
    assert "ImagePullBackOff" in msg and "(and 1 more)" in msg
    assert st.image_pull_problem([waiting_pod("c", "ContainerCreating")]) is None
    obs = observed(image_problem=msg, engine=rollout(2, 1, stalled_message="deadline"))
    d = st.degraded(obs)
    assert (d.status, d.reason, d.message) == ("True", "ImagePullFailed", msg)
    assert st.degraded(observed(image_problem=msg, problems=["bad"])).reason == "InvalidSpec"

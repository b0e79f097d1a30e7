"""The policy registry is the one list of names: the CRD (both copies), the configuration models,
the router's CLI and the simulator agree with it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from halffull.api.runtime_config import RouterConfig, SchedulerConfig
from halffull.policy import routing
from halffull.policy.registry import ROUTING_POLICIES, SCHEDULER_POLICIES, make_policy
from halffull.router import main as router_main
from halffull.sim import main as sim_main

ROOT = Path(__file__).resolve().parents[2]
CRD_COPIES = [
    ROOT / "crds" / "llmservices.serving.halffull.dev.yaml",
    ROOT / "charts" / "halffull" / "crds" / "llmservices.serving.halffull.dev.yaml",
]


def spec_schema(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    props: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return props["properties"]["spec"]["properties"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", CRD_COPIES, ids=["crds", "chart"])
def test_crd_enums_are_the_registry_names(path: Path) -> None:
    spec = spec_schema(path)
    assert spec["router"]["properties"]["policy"]["enum"] == list(ROUTING_POLICIES)
    assert sorted(spec["scheduler"]["properties"]["policy"]["enum"]) == sorted(SCHEDULER_POLICIES)


def test_every_routing_class_is_registered_under_its_name() -> None:
    classes = {
        cls
        for cls in vars(routing).values()
        if isinstance(cls, type)
        and issubclass(cls, routing.RoutingPolicy)
        and cls is not routing.RoutingPolicy
    }
    assert set(ROUTING_POLICIES.values()) == classes
    for name, cls in ROUTING_POLICIES.items():
        assert cls.name == name
        assert type(make_policy(name, seed=1)) is cls


def test_configuration_models_accept_exactly_the_registry_names() -> None:
    for name in ROUTING_POLICIES:
        assert RouterConfig(model="m", policy=name).policy == name  # type: ignore[arg-type]
    for sched in SCHEDULER_POLICIES:
        assert SchedulerConfig(policy=sched).policy == sched
    with pytest.raises(ValidationError, match="policy"):
        RouterConfig(model="m", policy="fastest")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="policy"):
        SchedulerConfig(policy="sjf")  # type: ignore[arg-type]


def test_router_cli_offers_the_registry_names() -> None:
    parser = argparse.ArgumentParser()
    router_main.add_arguments(parser)
    policy = next(a for a in parser._actions if a.dest == "policy")
    assert set(policy.choices or ()) == set(ROUTING_POLICIES)


def test_sim_cli_takes_every_registry_name_and_refuses_others() -> None:
    parser = argparse.ArgumentParser()
    sim_main.add_arguments(parser)
    routers = next(a for a in parser._actions if a.dest == "router")
    for name in ROUTING_POLICIES:
        assert name in (routers.help or "")
    args = parser.parse_args(["--router", "fastest", "--replicas", "2"])
    with pytest.raises(SystemExit, match="unknown router 'fastest'"):
        sim_main.run_one([], args, "fcfs", "fastest")


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'; known: sal, "):
        make_policy("fastest")

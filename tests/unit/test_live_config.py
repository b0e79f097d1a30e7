"""The live-tuning fast path's choice of pods: which digests move with which fields, and which
pods get a patch."""

from __future__ import annotations

from typing import Any

from halffull.api.runtime_config import RouterEndpoint
from halffull.builders.live_config import (
    CONFIG_HASH_ANNOTATION,
    digests,
    pods_to_touch,
    touch_patch,
)
from tests.unit.test_builders import service

EP = [RouterEndpoint(name="e-1", url="http://10.0.0.1:8000")]


def d(spec: dict[str, Any], endpoints: list[RouterEndpoint] = EP) -> dict[str, str]:
    return digests(service({"model": "m", **spec}), endpoints, "cluster.local")


def test_alpha_moves_only_the_engine_digest_and_beta_only_the_router_digest() -> None:
    base = d({})
    alpha = d({"scheduler": {"alpha": 0.5}})
    beta = d({"router": {"beta": 3.0}})
    assert alpha["engine"] != base["engine"] and alpha["router"] == base["router"]
    assert beta["router"] != base["router"] and beta["engine"] == base["engine"]
    assert d({"router": {"policy": "round-robin"}})["router"] != base["router"]
    assert d({"scheduler": {"policy": "fcfs"}})["engine"] != base["engine"]


def test_weights_do_not_move_the_router_digest_but_the_endpoint_set_does() -> None:
    reweighted = [e.model_copy(update={"weight": 0.2}) for e in EP]
    assert d({}, reweighted) == d({})
    more = [*EP, RouterEndpoint(name="e-2", url="http://10.0.0.2:8000")]
    assert d({}, more)["router"] != d({})["router"]


def test_no_router_digest_without_a_router() -> None:
    assert set(d({"router": {"enabled": False}})) == {"engine"}


def pod(name: str, component: str, annotation: str | None = None, **kw: Any) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/component": component}}
    if annotation is not None:
        md["annotations"] = {CONFIG_HASH_ANNOTATION: annotation}
    md.update(kw.pop("metadata", {}))
    return {"metadata": md, "spec": {"nodeName": "n1", **kw}}


def test_only_lagging_scheduled_live_pods_are_touched() -> None:
    wanted = {"engine": "E2", "router": "R1"}
    pods = [
        pod("eng-old", "engine", "E1"),
        pod("eng-new", "engine"),  # started since: one patch
        pod("eng-ok", "engine", "E2"),
        pod("rt-ok", "router", "R1"),
        pod("eng-pending", "engine", "E1", nodeName=None),
        pod("eng-going", "engine", "E1", metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"}),
        pod("other", "something-else", "E1"),
    ]
    assert pods_to_touch(pods, wanted) == [("eng-new", "E2"), ("eng-old", "E2")]
    assert touch_patch("E2") == {"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: "E2"}}}

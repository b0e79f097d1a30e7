"""The router's endpoint table as the operator builds it from engine pods."""

from __future__ import annotations

from typing import Any

from halffull.controller.reconcile import ready_endpoints, serving


def pod(name: str, ip: str | None, ready: bool, terminating: bool = False) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name}
    if terminating:
        md["deletionTimestamp"] = "2026-11-30T22:00:00Z"
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": str(ready)}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": md, "status": status}


def test_terminating_pods_that_still_serve_are_draining_not_dropped() -> None:
    table = ready_endpoints(
        [pod("a", "10.0.0.1", True), pod("b", "10.0.0.2", True, terminating=True),
         pod("c", "10.0.0.3", False), pod("d", None, True)]
    )  # fmt: skip
    assert [(e.name, e.url, e.draining) for e in table] == [
        ("a", "http://10.0.0.1:8000", False),
        ("b", "http://10.0.0.2:8000", True),
    ]
    assert [e.name for e in serving(table)] == ["a"]

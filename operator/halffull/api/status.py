"""The LLMService status, decided by small pure functions from what the operator observed.

Conditions follow the Kubernetes convention: a list keyed by `type`, CamelCase `reason`, and a
`lastTransitionTime` that moves only when `status` changes, so a status computed twice from the
same observations is identical and is never written twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"
METRICS_AVAILABLE = "MetricsAvailable"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED, METRICS_AVAILABLE)


@dataclass(frozen=True)
class Rollout:
    """What a Deployment reports, reduced to what readiness needs."""

    desired: int
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    up_to_date_generation: bool = True
    stalled_message: str | None = None  # ProgressDeadlineExceeded or ReplicaFailure

    @classmethod
    def from_deployment(cls, dep: Mapping[str, Any] | None, desired: int) -> Rollout | None:
        if dep is None:
            return None
        st = dep.get("status") or {}
        stalled = None
        for cond in st.get("conditions") or []:
            if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                stalled = cond.get("message") or "replica failure"
            if cond.get("type") == "Progressing" and cond.get("reason") == (
                "ProgressDeadlineExceeded"
            ):
                stalled = cond.get("message") or "progress deadline exceeded"
        return cls(
            desired=desired,
            replicas=int(st.get("replicas") or 0),
            ready=int(st.get("readyReplicas") or 0),
            updated=int(st.get("updatedReplicas") or 0),
            up_to_date_generation=int(st.get("observedGeneration") or 0)
            >= int(dep["metadata"].get("generation") or 0),
            stalled_message=stalled,
        )

    @property
    def complete(self) -> bool:
        return (
            self.up_to_date_generation
            and self.updated >= self.desired
            and self.ready >= self.desired
            and self.replicas == self.desired
        )


@dataclass(frozen=True)
class Observed:
    """Everything the status is computed from."""

    generation: int
    desired_replicas: int
    router_enabled: bool
    engine: Rollout | None
    router: Rollout | None
    problems: Sequence[str] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    metrics_sampled: bool | None = False
    """The operator's metrics loop has published a table for this object; None: not known in
    this process yet (just restarted), so the stored condition stands."""
    metrics_problem: tuple[str, str] | None = None
    """(reason, message) of what is wrong with the engines' metrics, if anything."""
    image_problem: str | None = None
    """A pod that cannot pull its image (see `image_pull_problem`)."""


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    message: str


# What a kubelet reports while a container's image cannot be had; each persists until fixed.
IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)


def image_pull_problem(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The first pod (by name) whose container waits for an image it cannot pull, named with
    the image and the kubelet's reason: otherwise only visible as pod events."""
    stuck = []
    for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in IMAGE_PULL_REASONS:
                component = (pod["metadata"].get("labels") or {}).get(
                    "app.kubernetes.io/component", "pod"
                )
                detail = (waiting.get("message") or "")[:300]
                stuck.append(
                    f"{component} pod {pod['metadata']['name']} cannot pull image "
                    f"{cs.get('image')!r}: {waiting['reason']}" + (f": {detail}" if detail else "")
                )
    if not stuck:
        return None
    more = f" (and {len(stuck) - 1} more)" if len(stuck) > 1 else ""
    return stuck[0] + more + "; push the image (REGISTRY=... make images) or fix its name"


def degraded(obs: Observed) -> Verdict:
    if obs.problems:
        return Verdict("True", "InvalidSpec", "; ".join(obs.problems))
    if obs.image_problem:
        return Verdict("True", "ImagePullFailed", obs.image_problem)
    for name, rollout in (("engine", obs.engine), ("router", obs.router)):
        if rollout is not None and rollout.stalled_message:
            return Verdict("True", "RolloutStalled", f"{name}: {rollout.stalled_message}")
    return Verdict("False", "AsExpected", "no problem found")


def progressing(obs: Observed) -> Verdict:
    if obs.problems:
        return Verdict("False", "InvalidSpec", "the spec must be fixed first")
    waiting = []
    for name, rollout in (("engine", obs.engine), ("router", obs.router)):
        if name == "router" and not obs.router_enabled:
            continue
        if rollout is None:
            waiting.append(f"{name} Deployment not created yet")
        elif not rollout.complete:
            waiting.append(f"{name} {rollout.ready}/{rollout.desired} ready")
    if waiting:
        return Verdict("True", "RollingOut", ", ".join(waiting))
    return Verdict("False", "Complete", "all replicas are up to date and ready")


def ready(obs: Observed) -> Verdict:
    engine_ready = obs.engine.ready if obs.engine else 0
    router_ready = obs.router.ready if obs.router else 0
    if obs.problems and engine_ready == 0:
        return Verdict("False", "InvalidSpec", "the spec must be fixed first")
    if obs.desired_replicas == 0:
        return Verdict("False", "ScaledToZero", "spec.replicas is 0")
    if engine_ready == 0:
        return Verdict("False", "NoEngineReady", f"0/{obs.desired_replicas} engine replicas ready")
    if obs.router_enabled and router_ready == 0:
        return Verdict("False", "RouterNotReady", "no router replica is ready")
    return Verdict(
        "True", "Serving", f"{engine_ready}/{obs.desired_replicas} engine replicas ready"
    )


def metrics_available(obs: Observed) -> Verdict:
    if not obs.metrics_sampled:  # never sampled, or unknown with nothing stored
        return Verdict("Unknown", "NotSampledYet", "no ready engine has been sampled yet")
    if obs.metrics_problem is not None:
        return Verdict("False", *obs.metrics_problem)
    return Verdict("True", "Sampled", "every ready engine reports usable metrics")


def set_condition(
    current: Sequence[Mapping[str, Any]], ctype: str, verdict: Verdict, generation: int, now: str
) -> dict[str, Any]:
    previous = next((c for c in current if c.get("type") == ctype), None)
    moved = previous is None or previous.get("status") != verdict.status
    when = now if moved or previous is None else previous.get("lastTransitionTime", now)
    return {
        "type": ctype,
        "status": verdict.status,
        "reason": verdict.reason,
        "message": verdict.message,
        "lastTransitionTime": when,
        "observedGeneration": generation,
    }


def conditions(
    current: Sequence[Mapping[str, Any]], obs: Observed, now: str
) -> list[dict[str, Any]]:
    stored = {c.get("type"): c for c in current}
    if obs.metrics_sampled is None and METRICS_AVAILABLE in stored:
        c = stored[METRICS_AVAILABLE]
        keep = Verdict(c.get("status", "Unknown"), c.get("reason", ""), c.get("message", ""))
    else:
        keep = metrics_available(obs)
    verdicts = {
        READY: ready(obs),
        PROGRESSING: progressing(obs),
        DEGRADED: degraded(obs),
        METRICS_AVAILABLE: keep,
    }
    return [set_condition(current, t, verdicts[t], obs.generation, now) for t in CONDITION_TYPES]


def compute_status(
    current: Mapping[str, Any], obs: Observed, selector: str, url: str, now: str
) -> dict[str, Any]:
    """The full status to write, recomputed from the observations alone: a key that no longer
    applies is absent (`current` only lends the conditions' transition times). Equal inputs give
    an equal result, whatever `now` is, as long as no condition changes its status."""
    return {
        "observedGeneration": obs.generation,
        "replicas": obs.engine.replicas if obs.engine else 0,
        "readyReplicas": obs.engine.ready if obs.engine else 0,
        "selector": selector,
        "url": url,
        "conditions": conditions(current.get("conditions") or [], obs, now),
        **obs.extra,
    }

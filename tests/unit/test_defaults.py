"""Every static copy of a default agrees with `halffull.defaults`, the one source."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from halffull import defaults as D
from halffull.api.runtime_config import RouterConfig, SchedulerConfig
from halffull.api.spec import LLMServiceSpec

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = [
    ROOT / "crds" / "llmservices.serving.halffull.dev.yaml",
    ROOT / "charts" / "halffull" / "crds" / "llmservices.serving.halffull.dev.yaml",
]

# CRD path under spec -> the default it must carry
CRD_DEFAULTS: dict[str, object] = {
    "scheduler.policy": D.SCHEDULER_POLICY,
    "scheduler.alpha": D.ALPHA,
    "router.policy": D.ROUTER_POLICY,
    "router.beta": D.BETA,
    "router.pollIntervalMs": D.POLL_INTERVAL_MS,
    "router.maxAttempts": D.MAX_ATTEMPTS,
    "router.timeouts.connectSeconds": D.CONNECT_TIMEOUT_S,
    "router.timeouts.firstByteSeconds": D.FIRST_BYTE_TIMEOUT_S,
    "router.timeouts.streamIdleSeconds": D.STREAM_IDLE_TIMEOUT_S,
    "router.shedQueuedBatches": D.SHED_QUEUED_BATCHES,
    "metrics.intervalSeconds": D.METRICS_INTERVAL_S,
}


def schema_at(crd: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for part in dotted.split("."):
        node = node["properties"][part]
    return node  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: str(p.relative_to(ROOT)))
@pytest.mark.parametrize("field", sorted(CRD_DEFAULTS))
def test_crd_default_is_the_shipped_default(path: Path, field: str) -> None:
    crd = yaml.safe_load(path.read_text())
    assert schema_at(crd, field)["default"] == CRD_DEFAULTS[field], (
        f"{path.relative_to(ROOT)}: spec.{field} default differs from halffull.defaults"
    )


def test_typed_models_read_the_defaults() -> None:
    spec = LLMServiceSpec.model_validate({"model": "m"})
    router = RouterConfig(model="m")
    assert (spec.scheduler.alpha, SchedulerConfig().alpha) == (D.ALPHA, D.ALPHA)
    assert (spec.router.beta, router.beta) == (D.BETA, D.BETA)
    assert (spec.router.poll_interval_ms, router.poll_interval_ms) == (D.POLL_INTERVAL_MS,) * 2
    assert (spec.router.max_attempts, router.max_attempts) == (D.MAX_ATTEMPTS,) * 2
    assert spec.router.timeouts == router.timeouts
    assert router.timeouts.first_byte_seconds == D.FIRST_BYTE_TIMEOUT_S


def test_tuning_sweeps_include_the_shipped_values() -> None:
    from bench import report

    from halffull.sim import tune

    assert D.BETA in tune.BETAS and D.BETA in report.BETAS
    assert (D.ALPHA, D.MAX_WAIT_SECONDS) in tune.grid(tune.ALPHAS, tune.MAX_WAITS)


@pytest.mark.parametrize(
    ("doc", "pattern", "value"),
    [
        ("docs/router.md", r"\| `--beta` \| file, else `([0-9.]+)`", D.BETA),
        (
            "docs/router.md",
            r"\| `--poll-interval-ms` \| file, else `([0-9.]+)`",
            D.POLL_INTERVAL_MS,
        ),
        ("docs/router.md", r"\| `--max-attempts` \| file, else `([0-9.]+)`", D.MAX_ATTEMPTS),
    ],
)
def test_docs_state_the_shipped_defaults(doc: str, pattern: str, value: float) -> None:
    found = re.search(pattern, (ROOT / doc).read_text())
    assert found is not None, f"{doc}: no line matching {pattern!r}"
    assert float(found.group(1)) == value, f"{doc}: says {found.group(1)}, the default is {value}"

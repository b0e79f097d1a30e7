"""What the engine plugin tells the outside: the policy in force and SAL's inputs.

The scheduler lives in vLLM's engine-core process, not in the API server that serves `/metrics`,
so these gauges are published in two ways:

- on their own port when `HALFFULL_ENGINE_METRICS_PORT` is set (a small HTTP server thread in the
  engine core, Prometheus text format at any path);
- inside vLLM's own `/metrics` when `PROMETHEUS_MULTIPROC_DIR` is set, because prometheus_client
  then writes every process's values to that directory and vLLM's endpoint reads them all.

Names: `halffull_scheduler_policy{policy}` (1 for the policy in force, 0 for the others),
`halffull_scheduler_alpha`, `halffull_scheduler_config_reloads_total`,
`halffull_scheduler_config_errors_total`, `halffull_engine_free_kv_tokens`,
`halffull_engine_kv_capacity_tokens`, `halffull_engine_waiting_prefill_tokens`,
`halffull_engine_max_num_batched_tokens`.
"""

from __future__ import annotations

import logging
import os
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from halffull.api.runtime_config import ENGINE_METRICS_PORT_ENV, SchedulerConfig
from halffull.policy.registry import SCHEDULER_POLICIES

METRICS_PORT_ENV = ENGINE_METRICS_PORT_ENV
METRICS_HOST_ENV = "HALFFULL_ENGINE_METRICS_HOST"

logger = logging.getLogger("halffull.engine")


class EngineMetrics:
    """The plugin's gauges, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        mode: Final = "livemostrecent"  # used only under PROMETHEUS_MULTIPROC_DIR
        self.policy = Gauge(
            "halffull_scheduler_policy",
            "1 for the admission policy in force in this engine, 0 for the others.",
            ["policy"],
            registry=self.registry,
            multiprocess_mode=mode,
        )
        self.alpha = Gauge(
            "halffull_scheduler_alpha",
            "LARRY's aging weight alpha in force.",
            registry=self.registry,
            multiprocess_mode=mode,
        )
        self.reloads = Counter(
            "halffull_scheduler_config_reloads",
            "Parameter file versions taken into force.",
            registry=self.registry,
        )
        self.errors = Counter(
            "halffull_scheduler_config_errors",
            "Parameter file versions rejected (missing, unreadable or invalid).",
            registry=self.registry,
        )
        self.free_kv_tokens = Gauge(
            "halffull_engine_free_kv_tokens",
            "Free KV cache slots in tokens (free blocks times block size).",
            registry=self.registry,
            multiprocess_mode=mode,
        )
        self.kv_capacity_tokens = Gauge(
            "halffull_engine_kv_capacity_tokens",
            "KV cache capacity in tokens (blocks times block size).",
            registry=self.registry,
            multiprocess_mode=mode,
        )
        self.waiting_prefill_tokens = Gauge(
            "halffull_engine_waiting_prefill_tokens",
            "Prompt tokens not yet prefilled: waiting requests plus running chunked prefills.",
            registry=self.registry,
            multiprocess_mode=mode,
        )
        self.max_num_batched_tokens = Gauge(
            "halffull_engine_max_num_batched_tokens",
            "The engine's token budget per step (max_num_batched_tokens).",
            registry=self.registry,
            multiprocess_mode=mode,
        )

    def set_config(self, config: SchedulerConfig) -> None:
        for name in SCHEDULER_POLICIES:
            self.policy.labels(policy=name).set(1.0 if name == config.policy else 0.0)
        self.alpha.set(config.alpha)

    def serve_from_env(self) -> int | None:
        """Start the HTTP endpoint if `HALFFULL_ENGINE_METRICS_PORT` is set; returns the port.

        A port that cannot be bound is logged, never fatal."""
        raw = os.environ.get(METRICS_PORT_ENV, "").strip()
        if not raw:
            return None
        host = os.environ.get(METRICS_HOST_ENV, "0.0.0.0").strip() or "0.0.0.0"
        try:
            port = int(raw)
            start_http_server(port, addr=host, registry=self.registry)
        except (ValueError, OSError) as exc:
            logger.error(
                "halffull scheduler: metrics endpoint %s:%s not started (%s)", host, raw, exc
            )
            return None
        logger.info("halffull scheduler: metrics on http://%s:%d/metrics", host, port)
        return port

"""Every tunable default of halffull, in one place.

The policy classes, the CLIs, the simulator, the tuning sweeps, the typed spec and runtime files
read these names; the CRD, the chart's values and docs/ are checked against them by
`tests/unit/test_defaults.py`. Change a value here and that test names every static file that
still says otherwise.
"""

from __future__ import annotations

from typing import Final

# -- engine scheduler (LARRY) ----------------------------------------------------------------

SCHEDULER_POLICY: Final = "larry"
ALPHA: Final = 0.1
"""LARRY's weight of waiting time, per second (docs/larry.md: why 0.1)."""

# -- router (SAL) ----------------------------------------------------------------------------

ROUTER_POLICY: Final = "sal"
BETA: Final = 256.0
"""SAL's memory weight. At 1 or below the memory term can never decide (docs/router.md,
"On beta"); the policy benchmark found 64-4096 alike."""
POLL_INTERVAL_MS: Final = 100
MAX_ATTEMPTS: Final = 3
"""Endpoints tried per request, only while the request cannot have reached an engine."""
MAX_BODY_BYTES: Final = 16 * 1024 * 1024

CONNECT_TIMEOUT_S: Final = 5.0
"""TCP connect to an engine inside the cluster: seconds are already a sign of trouble."""
FIRST_BYTE_TIMEOUT_S: Final = 600.0
"""From sending the request to the first body byte. A non-streamed answer arrives whole, and a
stream's first chunk waits for queueing and the prefill of a long prompt on a big model."""
STREAM_IDLE_TIMEOUT_S: Final = 120.0
"""Longest silence between two chunks of an answer once it started (a preempted request waits
for recompute in between)."""

SHED_QUEUED_BATCHES: Final = 256
"""Overload bound: when every replica holds more queued prefill work than this many engine
steps (`max_num_batched_tokens` each), new requests get 429 + Retry-After. 0 turns it off."""
SHED_RETRY_AFTER_S: Final = 1

SHUTDOWN_DELAY_S: Final = 2.0
"""After SIGTERM the router answers /ready with 503 this long before it closes its listener."""
DRAIN_GRACE_S: Final = 300
"""How long a stopping router or engine lets answers in flight finish."""
PRESTOP_SLEEP_S: Final = 5
"""preStop sleep of router and engine pods: time for Services and the routers' endpoint tables
to drop a terminating pod while it still serves."""

# -- operator's endpoint weights --------------------------------------------------------------

METRICS_INTERVAL_S: Final = 5
WEIGHT_RELATIVE_THRESHOLD: Final = 0.2
"""A weight is republished when it moved by this fraction of its old value (or the set of
endpoints changed)."""
WEIGHT_MIN_PUBLISH_INTERVAL_S: Final = 15.0
"""...and no sooner than this after the previous publication, so weights cannot flap."""
WEIGHT_FLOOR: Final = 1e-6
"""Computed weights never go below this (a load of a million engine steps): only an explicit
state (a terminating pod) drains."""

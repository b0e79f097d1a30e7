"""The LARRY engine plugin's exact gauges (`halffull.engine.metrics`), served on their own port.

vLLM's /metrics has the number of waiting requests but not their prompt tokens, and KV usage as
a rounded fraction; the plugin, inside the engine's scheduler, exports both exactly:
`halffull_engine_waiting_prefill_tokens` and `halffull_engine_free_kv_tokens`. The operator
tells the router the port (`router.json` `engineMetricsPort`); engines without the plugin simply
do not answer there, and the router keeps its estimates.
"""

from __future__ import annotations

import math

WAITING = "halffull_engine_waiting_prefill_tokens"
FREE_KV = "halffull_engine_free_kv_tokens"


def parse_plugin_gauges(text: str) -> tuple[float | None, float | None]:
    """(waiting prefill tokens, free KV tokens) from Prometheus text; None for a gauge that is
    absent or not a finite, non-negative number."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(("halffull_engine_waiting", "halffull_engine_free")):
            continue
        name, _, value = line.partition(" ")
        name = name.split("{", 1)[0]
        try:
            number = float(value.split()[0])
        except (ValueError, IndexError):
            continue
        if math.isfinite(number) and number >= 0:
            found[name] = number
    return found.get(WAITING), found.get(FREE_KV)

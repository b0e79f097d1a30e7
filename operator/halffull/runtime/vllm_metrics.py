"""An engine's Prometheus /metrics text into `EngineStats`.

vLLM 0.32 exposes about 40 `vllm:` families, most of them histograms with many buckets; the
router needs five. Lines of other families are dropped before the text reaches
prometheus-client's parser, which keeps a poll of a real engine well under a millisecond.

Names read (labels `model_name`, `engine`; several engines in one server are summed):
`vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (averaged
over engines), `vllm:num_preemptions_total`, and `vllm:cache_config_info` whose labels
`num_gpu_blocks` and `block_size` give the KV capacity.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from halffull.policy.routing import EngineStats

_WANTED = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions",
    "vllm:cache_config_info",
)


class MetricsParseError(ValueError):
    """The text is not Prometheus exposition format or lacks vLLM's queue gauges."""


def _wanted_lines(text: str) -> str:
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            name = parts[2] if len(parts) > 2 else ""
        else:
            name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.startswith(_WANTED):
            kept.append(line)
    return "\n".join(kept) + "\n"


def _int_label(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None


def parse_engine_metrics(text: str) -> EngineStats:
    running = waiting = preemptions = 0.0
    usage: list[float] = []
    blocks: int | None = None
    block_size: int | None = None
    seen = set()
    try:
        families = list(text_string_to_metric_families(_wanted_lines(text)))
    except ValueError as exc:
        raise MetricsParseError(f"not Prometheus text: {exc}") from exc
    for family in families:
        for sample in family.samples:
            name = sample.name
            if name == "vllm:num_requests_running":
                running += sample.value
            elif name == "vllm:num_requests_waiting":
                waiting += sample.value
            elif name == "vllm:kv_cache_usage_perc":
                usage.append(sample.value)
            elif name == "vllm:num_preemptions_total":
                preemptions += sample.value
            elif name == "vllm:cache_config_info":
                b = _int_label(sample.labels.get("num_gpu_blocks"))
                blocks = (blocks or 0) + b if b is not None else blocks
                block_size = _int_label(sample.labels.get("block_size")) or block_size
            else:
                continue
            seen.add(name)
    missing = {"vllm:num_requests_running", "vllm:num_requests_waiting"} - seen
    if missing:
        raise MetricsParseError(f"no {', '.join(sorted(missing))} in the engine's /metrics")
    return EngineStats(
        num_running=round(running),
        num_waiting=round(waiting),
        kv_usage=sum(usage) / len(usage) if usage else 0.0,
        num_gpu_blocks=blocks,
        block_size=block_size,
        num_preemptions=preemptions,
    )

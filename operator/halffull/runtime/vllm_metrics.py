"""An engine's Prometheus /metrics text into `EngineStats`.

vLLM 0.32 exposes about 40 `vllm:` families, most of them histograms with many buckets; the
router needs five. Their sample lines are picked out by name and parsed here (one regular
expression per line): prometheus-client's parser, which reads label strings character by
character in Python, took most of the router's CPU per poll, and the router polls every
replica ten times a second.

Names read (labels `model_name`, `engine`; several engines in one server are summed):
`vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (averaged
over engines), `vllm:num_preemptions_total`, and `vllm:cache_config_info` whose labels
`num_gpu_blocks` and `block_size` give the KV capacity.
"""

from __future__ import annotations

import re

from halffull.policy.routing import EngineStats

_WANTED = frozenset(
    {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:cache_config_info",
    }
)
_SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>(?:[^"}]+|"(?:[^"\\\n]+|\\.)*")*)\})?'
    r"[ \t]+(?P<value>\S+)(?:[ \t]+-?[0-9]+)?[ \t]*"
)
"""One sample line: name, optional {labels}, value, optional timestamp."""
_LABEL = re.compile(
    r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]+|\\.)*)"[ \t]*(?:,|$)'
)
_ESCAPE = re.compile(r"\\(.)")


class MetricsParseError(ValueError):
    """The text is not Prometheus exposition format or lacks vLLM's queue gauges."""


def _labels(text: str | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos, end = 0, len(text or "")
    while text and pos < end:
        m = _LABEL.match(text, pos)
        if m is None:
            raise MetricsParseError(f"not Prometheus text: bad labels {{{text}}}")
        value = m[2]
        if "\\" in value:
            value = _ESCAPE.sub(lambda e: "\n" if e[1] == "n" else e[1], value)
        labels[m[1]] = value
        pos = m.end()
    return labels


def _samples(text: str) -> list[tuple[str, str | None, float]]:
    """(name, label text, value) of the wanted families' sample lines."""
    found = []
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(None, 1)[0]
        if name not in _WANTED:
            continue
        m = _SAMPLE.fullmatch(line.rstrip())
        if m is None:
            raise MetricsParseError(f"not Prometheus text: {line[:200]!r}")
        try:
            value = float(m["value"])
        except ValueError:
            raise MetricsParseError(f"not a number in {line[:200]!r}") from None
        found.append((name, m["labels"], value))
    return found


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
    for name, label_text, value in _samples(text):
        labels = _labels(label_text)  # checked on every line read, used on one
        if name == "vllm:num_requests_running":
            running += value
        elif name == "vllm:num_requests_waiting":
            waiting += value
        elif name == "vllm:kv_cache_usage_perc":
            usage.append(value)
        elif name == "vllm:num_preemptions_total":
            preemptions += value
        else:  # vllm:cache_config_info
            b = _int_label(labels.get("num_gpu_blocks"))
            blocks = (blocks or 0) + b if b is not None else blocks
            block_size = _int_label(labels.get("block_size")) or block_size
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

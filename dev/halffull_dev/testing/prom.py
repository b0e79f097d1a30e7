"""Reading a Prometheus /metrics endpoint in tests and benchmarks: fetch, parse, sum a series."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from typing import NamedTuple

from prometheus_client.parser import text_string_to_metric_families


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    return [
        Sample(s.name, dict(s.labels), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def scrape(url: str, timeout_s: float = 5.0) -> list[Sample]:
    """The samples at `url` (raises OSError when nothing answers)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return parse(resp.read().decode())


def total(samples: Iterable[Sample], name: str) -> float:
    """The sum of every sample named `name`, whatever its labels."""
    return sum(s.value for s in samples if s.name == name)

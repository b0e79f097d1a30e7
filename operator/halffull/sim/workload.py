"""Workloads: trace replays at scaled rates and synthetic arrivals with fitted length laws.

A workload is a list of `Job`s sorted by arrival (seconds from the first). Traces are CSV files
with an arrival column and prompt/output token columns: the Azure LLM inference traces 2023
(`TIMESTAMP`, `ContextTokens`, `GeneratedTokens`) or a user's own file (`arrival` in seconds or
an ISO timestamp, `prompt_tokens`, `output_tokens`; see docs/simulator.md).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

TRACES_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "traces"
"""Where the shared Azure traces live next to the checkout (read in place, never copied)."""

TRACE_FILES = {"conv": "azure_llm_2023_conv.csv", "code": "azure_llm_2023_code.csv"}

_ARRIVAL = ("TIMESTAMP", "arrival", "arrival_time", "timestamp", "time")
_PROMPT = ("ContextTokens", "prompt_tokens", "prompt", "input_tokens")
_OUTPUT = ("GeneratedTokens", "output_tokens", "output", "generated_tokens")


@dataclass(frozen=True, slots=True)
class Job:
    arrival: float
    prompt: int
    output: int


def _column(header: Sequence[str], names: Sequence[str], path: Path) -> str:
    for name in names:
        if name in header:
            return name
    raise ValueError(f"{path}: none of the columns {', '.join(names)} found in {list(header)}")


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        # the Azure traces carry 7 fractional digits; Python parses at most 6
        head, dot, frac = text.partition(".")
        if dot:
            digits = "".join(c for c in frac if c.isdigit())
            text = f"{head}.{digits[:6]}"
        return datetime.fromisoformat(text).timestamp()


def resolve_trace(name_or_path: str, traces_dir: Path | None = None) -> Path:
    """`conv`/`code` (the shared Azure traces) or a path to a CSV file."""
    if name_or_path in TRACE_FILES:
        return (traces_dir or TRACES_DIR) / TRACE_FILES[name_or_path]
    return Path(name_or_path)


def load_csv(path: Path) -> list[Job]:
    """All rows of a trace, arrivals relative to the first, sorted by arrival."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        a, p, o = (_column(header, n, path) for n in (_ARRIVAL, _PROMPT, _OUTPUT))
        rows = [(_seconds(r[a]), int(float(r[p])), int(float(r[o]))) for r in reader]
    if not rows:
        raise ValueError(f"{path}: no rows")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return [Job(t - t0, max(1, prompt), max(1, out)) for t, prompt, out in rows]


def prepare(
    jobs: Sequence[Job],
    *,
    rate_scale: float = 1.0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    limit: int | None = None,
    length_scale: float = 1.0,
    max_model_len: int | None = None,
) -> list[Job]:
    """A slice of a workload at a scaled rate.

    `rate_scale` 2 replays the arrivals twice as fast (inter-arrival times halved, burstiness
    kept). The slice is cut on the trace's own clock (`start_s`, `duration_s`), then rescaled.
    Token counts are multiplied by `length_scale` (at least 1) and the prompt is clipped so that
    prompt + output fits `max_model_len` (as a client would have to).
    """
    if rate_scale <= 0:
        raise ValueError("rate_scale must be positive")
    end = math.inf if duration_s is None else start_s + duration_s
    chosen = [j for j in jobs if start_s <= j.arrival < end]
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        return []
    t0 = chosen[0].arrival
    out: list[Job] = []
    for j in chosen:
        output = max(1, round(j.output * length_scale))
        prompt = max(1, round(j.prompt * length_scale))
        if max_model_len is not None:
            output = min(output, max_model_len - 1)
            prompt = max(1, min(prompt, max_model_len - output))
        out.append(Job((j.arrival - t0) / rate_scale, prompt, output))
    return out


@dataclass(frozen=True, slots=True)
class LengthFit:
    """Log-normal fits of prompt and output lengths (parameters of log(tokens))."""

    prompt_mu: float
    prompt_sigma: float
    output_mu: float
    output_sigma: float
    prompt_max: int
    output_max: int
    rate: float
    """Mean arrivals per second."""
    cv: float
    """Coefficient of variation of the inter-arrival times (1 for Poisson)."""


def fit(jobs: Sequence[Job]) -> LengthFit:
    """Fit the length laws and arrival statistics of a workload."""
    if len(jobs) < 3:
        raise ValueError("need at least 3 jobs to fit")
    prompts = np.log(np.array([j.prompt for j in jobs], dtype=np.float64))
    outputs = np.log(np.array([j.output for j in jobs], dtype=np.float64))
    gaps = np.diff(np.array([j.arrival for j in jobs], dtype=np.float64))
    mean_gap = float(gaps.mean())
    return LengthFit(
        prompt_mu=float(prompts.mean()),
        prompt_sigma=float(prompts.std()),
        output_mu=float(outputs.mean()),
        output_sigma=float(outputs.std()),
        prompt_max=max(j.prompt for j in jobs),
        output_max=max(j.output for j in jobs),
        rate=1.0 / mean_gap if mean_gap > 0 else float(len(jobs)),
        cv=float(gaps.std() / mean_gap) if mean_gap > 0 else 1.0,
    )


def synthetic(
    law: LengthFit,
    *,
    count: int,
    rate: float | None = None,
    cv: float | None = None,
    seed: int = 0,
) -> list[Job]:
    """`count` jobs with log-normal lengths from `law` (clipped to its maxima) and renewal
    arrivals: gamma-distributed gaps with the given mean rate and coefficient of variation
    (cv 1: Poisson; cv > 1: bursty, as in the code trace). Defaults: the fitted rate and cv."""
    rng = np.random.default_rng(seed)
    rate = law.rate if rate is None else rate
    cv = law.cv if cv is None else cv
    if rate <= 0 or cv <= 0:
        raise ValueError("rate and cv must be positive")
    shape = 1.0 / (cv * cv)
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=count)
    gaps[0] = 0.0
    arrivals = np.cumsum(gaps)
    prompts = np.exp(rng.normal(law.prompt_mu, law.prompt_sigma, size=count))
    outputs = np.exp(rng.normal(law.output_mu, law.output_sigma, size=count))
    return [
        Job(
            float(t),
            int(min(max(1, round(p)), law.prompt_max)),
            int(min(max(1, round(o)), law.output_max)),
        )
        for t, p, o in zip(arrivals, prompts, outputs, strict=True)
    ]

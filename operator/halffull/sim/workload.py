"""Workloads: trace replays at scaled rates and synthetic arrivals with fitted length laws.

A workload is a list of `Job`s sorted by arrival (seconds from the first); `halffull.sim.traces`
reads them from trace files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True, slots=True)
class Job:
    arrival: float
    prompt: int
    output: int
    prefix: tuple[int, ...] = ()
    """Chained prefix ids of the prompt, one per `hash_block` tokens (empty: shares nothing;
    see `halffull.sim.traces`)."""
    hash_block: int = 0


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
    prompt + output fits `max_model_len` (as a client would have to). Jobs with prefix hashes
    are neither scaled nor clipped (that would break their hashes): drop the ones too long
    first (`traces.drop_too_long`).
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
        if j.prefix:
            if length_scale != 1.0:
                raise ValueError("length_scale must be 1 for a trace with prefix hashes")
            if max_model_len is not None and j.prompt + j.output > max_model_len:
                raise ValueError(
                    f"a job of {j.prompt}+{j.output} tokens exceeds max_model_len "
                    f"{max_model_len}; drop such jobs first (traces.drop_too_long)"
                )
            out.append(replace(j, arrival=(j.arrival - t0) / rate_scale))
            continue
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

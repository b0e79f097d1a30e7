"""The tuning recommendation: best median gain within the tail budget, at every load."""

from __future__ import annotations

import json
from dataclasses import replace

from halffull.api.runtime_config import SchedulerConfig
from halffull.sim.report import Summary
from halffull.sim.tune import DEFAULTS, Point, grid, patch_command, recommend

FCFS = Summary(
    requests=100, offered_rps=10.0, completed_rps=10.0, output_tps=100.0, preemptions=0, wall_s=0.1,
    ttft_p50=4.0, ttft_p90=8.0, ttft_p99=10.0, ttft_mean=5.0,
    tgt_p50=10.0, tgt_p90=18.0, tgt_p99=20.0, tgt_mean=11.0,
)  # fmt: skip


def point(alpha: float, max_wait: float, p50: float, ttft_p99: float, tgt_p99: float) -> Point:
    s = replace(FCFS, ttft_p50=p50, ttft_p99=ttft_p99, tgt_p99=tgt_p99)
    return Point(alpha, max_wait, s, FCFS)


def test_best_gain_within_the_budget_wins() -> None:
    load = [
        point(0.01, 0.0, 0.1, 30.0, 21.0),  # best median, tail 3x: out
        point(0.01, 5.0, 0.5, 10.5, 21.0),  # 8x, within 10%
        point(0.1, 5.0, 1.0, 10.0, 20.0),  # 4x
        point(0.1, 0.0, 0.4, 12.0, 20.0),  # 10x, p99 TTFT +20%: out
    ]
    assert recommend([load]) == (0.01, 5.0)
    assert recommend([load], budget=0.25) == (0.1, 0.0)
    assert load[1].gain == 8.0 and load[0].ttft_p99_ratio == 3.0


def test_a_setting_must_hold_at_every_load() -> None:
    light = [point(0.01, 5.0, 0.5, 10.0, 20.0), point(0.1, 5.0, 1.0, 10.0, 20.0)]
    heavy = [point(0.01, 5.0, 0.5, 15.0, 20.0), point(0.1, 5.0, 2.0, 10.0, 20.0)]
    assert recommend([light, heavy]) == (0.1, 5.0)
    assert recommend([[point(0.01, 0.0, 0.1, 30.0, 30.0)]]) is None


def test_grid_always_holds_the_shipped_defaults() -> None:
    pairs = grid([0.5], [1.0])
    assert (DEFAULTS.alpha, DEFAULTS.max_wait_seconds) in pairs and (0.5, 1.0) in pairs


def test_patch_command_applies_a_valid_scheduler_config() -> None:
    cmd = patch_command("chat", (0.03, 7.5), namespace="llm")
    assert cmd.startswith("kubectl patch llmservice chat -n llm --type merge -p '")
    body = json.loads(cmd.split("-p '", 1)[1].rstrip("'"))
    assert SchedulerConfig.model_validate(body["spec"]["scheduler"]) == SchedulerConfig(
        policy="larry", alpha=0.03, max_wait_seconds=7.5
    )
    assert '"policy":"fcfs"' in patch_command("chat", None)

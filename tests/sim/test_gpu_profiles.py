"""The H200 profiles against the measured H200 step times (bench/data/h200/).

The committed coefficients must predict the measured GPU time of each step within 20% (median),
and a refit from the roofline start must find them again; the worst shapes are named in the
output (`pytest -s`) and in any failure.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from halffull.sim.gpu_fit import (
    MeasuredStep,
    fit_gpu,
    load_profile,
    read_steps,
    relative_errors,
    save_profile,
    worst_steps,
)
from halffull.sim.profiles import STEP_OVERHEAD_S, get_profile

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "h200"
CASES = {
    "h200-llama3-8b": (
        "llama3-8b",
        ["gpu_steps.csv", "gpu_steps_longctx.csv", "gpu_steps2.csv"],
    ),
    "h200x2-llama3-70b": ("llama3-70b-tp2-shard", ["gpu_steps.csv"]),
}


def measured(profile: str) -> list[MeasuredStep]:
    model, files = CASES[profile]
    return [s for f in files for s in read_steps(DATA / f, model)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_profile_predicts_measured_steps(name: str) -> None:
    steps = measured(name)
    assert len(steps) >= 40
    profile = get_profile(name)
    gpu = replace(profile.model, overhead_s=profile.model.overhead_s - STEP_OVERHEAD_S)
    errors = relative_errors(gpu, steps)
    worst = worst_steps(gpu, steps)
    print(f"{name}: median error {np.median(errors):.1%}; worst: {worst}")
    assert np.median(errors) <= 0.20, f"{name}: median {np.median(errors):.1%}, worst {worst}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_refit_finds_the_committed_coefficients(name: str) -> None:
    steps = measured(name)
    profile = get_profile(name)
    committed = replace(profile.model, overhead_s=profile.model.overhead_s - STEP_OVERHEAD_S)
    start = replace(committed, token_s=committed.token_s * 3, kv_s=committed.kv_s / 3)
    _, error = fit_gpu(steps, start)
    assert error <= 0.20
    ours = np.median(relative_errors(committed, steps))
    assert error <= ours * 1.25 + 0.01


def test_partial_model_rows_scale_to_all_layers(tmp_path: Path) -> None:
    csv = tmp_path / "steps.csv"
    csv.write_text(
        "model,layers_built,layers_real,prefill,decode,ctx,graph_ms,eager_ms,head_graph_ms\n"
        "m,16,80,16,0,0,4.0,nan,1.0\n"
    )
    (step,) = read_steps(csv)
    assert step.seconds == pytest.approx((1.0 + 3.0 * 5) / 1000)


def test_bad_row_names_the_line(tmp_path: Path) -> None:
    csv = tmp_path / "steps.csv"
    csv.write_text("model,prefill,decode,ctx,graph_ms\nm,16,0,0,4.0\nm,x,0,0,1\n")
    with pytest.raises(ValueError, match=r"steps.csv:3"):
        read_steps(csv)


def test_profile_json_round_trip(tmp_path: Path) -> None:
    profile = get_profile("h200-llama3-8b")
    path = tmp_path / "p.json"
    save_profile(profile, path)
    assert load_profile(path) == profile
    path.write_text('{"name": "x", "model": {}}')
    with pytest.raises(ValueError, match="'shape'"):
        load_profile(path)

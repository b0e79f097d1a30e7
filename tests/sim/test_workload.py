"""Workloads: CSV columns, slicing and rate scaling, fitted synthetic arrivals; the SCLS model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from halffull.sim.profiles import EngineShape, Profile, StepModel, fit_linear
from halffull.sim.slices import SliceConfig, simulate_slices
from halffull.sim.traces import load_csv
from halffull.sim.workload import Job, fit, prepare, synthetic


def test_user_csv_with_seconds_and_iso_timestamps(tmp_path: Path) -> None:
    a = tmp_path / "a.csv"
    a.write_text("arrival,prompt_tokens,output_tokens\n10.5,100,20\n10.0,50,0\n12,7,3\n")
    assert load_csv(a) == [Job(0.0, 50, 1), Job(0.5, 100, 20), Job(2.0, 7, 3)]
    b = tmp_path / "b.csv"
    b.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
    )
    jobs = load_csv(b)
    assert [j.prompt for j in jobs] == [374, 396]
    assert jobs[1].arrival == pytest.approx(4.314579, abs=1e-5)
    bad = tmp_path / "c.csv"
    bad.write_text("when,in,out\n1,2,3\n")
    with pytest.raises(ValueError, match="columns"):
        load_csv(bad)


def test_prepare_scales_rate_slices_and_clips() -> None:
    jobs = [Job(float(t), 100 * (t + 1), 10) for t in range(10)]
    out = prepare(jobs, rate_scale=2.0, start_s=2.0, duration_s=4.0, max_model_len=450)
    assert [j.arrival for j in out] == [0.0, 0.5, 1.0, 1.5]
    assert [j.prompt for j in out] == [300, 400, 440, 440]  # clipped to 450 - 10
    assert prepare(jobs, length_scale=0.5)[0] == Job(0.0, 50, 5)


def test_synthetic_follows_the_fitted_rate_and_burstiness() -> None:
    law = fit([Job(float(i * i), 100 + i, 10 + i) for i in range(50)])
    poisson = synthetic(law, count=20000, rate=10.0, cv=1.0, seed=1)
    bursty = synthetic(law, count=20000, rate=10.0, cv=4.0, seed=1)
    for jobs, cv in ((poisson, 1.0), (bursty, 4.0)):
        got = fit(jobs)
        assert got.rate == pytest.approx(10.0, rel=0.1)
        assert got.cv == pytest.approx(cv, rel=0.15)
        assert all(j.prompt <= law.prompt_max and j.output <= law.output_max for j in jobs)


def test_fit_linear_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(0)
    truth = StepModel(0.004, 2e-4, 3e-5, 0.0, 0.0, 5e-7, overlap=False)
    samples = []
    for _ in range(200):
        p, d = int(rng.integers(0, 2000)), int(rng.integers(0, 64))
        c, n = p + d * int(rng.integers(10, 500)), d + (p > 0)
        samples.append([p, d, c, n, truth.step(p, d, c, 0.0, n)])
    model, err = fit_linear(samples)
    assert err < 1e-6
    assert model.overhead_s == pytest.approx(truth.overhead_s)
    assert model.token_s == pytest.approx(truth.token_s)
    assert model.kv_s == pytest.approx(truth.kv_s)


UNIT = StepModel(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, overlap=False)  # every step 1 s


def test_scls_slices_and_requeues_unfinished_requests() -> None:
    shape = EngineShape(num_blocks=100, block_size=16, max_num_seqs=8, max_model_len=1600)
    profile = Profile("t", "t", shape, UNIT)
    jobs = [Job(0.0, 10, 5), Job(0.0, 10, 2)]
    res = simulate_slices(jobs, SliceConfig(profile, mode="scls", slice_len=2, max_gen=8))
    # slice 1 (t=0-2): prefill (token 1) + 1 decode -> job 1 done at 2, job 0 has 2 tokens
    # slice 2 (t=2-4): re-prefill (token 3) + decode (token 4); slice 3 (t=4-5): prefill (token 5)
    assert res.ttft.tolist() == [1.0, 1.0]
    assert res.tgt.tolist() == [5.0, 2.0]
    assert res.preemptions.tolist() == [2, 0]
    sls = simulate_slices(jobs, SliceConfig(profile, mode="sls", max_gen=8))
    assert sls.tgt.tolist() == [5.0, 2.0] and sls.preemptions.tolist() == [0, 0]


def test_sls_reserves_max_generation_and_limits_the_batch() -> None:
    # 100 tokens of KV, each request reserves 10 + 40: two per batch under SLS, all under SCLS
    shape = EngineShape(num_blocks=10, block_size=10, max_num_seqs=8, max_model_len=100)
    profile = Profile("t", "t", shape, UNIT)
    jobs = [Job(0.0, 10, 1) for _ in range(6)]
    sls = simulate_slices(jobs, SliceConfig(profile, mode="sls", max_gen=40))
    scls = simulate_slices(jobs, SliceConfig(profile, mode="scls", slice_len=4, max_gen=40))
    assert sorted(sls.tgt.tolist()) == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert scls.tgt.tolist() == [1.0] * 6

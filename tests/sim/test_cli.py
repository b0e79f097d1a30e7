"""`halffull sim` and `halffull bench` end to end on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halffull.api.runtime_config import SchedulerConfig
from halffull.cli import main
from halffull.sim.profiles import get_profile
from halffull.sim.traces import TRACE_FILES, TRACES_DIR
from halffull.sim.workload import LengthFit, synthetic


def write_trace(path: Path, count: int = 300, rate: float = 30.0) -> Path:
    law = LengthFit(6.5, 0.8, 4.5, 0.9, 6000, 800, rate, 1.0)
    rows = ["arrival,prompt_tokens,output_tokens"]
    rows += [f"{j.arrival:.4f},{j.prompt},{j.output}" for j in synthetic(law, count=count, seed=2)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_sim_prints_one_row_per_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_trace(tmp_path / "t.csv")
    out = tmp_path / "r.json"
    argv = ["sim", "--trace", str(trace), "--replicas", "2", "--admission", "fcfs", "larry:0.1"]
    assert main([*argv, "--router", "sal:2", "round-robin", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for label in ("fcfs / sal:2", "fcfs / round-robin", "larry:0.1 / sal:2"):
        assert f"| {label} | 300 |" in text
    dumped = json.loads(out.read_text())
    assert len(dumped) == 4 and all(len(d["ttft"]) == 300 for d in dumped)


def test_bench_tune_on_a_user_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_trace(tmp_path / "mine.csv", count=200)
    argv = ["bench", "tune", "--trace", str(trace), "--replicas", "2", "--rate-scales", "1"]
    argv += ["--alphas", "0.03", "--max-waits", "0", "5", "--betas", "1", "--name", "chat"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| x1 | 0.03 | none |" in text and "| x1 | 0.03 | 5 |" in text
    shipped = SchedulerConfig()  # always swept
    assert f"| x1 | {shipped.alpha:g} | {shipped.max_wait_seconds:g} |" in text
    assert "| sal b=1 |" in text and "| round-robin |" in text
    # the output ends with the recommendation and the command that applies it
    last = text.strip().splitlines()[-1].strip()
    assert last.startswith("kubectl patch llmservice chat --type merge -p '")
    assert "## Recommendation (tail budget 10% over FCFS)" in text


def test_bench_fidelity_reads_a_measurement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calibration = [
        [p, d, p + 100 * d, d + (p > 0), 0.002 + 1e-5 * p + 1e-4 * d]
        for p in (0, 64, 512)
        for d in (0, 1, 8)
        if p or d
    ]
    real = {
        "engine": {
            "num_gpu_blocks": 64,
            "block_size": 128,
            "max_num_batched_tokens": 2048,
            "max_num_seqs": 16,
            "max_model_len": 4096,
        },
        "calibration": calibration,
        "runs": [
            {
                "policy": "fcfs",
                "alpha": 1.0,
                "rate": 2.0,
                "requests": [
                    {"arrival": 0.5 * i, "prompt": 200, "output": 20, "ttft": 0.01, "tgt": 0.1}
                    for i in range(10)
                ],
                "steps": calibration,
            }
        ],
    }
    path = tmp_path / "real.json"
    path.write_text(json.dumps(real))
    assert main(["bench", "fidelity", "--real", str(path)]) == 0
    text = capsys.readouterr().out
    assert "| fcfs | 2 | p50 |" in text


def test_one_sweep_function_runs_a_declared_sweep(tmp_path: Path) -> None:
    from bench import report

    trace = write_trace(tmp_path / "t.csv", count=200)
    sweep = report.Sweep(
        "alpha",
        "alpha on a small trace",
        get_profile("h100-llama3-8b"),
        str(trace),
        [0.01, 1.0],
        "alpha",
        [("larry", {"admission": "larry"})],
        baselines=[("fcfs", {"admission": "fcfs"})],
        x_header="alpha",
        ratio=report.Ratio("x FCFS", "ttft_p50", "larry", ref_over_row=True),
        verdict=lambda s: f"larry TTFT p50 {s['larry'].ttft_p50:.3f}",
    )
    bench = report.Bench(tmp_path, quick=True, traces_dir=None, md=[])
    report.run_sweep(bench, sweep)
    text = "\n".join(bench.md)
    rows = [
        [cell.strip() for cell in ln.strip("|").split("|")]
        for ln in text.splitlines()
        if ln.startswith("| ")
    ]
    assert rows[0][:4] == ["alpha", "req/s", "run", "TTFT p50"] and rows[0][-1] == "x FCFS"
    assert [(r[0], r[2]) for r in rows[1:]] == [("-", "fcfs"), ("x0.01", "larry"), ("x1", "larry")]
    assert rows[2][-1] == "1.00x"  # the reference row against itself
    assert text.count("larry TTFT p50 ") == 2  # one verdict per point


@pytest.mark.skipif(
    not (TRACES_DIR / TRACE_FILES["conv"]).exists(), reason="the shared Azure traces are absent"
)
def test_report_quick_writes_tables_and_plots(tmp_path: Path) -> None:
    from bench import report

    assert report.main(["--out", str(tmp_path), "--quick", "--only", "scls"]) == 0
    text = (tmp_path / "results-scls.md").read_text()
    assert "| h100-llama3-8b | conv | SCLS S=128 |" in text
    assert (tmp_path / "scls_throughput.png").stat().st_size > 1000

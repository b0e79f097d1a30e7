"""`halffull sim` and `halffull bench` end to end on small inputs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from halffull.cli import main
from halffull.sim.profiles import get_profile
from halffull.sim.workload import TRACE_FILES, TRACES_DIR, LengthFit, synthetic

ROOT = Path(__file__).resolve().parents[2]


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
    assert main([*argv, "--alphas", "0.1", "--betas", "1"]) == 0
    text = capsys.readouterr().out
    assert "| larry a=0.1 |" in text and "| sal b=1 |" in text and "| round-robin |" in text


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


def load_report() -> ModuleType:
    """bench/report.py, which is a script in the repository, not part of the package."""
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_one_sweep_function_runs_a_declared_sweep(tmp_path: Path) -> None:
    report = load_report()
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
    )
    bench = report.Bench(tmp_path, quick=True, traces_dir=None, md=[])
    report.run_sweep(bench, sweep)
    rows = [
        [cell.strip() for cell in ln.strip("|").split("|")]
        for ln in "\n".join(bench.md).splitlines()
        if ln.startswith("| ")
    ]
    assert rows[0][:4] == ["alpha", "req/s", "run", "TTFT p50"] and rows[0][-1] == "x FCFS"
    assert [(r[0], r[2]) for r in rows[1:]] == [("-", "fcfs"), ("x0.01", "larry"), ("x1", "larry")]
    assert rows[2][-1] == "1.00x"  # the reference row against itself


@pytest.mark.skipif(
    not (TRACES_DIR / TRACE_FILES["conv"]).exists(), reason="the shared Azure traces are absent"
)
def test_bench_report_quick_writes_tables_and_plots(tmp_path: Path) -> None:
    assert load_report().main(["--out", str(tmp_path), "--quick", "--only", "scls"]) == 0
    text = (tmp_path / "results-scls.md").read_text()
    assert "| h100-llama3-8b | conv | SCLS S=128 |" in text
    assert (tmp_path / "scls_throughput.png").stat().st_size > 1000

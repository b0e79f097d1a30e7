"""The one trace loader: request traces from files into `Job`s.

Two formats, told apart by the file name:

- CSV (the Azure LLM inference traces 2023: `TIMESTAMP`, `ContextTokens`, `GeneratedTokens`; or
  a user's file with `arrival` in seconds or an ISO timestamp, `prompt_tokens`,
  `output_tokens`). No prefix information: nothing is shared between requests.
- JSON lines, `.jsonl` (the Mooncake FAST'25 trace format): one object a line with `timestamp`
  (milliseconds), `input_length`, `output_length` and `hash_ids`, the prompt's block hashes,
  `hash_block` (512) tokens a block: two requests that share their first k ids share their
  first k * 512 prompt tokens. The ids are turned into chained ids here (`Job.prefix`): the
  i-th id of a job names its whole prompt up to the end of block i, as vLLM's chained block
  hashes do, so equal ids after a difference never count as shared.

Arrivals come out in seconds from the first request, sorted; bad input raises `ValueError`
naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from halffull.sim.workload import Job

MOONCAKE_HASH_BLOCK = 512
"""Tokens per hash id in the Mooncake traces."""

TRACE_FILES = {
    "conv": "azure_llm_2023_conv.csv",
    "code": "azure_llm_2023_code.csv",
    "mooncake": "mooncake_synthetic_trace.jsonl",
}
"""Short names of the shared traces."""


def _traces_dir() -> Path:
    """Where the shared traces live: $HALFFULL_TRACES, else `shared/traces` beside the checkout
    (a worktree under `wt/` looks two levels up)."""
    env = os.environ.get("HALFFULL_TRACES")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[3]
    for base in (root.parent, root.parent.parent):
        candidate = base / "shared" / "traces"
        if candidate.is_dir():
            return candidate
    return root.parent / "shared" / "traces"


TRACES_DIR = _traces_dir()
"""The shared traces (read in place, never copied)."""

_ARRIVAL = ("TIMESTAMP", "arrival", "arrival_time", "timestamp", "time")
_PROMPT = ("ContextTokens", "prompt_tokens", "prompt", "input_tokens")
_OUTPUT = ("GeneratedTokens", "output_tokens", "output", "generated_tokens")


def resolve_trace(name_or_path: str, traces_dir: Path | None = None) -> Path:
    """A shared trace's short name (`conv`, `code`, `mooncake`) or a path."""
    if name_or_path in TRACE_FILES:
        return (traces_dir or TRACES_DIR) / TRACE_FILES[name_or_path]
    return Path(name_or_path)


def load_trace(path: Path) -> list[Job]:
    """All requests of a trace file (CSV or Mooncake JSON lines), arrivals from 0, sorted."""
    if path.suffix == ".jsonl":
        return load_mooncake(path)
    return load_csv(path)


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


def load_csv(path: Path) -> list[Job]:
    """All rows of a CSV trace, arrivals relative to the first, sorted by arrival."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        a, p, o = (_column(header, n, path) for n in (_ARRIVAL, _PROMPT, _OUTPUT))
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append((_seconds(r[a]), int(float(r[p])), int(float(r[o]))))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{line}: {e}") from None
    if not rows:
        raise ValueError(f"{path}: no rows")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return [Job(t - t0, max(1, prompt), max(1, out)) for t, prompt, out in rows]


def _int_field(obj: dict[str, object], name: str, where: str, minimum: int) -> int:
    if name not in obj:
        raise ValueError(f"{where}: missing field {name!r}")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


def load_mooncake(path: Path, hash_block: int = MOONCAKE_HASH_BLOCK) -> list[Job]:
    """A Mooncake-format trace. Every line must carry all four fields, and `hash_ids` must hold
    exactly ceil(input_length / hash_block) integers."""
    chains: dict[tuple[int, int], int] = {}
    rows: list[tuple[float, int, int, tuple[int, ...]]] = []
    with path.open() as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON: {e}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object")
            if "timestamp" not in obj:
                raise ValueError(f"{where}: missing field 'timestamp'")
            stamp = obj["timestamp"]
            if isinstance(stamp, bool) or not isinstance(stamp, int | float):
                raise ValueError(f"{where}: 'timestamp' must be a number, got {stamp!r}")
            prompt = _int_field(obj, "input_length", where, 1)
            output = _int_field(obj, "output_length", where, 1)
            if "hash_ids" not in obj:
                raise ValueError(f"{where}: missing field 'hash_ids'")
            ids = obj["hash_ids"]
            if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids
            ):
                raise ValueError(f"{where}: 'hash_ids' must be a list of integers")
            expected = math.ceil(prompt / hash_block)
            if len(ids) != expected:
                raise ValueError(
                    f"{where}: 'hash_ids' has {len(ids)} ids but input_length {prompt} needs "
                    f"{expected} blocks of {hash_block} tokens"
                )
            prefix = []
            parent = -1
            for i in ids:
                parent = chains.setdefault((parent, i), len(chains))
                prefix.append(parent)
            rows.append((float(stamp) / 1000.0, prompt, output, tuple(prefix)))
    if not rows:
        raise ValueError(f"{path}: no requests")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return [Job(t - t0, p, o, prefix, hash_block) for t, p, o, prefix in rows]


def drop_too_long(jobs: Sequence[Job], max_model_len: int) -> tuple[list[Job], int]:
    """Jobs with prefix hashes that do not fit `max_model_len` (prompt + output) are dropped,
    never clipped: a clipped prompt would no longer match its hashes. Returns the kept jobs and
    the number dropped. Jobs without hashes are kept (`prepare` clips them)."""
    kept = [j for j in jobs if not j.prefix or j.prompt + j.output <= max_model_len]
    return kept, len(jobs) - len(kept)


def shared_fraction(jobs: Sequence[Job]) -> float:
    """Fraction of all prompt hash blocks that repeat an earlier job's block (in arrival
    order): the upper bound on prefix reuse, whatever the routing."""
    seen: set[int] = set()
    total = repeated = 0
    for j in jobs:
        for key in j.prefix:
            total += 1
            if key in seen:
                repeated += 1
            else:
                seen.add(key)
    return repeated / total if total else 0.0

